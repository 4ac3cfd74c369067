"""A write on a key with no pending op: one autocommit statement, checked by the database
(outbox_new_key, db.MIGRATIONS version 5), or the general path when that check refuses."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest

from device_agent.db import MIGRATIONS, _schema_trusted, transaction
from device_agent.errors import OutboxFull
from device_agent.outbox import RECENT_KEYS_KEPT, Outbox
from shared.contracts import OpKind, parse_hlc
from shared.contracts.hlc import format_hlc
from tests.support.agent_store import Store, open_store

pytestmark = pytest.mark.agent


@contextmanager
def statements(conn: sqlite3.Connection) -> Iterator[list[str]]:
    """The statements `conn` runs meanwhile, without those run by triggers ("-- ...")."""
    seen: list[str] = []
    conn.set_trace_callback(lambda sql: None if sql.startswith("--") else seen.append(sql))
    try:
        yield seen
    finally:
        conn.set_trace_callback(None)


def lone(seen: list[str]) -> bool:
    """Whether the write ran as the one statement into outbox_new_key (a trace repeats it
    for each statement of its trigger)."""
    return bool(seen) and all(sql.startswith("INSERT INTO outbox_new_key") for sql in seen)


def put(store: Store, key: str) -> str:
    return store.outbox.record("items", key, OpKind.PUT, {"k": key}).op_id


def stored(conn: sqlite3.Connection) -> list[tuple[str, int]]:
    return conn.execute("SELECT key, seq FROM outbox ORDER BY seq").fetchall()


def test_a_lone_write_is_one_statement_and_stored_counted_and_keyed_as_the_general_path(
    tmp_path: Path,
) -> None:
    store = open_store(tmp_path / "agent.db", device_id="dev")
    put(store, "first")  # the general path: reads and keeps the totals and the clock

    with statements(store.conn) as seen:
        op_id = put(store, "second")

    assert lone(seen)
    assert store.outbox.get(op_id).op.key == "second"
    (first, first_seq), (second, second_seq) = stored(store.conn)
    assert (first, second) == ("first", "second") and second_seq == first_seq + 1
    assert store.conn.execute("SELECT key FROM outbox_keys ORDER BY key").fetchall() == [
        ("first",),
        ("second",),
    ]
    ops, size, next_seq = store.conn.execute(
        "SELECT ops, bytes, next_seq FROM outbox_totals WHERE priority = 2"
    ).fetchone()
    assert (ops, next_seq) == (2, second_seq + 1)
    assert size == store.conn.execute("SELECT sum(size) FROM outbox").fetchone()[0]
    assert store.state.last_hlc() == store.outbox.get(op_id).op.hlc


def test_a_write_on_a_key_with_a_pending_op_is_refused_by_the_check_and_coalesces(
    tmp_path: Path,
) -> None:
    store = open_store(tmp_path / "agent.db", device_id="dev")
    # (written through another Outbox on the connection: this one has no memory of the key)
    Outbox(store.conn, store.state).record("items", "k", OpKind.PUT, {"k": 0})
    put(store, "other")

    with statements(store.conn) as seen:
        newest = put(store, "k")

    assert seen[0].startswith("INSERT INTO outbox_new_key") and not lone(seen)  # refused
    assert [key for key, _ in stored(store.conn)] == ["k", "other"]
    assert store.outbox.pending_for("items", "k")[0].op_id == newest


def test_a_key_written_again_soon_goes_straight_to_the_general_path(tmp_path: Path) -> None:
    store = open_store(tmp_path / "agent.db", device_id="dev")
    put(store, "k")
    put(store, "other")

    with statements(store.conn) as seen:
        newest = put(store, "k")

    assert not any(sql.startswith("INSERT INTO outbox_new_key") for sql in seen)
    assert [key for key, _ in stored(store.conn)] == ["k", "other"]
    assert store.outbox.pending_for("items", "k")[0].op_id == newest


def test_a_commit_by_another_connection_sends_the_next_write_down_the_general_path(
    tmp_path: Path,
) -> None:
    # Given two connections to one database, the first keeping copies of totals and clock
    path = tmp_path / "agent.db"
    mine = open_store(path, device_id="dev", max_ops=3)
    theirs = open_store(path, max_ops=3)
    put(mine, "a")

    # When the other fills the outbox to its bound behind those copies' back
    put(theirs, "b")
    put(theirs, "c")

    # Then the first connection's copies say there is room, but the write is refused
    with statements(mine.conn) as seen, pytest.raises(OutboxFull):
        put(mine, "d")
    assert not lone(seen)
    assert [key for key, _ in stored(mine.conn)] == ["a", "b", "c"]


def test_a_stamp_after_another_connections_commit_is_above_theirs(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    mine = open_store(path, device_id="dev", now_ms=lambda: 1_764_000_000_000)
    theirs = open_store(path, now_ms=lambda: 1_764_000_060_000)  # a minute ahead
    first = mine.outbox.record("items", "a", OpKind.PUT, {})

    ahead = theirs.outbox.record("items", "b", OpKind.PUT, {})
    after = mine.outbox.record("items", "c", OpKind.PUT, {})

    assert first.hlc < ahead.hlc < after.hlc
    assert mine.state.last_hlc() == after.hlc


def test_only_the_latest_keys_are_remembered(tmp_path: Path) -> None:
    store = open_store(tmp_path / "agent.db", device_id="dev", synchronous="OFF")
    put(store, "first")
    for index in range(RECENT_KEYS_KEPT):
        put(store, f"k{index}")

    with statements(store.conn) as seen:
        put(store, "first")  # forgotten: tried as one statement, refused, then coalesced
    with statements(store.conn) as again:
        put(store, f"k{RECENT_KEYS_KEPT - 1}")  # remembered

    assert seen[0].startswith("INSERT INTO outbox_new_key")
    assert not any(sql.startswith("INSERT INTO outbox_new_key") for sql in again)
    assert store.outbox.depth() == RECENT_KEYS_KEPT + 1


def test_a_lone_write_after_relaxed_transactions_commits_with_an_fsync(tmp_path: Path) -> None:
    store = open_store(tmp_path / "agent.db", device_id="dev")
    put(store, "a")
    store.outbox.ack([pending.op.op_id for pending in store.outbox.claim()])  # not fsynced
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL

    put(store, "b")
    with statements(store.conn) as seen:
        put(store, "c")

    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert lone(seen)


def test_a_write_inside_an_outer_transaction_is_undone_with_it(tmp_path: Path) -> None:
    store = open_store(tmp_path / "agent.db", device_id="dev")
    put(store, "a")

    with pytest.raises(RuntimeError), transaction(store.conn):
        put(store, "b")
        raise RuntimeError("the application changes its mind")

    assert [key for key, _ in stored(store.conn)] == ["a"]
    put(store, "c")
    assert [key for key, _ in stored(store.conn)] == ["a", "c"]
    assert store.outbox.stats().total_ops == 2


def test_a_version_4_database_gets_the_check_and_its_writes_continue_in_their_band(
    tmp_path: Path,
) -> None:
    path = tmp_path / "agent.db"
    with mock.patch("device_agent.db.SCHEMA_VERSION", 4):
        old = open_store(path, device_id="dev")
        put(old, "a")  # a fresh connection's first write takes the general path
        assert old.conn.execute("PRAGMA user_version").fetchone()[0] == 4
        old.close()

    store = open_store(path)
    put(store, "b")
    with statements(store.conn) as seen:
        put(store, "c")

    assert lone(seen)
    assert [key for key, _ in stored(store.conn)] == ["a", "b", "c"]
    assert store.conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == 6


T0_MS = 1_764_000_000_000


def test_a_server_time_merged_on_the_same_connection_is_below_the_next_lone_write(
    tmp_path: Path,
) -> None:
    # (data_version does not change for a connection's own commits: the copy of the clock
    # must follow them)
    store = open_store(tmp_path / "agent.db", device_id="dev", now_ms=lambda: T0_MS)
    put(store, "a")
    put(store, "b")

    store.state.merge_server_time(format_hlc(T0_MS + 60_000, 7, "server"))
    with statements(store.conn) as seen:
        put(store, "c")
    with statements(store.conn) as again:
        put(store, "d")

    stamps = [store.outbox.pending_for("items", key)[0].hlc for key in "abcd"]
    assert stamps[1] < format_hlc(T0_MS + 60_000, 7, "server") < stamps[2] < stamps[3]
    assert not lone(seen) and lone(again)  # the clock is read again once, then kept


def test_a_clock_set_back_on_the_same_connection_stamps_the_next_lone_write_from_there(
    tmp_path: Path,
) -> None:
    store = open_store(tmp_path / "agent.db", device_id="dev", now_ms=lambda: T0_MS)
    put(store, "a")
    put(store, "b")

    store.state.restamp_clock(format_hlc(T0_MS - 3_600_000, 0, "server"))
    put(store, "c")
    put(store, "d")

    c, d = (parse_hlc(store.outbox.pending_for("items", key)[0].hlc) for key in "cd")
    # The wall clock reads an hour ahead of the server: stamps follow the corrected clock.
    assert c.physical_ms == d.physical_ms == T0_MS - 3_600_000
    assert (c.logical, d.logical) == (1, 2)


def test_a_key_whose_op_was_acked_is_written_by_the_general_path_which_clears_its_row(
    tmp_path: Path,
) -> None:
    store = open_store(tmp_path / "agent.db", device_id="dev")
    acked = put(store, "a")
    put(store, "other")
    store.outbox.claim()
    store.outbox.ack([acked])  # the outbox_keys row of "a" is stale now, not yet swept
    put(store, "spare")
    assert ("a",) in store.conn.execute("SELECT key FROM outbox_keys").fetchall()

    with statements(store.conn) as seen:
        op_id = put(store, "a")

    assert not lone(seen)
    assert store.conn.execute(
        "SELECT o.op_id FROM outbox_keys AS k LEFT JOIN outbox AS o ON o.seq = k.seq "
        "WHERE k.key = 'a'"
    ).fetchall() == [(op_id,)]


def test_a_connection_whose_schema_is_not_trusted_takes_the_general_path(tmp_path: Path) -> None:
    # SQLite refuses the trigger's read of pragma_data_version where the schema is not
    # trusted (a hardening some builds make the default).
    path = tmp_path / "agent.db"
    open_store(path).close()
    with mock.patch("device_agent.db._schema_trusted", return_value=False):
        store = open_store(path, device_id="dev")
    store.conn.execute("PRAGMA trusted_schema = OFF")
    assert not _schema_trusted(store.conn)

    for key in "abc":
        with statements(store.conn) as seen:
            put(store, key)
        assert not lone(seen)

    assert [key for key, _ in stored(store.conn)] == ["a", "b", "c"]
    assert open_store(path).conn.lone_writes  # type: ignore[attr-defined]
