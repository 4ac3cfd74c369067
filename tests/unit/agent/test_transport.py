"""HttpTransport against a real protocol server on 127.0.0.1: one typed outcome per answer."""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from device_agent.outcomes import (
    Accepted,
    AuthFailed,
    BadRequest,
    CursorExpired,
    Healthy,
    Page,
    ServerError,
    Throttled,
    TooLarge,
    Unreachable,
)
from device_agent.transport import (
    HttpTransport,
    new_batch_id,
    op_bytes,
    parse_retry_after,
    plan_batches,
)
from shared.contracts import Op, OpKind, OpStatus
from tests.support.protocol_server import ProtocolServer

pytestmark = pytest.mark.agent

TOKEN = "s3cret-device-token"


def make_op(n: int, *, size: int = 10, key: str = "") -> Op:
    return Op(
        op_id=f"op-{n}",
        collection="notes",
        key=key or f"k{n}",
        kind=OpKind.PUT,
        hlc=f"1764000000000-{n:05d}-dev-1",
        data={"text": "x" * size},
    )


@pytest.fixture
def server() -> Iterator[ProtocolServer]:
    with ProtocolServer(token=TOKEN) as running:
        yield running


@pytest.fixture
def transport(server: ProtocolServer) -> Iterator[HttpTransport]:
    client = HttpTransport(server.url, TOKEN, connect_timeout=1.0, read_timeout=2.0)
    yield client
    client.close()


def test_a_batch_is_accepted_with_one_result_per_op_in_order(
    transport: HttpTransport, server: ProtocolServer
) -> None:
    outcome = transport.push(new_batch_id(), [make_op(1), make_op(2)])
    assert isinstance(outcome, Accepted)
    assert [r.op_id for r in outcome.response.results] == ["op-1", "op-2"]
    assert {r.status for r in outcome.response.results} == {OpStatus.APPLIED}
    assert outcome.traffic.sent > 0 and outcome.traffic.received > 0
    assert server.document("notes", "k1") == {"text": "x" * 10}


def test_bodies_over_the_threshold_are_gzipped_and_small_ones_are_not(
    server: ProtocolServer,
) -> None:
    client = HttpTransport(server.url, TOKEN, gzip_threshold=1024)
    small = client.push(new_batch_id(), [make_op(1)])
    big = client.push(new_batch_id(), [make_op(2, size=50_000)])
    assert isinstance(small, Accepted) and isinstance(big, Accepted)
    assert [seen.gzipped for seen in server.requests_to("/v1/batches")] == [False, True]
    assert big.traffic.sent < 50_000  # what went on the wire is the compressed body


def test_health_needs_no_token_and_reports_the_server_time(server: ProtocolServer) -> None:
    outcome = HttpTransport(server.url, "wrong").health()
    assert isinstance(outcome, Healthy)
    assert outcome.server_time.endswith("-server")


def test_pull_returns_a_page_of_changes(transport: HttpTransport) -> None:
    transport.push(new_batch_id(), [make_op(1), make_op(2)])
    outcome = transport.pull(None, 1)
    assert isinstance(outcome, Page)
    assert [r.key for r in outcome.page.changes] == ["k1"] and outcome.page.has_more


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, BadRequest),
        (401, AuthFailed),
        (403, AuthFailed),
        (413, TooLarge),
        (429, Throttled),
        (503, Throttled),
        (500, ServerError),
        (502, ServerError),
    ],
)
def test_each_whole_request_error_has_its_own_outcome(
    transport: HttpTransport, server: ProtocolServer, status: int, expected: type
) -> None:
    server.fail_next(status)
    assert isinstance(transport.push(new_batch_id(), [make_op(1)]), expected)


def test_throttling_carries_the_retry_after_seconds(
    transport: HttpTransport, server: ProtocolServer
) -> None:
    server.fail_next(429, retry_after=7)
    outcome = transport.push(new_batch_id(), [make_op(1)])
    assert isinstance(outcome, Throttled) and outcome.retry_after == 7.0


def test_an_expired_cursor_is_its_own_outcome(
    transport: HttpTransport, server: ProtocolServer
) -> None:
    transport.push(new_batch_id(), [make_op(1), make_op(2)])
    server.expire_cursors()
    assert isinstance(transport.pull("0.1", 10), CursorExpired)


def test_a_wrong_token_is_an_auth_failure(server: ProtocolServer) -> None:
    outcome = HttpTransport(server.url, "not-the-token").push(new_batch_id(), [make_op(1)])
    assert isinstance(outcome, AuthFailed) and outcome.status == 401


def test_a_refused_connection_is_unreachable_not_an_exception() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    outcome = HttpTransport(f"http://127.0.0.1:{port}", TOKEN).push(new_batch_id(), [make_op(1)])
    assert isinstance(outcome, Unreachable)


def test_a_server_that_never_answers_times_out_as_unreachable() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # accepts the connection in the backlog, never answers
        port = listener.getsockname()[1]
        client = HttpTransport(f"http://127.0.0.1:{port}", TOKEN, read_timeout=0.3)
        outcome = client.push(new_batch_id(), [make_op(1)])
    assert isinstance(outcome, Unreachable) and "timed out" in outcome.reason


