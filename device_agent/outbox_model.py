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
    seq: Optional[int]  # its place in the claim order; None while in the intake
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


def _load_all(texts: list[Optional[str]]) -> list[Optional[JsonObject]]:
    """Decode many stored data texts with one parse (a claim decodes 100 at a time)."""
    joined = ",".join("null" if text is None else text for text in texts)
    try:
        loaded = json.loads(f"[{joined}]")
    except ValueError:
        loaded = None
    if not isinstance(loaded, list) or len(loaded) != len(texts):
        # A text that is not one JSON value (never written by the outbox): decode each.
        return [_load(text) for text in texts]
    return loaded


# Frozen dataclasses set each field through object.__setattr__, which costs more than the
# rest of decoding a claimed row. These types have no __post_init__, __slots__ or defaults
# that need running, so filling the instance dict gives the same object (equality and hash
# are computed from the fields); otherwise the constructor is used.
def _plain(cls: type) -> bool:
    return not hasattr(cls, "__post_init__") and "__slots__" not in vars(cls)


_FAST_OP = _plain(Op)
_FAST_PENDING = _plain(PendingOp)
_new = object.__new__


def make_op(
    *,
    op_id: str,
    collection: str,
    key: str,
    kind: OpKind,
    hlc: str,
    data: Optional[JsonObject],
    priority: Priority,
) -> Op:
    """Op(...) for values already valid, without the frozen dataclass's per-field cost."""
    if not _FAST_OP:
        return Op(op_id, collection, key, kind, hlc, data, priority)
    op = _new(Op)
    op.__dict__.update(
        op_id=op_id,
        collection=collection,
        key=key,
        kind=kind,
        hlc=hlc,
        data=data,
        priority=priority,
    )
    return op  # type: ignore[no-any-return]


def pending_from_rows(rows: Sequence[Sequence[Any]]) -> list[PendingOp]:
    """PendingOps from rows that start (seq, op_id, collection, key, kind, hlc, data,
    priority, attempts, enqueued_at, last_error), decoded together."""
    datas = _load_all([row[6] for row in rows])
    pending = []
    for row, data in zip(rows, datas):
        op = make_op(
            op_id=row[1],
            collection=row[2],
            key=row[3],
            kind=_KINDS[row[4]],
            hlc=row[5],
            data=data,
            priority=_PRIORITIES[row[7]],
        )
        if _FAST_PENDING:
            item = _new(PendingOp)
            item.__dict__.update(
                op=op, seq=row[0], attempts=row[8], enqueued_at=row[9], last_error=row[10]
            )
        else:
            item = PendingOp(op, row[0], row[8], row[9], row[10])
        pending.append(item)
    return pending


def pending_from_row(row: Sequence[Any]) -> PendingOp:
    seq, op_id, collection, key, kind, hlc, data, priority, attempts, enqueued_at, error = row
    op = Op(op_id, collection, key, _KINDS[kind], hlc, _load(data), _PRIORITIES[priority])
    return PendingOp(op, seq, attempts, enqueued_at, error)
