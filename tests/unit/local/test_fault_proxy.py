"""The test fault proxy: each fault kind does to real HTTP traffic what its name says."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.fault_proxy import Fault, FaultProxy


class _Upstream(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _CountingHandler)
        self.requests_seen = 0


class _CountingHandler(BaseHTTPRequestHandler):
    server: _Upstream

    def do_GET(self) -> None:
        self.server.requests_seen += 1
        body = b"pong"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[_Upstream]:
    server = _Upstream()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(upstream: _Upstream) -> Iterator[FaultProxy]:
    with FaultProxy(("127.0.0.1", upstream.server_address[1]), latency_s=0.3) as running:
        yield running


def _get(proxy: FaultProxy, timeout: float = 2.0) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=timeout)
    try:
        connection.request("GET", "/ping")
        return connection.getresponse().read().decode()
    finally:
        connection.close()


def test_without_a_fault_requests_pass_through(proxy: FaultProxy, upstream: _Upstream) -> None:
    assert _get(proxy) == "pong"
    assert upstream.requests_seen == 1
    assert not proxy.injected


def test_latency_delays_the_answer(proxy: FaultProxy) -> None:
    proxy.set_fault(Fault.LATENCY)
    started = time.monotonic()
    assert _get(proxy) == "pong"
    assert time.monotonic() - started >= 0.5  # request and response each held 0.3 s


def test_reset_fails_the_request_before_the_server_sees_it(
    proxy: FaultProxy, upstream: _Upstream
) -> None:
    proxy.set_fault(Fault.RESET)
    with pytest.raises(OSError):
        _get(proxy)
    assert upstream.requests_seen == 0
    assert proxy.injected[Fault.RESET] == 1


def test_blackhole_never_answers_and_the_client_times_out(
    proxy: FaultProxy, upstream: _Upstream
) -> None:
    proxy.set_fault(Fault.BLACKHOLE)
    with pytest.raises(TimeoutError):
        _get(proxy, timeout=0.5)
    assert upstream.requests_seen == 0


def test_cut_after_request_reaches_the_server_but_loses_the_answer(
    proxy: FaultProxy, upstream: _Upstream
) -> None:
    proxy.set_fault(Fault.CUT_AFTER_REQUEST)
    with pytest.raises((OSError, http.client.HTTPException)):
        _get(proxy)
    assert upstream.requests_seen == 1
    assert proxy.injected[Fault.CUT_AFTER_REQUEST] == 1


def test_switching_back_to_none_restores_traffic(proxy: FaultProxy) -> None:
    proxy.set_fault(Fault.RESET)
    with pytest.raises(OSError):
        _get(proxy)
    proxy.set_fault(Fault.NONE)
    assert _get(proxy) == "pong"


def test_flapping_alternates_between_failures_and_success(proxy: FaultProxy) -> None:
    proxy.flap([(Fault.NONE, 0.15), (Fault.RESET, 0.15)])
    outcomes: set[str] = set()
    deadline = time.monotonic() + 3
    while len(outcomes) < 2 and time.monotonic() < deadline:
        try:
            outcomes.add(_get(proxy))
        except OSError:
            outcomes.add("reset")
        time.sleep(0.05)
    assert outcomes == {"pong", "reset"}


def test_a_proxy_stops_itself_after_its_lifetime(upstream: _Upstream) -> None:
    with FaultProxy(("127.0.0.1", upstream.server_address[1]), lifetime_s=0.2) as short:
        time.sleep(0.5)
        with pytest.raises(OSError):
            _get(short, timeout=0.5)
