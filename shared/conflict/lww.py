"""The default resolver: a last-writer-wins map with a reset clock (PROTOCOL.md, Conflicts).

The state it keeps is canonical: `clock.reset` is the HLC of the newest put/delete, and
`clock.fields` holds only fields written at or after it (older ones can never matter again,
because a write must be newer than both its field's HLC and the reset to take effect). So the
final record depends only on the set of ops applied, never on their order or repetition.
"""

from __future__ import annotations

from typing import Any, Optional

from shared.conflict.resolution import Resolution
from shared.contracts import Op, OpKind, OpStatus, Record, RecordClock


def empty_record(collection: str, key: str) -> Record:
    return Record(collection, key)


def apply_lww(current: Optional[Record], op: Op) -> Resolution:
    """Apply `op` to `current` (None when the record does not exist yet)."""
    record = current if current is not None else empty_record(op.collection, op.key)
    if record.carries(op.hlc):
        return Resolution(OpStatus.DUPLICATE, record)
    if op.kind is OpKind.PATCH:
        return _patch(record, op)
    return _reset(record, op)


def _patch(record: Record, op: Op) -> Resolution:
    data = dict(record.data)
    fields = dict(record.clock.fields)
    requested = op.data or {}
    written = 0
    for name, value in requested.items():
        if op.hlc <= record.clock.reset or op.hlc <= fields.get(name, ""):
            continue  # a newer write already holds this field
        fields[name] = op.hlc
        if value is None:
            data.pop(name, None)  # the clock stays behind as a field tombstone
        else:
            data[name] = value
        written += 1
    new_record = Record(
        record.collection, record.key, data, RecordClock(record.clock.reset, fields)
    )
    return Resolution(_status(written, len(requested)), new_record)


def _reset(record: Record, op: Op) -> Resolution:
    """A put (or a delete: the put of the empty document) at op.hlc."""
    if op.hlc <= record.clock.reset:
        return Resolution(OpStatus.SUPERSEDED, record)
    # Fields written after op.hlc (later patches) survive; everything older is replaced.
    newer = {name: hlc for name, hlc in record.clock.fields.items() if hlc > op.hlc}
    data: dict[str, Any] = {name: record.data[name] for name in newer if name in record.data}
    fields = dict(newer)
    requested = op.data or {}
    taken = 0
    for name, value in requested.items():
        if name in newer:
            continue
        data[name] = value
        fields[name] = op.hlc
        taken += 1
    new_record = Record(record.collection, record.key, data, RecordClock(op.hlc, fields))
    status = OpStatus.APPLIED if taken == len(requested) else OpStatus.MERGED
    return Resolution(status, new_record)


def _status(written: int, requested: int) -> OpStatus:
    if written == requested:
        return OpStatus.APPLIED
    return OpStatus.MERGED if written else OpStatus.SUPERSEDED


def merge_records(left: Optional[Record], right: Optional[Record]) -> Optional[Record]:
    """The record holding both histories: what applying the ops behind each side would give.

    Used by the device to fold a record from the cloud into its replica; commutative,
    associative and idempotent, so changes may arrive twice or out of order.
    """
    if left is None or right is None:
        return left if right is None else right
    reset = max(left.clock.reset, right.clock.reset)
    data: dict[str, Any] = {}
    fields: dict[str, str] = {}
    for side in (left, right):
        for name, hlc in side.clock.fields.items():
            if hlc < reset or hlc <= fields.get(name, ""):
                continue
            fields[name] = hlc
            if name in side.data:
                data[name] = side.data[name]
            else:
                data.pop(name, None)
    return Record(left.collection, left.key, data, RecordClock(reset, fields))
