"""Opening the agent's storage layer on a real SQLite file, for tests and child processes."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

from device_agent.db import open_database
from device_agent.outbox import Outbox
from device_agent.replica import Replica
from device_agent.state import AgentState
from shared.contracts.hlc import wall_clock_ms


@dataclass
class Store:
    conn: sqlite3.Connection
    state: AgentState
    outbox: Outbox
    replica: Replica

    def close(self) -> None:
        self.conn.close()


def open_store(
    path: Union[str, Path],
    *,
    now_ms: Callable[[], int] = wall_clock_ms,
    now: Optional[Callable[[], float]] = None,
    device_id: Optional[str] = None,
    synchronous: str = "FULL",
    **outbox_options: Any,
) -> Store:
    """Open the database with an AgentState, Outbox and Replica on one connection."""
    conn = open_database(path, synchronous=synchronous)
    state = AgentState(conn, now_ms=now_ms)
    if device_id is not None and state.settings().device_id != device_id:
        state.update_settings(device_id=device_id)
    if now is not None:
        outbox_options["now"] = now
    return Store(conn, state, Outbox(conn, state, **outbox_options), Replica(conn))


def placed(outbox: Outbox) -> Outbox:
    """`outbox` with its intake placed (recorded writes coalesced where they will be sent),
    for tests that look at what is stored rather than at the local view."""
    outbox.place_intake()
    return outbox
