"""Storing newly recorded ops: coalescing into the newest op of a key, then batch writes.

Coalescing keeps the outbox small when a key is written repeatedly offline (a document saved
again and again, a counter updated every second) without changing what the server ends up
with, whatever other devices write meanwhile (`coalesce` says which pairs qualify). A new op
takes the place of the newest op on its key only while that op has never been handed to a
sender (it has no `delivery` row): then no op of this device stamped between the two can
exist anywhere, in the outbox or on the server, which is what makes the replacement safe.
Older ops on the key that were never handed out and that the new op makes dead are dropped
(unless more urgent): whatever lies between, their effect is erased by the new op's. What a
new op replaced or dropped is kept under its seq (outbox_replaced) until the cloud answers
for it, and comes back if the cloud rejects it (Outbox.quarantine).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any, Optional

from device_agent.outbox_model import op_from_row
from device_agent.outbox_sql import FORGET_KEY, FORGET_REPLACED_BY, KEEP_REPLACED
from shared.contracts import ContractError, Op, OpKind
from shared.contracts.model import compact_json
from shared.contracts.validation import Problem

# The keys, quotes and punctuation of an op's wire form, plus its HLC: sizes are approximate.
WIRE_OVERHEAD = 160

# Every op on the given keys, through outbox_keys. A stale row (its op is gone) comes back
# with a NULL op_id.
_ON_KEYS = """
    SELECT k.collection, k.key, k.seq, o.op_id, o.kind, o.hlc, o.data, o.priority,
           EXISTS (SELECT 1 FROM delivery AS d WHERE d.seq = o.seq), o.size, o.enqueued_at
      FROM outbox_keys AS k
      LEFT JOIN outbox AS o ON o.seq = k.seq AND o.collection = k.collection AND o.key = k.key
     WHERE k.collection = {collection} AND k.key {key}
"""
# Many keys of one collection (a batch usually writes to one or a few): a JSON array of keys.
_ON_KEYS_OF = _ON_KEYS.format(
    collection=":collection", key="IN (SELECT value FROM json_each(:keys))"
)
# A single write (`record`): a plain primary-key lookup, no JSON array to walk.
_ON_ONE_KEY = _ON_KEYS.format(collection=":collection", key="= :key")
INSERT = (
    "INSERT INTO outbox (seq, op_id, collection, key, kind, hlc, data, priority, size, "
    "enqueued_at) VALUES (:seq, :op_id, :collection, :key, :kind, :hlc, :data, :priority, "
    ":size, :enqueued_at)"
)
_UPDATE = (
    "UPDATE outbox SET op_id = :op_id, kind = :kind, hlc = :hlc, data = :data, "
    "priority = :priority, size = :size WHERE seq = :seq"
)


def coalesce(older: Op, newer: Op) -> Optional[Op]:
    """The one op with exactly the effect of `older` followed by `newer` on the same key, or
    None when there is none (both are then kept).

    - a put or delete replaces whatever came before: its reset erases everything the older op
      wrote, whatever other devices wrote in between;
    - a patch replaces an older patch that names no field the newer one does not: each field
      of the older one is written again, at the newer HLC;
    - any other pair is kept as it is. A patch merged into an older put, or two patches on
      different fields merged into one, would carry the newer HLC for what the older op
      wrote: a put at that HLC would erase fields another device wrote between the two, and
      an older value would beat that device's newer one.
    The result is `newer` with the more urgent priority of the two. Whatever reaches the
    server, in any order and with any other device's writes, ends as if both were sent.
    """
    if newer.kind is OpKind.PATCH and not (
        older.kind is OpKind.PATCH and (older.data or {}).keys() <= (newer.data or {}).keys()
    ):
        return None
    priority = min(older.priority, newer.priority)
    if priority == newer.priority:
        return newer
    return Op(newer.op_id, newer.collection, newer.key, newer.kind, newer.hlc, newer.data, priority)


def encode(op: Op) -> tuple[Optional[str], int]:
    """The stored data JSON and the op's approximate wire size in bytes."""
    if op.data is None:
        return None, stored_size(len(op.op_id), op.collection, op.key, 0)
    try:
        text = compact_json(op.data)
    except ValueError as exc:  # NaN or an infinity: strict JSON parsers would refuse it
        raise ContractError(
            [Problem("op.data", f"is not JSON ({exc}); NaN and Infinity are not valid JSON")]
        ) from exc
    return text, stored_size(len(op.op_id), op.collection, op.key, len(text.encode("utf-8")))


