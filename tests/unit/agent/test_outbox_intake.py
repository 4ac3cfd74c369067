"""A recorded write is appended to the intake (schema.MIGRATIONS, version 7), one row per write,
and placed in the outbox, coalesced, by the outbox's next write transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest

from device_agent import Agent
from device_agent.db import open_database, transaction
from device_agent.errors import OutboxFull
from device_agent.outbox_intake import INTAKE_PLACED_AT
from device_agent.schema import MIGRATIONS
from shared.contracts import OpKind, Priority, parse_hlc
from shared.contracts.hlc import format_hlc
from tests.support.agent_store import Store, open_store

pytestmark = pytest.mark.agent

T0_MS = 1_764_000_000_000


@contextmanager
def statements(conn: sqlite3.Connection) -> Iterator[list[str]]:
    """The statements `conn` runs meanwhile, without those run by triggers ("-- ...")."""
    seen: list[str] = []
    conn.set_trace_callback(lambda sql: None if sql.startswith("--") else seen.append(sql))
    try:
        yield seen
    finally:
        conn.set_trace_callback(None)


def put(store: Store, key: str, priority: Priority = Priority.NORMAL) -> str:
    return store.outbox.record("items", key, OpKind.PUT, {"k": key}, priority).op_id


def waiting(conn: sqlite3.Connection) -> list[str]:
    return [row[0] for row in conn.execute("SELECT key FROM outbox_intake ORDER BY n")]


def placed_keys(conn: sqlite3.Connection) -> list[str]:
    return [row[0] for row in conn.execute("SELECT key FROM outbox ORDER BY seq")]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return open_store(tmp_path / "agent.db", device_id="dev")


def test_a_write_is_one_row_in_the_intake_committed_with_an_fsync(store: Store) -> None:
    put(store, "first")  # reads the totals and the clock, which the connection then keeps
    put(store, "kept")
    store.outbox.ack([p.op.op_id for p in store.outbox.claim(limit=1)])  # relaxed: no fsync

    with statements(store.conn) as seen:
        op_id = put(store, "second")

    writes = [sql for sql in seen if not sql.startswith(("BEGIN", "COMMIT", "PRAGMA data"))]
    assert [sql.split(" (")[0] for sql in writes] == [
        "PRAGMA synchronous = 2",  # back to FULL after the relaxed ack
        "INSERT INTO outbox_intake",
    ]
    assert waiting(store.conn) == ["second"] and placed_keys(store.conn) == ["kept"]
    assert store.outbox.get(op_id).op.key == "second"
    assert store.outbox.get(op_id).seq is None  # not in the claim order yet
    assert store.outbox.depth() == 2 == store.outbox.stats().depth["normal"]


def test_the_local_view_sees_writes_in_the_intake(tmp_path: Path) -> None:
    with Agent.init(
        tmp_path / "agent.db", endpoint="https://sync.example", token="t", device_id="dev"
    ) as agent:
        agent.put("prefs", "u1", {"theme": "dark", "lang": "en"})
        agent.patch("prefs", "u1", {"theme": "light"})
        agent.delete("prefs", "u2")

        assert waiting(agent.conn) == ["u1", "u1", "u2"]
        assert agent.get("prefs", "u1") == {"theme": "light", "lang": "en"}
        assert agent.get("prefs", "u2") is None
        assert agent.status()["pending"] == 3


def test_a_claim_places_the_intake_in_recording_order_and_keeps_when_each_was_recorded(
    tmp_path: Path,
) -> None:
    clock = [1_000.0]
    store = open_store(tmp_path / "agent.db", device_id="dev", now=lambda: clock[0])
    for key in ("a", "b", "c"):
        put(store, key)
        clock[0] += 10
    store.outbox.record_many([("items", "d", OpKind.PUT, {"k": "d"})])  # places the intake first
    put(store, "e")

    claimed = store.outbox.claim(limit=10)

    assert [p.op.key for p in claimed] == ["a", "b", "c", "d", "e"]
    assert [p.enqueued_at for p in claimed] == [1_000.0, 1_010.0, 1_020.0, 1_030.0, 1_030.0]
    assert waiting(store.conn) == []
    hlcs = [p.op.hlc for p in claimed]
    assert hlcs == sorted(hlcs)


def test_writes_on_one_key_are_coalesced_when_placed(store: Store) -> None:
    put(store, "k", Priority.LOW)
    put(store, "k", Priority.CRITICAL)
    last = store.outbox.record("items", "k", OpKind.PATCH, {"k": "again"}, Priority.LOW)
    assert store.outbox.depth() == 3  # counted as written until placed

    claimed = store.outbox.claim(limit=10)

    # The put replaced the put before it and took the more urgent priority; the patch after
    # it stays apart (a patch never merges into a put).
    assert [(p.op.kind, p.op.priority) for p in claimed] == [
        (OpKind.PUT, Priority.CRITICAL),
        (OpKind.PATCH, Priority.LOW),
    ]
    assert claimed[1].op == last
    assert store.outbox.depth() == 2


def test_the_intake_is_placed_once_it_holds_its_limit(store: Store) -> None:
    for index in range(INTAKE_PLACED_AT + 5):
        put(store, f"k{index}")

    assert len(waiting(store.conn)) < INTAKE_PLACED_AT
    assert len(placed_keys(store.conn)) + len(waiting(store.conn)) == INTAKE_PLACED_AT + 5
    assert store.outbox.depth() == INTAKE_PLACED_AT + 5


def test_the_bounds_count_the_intake_and_a_write_that_coalesces_still_fits(
    tmp_path: Path,
) -> None:
    store = open_store(tmp_path / "agent.db", device_id="dev", max_ops=3)
    for key in ("a", "b", "c"):
        put(store, key)
    assert waiting(store.conn) == ["a", "b", "c"]

    with pytest.raises(OutboxFull):
        put(store, "d")
    put(store, "c")  # replaces the pending put on "c": the outbox does not grow

    assert store.outbox.depth() == 3
    assert waiting(store.conn) == [] and sorted(placed_keys(store.conn)) == ["a", "b", "c"]


def test_another_process_places_and_claims_what_this_one_recorded(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    writer = open_store(path, device_id="dev", max_ops=4)
    sender = open_store(path, max_ops=4)
    put(writer, "a")
    put(writer, "b")

    assert [p.op.key for p in sender.outbox.claim(limit=10)] == ["a", "b"]
    put(writer, "c")  # its copy of the counts is stale: read again, with the intake placed
    put(writer, "d")
    with pytest.raises(OutboxFull):
        put(writer, "e")
    assert writer.outbox.depth() == 4 == sender.outbox.depth()


def test_a_stamp_is_above_every_stamp_waiting_in_the_intake_after_a_reopen(
    tmp_path: Path,
) -> None:
    path = tmp_path / "agent.db"
    ahead = open_store(path, device_id="dev", now_ms=lambda: T0_MS + 60_000)
    last = ahead.outbox.record("items", "a", OpKind.PUT, {}).hlc
    ahead.close()

    later = open_store(path, now_ms=lambda: T0_MS)  # a wall clock a minute behind

    assert waiting(later.conn) == ["a"]
    assert later.state.last_hlc() == last
    assert later.outbox.record("items", "b", OpKind.PUT, {}).hlc > last


def test_a_write_inside_an_outer_transaction_is_undone_with_it(store: Store) -> None:
    put(store, "a")

    with pytest.raises(RuntimeError), transaction(store.conn):
        put(store, "b")
        raise RuntimeError("the application changes its mind")

    assert waiting(store.conn) == ["a"] and store.outbox.depth() == 1
    put(store, "c")
    assert waiting(store.conn) == ["a", "c"] and store.outbox.depth() == 2


def test_the_clock_is_set_back_only_with_the_intake_placed(store: Store) -> None:
    put(store, "a")
    server_time = format_hlc(T0_MS, 0, "server")

    with pytest.raises(RuntimeError, match="place_intake"):
        store.state.restamp_clock(server_time)
    with transaction(store.conn):
        store.outbox.place_intake()
        store.state.restamp_clock(server_time)

    assert parse_hlc(store.state.last_hlc()).physical_ms == T0_MS


def test_a_new_device_id_names_the_next_stamps_although_writes_wait_in_the_intake(
    tmp_path: Path,
) -> None:
    path = tmp_path / "agent.db"
    with Agent.init(path, endpoint="https://sync.example", token="t", device_id="zz-old") as old:
        old.put("items", "a", {})

    with Agent.init(path, endpoint="https://sync.example", token="t", device_id="aa-new") as new:
        op_id = new.put("items", "b", {})
        assert parse_hlc(new.outbox.get(op_id).op.hlc).node == "aa-new"


def test_a_version_6_database_is_migrated_and_its_ops_are_sent_first(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    with mock.patch("device_agent.schema.SCHEMA_VERSION", 6):
        old = open_database(path)
    old.execute("""INSERT INTO kv (name, value) VALUES ('device_id', '"dev"')""")
    version = old.execute("PRAGMA data_version").fetchone()[0]
    for logical, key in enumerate("ab"):  # as version 6 recorded a write on a new key
        old.execute(
            "INSERT INTO outbox_new_key (op_id, collection, key, kind, hlc, data, priority, "
            "size, enqueued_at, data_version) VALUES (?, 'items', ?, 'put', ?, '{}', 2, 200, "
            "0, ?)",
            (f"op-{key}", key, format_hlc(T0_MS, logical, "dev"), version),
        )
    assert old.execute("PRAGMA user_version").fetchone()[0] == 6
    old.close()

    store = open_store(path)
    put(store, "c")

    assert placed_keys(store.conn) == ["a", "b"] and waiting(store.conn) == ["c"]
    assert [p.op.key for p in store.outbox.claim(limit=10)] == ["a", "b", "c"]
    assert store.conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == 7
    names = {row[0] for row in store.conn.execute("SELECT name FROM sqlite_master")}
    assert "outbox_new_key" not in names and "outbox_new_key_insert" not in names


def test_an_op_placed_by_another_connection_while_it_is_looked_up_is_found(
    tmp_path: Path,
) -> None:
    path = tmp_path / "agent.db"
    reader = open_store(path, device_id="dev")
    placer = open_store(path)
    op_id = put(reader, "a")

    def place_when_the_intake_is_read(sql: str) -> None:
        if "FROM outbox_intake WHERE op_id" in sql:  # between the outbox and intake lookups
            placer.outbox.place_intake()

    reader.conn.set_trace_callback(place_when_the_intake_is_read)
    try:
        found = reader.outbox.get(op_id)
    finally:
        reader.conn.set_trace_callback(None)

    assert found.op.key == "a"
    assert waiting(reader.conn) == [] and placed_keys(reader.conn) == ["a"]


def rolled_back_by_hand(store: Store, *keys: str, claim: bool = False) -> None:
    """Record `keys` (and claim them) inside a savepoint the caller then rolls back by hand,
    within a `transaction()`: the connection's copy of the totals cannot see that undo."""
    with transaction(store.conn):
        store.conn.execute("SAVEPOINT by_hand")
        for key in keys:
            put(store, key)
        if claim:
            store.outbox.claim()  # placed: seqs taken
        store.conn.execute("ROLLBACK TO by_hand")
        store.conn.execute("RELEASE by_hand")


def test_an_intake_emptied_behind_the_counts_back_is_placed_without_error(store: Store) -> None:
    # Given a write undone by a savepoint the caller rolled back by hand
    rolled_back_by_hand(store, "a")
    assert waiting(store.conn) == []

    # When the outbox next places its intake, Then nothing fails and the counts are right
    assert store.outbox.claim() == []
    assert store.outbox.depth() == 0


def test_seqs_taken_in_a_savepoint_rolled_back_by_hand_are_never_handed_out_twice(
    tmp_path: Path,
) -> None:
    # Given a connection whose copy of the totals counted seqs that a savepoint rolled back
    # by the caller's hand took back from the table
    path = tmp_path / "agent.db"
    mine = open_store(path, device_id="dev")
    theirs = open_store(path)
    rolled_back_by_hand(mine, "x", "y", "z", claim=True)
    # When this connection, then another, record and place writes
    put(mine, "p")
    mine.outbox.place_intake()
    for key in ("q", "r", "s", "t"):
        put(theirs, key)
    theirs.outbox.place_intake()

    # Then no seq was handed out twice, and every write is claimed once, in order
    claimed = [p.op.key for p in theirs.outbox.claim(limit=10)]
    assert claimed == ["p", "q", "r", "s", "t"]
