"""`sync-agent` end to end: real subprocesses, a real database file, the protocol server."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from device_agent import Agent
from tests.support.protocol_server import ProtocolServer

pytestmark = pytest.mark.agent
TOKEN = "cli-token"
REPO = Path(__file__).resolve().parents[3]


@dataclass
class Result:
    code: int
    out: str
    err: str


class Cli:
    def __init__(self, db: Path) -> None:
        self.db = db
        self.env = {**os.environ, "SYNC_AGENT_DB": str(db), "PYTHONPATH": str(REPO)}

    def __call__(self, *args: str, timeout: float = 30) -> Result:
        done = subprocess.run(
            [sys.executable, "-m", "device_agent", *args],
            check=False,
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.db.parent,
            timeout=timeout,
        )
        return Result(done.returncode, done.stdout, done.stderr)


def assert_one_line_error(result: Result, *words: str) -> None:
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    for word in words:
        assert word in lines[0], lines[0]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server() -> Iterator[ProtocolServer]:
    with ProtocolServer(token=TOKEN) as running:
        yield running


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "device.db")


def test_init_put_get_sync_round_trip(cli: Cli, server: ProtocolServer) -> None:
    assert cli("init", "--endpoint", server.url, "--token", TOKEN, "--device-id", "pi-7").code == 0
    put = cli("put", "prefs", "u1", '{"currency": "BTC"}', "--priority", "critical")
    assert put.code == 0 and len(put.out.strip()) >= 8  # the op id
    assert cli("patch", "prefs", "u1", '{"theme": "dark"}').code == 0
    got = cli("get", "prefs", "u1")
    assert got.code == 0 and json.loads(got.out) == {"currency": "BTC", "theme": "dark"}
    synced = cli("sync", "--timeout", "10")
    assert synced.code == 0, synced.err
    assert server.document("prefs", "u1") == {"currency": "BTC", "theme": "dark"}
    assert cli("delete", "prefs", "u1").code == 0
    assert cli("sync").code == 0
    assert server.document("prefs", "u1") is None
    missing = cli("get", "prefs", "u1")
    assert missing.code == 1
    assert_one_line_error(missing, "not found")


def test_put_works_offline_sync_exits_75_and_nothing_is_lost(
    cli: Cli, server: ProtocolServer
) -> None:
    # Given a device whose cloud is unreachable
    offline = f"http://127.0.0.1:{closed_port()}"
    assert cli("init", "--endpoint", offline, "--token", TOKEN).code == 0
    assert cli("put", "prefs", "u1", '{"a": 1}').code == 0
    # When it syncs, it says so with exit 75 and a one-line error
    result = cli("sync", "--timeout", "5")
    assert result.code == 75
    assert_one_line_error(result, "could not reach the cloud", "nothing is lost")
    status = json.loads(cli("status", "--json").out)
    assert status["pending"] == 1 and status["connectivity"] == "offline"
    # Then once the cloud is reachable the same op gets there
    assert cli("init", "--endpoint", server.url, "--token", TOKEN).code == 0
    assert cli("sync").code == 0
    assert server.document("prefs", "u1") == {"a": 1}


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("frobnicate",), ["invalid choice"]),
        (("put", "prefs", "u1", "{not json"), ["not valid JSON"]),
        (("put", "prefs", "u1", "[1, 2]"), ["JSON object"]),
        (("put", "prefs", "u1", "{}", "--priority", "urgent"), ["invalid choice"]),
        (("put", "BAD COLLECTION", "u1", '{"a": 1}'), ["collection"]),
        (("put", "prefs"), ["required"]),
        (("status", "--db", ""), ["--db", "empty path"]),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    cli: Cli, server: ProtocolServer, args: tuple[str, ...], words: list[str]
) -> None:
    assert cli("init", "--endpoint", server.url, "--token", TOKEN).code == 0
    result = cli(*args)
    assert result.code == 2
    assert_one_line_error(result, *words)


def test_a_missing_database_says_to_run_init(cli: Cli) -> None:
    result = cli("status")
    assert result.code == 1
    assert_one_line_error(result, "sync-agent init")


def test_a_database_found_damaged_after_opening_is_named_with_advice(
    cli: Cli, server: ProtocolServer
) -> None:
    # Given an agent database whose outbox pages were overwritten (the file still opens)
    assert cli("init", "--endpoint", server.url, "--token", TOKEN).code == 0
    with Agent.open(cli.db) as agent:
        agent.put_many([("prefs", f"k{n}", {"n": n, "pad": "x" * 200}) for n in range(300)])
    conn = sqlite3.connect(cli.db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = [n for (n,) in conn.execute("SELECT pageno FROM dbstat WHERE name = 'outbox'")]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with open(cli.db, "r+b") as file:
        for page in pages[1:]:
            file.seek((page - 1) * size)
            file.write(b"\xff" * size)
    # When a command reads them
    for command in (("get", "prefs", "k5"), ("status",)):
        result = cli(*command)
        # Then it fails with one line naming the file and what to do
        assert result.code == 1, command
        assert_one_line_error(result, str(cli.db), "damaged", "sqlite3")


def test_init_bounds_the_outbox_and_a_write_past_it_is_refused_in_one_line(
    cli: Cli, server: ProtocolServer
) -> None:
    assert cli("init", "--endpoint", server.url, "--token", TOKEN, "--max-ops", "1").code == 0
    assert cli("put", "prefs", "a", '{"n": 1}').code == 0

    refused = cli("put", "prefs", "b", '{"n": 2}')

    assert refused.code == 1
    assert_one_line_error(refused, "outbox full", "sync-agent sync")
    status = json.loads(cli("status", "--json").out)
    assert (status["pending"], status["max_ops"]) == (1, 1)
    bad = cli("init", "--endpoint", server.url, "--token", TOKEN, "--max-ops", "0")
    assert bad.code == 2
    assert_one_line_error(bad, "--max-ops", "above 0")


def test_get_of_a_collection_or_key_no_write_could_have_is_a_usage_error(
    cli: Cli, server: ProtocolServer
) -> None:
    assert cli("init", "--endpoint", server.url, "--token", TOKEN).code == 0

    for args, word in ((("get", "Prefs", "k"), "collection"), (("get", "prefs", "a\tb"), "key")):
        result = cli(*args)
        assert result.code == 2, args
        assert_one_line_error(result, word)


def test_db_flag_works_before_or_after_the_command(
    cli: Cli, server: ProtocolServer, tmp_path: Path
) -> None:
    other = str(tmp_path / "other.db")
    assert cli("--db", other, "init", "--endpoint", server.url, "--token", TOKEN).code == 0
    assert cli("put", "prefs", "k", '{"a": 1}', "--db", other).code == 0
    assert json.loads(cli("--db", other, "status", "--json").out)["pending"] == 1
    assert not cli.db.exists()  # $SYNC_AGENT_DB was not used


def test_status_reports_the_outbox_and_sync_state(cli: Cli, server: ProtocolServer) -> None:
    cli("init", "--endpoint", server.url, "--token", TOKEN, "--device-id", "pi-9")
    cli("put", "prefs", "a", '{"n": 1}', "--priority", "critical")
    cli("put", "prefs", "b", '{"n": 2}', "--priority", "low")
    status = json.loads(cli("status", "--json").out)
    assert status["device_id"] == "pi-9" and status["pending"] == 2
    assert status["depth"]["critical"] == 1 and status["depth"]["low"] == 1
    for key in (
        "bytes",
        "oldest_pending_age_s",
        "quarantined",
        "last_success_at",
        "last_error",
        "consecutive_failures",
        "current_backoff_s",
        "connectivity",
        "clock_offset_ms",
    ):
        assert key in status
    assert TOKEN not in cli("status", "--json").out
    text = cli("status").out
    assert "pending:" in text and "connectivity:" in text and TOKEN not in text


def test_quarantine_list_retry_and_drop(cli: Cli, server: ProtocolServer) -> None:
    cli("init", "--endpoint", server.url, "--token", TOKEN)
    op_id = cli("put", "prefs", "bad", '{"a": 1}').out.strip()
    server.force(op_id, "rejected", "forbidden")
    assert cli("sync").code == 0
    listed = json.loads(cli("quarantine", "list", "--json").out)["quarantined"]
    assert [item["op_id"] for item in listed] == [op_id]
    assert "forbidden" in cli("quarantine", "list").out
    # Retry puts it back in the outbox
    assert cli("quarantine", "retry", op_id).code == 0
    assert json.loads(cli("status", "--json").out)["pending"] == 1
    # It is rejected again, then dropped for good
    assert cli("sync").code == 0
    assert cli("quarantine", "drop", op_id).code == 0
    assert json.loads(cli("quarantine", "list", "--json").out)["quarantined"] == []
    unknown = cli("quarantine", "drop", "no-such-op")
    assert unknown.code == 1
    assert_one_line_error(unknown, "quarantine list")


def test_a_refused_token_exits_1_and_says_what_to_do(cli: Cli, server: ProtocolServer) -> None:
    cli("init", "--endpoint", server.url, "--token", "wrong-token")
    cli("put", "prefs", "u1", '{"a": 1}')
    result = cli("sync")
    assert result.code == 1
    assert_one_line_error(result, "refused", "init")
    assert "wrong-token" not in result.err + result.out


def test_the_console_script_is_installed(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "sync-agent"
    result = subprocess.run(
        [str(script), "--help"], check=False, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    for command in ("init", "put", "patch", "delete", "get", "sync", "run", "status", "quarantine"):
        assert command in result.stdout


def test_sync_in_a_pipe_prints_each_progress_state_once(cli: Cli, server: ProtocolServer) -> None:
    # Given a device with nothing to send, its output going to a pipe
    assert cli("init", "--endpoint", server.url, "--token", TOKEN).code == 0
    # When it syncs (one page pulled, drawn as it comes, then the final state)
    result = cli("sync", "--timeout", "10")
    # Then the state is written once, as a plain line
    assert result.code == 0, result.err
    lines = [line for line in result.out.splitlines() if line.startswith("progress ")]
    assert lines == ["progress 0/0 ops sent, 0 records pulled"], result.out
    assert "\r" not in result.out
