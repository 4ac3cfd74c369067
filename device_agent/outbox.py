"""The outbox: every local write, durable on disk until the cloud has taken responsibility.

Ops are recorded in one `BEGIN IMMEDIATE` transaction each (or one per `record_many`), leased
in batches by `claim`, and leave only through `ack` (the cloud answered for them) or
`quarantine` (the cloud rejected them permanently; kept for an operator). A crashed sender's
leases are recovered, so an op is sent again rather than lost; sending twice is harmless
because every op is idempotent by its HLC.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Union

from device_agent.db import transaction
from device_agent.errors import NotFound, OutboxFull
from device_agent.state import AgentState
from shared.contracts import ContractError, ErrorCode, JsonObject, Op, OpKind, Priority, parse_op

DEFAULT_MAX_OPS = 100_000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
# SQLite builds before 3.32 allow at most 999 parameters in one statement.
_CHUNK = 500
_HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)

WriteItem = Union[
    tuple[str, str, Union[OpKind, str], Optional[JsonObject]],
    tuple[str, str, Union[OpKind, str], Optional[JsonObject], Union[Priority, int, str]],
]
"""(collection, key, kind, data[, priority]) as taken by `Outbox.record_many`."""

_COLUMNS = (
    "seq, op_id, collection, key, kind, hlc, data, priority, attempts, enqueued_at, last_error"
)


@dataclass(frozen=True)
class PendingOp:
    """An op in the outbox with its delivery bookkeeping (times are epoch seconds)."""

    op: Op
    seq: int
    attempts: int
    enqueued_at: float
    last_error: Optional[str] = None


@dataclass(frozen=True)
class QuarantinedOp:
    """An op the cloud rejected permanently, with the reason it gave."""

    op: Op
    code: str
    message: str
    attempts: int
    enqueued_at: float
    quarantined_at: float


@dataclass(frozen=True)
class OutboxStats:
    """What `sync-agent status` shows about the outbox."""

    depth: dict[str, int] = field(default_factory=dict)
    total_ops: int = 0
    total_bytes: int = 0
    oldest_pending_age_s: Optional[float] = None
    in_flight: int = 0
    quarantined: int = 0
    max_ops: int = DEFAULT_MAX_OPS
    max_bytes: int = DEFAULT_MAX_BYTES

    def to_dict(self) -> dict[str, Any]:
        return {
            "depth": dict(self.depth),
            "total_ops": self.total_ops,
            "total_bytes": self.total_bytes,
            "oldest_pending_age_s": self.oldest_pending_age_s,
            "in_flight": self.in_flight,
            "quarantined": self.quarantined,
            "max_ops": self.max_ops,
            "max_bytes": self.max_bytes,
        }


class Outbox:
    """The durable queue of local ops, shared safely by every process using the database.

    Bounded by `max_ops` and `max_bytes` (approximate wire size): a write that would pass
    either bound is refused with OutboxFull, never dropped. `now` is the wall clock in epoch
    seconds (injectable for tests). Leases left by a crashed process are recovered on open.
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        state: AgentState,
        *,
        max_ops: int = DEFAULT_MAX_OPS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        now: Callable[[], float] = time.time,
        recover: bool = True,
    ) -> None:
        if max_ops < 1 or max_bytes < 1:
            raise ValueError("max_ops and max_bytes must be positive")
        self._conn = conn
        self._state = state
        self.max_ops = max_ops
        self.max_bytes = max_bytes
        self._now = now
        self._owner = f"pid:{os.getpid()}"
        self._use_returning = _HAS_RETURNING
        if recover:
            self.recover_leases()

    # --- recording -------------------------------------------------------------------------

    def record(
        self,
        collection: str,
        key: str,
        kind: Union[OpKind, str],
        data: Optional[JsonObject] = None,
        priority: Union[Priority, int, str] = Priority.NORMAL,
    ) -> Op:
        """Durably record one write and return the op as it now stands in the outbox.

        Validated first (ContractError, nothing stored), then stamped and stored in one
        transaction. A write may be coalesced into a pending op on the same key that was never
        handed out (see `_coalesce`): the returned op then carries the merged data, the new
        op id and the new HLC. Raises OutboxFull when a bound would be passed.
        """
        return self.record_many([(collection, key, kind, data, priority)])[0]

    def record_many(self, items: Iterable[WriteItem]) -> list[Op]:
        """Record several writes in one transaction: all of them are stored, or none."""
        raise NotImplementedError

    # --- delivery --------------------------------------------------------------------------

    def claim(
        self,
        *,
        limit: int = 100,
        max_bytes: int = 1_000_000,
        lease_s: float = 60.0,
        now: Optional[float] = None,
    ) -> list[PendingOp]:
        """Lease the next ops to send: ready ones, most urgent priority first, FIFO within one.

        Ready means its next attempt time has come and it is not leased (or its lease
        expired). At most `limit` ops and `max_bytes` (at least one op); the lease lasts
        `lease_s`. Every claimed op must later be acked, released or quarantined.
        """
        raise NotImplementedError

    def ack(self, op_ids: Iterable[str]) -> int:
        """Remove ops the cloud has taken responsibility for; returns how many were removed."""
        raise NotImplementedError

    def release(self, op_ids: Iterable[str], *, error: str, retry_at: float) -> int:
        """Return leased ops after a failed attempt: counted, with the error and retry time."""
        raise NotImplementedError

    def release_unattempted(self, op_ids: Iterable[str]) -> int:
        """Return leased ops that were not sent (e.g. shutdown); no attempt is counted."""
        raise NotImplementedError

    def recover_leases(self) -> int:
        """Make ops leased by a dead process (or with an expired lease) pending again."""
        raise NotImplementedError

    def restamp(self, op_ids: Iterable[str]) -> list[Op]:
        """Give the named ops fresh HLCs from the (corrected) clock, keeping the order of all.

        For `clock_ahead` rejections, after `AgentState.restamp_clock`. Every outbox op
        stamped at or after the earliest named one, or ahead of the clock, is re-stamped too,
        in HLC order, so no op overtakes an older one. Returns the re-stamped ops in HLC order;
        unknown ids are ignored (they may have been acked meanwhile).
        """
        raise NotImplementedError

    # --- quarantine ------------------------------------------------------------------------

    def quarantine(self, op_id: str, code: Union[ErrorCode, str], message: str) -> None:
        """Move an op the cloud rejected permanently out of the queue, keeping the reason."""
        raise NotImplementedError

    def quarantined(self) -> list[QuarantinedOp]:
        raise NotImplementedError

    def retry_quarantined(self, op_id: str) -> Op:
        """Put a quarantined op back in the queue (as the newest op of its priority)."""
        raise NotImplementedError

    def drop_quarantined(self, op_id: str) -> None:
        raise NotImplementedError

    # --- reading ---------------------------------------------------------------------------

    def pending_for(self, collection: str, key: str) -> list[Op]:
        """Every op on the key still in the outbox (pending or in flight), in HLC order."""
        raise NotImplementedError

    def get(self, op_id: str) -> PendingOp:
        """The op with this id; NotFound if it is not in the outbox."""
        raise NotImplementedError

    def depth(self) -> int:
        """How many ops are in the outbox (pending and in flight)."""
        raise NotImplementedError

    def stats(self) -> OutboxStats:
        raise NotImplementedError


_ = (ContractError, NotFound, OutboxFull, json, uuid, Sequence, replace, parse_op, transaction)
