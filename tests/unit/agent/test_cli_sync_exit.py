"""`sync-agent sync` exits 75 only when running it again later is the advice (the cloud down,
busy or slow), and 1 with the actual problem when the cloud answers in a way retrying will not
change (a wrong endpoint, a 400, a response that breaks the protocol).

Real subprocesses, real database files, real HTTP on 127.0.0.1: the protocol server, or a
server that gives every request the same answer.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from device_agent import Agent
from device_agent.outcomes import ServerError, Throttled
from device_agent.sync_failures import retry_may_help
from tests.support.agent_cli import sync_agent
from tests.support.protocol_server import ProtocolServer

pytestmark = pytest.mark.agent
TOKEN = "exit-token"


class SameAnswer:
    """An HTTP server on 127.0.0.1 that answers every request with one status and body."""

    def __init__(self, status: int, body: bytes) -> None:
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def _answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.requests += 1
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> SameAnswer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def server() -> Iterator[ProtocolServer]:
    with ProtocolServer(token=TOKEN) as running:
        yield running


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "device.db"


def device_with_one_op(db: Path, endpoint: str) -> None:
    assert sync_agent(db, "init", "--endpoint", endpoint, "--token", TOKEN).returncode == 0
    assert sync_agent(db, "put", "prefs", "k", '{"a": 1}').returncode == 0


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one error line (log lines, such as an op quarantined, may come before it)."""
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("sync-agent: error:")]
    assert len(errors) == 1, done.stderr
    return errors[0]


def pending(db: Path) -> int:
    return int(json.loads(sync_agent(db, "status", "--json").stdout)["pending"])


# --- answers that retrying will not change: exit 1 ----------------------------------------


def test_a_wrong_endpoint_path_exits_1_naming_the_404(db: Path, server: ProtocolServer) -> None:
    # Given a device whose endpoint has a wrong path (every request is answered 404)
    device_with_one_op(db, server.url + "/wrong")
    # When it syncs
    done = sync_agent(db, "sync", "--timeout", "10")
    # Then it exits 1 naming the 404 and the fix, not "run sync again later"
    assert done.returncode == 1
    line = error_line(done)
    assert done.stderr.strip() == line
    assert "HTTP 404" in line and "endpoint" in line and "sync-agent init --endpoint" in line
    assert "again later" not in line
    # And it did not retry what cannot change, and lost nothing
    assert len(server.requests_to("/wrong/v1/batches")) == 1
    assert "nothing is lost: 1 op(s) wait in the outbox" in line and pending(db) == 1


def test_400_on_every_request_exits_1_and_counts_the_quarantined_ops(
    db: Path, server: ProtocolServer
) -> None:
    # Given a cloud that answers every request 400
    device_with_one_op(db, server.url)
    server.fail_next(400, times=100)
    # When the device syncs (its op is refused alone and quarantined, then the pull is too)
    done = sync_agent(db, "sync", "--timeout", "10")
    # Then it exits 1 naming the 400, says how many ops were quarantined and where to look
    assert done.returncode == 1
    line = error_line(done)
    assert "HTTP 400" in line and "malformed" in line
    assert "1 op(s) were quarantined in this sync" in line
    assert "sync-agent quarantine list" in line
    assert "nothing is lost" not in line
    listed = json.loads(sync_agent(db, "quarantine", "list", "--json").stdout)["quarantined"]
    assert len(listed) == 1


def test_a_200_that_breaks_the_protocol_exits_1(db: Path) -> None:
    with SameAnswer(200, b'{"unexpected": true}') as cloud:
        device_with_one_op(db, cloud.url)
        done = sync_agent(db, "sync", "--timeout", "10")
        requests = cloud.requests
    assert done.returncode == 1
    line = error_line(done)
    assert done.stderr.strip() == line
    assert "breaks the FieldSync protocol" in line and "sync-agent init --endpoint" in line
    assert requests == 2  # one push, one pull: no retry of what cannot change
    assert pending(db) == 1


def test_a_captive_portal_answering_html_exits_75_and_says_so(db: Path) -> None:
    # A field network's captive portal (or proxy) answers every request with its own page
    with SameAnswer(200, b"<html>Sign in to Camp WiFi</html>") as cloud:
        device_with_one_op(db, cloud.url)
        done = sync_agent(db, "sync", "--timeout", "3")
    assert done.returncode == 75
    line = error_line(done)
    assert "captive portal" in line and "nothing is lost: 1 op(s) wait" in line
    assert pending(db) == 1


def test_another_4xx_exits_1_with_its_status(db: Path) -> None:
    with SameAnswer(405, b"") as cloud:
        device_with_one_op(db, cloud.url)
        done = sync_agent(db, "sync", "--timeout", "10")
    assert done.returncode == 1
    line = error_line(done)
    assert "HTTP 405" in line and "retrying will not change" in line


# --- conditions that pass: exit 75 ----------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 429, 408])
def test_a_down_or_busy_cloud_exits_75_and_says_to_sync_again_later(
    db: Path, server: ProtocolServer, status: int
) -> None:
    device_with_one_op(db, server.url)
    server.fail_next(status, times=100)
    done = sync_agent(db, "sync", "--timeout", "10")
    assert done.returncode == 75
    line = error_line(done)
    assert done.stderr.strip() == line
    assert f"HTTP {status}" in line and "again later" in line
    assert "nothing is lost: 1 op(s) wait in the outbox" in line


def test_a_slow_cloud_that_outlasts_the_timeout_exits_75(db: Path, server: ProtocolServer) -> None:
    # Given a reachable cloud that takes a second to answer a batch
    device_with_one_op(db, server.url)
    server.batch_delay_s = 1.0
    # When the sync's own --timeout runs out meanwhile
    done = sync_agent(db, "sync", "--timeout", "0.5")
    # Then it exits 75, saying the time ran out and how to do better
    assert done.returncode == 75
    line = error_line(done)
    assert "did not finish within --timeout 0.5s" in line and "longer --timeout" in line


# --- the Python API behind it -----------------------------------------------------------------


def test_sync_keeps_the_failure_that_stopped_it_and_does_not_retry_a_404(
    tmp_path: Path, server: ProtocolServer
) -> None:
    with Agent.init(tmp_path / "d.db", endpoint=server.url + "/wrong", token=TOKEN) as agent:
        agent.put("prefs", "k", {"a": 1})
        summary = agent.sync(timeout=10)
        failure = agent.last_failure
        assert summary.stopped_by == "server_error" and not summary.synced
        assert isinstance(failure, ServerError) and failure.status == 404
        assert not retry_may_help(failure)
        assert len(server.requests_to("/wrong/v1/batches")) == 1
        # A sync that succeeds forgets it
        agent.state.update_settings(endpoint=server.url)
        assert agent.sync(timeout=10).synced and agent.last_failure is None


@pytest.mark.parametrize(("status", "helps"), [(500, True), (503, True), (599, True), (404, False)])
def test_retry_may_help(status: int, helps: bool) -> None:
    failure = Throttled(status, None, "") if status == 503 else ServerError(status, "")
    assert retry_may_help(failure) is helps
