"""The device database: durable settings, schema versions and clear errors for bad files."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap

import pytest

from device_agent.db import open_database, transaction
from device_agent.errors import DatabaseError, SchemaTooNew
from device_agent.schema import SCHEMA_VERSION

pytestmark = pytest.mark.agent


def test_a_new_database_is_created_in_wal_mode_with_full_sync(tmp_path):
    # Given no file yet / When it is opened
    conn = open_database(tmp_path / "agent.db")
    # Then every commit is fsynced (FULL = 2) through a write-ahead log
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.isolation_level is None


def test_reopening_keeps_data_and_does_not_migrate_again(tmp_path):
    path = tmp_path / "agent.db"
    conn = open_database(path)
    with transaction(conn):
        conn.execute("INSERT INTO kv (name, value) VALUES ('probe', '1')")
    conn.close()

    again = open_database(path)

    assert again.execute("SELECT value FROM kv WHERE name = 'probe'").fetchone() == ("1",)


def test_a_file_that_is_not_a_database_is_reported_with_its_path_and_advice(tmp_path):
    path = tmp_path / "agent.db"
    path.write_bytes(b"this is a text file, not SQLite " * 200)

    with pytest.raises(DatabaseError) as caught:
        open_database(path)

    message = str(caught.value)
    assert str(path) in message
    assert "move it aside" in message
    assert caught.value.path == str(path)


def test_a_missing_directory_is_reported_with_advice(tmp_path):
    path = tmp_path / "no" / "such" / "dir" / "agent.db"

    with pytest.raises(DatabaseError, match="does not exist"):
        open_database(path)


def test_a_database_from_a_newer_agent_is_refused(tmp_path):
    path = tmp_path / "agent.db"
    open_database(path).execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")

    with pytest.raises(SchemaTooNew, match="upgrade the agent"):
        open_database(path)


def test_a_database_locked_beyond_the_timeout_is_reported(tmp_path):
    # Given another process holding the write lock for longer than our busy timeout
    path = tmp_path / "agent.db"
    open_database(path).close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sqlite3, sys, time
                conn = sqlite3.connect({str(path)!r}, isolation_level=None)
                conn.execute("BEGIN IMMEDIATE")
                print("locked", flush=True)
                sys.stdin.read()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        conn = open_database(path, busy_timeout_s=0.2)
        # When we try to write / Then the error names the file and says what to do
        with pytest.raises(DatabaseError) as caught, transaction(conn):
            pass
        assert str(path) in str(caught.value)
        assert "busy timeout" in str(caught.value)
    finally:
        holder.communicate("", timeout=10)


def test_a_failing_block_rolls_back_everything_it_wrote(tmp_path):
    conn = open_database(tmp_path / "agent.db")

    with pytest.raises(RuntimeError), transaction(conn):
        conn.execute("INSERT INTO kv (name, value) VALUES ('half', '1')")
        raise RuntimeError("boom")

    assert conn.execute("SELECT COUNT(*) FROM kv WHERE name = 'half'").fetchone() == (0,)
    assert not conn.in_transaction


def test_a_nested_block_joins_the_outer_transaction(tmp_path):
    conn = open_database(tmp_path / "agent.db")

    with pytest.raises(RuntimeError), transaction(conn):
        with transaction(conn):
            conn.execute("INSERT INTO kv (name, value) VALUES ('inner', '1')")
        raise RuntimeError("outer fails after the inner block")

    assert conn.execute("SELECT COUNT(*) FROM kv WHERE name = 'inner'").fetchone() == (0,)


def test_an_unknown_synchronous_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="FULL"):
        open_database(tmp_path / "agent.db", synchronous="SOMETIMES")


def test_integrity_errors_are_not_disguised_as_database_errors(tmp_path):
    conn = open_database(tmp_path / "agent.db")

    with pytest.raises(sqlite3.IntegrityError), transaction(conn):
        conn.execute("INSERT INTO kv (name, value) VALUES ('x', NULL)")


def test_a_relaxed_transaction_commits_without_fsync_and_a_durable_one_with(tmp_path):
    # Given a connection with synchronous=FULL
    conn = open_database(tmp_path / "agent.db")
    seen = []
    # When soft-state transactions run (leases, acks), then a durable one (a recorded write)
    for durable in (False, False, True, False):
        with transaction(conn, durable=durable):
            seen.append(conn.execute("PRAGMA synchronous").fetchone()[0])
            conn.execute(
                "INSERT INTO kv (name, value) VALUES ('lease', '1') "
                "ON CONFLICT (name) DO UPDATE SET value = value + 1"
            )
    # Then the soft ones ran without per-commit fsync (NORMAL = 1), the durable one at FULL
    assert seen == [1, 1, 2, 1]
    assert conn.execute("SELECT value FROM kv WHERE name = 'lease'").fetchone() == ("4",)


def test_a_relaxed_transaction_on_a_plain_connection_restores_its_level(tmp_path):
    open_database(tmp_path / "agent.db").close()
    conn = sqlite3.connect(tmp_path / "agent.db", isolation_level=None)
    conn.execute("PRAGMA synchronous = FULL")

    with transaction(conn, durable=False):
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1

    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_a_relaxed_transaction_never_raises_a_lower_setting(tmp_path):
    conn = open_database(tmp_path / "agent.db", synchronous="OFF")

    with transaction(conn, durable=False):
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 0

    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 0


def test_a_wrong_statement_is_not_disguised_as_an_unusable_database(tmp_path):
    conn = open_database(tmp_path / "agent.db")
    for statement in ("SELEC 1", "SELECT * FROM no_such_table"):
        with pytest.raises(sqlite3.OperationalError), transaction(conn):
            conn.execute(statement)
