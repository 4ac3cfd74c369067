"""The quarantine: ops the cloud rejected permanently, kept with the reason for an operator
(`sync-agent quarantine list | retry | drop`), inside an open write transaction."""

from __future__ import annotations

import sqlite3
from typing import Any, Callable

from device_agent.errors import NotFound
from device_agent.outbox_model import QuarantinedOp, op_from_row
from device_agent.outbox_removal import remove_seqs
from device_agent.outbox_sql import (
    FORGET_REPLACED_BY,
    INSERT_QUARANTINED,
    MARK_HANDED_OUT,
    QUARANTINED,
    REPLACED_BY,
    REPLACED_COLUMNS,
    RETURN_QUARANTINED,
)
from device_agent.outbox_totals import Totals, add_growth, read_totals
from device_agent.outbox_write import INSERT, Growth

_NOT_QUARANTINED = "op {op_id} is not quarantined; see `sync-agent quarantine list`"


def quarantine_seq(
    conn: sqlite3.Connection, seq: int, reason: str, message: str, now: float
) -> None:
    """Move the op at `seq` to the quarantine with the reason, and put back the ops it had
    replaced (a refused write never takes older accepted writes with it)."""
    conn.execute(INSERT_QUARANTINED, {"seq": seq, "code": reason, "message": message, "now": now})
    replaced = conn.execute(REPLACED_BY, {"seq": seq}).fetchall()
    remove_seqs(conn, [seq])
    if replaced:
        _restore(conn, replaced)
        conn.execute(FORGET_REPLACED_BY, {"seq": seq})


def _restore(conn: sqlite3.Connection, rows: list[Any]) -> None:
    """Put back the ops a quarantined op had replaced (`REPLACED_BY` rows), at the end of
    their priorities, as if handed out once: newer writes on their keys may have been sent,
    so none may be coalesced into. Not checked against the bounds: the user wrote them, and
    the cloud has answered for none of them."""
    next_seqs = dict(read_totals(conn).next_seqs)
    growth = Growth()
    restored = []
    for row in rows:
        kept = dict(zip(REPLACED_COLUMNS, row))
        priority = kept["priority"]
        kept["seq"] = next_seqs[priority]
        next_seqs[priority] += 1
        growth.add(priority, 1, kept["size"], 1)
        restored.append(kept)
    conn.executemany(INSERT, restored)
    conn.executemany(MARK_HANDED_OUT, restored)
    add_growth(conn, growth)


def list_quarantined(conn: sqlite3.Connection) -> list[QuarantinedOp]:
    """Every quarantined op, oldest quarantine first."""
    return [
        QuarantinedOp(
            op=op_from_row(row[:7]),
            code=row[7],
            message=row[8],
            attempts=row[9],
            enqueued_at=row[10],
            quarantined_at=row[11],
        )
        for row in conn.execute(QUARANTINED).fetchall()
    ]


def return_quarantined(
    conn: sqlite3.Connection,
    op_id: str,
    now: float,
    check_bounds: Callable[[Totals, Growth], None],
) -> int:
    """Put a quarantined op back in the outbox as the newest op of its priority (after
    `check_bounds` passes); returns its seq. It keeps its op id and HLC (a retry must stay
    idempotent) and counts as handed out: newer writes on its key may have been sent
    already, so it is never coalesced into."""
    row = conn.execute(
        "SELECT priority, size FROM quarantine WHERE op_id = :op_id", {"op_id": op_id}
    ).fetchone()
    if row is None:
        raise NotFound(_NOT_QUARANTINED.format(op_id=op_id))
    priority, size = row
    totals = read_totals(conn)
    growth = Growth()
    growth.add(priority, 1, size, 1)
    check_bounds(totals, growth)
    seq: int = totals.next_seqs[priority]
    conn.execute(RETURN_QUARANTINED, {"seq": seq, "op_id": op_id, "now": now})
    conn.execute(MARK_HANDED_OUT, {"seq": seq, "op_id": op_id})
    conn.execute("DELETE FROM quarantine WHERE op_id = :op_id", {"op_id": op_id})
    add_growth(conn, growth)
    return seq


def drop_quarantined(conn: sqlite3.Connection, op_id: str) -> None:
    """Delete a quarantined op for good (an operator's decision)."""
    cursor = conn.execute("DELETE FROM quarantine WHERE op_id = :op_id", {"op_id": op_id})
    if cursor.rowcount != 1:
        raise NotFound(_NOT_QUARANTINED.format(op_id=op_id))
