"""The outbox's counts (outbox_totals): ops, bytes and next free seq per priority.

The bounds are checked against them before every write, so they are read often: a
DeviceConnection keeps a copy between transactions, valid while no other connection has
committed (`PRAGMA data_version`) and updated in place by the connection's own changes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

from device_agent.db import DeviceConnection, caches_usable, data_version, database_path
from device_agent.errors import DamagedDatabase
from device_agent.outbox_sql import GROW, TOTALS
from device_agent.outbox_write import Growth
from device_agent.state_values import DAMAGED_ADVICE


class Totals:
    """outbox_totals summed, with the next free seq of each priority, and the ops waiting in
    the intake (not in `ops` and `size` yet). Mutable: the copy a connection keeps
    (`read_totals`) follows the connection's own changes in place."""

    __slots__ = ("intake_ops", "intake_size", "next_seqs", "ops", "size", "stale")

    def __init__(self, ops: int, size: int, next_seqs: dict[int, int], stale: int) -> None:
        self.ops = ops
        self.size = size
        self.next_seqs = next_seqs
        self.stale = stale  # outbox_keys rows whose op is gone (outbox_removal)
        self.intake_ops = 0
        self.intake_size = 0

    def grow(self, priority: int, entry: list[int]) -> None:
        """Add one priority's Growth entry [ops, bytes, seqs used, stale keys]."""
        self.ops += entry[0]
        self.size += entry[1]
        self.next_seqs[priority] += entry[2]
        self.stale += entry[3]


def read_totals(conn: sqlite3.Connection) -> Totals:
    """outbox_totals summed, and the intake counted: the connection's copy while it is valid,
    else read (and kept, on a DeviceConnection outside a transaction begun by hand)."""
    version = data_version(conn) if caches_usable(conn) else None
    cached = getattr(conn, "totals", None)
    if cached is not None and version is not None and cached[0] == version:
        return cached[1]  # type: ignore[no-any-return]
    ops = size = stale = 0
    next_seqs = {}
    intake = (0, 0)
    for row in conn.execute(TOTALS):
        priority, count, bytes_, next_seq, stale_keys = checked_counts(conn, row)
        if priority < 0:  # the intake
            intake = (count, bytes_)
            continue
        ops += count
        size += bytes_
        stale += stale_keys
        next_seqs[priority] = next_seq
    totals = Totals(ops, size, next_seqs, stale)
    totals.intake_ops, totals.intake_size = intake
    if version is not None:
        conn.totals = (version, totals)  # type: ignore[attr-defined]
    return totals


def add_growth(conn: sqlite3.Connection, growth: Growth, stamp: str = "") -> None:
    """Add per-priority changes to outbox_totals, with the greatest HLC just stamped.

    The next seq stored is never below the one the connection's copy counts to: should that
    copy be ahead of the table (a savepoint rolled back by the caller's hand, which the copy
    cannot see), seqs it handed out are then never handed out again."""
    next_seqs = read_totals(conn).next_seqs  # (before `track_growth` counts this growth in)
    rows = [
        {
            "ops": ops,
            "bytes": size,
            "seqs": seqs,
            "next": next_seqs[priority] + seqs,
            "stale": stale,
            "hlc": stamp,
            "priority": priority,
        }
        for priority, (ops, size, seqs, stale) in growth.items()
    ]
    if len(rows) == 1:
        conn.execute(GROW, rows[0])
    else:
        conn.executemany(GROW, rows)
    track_growth(conn, growth.items())


def track_growth(conn: sqlite3.Connection, changes: Iterable[tuple[int, list[int]]]) -> None:
    """Follow the connection's changes to outbox_totals in the copy it keeps, or drop the copy
    in a transaction begun by hand (a rollback by hand would not reach it)."""
    cached = getattr(conn, "totals", None)
    if cached is None:
        return
    if not caches_usable(conn):
        forget_totals(conn)
        return
    for priority, entry in changes:
        cached[1].grow(priority, entry)


def forget_totals(conn: sqlite3.Connection) -> None:
    """Drop the connection's copy (after a change the copy cannot follow): read it again."""
    if isinstance(conn, DeviceConnection):
        conn.totals = None


def checked_counts(conn: sqlite3.Connection, row: Any) -> Any:
    """A row of counts (outbox_totals), checked: DamagedDatabase, naming the file and what to
    do, if a value is not a whole number (the file edited by hand, a failing disk)."""
    if any(type(value) is not int for value in row):
        location = database_path(conn)
        raise DamagedDatabase(
            f"agent database {location}: its outbox totals are damaged ({tuple(row)!r} holds "
            f"a value that is not a whole number); {DAMAGED_ADVICE}",
            path=location,
        )
    return row
