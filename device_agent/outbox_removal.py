"""Removing ops from the outbox (acks, quarantine) and finding ops by id, inside an open write
transaction; the totals follow, and stale key rows are swept in bounded steps."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from device_agent.errors import NotFound
from device_agent.outbox_sql import (
    FORGET_ALL_KEYS,
    FORGET_ALL_REPLACED,
    FORGET_STALE_KEYS,
    FORGET_STALE_REPLACED,
    NO_STALE_KEYS,
    REMOVE,
    REMOVE_HANDED_OUT,
    REMOVE_RETURNING,
    REMOVE_SCANNED,
    SEQS_HANDED_OUT,
    SEQS_SCANNED,
    TO_REMOVE,
)
from device_agent.outbox_totals import add_growth, forget_totals, read_totals
from device_agent.outbox_write import Growth

# DELETE ... RETURNING (SQLite 3.35) removes ops and reports their totals in one statement.
HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)
# Stale outbox_keys rows are swept once there are more than this many (and more than live
# ops): see remove_seqs.
SWEEP_STALE_KEYS_ABOVE = 1_000


def remove_ids(conn: sqlite3.Connection, op_ids: list[str]) -> int:
    """`remove_seqs` by op id (at most outbox_sql.CHUNK ids): ops handed out (all the sync
    engine acks) in one statement through delivery's op_id index, any others by a scan."""
    if not HAS_RETURNING:
        return remove_seqs(conn, list(seqs_of(conn, op_ids).values()))
    rows = _by_ids(conn, REMOVE_HANDED_OUT, REMOVE_SCANNED, op_ids)
    return _count_removed(conn, [(priority, size) for _, priority, size in rows])


def seqs_of(conn: sqlite3.Connection, op_ids: list[str]) -> dict[str, int]:
    """The seqs of the named ops still in the outbox, by op id (at most CHUNK ids)."""
    return dict(_by_ids(conn, SEQS_HANDED_OUT, SEQS_SCANNED, op_ids))


def seq_of(conn: sqlite3.Connection, op_id: str, missing: str) -> int:
    """The seq of one op in the outbox; NotFound with `missing` as the message if none."""
    seq = seqs_of(conn, [op_id]).get(op_id)
    if seq is None:
        raise NotFound(missing)
    return seq


def _by_ids(
    conn: sqlite3.Connection, handed_out: str, scanned: str, op_ids: list[str]
) -> list[Any]:
    """Rows (op id first) of a statement on the named ops: `handed_out` finds them through
    delivery's op_id index, `scanned` the ids it missed by scanning the outbox, which has no
    op_id index (never-claimed ops: only direct callers name those)."""
    rows: list[Any] = conn.execute(handed_out, {"ids": json.dumps(op_ids)}).fetchall()
    if len(rows) < len(op_ids):
        found = {row[0] for row in rows}
        rest = json.dumps([op_id for op_id in op_ids if op_id not in found])
        rows += conn.execute(scanned, {"ids": rest}).fetchall()
    return rows


def remove_seqs(conn: sqlite3.Connection, seqs: list[int]) -> int:
    """Delete the ops at these seqs (their delivery rows go with them); update the totals.

    Their outbox_keys rows are left stale rather than deleted: the acked ops' keys are spread
    over the whole table, so deleting them would touch a page per op on a large backlog, and
    a stale row costs nothing but space (readers skip it). They all go when the outbox
    empties, and in one sweep once the removals counted since the last sweep (`stale_keys`,
    an upper bound: a write on a key also deletes its stale rows) outnumber the live ops and
    SWEEP_STALE_KEYS_ABOVE. That keeps the table within about twice the backlog and costs
    each removal a bounded share of a sweep.
    """
    if not seqs:
        return 0
    params = {"seqs": json.dumps(seqs)}
    if HAS_RETURNING:
        rows = conn.execute(REMOVE_RETURNING, params).fetchall()
    else:
        rows = conn.execute(TO_REMOVE, params).fetchall()
        conn.execute(REMOVE, params)
    return _count_removed(conn, rows)


def _count_removed(conn: sqlite3.Connection, rows: list[tuple[int, int]]) -> int:
    """Take removed ops, as (priority, size), out of the totals; sweep stale key rows."""
    if not rows:
        return 0
    totals = read_totals(conn)
    growth = Growth()
    for priority, size in rows:
        growth.add(priority, -1, -size, 0, 1)
    left = totals.ops - len(rows)
    stale = totals.stale + len(rows)
    add_growth(conn, growth)  # (may update `totals` in place: it can be the connection's copy)
    if left == 0 or stale > max(SWEEP_STALE_KEYS_ABOVE, left):
        # (what acked ops had replaced goes with their keys)
        conn.execute(FORGET_ALL_KEYS if left == 0 else FORGET_STALE_KEYS)
        conn.execute(FORGET_ALL_REPLACED if left == 0 else FORGET_STALE_REPLACED)
        conn.execute(NO_STALE_KEYS)
        forget_totals(conn)
    return len(rows)