def test_a_black_holed_health_probe_gives_up_after_the_probe_timeout_not_the_read_timeout() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)  # the link holds the probe and never answers
        port = listener.getsockname()[1]
        client = HttpTransport(
            f"http://127.0.0.1:{port}", TOKEN, read_timeout=30.0, probe_timeout=0.3
        )
        started = time.monotonic()
        outcome = client.health()
        waited = time.monotonic() - started
    assert isinstance(outcome, Unreachable) and "timed out" in outcome.reason
    assert waited < 5.0


def test_the_token_is_never_logged_nor_shown(
    server: ProtocolServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = HttpTransport(server.url, TOKEN)
    client.push(new_batch_id(), [make_op(1)])
    server.fail_next(401)
    client.push(new_batch_id(), [make_op(2)])
    assert caplog.records, "the transport is expected to log its requests"
    assert TOKEN not in caplog.text
    assert TOKEN not in repr(client)


def test_batches_are_bounded_by_op_count_and_by_bytes_keeping_order() -> None:
    ops = [make_op(n, size=100) for n in range(10)]
    by_count = plan_batches(ops, max_ops=4, max_bytes=10**6)
    assert [len(batch) for batch in by_count] == [4, 4, 2]
    by_bytes = plan_batches(ops, max_ops=500, max_bytes=64 + 3 * op_bytes(ops[0]))
    assert [len(batch) for batch in by_bytes] == [3, 3, 3, 1]
    assert [op for batch in by_bytes for op in batch] == ops


def test_an_op_bigger_than_the_byte_limit_still_gets_a_batch_of_its_own() -> None:
    ops = [make_op(1), make_op(2, size=5000), make_op(3)]
    assert [len(b) for b in plan_batches(ops, max_ops=10, max_bytes=1000)] == [1, 1, 1]


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=1445412500.0) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


class _MixedUpAnswers(BaseHTTPRequestHandler):
    """A broken server or proxy: answers every batch with another batch's results."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps(
            {
                "batch_id": "someone-elses-batch",
                "server_time": "1764000000000-00000-server",
                "results": [{"op_id": "op-1", "status": "applied"}],
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_an_answer_for_another_batch_is_a_server_error_not_an_ack() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _MixedUpAnswers)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = HttpTransport(f"http://127.0.0.1:{server.server_address[1]}", TOKEN)
        outcome = client.push(new_batch_id(), [make_op(1)])
    finally:
        server.shutdown()
        server.server_close()
    assert isinstance(outcome, ServerError)
    assert "mixed up" in outcome.message


class _TricklingPage(BaseHTTPRequestHandler):
    """A changes page sent one byte every 50 ms (a very slow link): 10 s for the page."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = json.dumps({"changes": [], "cursor": "c" * 170, "has_more": False}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            for byte in body:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:
            pass  # the client gave up


def test_an_answer_trickling_in_past_the_deadline_is_given_up_on() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TricklingPage)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = HttpTransport(f"http://127.0.0.1:{server.server_address[1]}", TOKEN)
        started = time.monotonic()
        outcome = client.pull(None, 10, deadline=started + 1.0)
        elapsed = time.monotonic() - started
    finally:
        server.shutdown()
        server.server_close()
    # Every byte came within the read timeout, yet the call ends at its deadline
    assert isinstance(outcome, Unreachable) and "no time left" in outcome.reason
    assert elapsed < 2.0, elapsed


def _broken_answer_server(mode: str) -> tuple[socket.socket, int]:
    """A server that starts a 200 answer, then breaks it (`mode`): reset, short, badgzip."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    body = json.dumps({"changes": [], "cursor": "c", "has_more": False, "pad": "x" * 1000})

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(65536)
                # (it closes each connection: the client must not reuse one)
                head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                if mode == "deep":  # JSON nested past the parser (a broken proxy)
                    deep = b"[" * 200_000
                    conn.sendall(f"{head}Content-Length: {len(deep)}\r\n\r\n".encode() + deep)
                    continue
                if mode == "badgzip":
                    conn.sendall(
                        f"{head}Content-Encoding: gzip\r\nContent-Length: 20\r\n\r\n".encode()
                        + b"\x1f\x8bnot gzip at all 1234"[:20]
                    )
                    continue
                conn.sendall(
                    f"{head}Content-Length: {len(body) + 100}\r\n\r\n".encode()
                    + body[:500].encode()
                )
                if mode == "reset":
                    time.sleep(0.1)
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    threading.Thread(target=serve, daemon=True).start()
    return listener, listener.getsockname()[1]


@pytest.mark.parametrize("mode", ["reset", "short", "badgzip", "deep"])
def test_an_answer_broken_midway_is_an_outcome_not_an_exception(mode: str) -> None:
    listener, port = _broken_answer_server(mode)
    try:
        client = HttpTransport(f"http://127.0.0.1:{port}", TOKEN, read_timeout=2.0)
        for deadline in (time.monotonic() + 10.0, None):
            outcome = client.pull(None, 10, deadline=deadline)
            expected = ServerError if mode == "deep" else Unreachable
            assert isinstance(outcome, expected), (deadline, outcome)
    finally:
        listener.close()