class _Slot:
    """The newest op on one key while a batch is being stored."""

    __slots__ = ("coalescable", "index", "op", "priority", "seq", "since", "size")

    def __init__(
        self,
        op: Op,
        coalescable: bool,
        seq: Optional[int],
        size: int,
        index: Optional[int],
        *,
        since: Optional[float] = None,
    ):
        self.op = op
        self.coalescable = coalescable
        # An existing row: its seq, its share of the totals (taken back if it is rewritten)
        # and when it was enqueued (kept if it moves).
        self.seq = seq
        self.priority = int(op.priority)
        self.size = size
        self.since = since
        self.index = index  # a new op: its place among this batch's inserts


def stored_size(op_id_chars: int, collection: str, key: str, data_bytes: int) -> int:
    """The approximate wire size kept per row (the bounds and totals count in it)."""
    return WIRE_OVERHEAD + op_id_chars + len(collection) + 2 * len(key) + data_bytes


class Growth(dict[int, list[int]]):
    """How outbox_totals changes per priority: {priority: [ops, bytes, seqs used, stale keys]}."""

    def add(self, priority: int, ops: int, size: int, seqs: int = 0, stale: int = 0) -> None:
        entry = self.get(priority)
        if entry is None:
            self[priority] = [ops, size, seqs, stale]
        else:
            entry[0] += ops
            entry[1] += size
            entry[2] += seqs
            entry[3] += stale

    def ops(self) -> int:
        return sum(entry[0] for entry in self.values())

    def size(self) -> int:
        return sum(entry[1] for entry in self.values())


def store_ops(
    conn: sqlite3.Connection,
    ops: Sequence[Op],
    now: float,
    next_seqs: dict[int, int],
    encoded: Optional[Sequence[tuple[Optional[str], int]]] = None,
    *,
    recorded_at: Optional[Sequence[float]] = None,
) -> tuple[list[Op], Growth]:
    """Store stamped ops in the open transaction.

    Returns each op as it stands afterwards, and how the outbox grew per priority. Ops are
    taken in order, each coalesced with the ops on its key when allowed, so a batch gives
    exactly what recording its ops one by one would. `next_seqs` is the next free seq of
    each priority (from outbox_totals). `encoded` is each op's `encode(op)` when the caller
    already has it (the data is then encoded once). `recorded_at`
    is when each op was recorded (the intake's ops), else `now`.
    """
    plan = _Placement(*_newest_ops(conn, {(op.collection, op.key) for op in ops}))
    for position, op in enumerate(ops):
        plan.add(
            op,
            None if encoded is None else encoded[position],
            None if recorded_at is None else recorded_at[position],
        )
    growth = Growth()
    _rewrite(conn, plan.updated, plan.moved, growth)
    seqs: dict[str, int] = {}
    if plan.inserts:
        seqs = _insert(
            conn,
            plan.inserts,
            plan.enqueued,
            next_seqs,
            now=now,
            growth=growth,
            seqs_of=set(plan.replaced),
        )
    if plan.replaced:
        seqs.update((slot.op.op_id, seq) for seq, slot in plan.updated.items())
        _keep_replaced(conn, plan.replaced, seqs, now)
    return plan.stored, growth


