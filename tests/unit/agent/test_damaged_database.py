"""A device database that opens but holds values the agent never wrote (changed by hand or by a
tool, a failing disk): a clear error naming the file, the value and the remedy - never an
"unexpected" error, and never a silently replaced device id. Statistics only inform, so
damaged ones read as defaults.

Real database files, damaged with sqlite3 as a person or a tool would.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

from device_agent import Agent
from device_agent.errors import DamagedDatabase
from tests.support.agent_cli import sync_agent
from tests.support.protocol_server import ProtocolServer

pytestmark = pytest.mark.agent
TOKEN = "damage-token"
ENDPOINT = "http://127.0.0.1:9"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A used device database: settings, device id pi-7, one pending op (a clock stamp)."""
    path = tmp_path / "device.db"
    with Agent.init(path, endpoint=ENDPOINT, token=TOKEN, device_id="pi-7") as agent:
        agent.put("prefs", "k", {"a": 1})
    return path


@pytest.fixture
def server() -> Iterator[ProtocolServer]:
    with ProtocolServer(token=TOKEN) as running:
        yield running


def set_kv(path: Path, name: str, value: Optional[str]) -> None:
    with sqlite3.connect(path) as conn:
        if value is None:
            conn.execute("DELETE FROM kv WHERE name = ?", (name,))
        else:
            conn.execute("INSERT OR REPLACE INTO kv (name, value) VALUES (?, ?)", (name, value))


def kv(path: Path, name: str) -> Optional[str]:
    with sqlite3.connect(path) as conn:
        row = conn.execute("SELECT value FROM kv WHERE name = ?", (name,)).fetchone()
    return None if row is None else str(row[0])


def one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr and "unexpected" not in lines[0]
    for word in words:
        assert word in lines[0], lines[0]


# --- settings ------------------------------------------------------------------------------

DAMAGED_SETTINGS = [
    ("not json", "not valid JSON"),
    ("[1, 2]", "JSON array instead of an object"),
    (json.dumps({"endpoint": 5, "token": TOKEN}), "the endpoint is 5"),
    (json.dumps({"endpoint": ENDPOINT, "token": ["x"]}), "the token is a JSON array"),
    (json.dumps({"endpoint": ENDPOINT, "token": TOKEN, "max_ops": "many"}), "max_ops"),
]


@pytest.mark.parametrize(("stored", "problem"), DAMAGED_SETTINGS)
def test_damaged_settings_name_the_file_and_say_to_run_init(
    db: Path, stored: str, problem: str
) -> None:
    # Given settings that are not what the agent wrote
    set_kv(db, "settings", stored)
    # When the database is opened (which reads them)
    with pytest.raises(DamagedDatabase) as raised:
        Agent.open(db).close()
    # Then the error names the file, what is damaged and the remedy
    message = str(raised.value)
    assert str(db) in message and problem in message
    assert "sync-agent init --endpoint URL --token TOKEN" in message
    assert raised.value.path == str(db)
    assert TOKEN not in message  # a token is never shown, even a damaged one


@pytest.mark.parametrize(("stored", "problem"), DAMAGED_SETTINGS)
def test_init_repairs_damaged_settings_and_keeps_the_device(
    db: Path, stored: str, problem: str
) -> None:
    set_kv(db, "settings", stored)
    with Agent.init(db, endpoint="http://127.0.0.1:8", token=TOKEN) as agent:
        status = agent.status()
    assert status["endpoint"] == "http://127.0.0.1:8" and status["device_id"] == "pi-7"
    assert status["pending"] == 1


def test_the_cli_reports_an_endpoint_stored_as_a_number_instead_of_printing_it(db: Path) -> None:
    set_kv(db, "settings", json.dumps({"endpoint": 5, "token": TOKEN}))
    for command in (["status", "--json"], ["sync", "--timeout", "1"]):
        done = sync_agent(db, *command)
        assert done.returncode == 1 and done.stdout == "", command
        one_line_error(done, str(db), "endpoint is 5", "sync-agent init")


def test_the_cli_reports_settings_that_are_not_json(db: Path) -> None:
    set_kv(db, "settings", "not json")
    done = sync_agent(db, "status")
    assert done.returncode == 1
    one_line_error(done, str(db), "settings", "not valid JSON", "sync-agent init")


# --- the device id -------------------------------------------------------------------------


@pytest.mark.parametrize("stored", ["5", '["pi-7"]', '"has space"', "null", None])
def test_a_damaged_or_missing_device_id_is_an_error_never_a_new_id(
    db: Path, stored: Optional[str]
) -> None:
    # Given a used database whose device id was damaged or deleted
    set_kv(db, "device_id", stored)
    # When the database is opened (which reads the device id)
    with pytest.raises(DamagedDatabase) as raised:
        Agent.open(db).close()
    # Then the error names the file, the stamps' device and how to set it again
    message = str(raised.value)
    assert str(db) in message and "device id" in message and "'pi-7'" in message
    assert "--device-id ID" in message
    # And no new id was stored in its place
    assert kv(db, "device_id") == stored


def test_init_does_not_choose_a_new_id_for_a_used_database_but_takes_one_given(db: Path) -> None:
    set_kv(db, "device_id", None)
    with pytest.raises(DamagedDatabase, match="--device-id"):
        Agent.init(db, endpoint=ENDPOINT, token=TOKEN)
    assert kv(db, "device_id") is None
    with Agent.init(db, endpoint=ENDPOINT, token=TOKEN, device_id="pi-7") as agent:
        assert agent.status()["device_id"] == "pi-7"
        assert agent.get("prefs", "k") == {"a": 1}


