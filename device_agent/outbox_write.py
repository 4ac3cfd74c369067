"""Storing newly recorded ops: coalescing into the newest op of a key, then batch writes.

Coalescing keeps the outbox small when a key is written repeatedly offline (a form saved
field by field, a counter updated every second) without changing what the server ends up
with. A new op only ever merges into the newest op on its key, and only while that op has
never been handed to a sender (it has no `delivery` row): then no op of this device stamped
between the two can exist anywhere, in the outbox or on the server, which is what makes the
merge safe.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Sequence
from typing import Optional

from device_agent.outbox_model import op_from_row
from shared.contracts import ContractError, Op, OpKind, Priority, parse_op
from shared.contracts.validation import Problem

# The keys, quotes and punctuation of an op's wire form, plus its HLC: sizes are approximate.
WIRE_OVERHEAD = 160

_NEWEST_PER_KEY = """
    SELECT o.collection, o.key, o.seq, o.op_id, o.kind, o.hlc, o.data, o.priority,
           EXISTS (SELECT 1 FROM delivery AS d WHERE d.seq = o.seq), o.size
      FROM json_each(:keys) AS k
      JOIN outbox AS o ON o.seq = (
           SELECT i.seq FROM outbox AS i
            WHERE i.collection = json_extract(k.value, '$[0]')
              AND i.key = json_extract(k.value, '$[1]')
            ORDER BY i.hlc DESC LIMIT 1)
"""
_NEWEST_OF_KEY = """
    SELECT o.collection, o.key, o.seq, o.op_id, o.kind, o.hlc, o.data, o.priority,
           EXISTS (SELECT 1 FROM delivery AS d WHERE d.seq = o.seq), o.size
      FROM outbox AS o WHERE o.collection = ? AND o.key = ? ORDER BY o.hlc DESC LIMIT 1
