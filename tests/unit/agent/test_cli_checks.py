"""`sync-agent` refuses what it cannot honour: non-finite JSON, files that are not its database,
an unconfigured `run`, a nonsense `--timeout`; and stops quietly when its reader goes away.

Real subprocesses and real database files, as in test_cli.py.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_agent.db import open_database
from tests.support.protocol_server import ProtocolServer

pytestmark = pytest.mark.agent
TOKEN = "cli-token"
REPO = Path(__file__).resolve().parents[3]
INIT_SECRET = "s" * 43


class Cli:
    def __init__(self, db: Path) -> None:
        self.db = db
        self.env = {**os.environ, "SYNC_AGENT_DB": str(db), "PYTHONPATH": str(REPO)}

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "device_agent", *args]

    def __call__(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            check=False,
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.db.parent,
            timeout=timeout,
        )


def one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def cloud_token(device_id: str) -> str:
    encoded = base64.urlsafe_b64encode(device_id.encode()).decode().rstrip("=")
    return f"fs1.{encoded}.{INIT_SECRET}"


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "device.db")


@pytest.fixture
def server() -> Iterator[ProtocolServer]:
    with ProtocolServer(token=TOKEN) as running:
        yield running


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}


# --- 1. NaN and Infinity are not JSON ----------------------------------------------------


@pytest.mark.parametrize(
    "text", ['{"a": NaN}', '{"a": Infinity}', '{"a": [-Infinity]}', '{"a": 1e999}']
)
def test_put_refuses_nan_and_infinity_like_any_invalid_json(cli: Cli, text: str) -> None:
    # Given an initialised device
    assert cli("init", "--endpoint", "http://127.0.0.1:9", "--token", TOKEN).returncode == 0
    # When a document with a non-finite number is written (put or patch)
    for command in ("put", "patch"):
        done = cli(command, "prefs", "k", text)
        # Then it is a usage error, like any invalid JSON argument, and nothing is recorded
        assert done.returncode == 2 and done.stdout == ""
        one_line_error(done, "NaN and Infinity are not valid JSON")
    assert cli("put", "prefs", "k", "not json").returncode == 2  # the same treatment
    assert json.loads(cli("status", "--json").stdout)["pending"] == 0


# --- 2. only init creates or adopts a database -------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["put", "notes", "k", '{"a": 1}'],
        ["delete", "notes", "k"],
        ["get", "notes", "k"],
        ["status"],
        ["sync"],
        ["run"],
        ["quarantine", "list"],
    ],
)
def test_an_empty_file_is_not_adopted_by_any_command_but_init(cli: Cli, command: list[str]) -> None:
    # Given an empty file where the database should be
    cli.db.write_bytes(b"")
    # When any command other than init uses it
    done = cli(*command, timeout=20)
    # Then it fails with one line naming the file and the remedy, and the file is untouched
    assert done.returncode == 1
    one_line_error(done, str(cli.db), "sync-agent init")
    assert cli.db.stat().st_size == 0


def test_init_adopts_an_empty_file(cli: Cli) -> None:
    cli.db.write_bytes(b"")
    assert cli("init", "--endpoint", "http://127.0.0.1:9", "--token", TOKEN).returncode == 0
    assert cli("put", "notes", "k", '{"a": 1}').returncode == 0


def test_a_foreign_sqlite_database_is_refused_even_by_init(cli: Cli) -> None:
    # Given another application's SQLite database
    with sqlite3.connect(cli.db) as conn:
        conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, path TEXT)")
    before = cli.db.read_bytes()
    # When the agent is pointed at it, even by init
    put = cli("put", "notes", "k", '{"a": 1}')
    init = cli("init", "--endpoint", "http://127.0.0.1:9", "--token", TOKEN)
    # Then both refuse with one line saying why, and nothing is added to it
    for done in (put, init):
        assert done.returncode == 1
        one_line_error(done, str(cli.db), "another application", "empty")
    assert tables(cli.db) == {"photos"}
    assert cli.db.read_bytes() == before


def test_a_missing_file_still_says_to_run_init(cli: Cli) -> None:
    done = cli("put", "notes", "k", '{"a": 1}')
    assert done.returncode == 1
    one_line_error(done, str(cli.db), "sync-agent init")
    assert not cli.db.exists()


# --- 3. run without configuration ----------------------------------------------------------


def test_run_on_a_database_without_settings_exits_at_once(cli: Cli) -> None:
    # Given a FieldSync database that has no endpoint or token (schema only)
    open_database(cli.db).close()
    # When the worker is started
    started = time.monotonic()
    done = cli("run", timeout=20)
    # Then it exits 1 at once with one line saying to run init (no retry loop)
    assert done.returncode == 1 and time.monotonic() - started < 15
    one_line_error(done, "configuration is missing", "sync-agent init")


def test_run_against_an_unreachable_cloud_keeps_running(cli: Cli) -> None:
    # Given a configured device whose cloud does not answer
    assert cli("init", "--endpoint", "http://127.0.0.1:9", "--token", TOKEN).returncode == 0
    worker = subprocess.Popen(
        cli.argv("run"),
        env=cli.env,
        cwd=cli.db.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # When a few seconds pass, Then it is still running, and stops cleanly on SIGTERM
        time.sleep(3)
        assert worker.poll() is None
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


# --- 4. sync --timeout -------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf", "-inf", "soon"])
def test_sync_timeout_must_be_a_finite_number_above_zero(cli: Cli, value: str) -> None:
    assert cli("init", "--endpoint", "http://127.0.0.1:9", "--token", TOKEN).returncode == 0
    done = cli("sync", f"--timeout={value}")
    assert done.returncode == 2
    one_line_error(done, "--timeout", value)


@pytest.mark.parametrize(
    ("endpoint", "problem"),
    [("http://", "no host"), ("http://exa mple.com", "space"), ("http://h:99999", "valid URL")],
)
def test_init_refuses_an_unusable_endpoint_as_a_usage_error(
    cli: Cli, endpoint: str, problem: str
) -> None:
    # When init is given an endpoint no request could be sent to
    done = cli("init", "--endpoint", endpoint, "--token", TOKEN)
    # Then it exits 2 (like a bad scheme) with one line naming it, and creates nothing
    assert done.returncode == 2 and done.stdout == ""
    one_line_error(done, "endpoint", repr(endpoint), problem)
    assert not cli.db.exists()


# --- 5. the device id a cloud token names -------------------------------------------------


def test_init_takes_the_device_id_from_a_cloud_token(cli: Cli) -> None:
    done = cli("init", "--endpoint", "http://127.0.0.1:9", "--token", cloud_token("pi-42"))
    assert done.returncode == 0 and done.stderr == ""
    assert "device_id=pi-42" in done.stdout
    assert json.loads(cli("status", "--json").stdout)["device_id"] == "pi-42"


def test_init_with_another_device_id_keeps_it_and_warns(cli: Cli) -> None:
    token = cloud_token("pi-42")
    done = cli("init", "--endpoint", "http://127.0.0.1:9", "--token", token, "--device-id", "pi-7")
    assert done.returncode == 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "warning" in lines[0] and "pi-42" in lines[0], done.stderr
    assert json.loads(cli("status", "--json").stdout)["device_id"] == "pi-7"


def test_init_with_an_opaque_token_keeps_choosing_an_id(cli: Cli) -> None:
    done = cli("init", "--endpoint", "http://127.0.0.1:9", "--token", TOKEN)
    assert done.returncode == 0 and done.stderr == ""
    assert json.loads(cli("status", "--json").stdout)["device_id"].startswith("dev-")


# --- 6. a reader that closes stdout --------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["status", "--json"], ["status"], ["get", "notes", "k"], ["quarantine", "list", "--json"]],
)
def test_a_closed_stdout_ends_the_command_quietly(cli: Cli, command: list[str]) -> None:
    # Given a device with something to print
    assert cli("init", "--endpoint", "http://127.0.0.1:9", "--token", TOKEN).returncode == 0
    assert cli("put", "notes", "k", json.dumps({"text": "x" * 500})).returncode == 0
    # When its reader closes the pipe before the command writes (`... | head -c 0`)
    child = subprocess.Popen(
        cli.argv(*command),
        env=cli.env,
        cwd=cli.db.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()
    err = child.stderr.read().decode()
    code = child.wait(timeout=30)
    # Then it ends without a message or traceback, with 0 or the conventional 141
    assert err == ""
    assert code in (0, 141)


# --- 7. quarantine hints -------------------------------------------------------------------


@pytest.mark.parametrize("action", ["drop", "retry"])
def test_an_unknown_quarantine_id_gives_the_hint_once(cli: Cli, action: str) -> None:
    assert cli("init", "--endpoint", "http://127.0.0.1:9", "--token", TOKEN).returncode == 0
    done = cli("quarantine", action, "no-such-op")
    assert done.returncode == 1
    line = one_line_error(done, "no-such-op")
    assert line.count("quarantine list") == 1, line


# --- 8. last_error after a later success ----------------------------------------------------


def test_status_dates_the_last_error_so_a_later_success_shows(
    cli: Cli, server: ProtocolServer
) -> None:
    # Given a sync refused for a wrong token, then a successful one with the right token
    assert cli("init", "--endpoint", server.url, "--token", "wrong").returncode == 0
    assert cli("sync", "--timeout", "10").returncode == 1
    assert cli("init", "--endpoint", server.url, "--token", TOKEN).returncode == 0
    assert cli("sync", "--timeout", "10").returncode == 0
    # When status is read
    status = json.loads(cli("status", "--json").stdout)
    text = cli("status").stdout
    # Then the old error is kept, dated before the success, and the text says so
    assert status["last_error"] and status["last_error_at"] is not None
    assert status["last_error_at"] < status["last_success_at"]
    assert "before the last success" in text