def test_a_new_database_still_gets_a_random_id(tmp_path: Path) -> None:
    with Agent.init(tmp_path / "new.db", endpoint=ENDPOINT, token=TOKEN) as agent:
        assert agent.status()["device_id"].startswith("dev-")


def test_the_cli_refuses_a_device_id_stored_as_a_number(db: Path) -> None:
    set_kv(db, "device_id", "5")
    done = sync_agent(db, "status", "--json")
    assert done.returncode == 1 and done.stdout == ""
    one_line_error(done, str(db), "device id is 5", "--device-id")
    assert kv(db, "device_id") == "5"


# --- statistics ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stored", "defaults"),
    [
        ('{"connectivity": "weird", "last_error": "boom"}', {"connectivity": "unknown"}),
        ('{"consecutive_failures": "lots", "last_error": "boom"}', {"consecutive_failures": 0}),
        (
            '{"current_backoff_s": "x", "last_success_at": [1], "last_error": "boom"}',
            {"current_backoff_s": 0.0, "last_success_at": None},
        ),
        ("not json", {"connectivity": "unknown", "last_error": None}),
        ("[1]", {"connectivity": "unknown", "last_error": None}),
    ],
)
def test_damaged_statistics_read_as_defaults_and_the_next_sync_rewrites_them(
    db: Path, server: ProtocolServer, stored: str, defaults: dict[str, object]
) -> None:
    # Given statistics with a damaged value beside a sound one
    set_kv(db, "stats", stored)
    with Agent.open(db) as agent:
        # When status is read, Then the damaged values read as defaults, the sound ones stay
        status = agent.status()
        for name, value in defaults.items():
            assert status[name] == value, name
        if stored.startswith("{"):
            assert status["last_error"] == "boom"
        # And a sync works and stores them whole again
        agent.state.update_settings(endpoint=server.url)
        assert agent.sync(timeout=10).synced
    assert json.loads(kv(db, "stats") or "")["connectivity"] == "online"


def test_the_cli_shows_status_with_damaged_statistics(db: Path) -> None:
    set_kv(db, "stats", '{"connectivity": "weird", "current_backoff_s": "soon"}')
    done = sync_agent(db, "status")
    assert done.returncode == 0, done.stderr
    assert "connectivity: unknown" in done.stdout and "backoff:      0s" in done.stdout
    assert "damaged sync statistics" in done.stderr and "Traceback" not in done.stderr


# --- stored ops and records ----------------------------------------------------------------


@pytest.mark.parametrize("data", ["{not json", "[1, 2]"])
def test_a_pending_op_with_damaged_data_names_the_file_and_the_key(db: Path, data: str) -> None:
    # Given a pending op whose stored data was damaged
    with sqlite3.connect(db) as conn:
        for table in ("outbox", "outbox_intake"):  # wherever the op waits
            conn.execute(f"UPDATE {table} SET data = ?", (data,))
    # When the document is read, Then the error names the file, the key and the remedy
    with Agent.open(db) as agent, pytest.raises(DamagedDatabase) as raised:
        agent.get("prefs", "k")
    message = str(raised.value)
    assert str(db) in message and "pending op on prefs/k" in message
    assert "restore it from a backup" in message


def test_a_sync_that_meets_undecodable_op_data_names_the_file(
    db: Path, server: ProtocolServer
) -> None:
    with sqlite3.connect(db) as conn:
        for table in ("outbox", "outbox_intake"):  # wherever the op waits
            conn.execute(f"UPDATE {table} SET data = '{{not json'")
    with Agent.open(db) as agent:
        agent.state.update_settings(endpoint=server.url)
        with pytest.raises(DamagedDatabase, match="not valid JSON") as raised:
            agent.sync(timeout=5)
        assert str(db) in str(raised.value)
        assert agent.outbox.depth() == 1  # nothing was lost or half-claimed


@pytest.mark.parametrize(
    ("data", "clock"),
    [
        ("not json", "{}"),
        ("{}", "[1]"),
        ("[1]", "{}"),
        ("{}", '{"reset": 5}'),
        ('{"a": 1}', '{"fields": {"a": 1}}'),
        ('{"a": 1}', '{"fields": {"a": "not a stamp"}}'),
    ],
)
def test_a_damaged_synced_record_names_the_file_and_the_key(
    db: Path, data: str, clock: str
) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO replica VALUES ('prefs', 'r', ?, ?)", (data, clock))
    with Agent.open(db) as agent, pytest.raises(DamagedDatabase, match="synced copy") as raised:
        agent.get("prefs", "r")
    assert str(db) in str(raised.value) and "prefs/r" in str(raised.value)


def test_the_cli_get_reports_damaged_op_data_in_one_line(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        for table in ("outbox", "outbox_intake"):  # wherever the op waits
            conn.execute(f"UPDATE {table} SET data = '{{not json'")
    done = sync_agent(db, "get", "prefs", "k")
    assert done.returncode == 1 and done.stdout == ""
    one_line_error(done, str(db), "prefs/k", "damaged")


@pytest.mark.parametrize(
    ("column", "command"),
    [
        (column, command)
        for column in ("ops", "bytes", "next_seq")
        for command in (["status"], ["put", "prefs", "k2", "{}"], ["sync"])
        if (column, command[0]) != ("next_seq", "status")  # (status does not read it)
    ],
)
def test_damaged_outbox_totals_name_the_file_in_one_line(
    db: Path, column: str, command: list[str]
) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(f"UPDATE outbox_totals SET {column} = 'many' WHERE priority = 2")

    done = sync_agent(db, *command)

    assert done.returncode == 1
    one_line_error(done, str(db), "outbox totals are damaged", "restore it from a backup")