class _Placement:
    """Where the ops of a batch go, taken in order: new rows, rows rewritten in place, rows
    deleted (store_ops)."""

    def __init__(
        self, slots: dict[tuple[str, str], _Slot], behind: dict[tuple[str, str], list[_Slot]]
    ) -> None:
        self.slots = slots  # the newest op on each key (_newest_ops)
        self.behind = behind  # older ops on a key never handed out, which a new op may kill
        self.inserts: list[Optional[tuple[Op, Optional[tuple[Optional[str], int]]]]] = []
        # New ops of this batch that are the newest on their key, by place in inserts: they
        # get a _Slot only if a later op of the batch is on the same key (rare; costs more).
        self.fresh: dict[tuple[str, str], int] = {}
        self.updated: dict[int, _Slot] = {}  # existing rows rewritten in place, by seq
        self.moved: list[_Slot] = []  # existing rows deleted (their op moved, or died)
        self.enqueued: dict[int, float] = {}  # enqueue times of moved ops, by insert place
        self.stored: list[Op] = []
        # The ops each op of the batch replaced or made dead, by its op id, with when they
        # were enqueued (None: now): kept in case the cloud rejects it (schema.MIGRATIONS, 6).
        self.replaced: dict[str, list[tuple[Op, Optional[float]]]] = {}

    def add(
        self, op: Op, known: Optional[tuple[Optional[str], int]], since: Optional[float] = None
    ) -> None:
        """Place `op` (`known`: its `encode(op)`, if the caller has it; `since`: when it was
        recorded, if not now)."""
        where = (op.collection, op.key)
        slot = self.slots.get(where)
        if slot is None and where in self.fresh:
            index = self.fresh.pop(where)
            newest = self.inserts[index]
            assert newest is not None  # (fresh only names places that hold an op)
            slot = self.slots[where] = _Slot(newest[0], True, None, 0, index)
        if self.behind and where in self.behind:
            self._bury(where, op)
        replacement = None
        if slot is not None and slot.coalescable and slot.op.hlc < op.hlc:
            replacement = coalesce(slot.op, op)
        if slot is None or replacement is None:  # the common case: nothing to replace
            if slot is not None and slot.coalescable:
                self.behind.setdefault(where, []).append(slot)
            self.slots.pop(where, None)
            self.fresh[where] = len(self.inserts)
            if since is not None:
                self.enqueued[len(self.inserts)] = since
            self.inserts.append((op, known))
            self.stored.append(op)
        else:
            self._replace(slot, replacement)

    def _bury(self, where: tuple[str, str], op: Op) -> None:
        """Drop the older ops on the key that `op` makes dead (`coalesce`), unless more
        urgent than it: sent anyway, they are harmless."""
        for older in self.behind.pop(where):
            if older.op.priority >= op.priority and coalesce(older.op, op) is not None:
                self._keep(op, older)
                self._drop(older)
            else:
                self.behind.setdefault(where, []).append(older)

    def _keep(self, newer: Op, older: _Slot) -> None:
        """Keep `older`'s op as replaced by `newer`, in place of what it had replaced itself:
        should the cloud reject `newer`, `older` comes back (one level)."""
        self.replaced.pop(older.op.op_id, None)
        if older.seq is not None:
            since = older.since
        else:
            since = None if older.index is None else self.enqueued.get(older.index)
        self.replaced.setdefault(newer.op_id, []).append((older.op, since))

    def _drop(self, slot: _Slot) -> None:
        if slot.index is not None:  # in this batch's inserts (a moved row is deleted anyway)
            self.inserts[slot.index] = None
            self.enqueued.pop(slot.index, None)
        else:
            assert slot.seq is not None
            self.updated.pop(slot.seq, None)
            self.moved.append(slot)  # deleted, with nothing in its place

    def _replace(self, slot: _Slot, replacement: Op) -> None:
        """Put `replacement` where the newest op on its key, `slot`, stands."""
        raised = replacement.priority != slot.op.priority
        self._keep(replacement, slot)
        slot.op = replacement
        self.stored.append(replacement)
        if slot.index is not None and raised:
            # Replaces an op of this batch and more urgent now: to the end of the new
            # priority's ops, as recording it alone would do (the old place stays empty).
            self.inserts[slot.index] = None
            since = self.enqueued.pop(slot.index, None)
            slot.index = len(self.inserts)
            self.inserts.append((replacement, None))
            if since is not None:
                self.enqueued[slot.index] = since
        elif slot.index is not None:
            self.inserts[slot.index] = (replacement, None)
        elif slot.seq is not None and int(replacement.priority) == slot.priority:
            self.updated[slot.seq] = slot
        elif slot.seq is not None:
            # A more urgent priority: the op leaves its place in the claim order now, for
            # the end of the new priority's, as recording it alone would do.
            self.updated.pop(slot.seq, None)
            self.moved.append(slot)
            slot.index = len(self.inserts)
            self.inserts.append((replacement, None))
            if slot.since is not None:
                self.enqueued[slot.index] = slot.since  # still waiting since the first write


def _insert(
    conn: sqlite3.Connection,
    inserts: list[Optional[tuple[Op, Optional[tuple[Optional[str], int]]]]],
    enqueued: dict[int, float],
    next_seqs: dict[int, int],
    *,
    now: float,
    growth: Growth,
    seqs_of: set[str],
) -> dict[str, int]:
    """Insert new ops at the next seqs of their priorities (each op with its `encode(op)` if
    known; None is a place left empty), enqueued `now` unless `enqueued` says otherwise,
    counting them in `growth`. Returns the seqs of the ops named in `seqs_of`, by op id."""
    seqs = {}
    rows = []
    for place, item in enumerate(inserts):
        if item is None:  # an op that moved further down the batch
            continue
        op, known = item
        data, size = encode(op) if known is None else known
        priority = int(op.priority)
        seq = next_seqs[priority]
        next_seqs[priority] = seq + 1
        entry = growth.get(priority)
        if entry is None:
            growth[priority] = [1, size, 1, 0]
        else:  # growth.add(priority, 1, size, 1), inline: it runs for every op
            entry[0] += 1
            entry[1] += size
            entry[2] += 1
        rows.append(op_row(op, seq, (data, size), enqueued.get(place, now)))
        if seqs_of and op.op_id in seqs_of:
            seqs[op.op_id] = seq
    # A trigger adds each op's outbox_keys row (schema.MIGRATIONS, version 3).
    if len(rows) == 1:  # execute costs less than executemany for one row
        conn.execute(INSERT, rows[0])
    else:
        conn.executemany(INSERT, rows)
    return seqs


