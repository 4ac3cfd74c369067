"""Leases left behind: ops claimed by a process that died, or whose lease has run out."""

from __future__ import annotations

import os
import sqlite3
from typing import Optional


def recover_leases(conn: sqlite3.Connection, now: float) -> int:
    """Make ops leased by a dead process, or with an expired lease, pending again, inside an
    open write transaction; returns how many.

    A lease is also void when it was taken "in the future" (the wall clock went back since),
    so a clock jump cannot pin an op for the lease length plus the jump.
    """
    recovered = 0
    owners = [
        row[0]
        for row in conn.execute(
            "SELECT DISTINCT lease_owner FROM delivery WHERE lease_until IS NOT NULL"
        )
    ]
    for owner in owners:
        cursor = conn.execute(
            "UPDATE delivery SET leased_at = NULL, lease_until = NULL, lease_owner = NULL "
            "WHERE lease_until IS NOT NULL AND lease_owner IS :owner AND "
            "(:dead OR lease_until <= :now OR leased_at > :now)",
            {"owner": owner, "dead": not owner_alive(owner), "now": now},
        )
        recovered += max(cursor.rowcount, 0)
    return recovered


def owner_alive(owner: Optional[str]) -> bool:
    """Whether the process that took a lease still runs (unknown counts as alive)."""
    if owner is None or not owner.startswith("pid:") or os.name != "posix":
        # Elsewhere signal 0 is not a probe (on Windows it would interrupt the process).
        return True
    try:
        pid = int(owner[4:])
    except ValueError:
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
