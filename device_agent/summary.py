"""What one sync did: a `ProcessingSummary` (after the seed design's queue processing result)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from shared.contracts import OpStatus


@dataclass
class ProcessingSummary:
    """Counts per op status, traffic, and why the sync stopped if it did not finish.

    `synced` is True when the outbox had nothing more to send and the replica was pulled up
    to date. `deferred` counts ops put off to a later sync (still `clock_ahead` after
    re-stamping). `reached_cloud` is False when no request got an HTTP answer (offline).
    `stopped_by` names the failure that ended it early (`unreachable`, `throttled`,
    `server_error`, `auth`, `timeout`, `stopped`), else None.
    """

    applied: int = 0
    duplicate: int = 0
    superseded: int = 0
    merged: int = 0
    rejected: int = 0
    queued: int = 0
    restamped: int = 0
    deferred: int = 0
    quarantined: int = 0
    pulled: int = 0
    resyncs: int = 0
    requests: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    duration_s: float = 0.0
    reached_cloud: bool = False
    pushed_all: bool = False
    pulled_all: bool = False
    stopped_by: Optional[str] = None
    retry_after: Optional[float] = None
    remaining: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def synced(self) -> bool:
        return self.pushed_all and self.pulled_all and self.stopped_by is None and not self.deferred

    @property
    def acked(self) -> int:
        """Ops the cloud took responsibility for (removed from the outbox)."""
        return self.applied + self.duplicate + self.superseded + self.merged + self.queued

    @property
    def counts(self) -> dict[str, int]:
        """Ops per protocol status (`applied`, `duplicate`, ... `queued`)."""
        return {status.value: getattr(self, status.value) for status in OpStatus}

    def count(self, status: OpStatus, n: int = 1) -> None:
        setattr(self, status.value, getattr(self, status.value) + n)

    def error(self, message: str) -> None:
        if len(self.errors) < 50:  # a long outage must not grow this without bound
            self.errors.append(message)

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": self.counts,
            "restamped": self.restamped,
            "deferred": self.deferred,
            "quarantined": self.quarantined,
            "pulled": self.pulled,
            "resyncs": self.resyncs,
            "requests": self.requests,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "duration_s": round(self.duration_s, 3),
            "reached_cloud": self.reached_cloud,
            "synced": self.synced,
            "stopped_by": self.stopped_by,
            "remaining": self.remaining,
            "errors": list(self.errors),
        }

    def line(self) -> str:
        """One log line's worth of key=value pairs."""
        counts = " ".join(f"{name}={value}" for name, value in self.counts.items() if value)
        return (
            f"synced={self.synced} {counts + ' ' if counts else ''}pulled={self.pulled} "
            f"requests={self.requests} sent={self.bytes_sent} received={self.bytes_received} "
            f"remaining={self.remaining} stopped_by={self.stopped_by or '-'} "
            f"duration_s={self.duration_s:.3f}"
        )
