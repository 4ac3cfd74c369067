"""Placing recorded writes: from the intake into the outbox, in the order they were recorded.

`Outbox.record` appends each write to the intake (schema.MIGRATIONS, version 7): one row, one
page per durable commit. Every write transaction of the outbox begins by placing what waits
there, coalesced exactly as `record_many` would store it. Placing needs no fsync: the rows are
durable already, and a placement lost to a power cut leaves them in the intake.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Callable

from device_agent.outbox_model import op_from_row
from device_agent.outbox_sql import (
    INTAKE_BRIEF,
    INTAKE_MEETS_PENDING,
    INTAKE_ROWS,
    PLACE_ALL_FROM_INTAKE,
    PLACE_FROM_INTAKE,
)
from device_agent.outbox_totals import add_growth, read_totals
from device_agent.outbox_write import Growth, store_ops

# Recorded writes wait in the intake until the outbox's next write transaction places them,
# or until this many wait: readers of a key's ops scan it.
INTAKE_PLACED_AT = 100


def place_intake(conn: sqlite3.Connection, now: Callable[[], float]) -> None:
    """Place the intake's writes in the outbox, inside the open write transaction (`now`: the
    clock, read only if writes are coalesced, for the time `store_ops` takes)."""
    # Read, not taken from the connection's copy of the counts: a savepoint rolled back by
    # the caller's hand would leave that copy wrong.
    brief = conn.execute(INTAKE_BRIEF).fetchall()
    totals = read_totals(conn)
    totals.intake_ops = totals.intake_size = 0
    if not brief:
        return
    if (
        len({(row[1], row[2]) for row in brief}) == len(brief)
        and not (conn.execute(INTAKE_MEETS_PENDING).fetchone()[0])
    ):
        growth = _copy_intake(conn, brief, dict(totals.next_seqs))
    else:  # writes to coalesce: as record_many would store them
        rows = conn.execute(INTAKE_ROWS).fetchall()
        _, growth = store_ops(
            conn,
            [op_from_row(row[:7]) for row in rows],
            now(),
            dict(totals.next_seqs),
            [(row[5], row[7]) for row in rows],
            recorded_at=[row[8] for row in rows],
        )
    conn.execute("DELETE FROM outbox_intake")
    add_growth(conn, growth, max(row[5] for row in brief))


def _copy_intake(conn: sqlite3.Connection, brief: list[Any], next_seqs: dict[int, int]) -> Growth:
    """Place intake rows on keys with no pending op, none twice (nothing to coalesce):
    copied row by row in SQL at the next seqs of their priorities, never decoded."""
    growth = Growth()
    for _, _, _, priority, size, _ in brief:
        growth.add(priority, 1, size, 1)
    first = brief[0][0]
    if len(growth) == 1 and brief[-1][0] - first == len(brief) - 1:
        # One priority, rows numbered without gaps (the usual case): one statement.
        [priority] = growth
        shift = next_seqs[priority] - first
        conn.execute(PLACE_ALL_FROM_INTAKE, {"shift": shift})
        return growth
    moves = []
    for n, _, _, priority, _, _ in brief:
        moves.append({"seq": next_seqs[priority], "n": n})
        next_seqs[priority] += 1
    conn.executemany(PLACE_FROM_INTAKE, moves)  # (a trigger adds the key rows)
    return growth
