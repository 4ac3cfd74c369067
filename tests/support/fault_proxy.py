"""A TCP proxy on 127.0.0.1 that injects network faults between a device agent and the gateway.

Tests point an agent at `proxy.url` and switch the fault at runtime:

    with FaultProxy(("127.0.0.1", gateway_port)) as proxy:
        proxy.set_fault(Fault.BLACKHOLE)          # the cloud is unreachable
        proxy.set_fault(Fault.CUT_AFTER_REQUEST)  # the server applies, the answer is lost
        proxy.flap([(Fault.NONE, 0.5), (Fault.RESET, 0.2)])  # alternate on a schedule
        proxy.set_fault(Fault.NONE)

The mode is read for every chunk, so a switch also hits kept-alive connections. The proxy is
bounded (at most `max_connections` at once, a black-holed connection is held at most
`blackhole_hold_s`) and self-stopping (after `lifetime_s`, or on `stop()`/context exit).
`injected` counts the faults that actually hit traffic, so a test can prove it was exercised.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Sequence
from enum import Enum
from types import TracebackType
from typing import Optional

_CHUNK = 65536
_POLL_S = 0.05


class Fault(str, Enum):
    NONE = "none"  # forward everything
    LATENCY = "latency"  # delay every chunk, both ways, by `latency_s`
    RESET = "reset"  # answer the next client bytes with a TCP reset
    BLACKHOLE = "blackhole"  # swallow the client's bytes and never answer
    CUT_AFTER_REQUEST = "cut_after_request"  # forward the request, drop the response, reset


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer sees ECONNRESET, not a clean EOF."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class FaultProxy:
    """A bounded, self-stopping fault-injecting TCP proxy to one upstream address."""

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        latency_s: float = 0.2,
        lifetime_s: float = 600.0,
        max_connections: int = 64,
        blackhole_hold_s: float = 60.0,
    ) -> None:
        self._upstream = upstream
        self._latency_s = latency_s
        self._lifetime_s = lifetime_s
        self._blackhole_hold_s = blackhole_hold_s
        self._slots = threading.BoundedSemaphore(max_connections)
        self._lock = threading.Lock()
        self._fault = Fault.NONE
        self._stopped = threading.Event()
        self._flap_stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.injected: Counter[Fault] = Counter()
        self.connections = 0
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.settimeout(_POLL_S)
        self.port: int = self._listener.getsockname()[1]

    # -- control -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def fault(self) -> Fault:
        with self._lock:
            return self._fault

    def set_fault(self, fault: Fault, *, latency_s: Optional[float] = None) -> None:
        """Switch the fault now (and stop any flapping schedule)."""
        self._stop_flapping()
        self._set(fault, latency_s)

    def flap(self, schedule: Sequence[tuple[Fault, float]], *, repeat: bool = True) -> None:
        """Cycle through `(fault, seconds)` steps in the background until changed or stopped."""
        if not schedule:
            raise ValueError("a flap schedule needs at least one (fault, seconds) step")
        self._stop_flapping()
        self._flap_stop = threading.Event()
        stop = self._flap_stop

        def run() -> None:
            while not stop.is_set() and not self._stopped.is_set():
                for fault, seconds in schedule:
                    self._set(fault, None)
                    if stop.wait(seconds):
                        return
                if not repeat:
                    self._set(Fault.NONE, None)
                    return

        self._spawn(run)

    def start(self) -> FaultProxy:
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._flap_stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        for thread in list(self._threads):
            if thread is not threading.current_thread():
                thread.join(timeout=2)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()

    # -- internals -----------------------------------------------------------------------

    def _set(self, fault: Fault, latency_s: Optional[float]) -> None:
        with self._lock:
            self._fault = fault
            if latency_s is not None:
                self._latency_s = latency_s

    def _stop_flapping(self) -> None:
        self._flap_stop.set()

    def _count(self, fault: Fault) -> None:
        with self._lock:
            self.injected[fault] += 1

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        deadline = time.monotonic() + self._lifetime_s
        while not self._stopped.is_set():
            if time.monotonic() > deadline:
                self._stopped.set()  # self-stopping: a forgotten proxy does not outlive its test
                break
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                break
            if not self._slots.acquire(blocking=False):
                _reset(client)
                continue
            self.connections += 1
            self._spawn(self._serve, client)
        with contextlib.suppress(OSError):
            self._listener.close()  # new connections are refused, not left hanging

    def _serve(self, client: socket.socket) -> None:
        upstream: Optional[socket.socket] = None
        try:
            upstream = socket.create_connection(self._upstream, timeout=5)
            _no_delay(client, upstream)
            self._pump(client, upstream)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                client.close()
            if upstream is not None:
                with contextlib.suppress(OSError):
                    upstream.close()
            self._slots.release()

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        holding_since: Optional[float] = None  # set once the connection is black-holed
        while not self._stopped.is_set():
            if (
                holding_since is not None
                and time.monotonic() - holding_since > self._blackhole_hold_s
            ):
                return
            readable, _, _ = select.select([client, upstream], [], [], _POLL_S)
            for sock in readable:
                data = sock.recv(_CHUNK)
                if not data:
                    return
                with self._lock:
                    fault, latency = self._fault, self._latency_s
                if holding_since is not None:
                    continue  # a black hole never answers, even if the fault was switched off
                if sock is client:
                    if fault is Fault.RESET:
                        self._count(fault)
                        _reset(client)
                        return
                    if fault is Fault.BLACKHOLE:
                        self._count(fault)
                        holding_since = time.monotonic()
                        continue
                    if fault is Fault.LATENCY:
                        self._count(fault)
                        time.sleep(latency)
                    upstream.sendall(data)
                else:
                    if fault is Fault.CUT_AFTER_REQUEST:
                        # The server answered, so it received and processed the request.
                        self._count(fault)
                        _reset(client)
                        return
                    if fault is Fault.LATENCY:
                        time.sleep(latency)
                    client.sendall(data)


def _no_delay(*sockets: socket.socket) -> None:
    """Forward small writes at once: with Nagle's algorithm a relayed body could wait for
    a delayed ACK (tens of ms per request)."""
    for sock in sockets:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