"""
_INSERT = (
    "INSERT INTO outbox (op_id, collection, key, kind, hlc, data, priority, size, enqueued_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE = (
    "UPDATE outbox SET op_id = :op_id, kind = :kind, hlc = :hlc, data = :data, "
    "priority = :priority, size = :size WHERE seq = :seq"
)


def coalesce(older: Op, newer: Op) -> Optional[Op]:
    """One op with the effect of `older` followed by `newer` on the same key, or None.

    - a put or delete replaces whatever came before: its reset erases the older op entirely,
      so this case is exact, clocks included;
    - a patch over a patch: the union of fields, newer values winning;
    - a patch over a put (or a delete, the put of the empty document): a put of the updated
      document (null fields dropped).
    The result carries `newer`'s op id and HLC and the more urgent priority. Only the newer HLC
    is above every field the pair wrote: the older one would let the server keep a stale field
    that the newer op overwrote. The visible document then equals the one sending both leaves;
    the per-field clocks differ (fields of the older op carry the newer HLC). None when the
    merged op would be too large to send.
    """
    priority = min(older.priority, newer.priority)
    if newer.kind is not OpKind.PATCH:
        return _with(newer, newer.kind, newer.data, priority)
    patch = newer.data or {}
    if older.kind is OpKind.PATCH:
        return _checked(_with(newer, OpKind.PATCH, {**(older.data or {}), **patch}, priority))
    base = older.data or {} if older.kind is OpKind.PUT else {}
    document = {name: value for name, value in {**base, **patch}.items() if value is not None}
    return _checked(_with(newer, OpKind.PUT, document, priority))


def _with(op: Op, kind: OpKind, data: Optional[dict[str, object]], priority: Priority) -> Op:
    return Op(op.op_id, op.collection, op.key, kind, op.hlc, data, priority)


def _checked(op: Op) -> Optional[Op]:
    try:
        parse_op(op.to_wire())
    except ContractError:
        return None
    return op


def encode(op: Op) -> tuple[Optional[str], int]:
    """The stored data JSON and the op's approximate wire size in bytes."""
    if op.data is None:
        return None, stored_size(op.op_id, op.collection, op.key, 0)
    try:
        text = json.dumps(op.data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError as exc:  # NaN or an infinity: strict JSON parsers would refuse it
        raise ContractError(
            [Problem("op.data", f"is not JSON ({exc}); NaN and Infinity are not valid JSON")]
        ) from exc
    return text, stored_size(op.op_id, op.collection, op.key, len(text.encode("utf-8")))


def new_op_ids(count: int) -> list[str]:
    """`count` new op ids: UUIDs of version 7 (time-ordered, 62 random bits), as strings.

    Time order keeps the op_id index local: acking the oldest ops touches a few adjacent
    index pages instead of one random page per op (a third of the pages per ack, measured on
    a 1,000,000-op backlog). Ids are unique, not secret; the HLC carries the time anyway.
    """
    millis = time.time_ns() // 1_000_000
    noise = os.urandom(8 * count).hex()
    ids = []
    prefix = ""
    for index in range(count):
        if not index & 0x0FFF:
            stamp = f"{millis + (index >> 12):012x}"  # 48-bit ms; 4096 ids per ms keep order
            prefix = f"{stamp[:8]}-{stamp[8:]}-7"  # then version 7
        tail = noise[16 * index : 16 * index + 16]
        # A 12-bit sequence, the variant (binary 10) with two random bits, 60 more random bits.
        variant = "89ab"[int(tail[0], 16) & 3]
        ids.append(f"{prefix}{index & 0x0FFF:03x}-{variant}{tail[1:4]}-{tail[4:]}")
    return ids


class _Slot:
    """The newest op on one key while a batch is being stored."""

    __slots__ = ("coalescable", "index", "op", "seq", "size")

    def __init__(
        self, op: Op, *, seq: Optional[int], index: Optional[int], coalescable: bool, size: int = 0
    ):
        self.op = op
        self.seq = seq
        self.index = index
        self.coalescable = coalescable
        self.size = size  # the stored size of an existing row (its share of the totals)


def stored_size(op_id: str, collection: str, key: str, data_bytes: int) -> int:
    """The approximate wire size kept per row (the bounds and totals count in it)."""
    return WIRE_OVERHEAD + len(op_id) + len(collection) + 2 * len(key) + data_bytes


def store_ops(
    conn: sqlite3.Connection,
    ops: Sequence[Op],
    now: float,
    encoded: Optional[Sequence[tuple[Optional[str], int]]] = None,
) -> tuple[list[Op], tuple[int, int]]:
    """Store stamped ops in the open transaction.

    Returns each op as it stands afterwards, and how much the outbox grew (ops, bytes). Ops
    are taken in order, each coalesced into the newest op on its key when allowed, so a batch
    gives exactly what recording its ops one by one would. `encoded` is each op's
    `encode(op)` when the caller already has it (the data is then encoded once).
    """
    slots = _newest_ops(conn, {(op.collection, op.key) for op in ops})
    inserts: list[tuple[Op, Optional[tuple[Optional[str], int]]]] = []
    updates: dict[int, tuple[Op, int]] = {}
    stored: list[Op] = []
    for position, op in enumerate(ops):
        slot = slots.get((op.collection, op.key))
        merged = None
        if slot is not None and slot.coalescable and slot.op.hlc < op.hlc:
            merged = coalesce(slot.op, op)
        if slot is not None and merged is not None:
            slot.op = merged
            if slot.index is not None:
                inserts[slot.index] = (merged, None)
            elif slot.seq is not None:
                updates[slot.seq] = (merged, slot.size)
            stored.append(merged)
            continue
        inserts.append((op, None if encoded is None else encoded[position]))
        slots[(op.collection, op.key)] = _Slot(
            op, seq=None, index=len(inserts) - 1, coalescable=True
        )
        stored.append(op)
    grown = 0
    if updates:
        rows = [_params(op, seq=seq) for seq, (op, _) in updates.items()]
        grown += sum(size for _, size in rows) - sum(old for _, old in updates.values())
        conn.executemany(_UPDATE, [row for row, _ in rows])
    if inserts:
        values = []
        for op, known in inserts:
            data, size = encode(op) if known is None else known
            grown += size
            values.append(
                (
                    op.op_id,
                    op.collection,
                    op.key,
                    op.kind.value,
                    op.hlc,
                    data,
                    int(op.priority),
                    size,
                    now,
                )
            )
        conn.executemany(_INSERT, values)
    return stored, (len(inserts), grown)


def _newest_ops(
    conn: sqlite3.Connection, keys: set[tuple[str, str]]
) -> dict[tuple[str, str], _Slot]:
    if len(keys) == 1:
        # A single write (`record`): a plain index lookup, no JSON array to build and walk.
        rows = conn.execute(_NEWEST_OF_KEY, next(iter(keys))).fetchall()
    else:
        rows = conn.execute(_NEWEST_PER_KEY, {"keys": json.dumps(sorted(keys))}).fetchall()
    slots = {}
    for collection, key, seq, op_id, kind, hlc, data, priority, handed_out, size in rows:
        op = op_from_row((op_id, collection, key, kind, hlc, data, priority))
        slots[(collection, key)] = _Slot(
            op, seq=seq, index=None, coalescable=not handed_out, size=size
        )
    return slots


def _params(
    op: Op, *, seq: Optional[int] = None, now: Optional[float] = None
) -> tuple[dict[str, object], int]:
    data, size = encode(op)
    params: dict[str, object] = {
        "op_id": op.op_id,
        "collection": op.collection,
        "key": op.key,
        "kind": op.kind.value,
        "hlc": op.hlc,
        "data": data,
        "priority": int(op.priority),
        "size": size,
    }
    if seq is not None:
        params["seq"] = seq
    if now is not None:
        params["now"] = now
    return params, size