def _keep_replaced(
    conn: sqlite3.Connection,
    replaced: dict[str, list[tuple[Op, Optional[float]]]],
    seqs: dict[str, int],
    now: float,
) -> None:
    """Store what each op replaced under its seq, in place of what was stored there."""
    rows = []
    for op_id, kept in replaced.items():
        seq = seqs[op_id]
        for op, since in kept:
            params, _ = _params(op, seq)
            params.update(by_seq=params.pop("seq"), collection=op.collection, key=op.key)
            params["enqueued_at"] = now if since is None else since
            rows.append(params)
    conn.executemany(FORGET_REPLACED_BY, [{"seq": seqs[op_id]} for op_id in replaced])
    conn.executemany(KEEP_REPLACED, rows)


def _rewrite(
    conn: sqlite3.Connection, updated: dict[int, _Slot], moved: list[_Slot], growth: Growth
) -> None:
    """Write ops coalesced into existing rows in place, and delete the rows of moved ones
    (their replacement ops are among the inserts)."""
    for slot in (*updated.values(), *moved):
        growth.add(slot.priority, -1, -slot.size)
    if updated:
        rows = []
        for seq, slot in updated.items():
            params, size = _params(slot.op, seq)
            growth.add(slot.priority, 1, size)
            rows.append(params)
        conn.executemany(_UPDATE, rows)
    if moved:
        gone = [{"collection": s.op.collection, "key": s.op.key, "seq": s.seq} for s in moved]
        conn.executemany("DELETE FROM outbox WHERE seq = :seq", gone)
        conn.executemany(FORGET_KEY, gone)
        # What they had replaced goes with them (one level: they are kept themselves).
        conn.executemany(FORGET_REPLACED_BY, gone)


def rows_on_key(conn: sqlite3.Connection, collection: str, key: str) -> list[Any]:
    """The outbox_keys rows of one key with their ops (`_ON_KEYS`); [] for a key with none."""
    return conn.execute(_ON_ONE_KEY, {"collection": collection, "key": key}).fetchall()


def op_row(
    op: Op, seq: Optional[int], stored: tuple[Optional[str], int], enqueued_at: float
) -> dict[str, object]:
    """The parameters of `INSERT` for `op` at `seq` (`stored`: `encode(op)`), and of the
    intake's insert (no seq)."""
    return {
        "seq": seq,
        "op_id": op.op_id,
        "collection": op.collection,
        "key": op.key,
        "kind": op.kind.value,
        "hlc": op.hlc,
        "data": stored[0],
        "priority": int(op.priority),
        "size": stored[1],
        "enqueued_at": enqueued_at,
    }


def _newest_ops(
    conn: sqlite3.Connection,
    keys: set[tuple[str, str]],
) -> tuple[dict[tuple[str, str], _Slot], dict[tuple[str, str], list[_Slot]]]:
    """The newest live op on each key, and the older ones never handed out (which a new op
    may make dead); deletes the keys' stale outbox_keys rows."""
    if len(keys) == 1:
        rows = rows_on_key(conn, *next(iter(keys)))
    else:
        by_collection: dict[str, list[str]] = {}
        for collection, key in keys:
            by_collection.setdefault(collection, []).append(key)
        rows = []
        for collection, names in by_collection.items():
            params = {"collection": collection, "keys": json.dumps(names)}
            rows += conn.execute(_ON_KEYS_OF, params).fetchall()
    slots: dict[tuple[str, str], _Slot] = {}
    behind: dict[tuple[str, str], list[_Slot]] = {}
    stale = []
    for collection, key, seq, op_id, kind, hlc, data, priority, handed_out, size, since in rows:
        if op_id is None:
            stale.append({"collection": collection, "key": key, "seq": seq})
            continue
        op = op_from_row((op_id, collection, key, kind, hlc, data, priority))
        slot = _Slot(op, not handed_out, seq, size, None, since=since)
        newest = slots.get((collection, key))
        older: Optional[_Slot] = slot
        if newest is None or newest.op.hlc < hlc:
            slots[(collection, key)], older = slot, newest
        if older is not None and older.coalescable:
            behind.setdefault((collection, key), []).append(older)
    if stale:
        conn.executemany(FORGET_KEY, stale)
    return slots, behind


def _params(op: Op, seq: int) -> tuple[dict[str, object], int]:
    data, size = encode(op)
    params: dict[str, object] = {
        "seq": seq,
        "op_id": op.op_id,
        "kind": op.kind.value,
        "hlc": op.hlc,
        "data": data,
        "priority": int(op.priority),
        "size": size,
    }
    return params, size
