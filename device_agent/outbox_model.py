"""The outbox's value types: pending and quarantined ops, statistics, and row decoding."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from shared.contracts import JsonObject, Op, OpKind, Priority

DEFAULT_MAX_OPS = 100_000
DEFAULT_MAX_BYTES = 256 * 1024 * 1024

WriteItem = Union[
    tuple[str, str, Union[OpKind, str], Optional[JsonObject]],
    tuple[str, str, Union[OpKind, str], Optional[JsonObject], Union[Priority, int, str]],
]
"""(collection, key, kind, data[, priority]) as taken by `Outbox.record_many`."""


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


def _load(data: Optional[str]) -> Optional[JsonObject]:
    return None if data is None else json.loads(data)  # type: ignore[no-any-return]


# Plain lookups: calling an Enum class per row costs more than the row's SQL on a Pi.
_KINDS = {kind.value: kind for kind in OpKind}
_PRIORITIES = {int(priority): priority for priority in Priority}


def op_from_row(row: Sequence[Any]) -> Op:
    """An Op from (op_id, collection, key, kind, hlc, data, priority)."""
    op_id, collection, key, kind, hlc, data, priority = row
    return Op(op_id, collection, key, _KINDS[kind], hlc, _load(data), _PRIORITIES[priority])


def pending_from_row(row: Sequence[Any]) -> PendingOp:
    seq, op_id, collection, key, kind, hlc, data, priority, attempts, enqueued_at, error = row
    op = Op(op_id, collection, key, _KINDS[kind], hlc, _load(data), _PRIORITIES[priority])
    return PendingOp(op, seq, attempts, enqueued_at, error)
