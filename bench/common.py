"""Shared plumbing for the benchmarks: machine facts, goals, bounded timing, a counting proxy.

Every benchmark module exposes `run(quick: bool) -> dict` (JSON-serialisable results) and
`render(results: dict, ctx: Context) -> Section` (markdown text, plots and goal verdicts).
`bench.run_all` stitches the sections into docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import platform
import re
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
IMG = DOCS / "img"
PYTHON = sys.executable


@dataclass(frozen=True)
class Goal:
    """One stated goal and the measured figure it is judged on."""

    name: str
    target: str
    figure: str
    met: Optional[bool]  # None: not measured

    @property
    def verdict(self) -> str:
        if self.met is None:
            return "not measured"
        return "met" if self.met else "**MISSED**"


@dataclass
class Section:
    """A `## title` section of docs/benchmarks.md."""

    title: str
    body: str
    goals: list[Goal] = field(default_factory=list)
    images: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Context:
    """What every section states: how it was produced, when, and on what."""

    command: str
    date: str
    machine: str
    quick: bool
    code: str = ""


def machine() -> str:
    """Cores, Python, OS: the facts that make a figure comparable."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().splitlines()[0].split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    return (
        f"{os.cpu_count()} cores ({cpu}){mem}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def code_version() -> str:
    """The commit measured, and whether code outside bench/ and docs/ had local changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return ""
    changed = [line[3:] for line in status if not line[3:].startswith(("bench/", "docs/"))]
    if not changed:
        return f"commit {head}"
    return f"commit {head} with uncommitted changes to {len(changed)} file(s) outside bench/"


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def header(ctx: Context) -> str:
    """The provenance lines every section starts with."""
    mode = " (quick smoke run: small sizes, not for quoting)" if ctx.quick else ""
    load = ""
    with contextlib.suppress(OSError, AttributeError):
        load = f" (load average {os.getloadavg()[0]:.2f} when this section was written)"
    code = f"  \nCode: {ctx.code}" if ctx.code else ""
    return (
        f"Command: `{ctx.command}`{mode}  \nDate: {ctx.date}  \n"
        f"Machine: {ctx.machine}{load}{code}\n"
    )


def goals_table(goals: Sequence[Goal]) -> str:
    if not goals:
        return ""
    rows = ["| goal | target | measured | verdict |", "|---|---|---|---|"]
    rows += [f"| {g.name} | {g.target} | {g.figure} | {g.verdict} |" for g in goals]
    return "\n".join(rows) + "\n"


def table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def fmt(x: float, digits: int = 3) -> str:
    """A number with `digits` significant figures, thousands separated when large."""
    if math.isnan(x):
        return "n/a"
    if abs(x) >= 10 ** (digits - 1):
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Deadline:
    """A wall-clock budget: loops check `expired` so no benchmark can run away."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self._end

    @property
    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# -- a counting, black-holing TCP proxy ------------------------------------------------------


_REQUEST_LINE = re.compile(rb"(GET|POST|PUT|DELETE|HEAD) (/[^ \r\n]{0,200}) HTTP/1\.1\r\n")
_TAIL = 256


class CountingProxy:
    """A TCP proxy on 127.0.0.1 that counts bytes each way and can black-hole the link.

    `blackhole()` drops every open connection silently (the peer sees nothing: no RST, no
    FIN) and holds new ones without answering, as a dead cell link does; `restore()` forwards
    again and records the instant, so a benchmark can time from "the link came back".
    Bounded: at most `max_connections`, and it stops itself after `lifetime_s`.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        lifetime_s: float = 900.0,
        max_connections: int = 256,
    ) -> None:
        self.upstream = upstream
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._dead = False
        self._epoch = 0  # bumped by blackhole(): older connections are abandoned
        self._open: set[socket.socket] = set()
        self._max = max_connections
        self._lifetime = lifetime_s
        self.bytes_up = 0  # client -> server
        self.bytes_down = 0  # server -> client
        self.connections = 0
        self.requests = 0  # HTTP/1.1 request lines seen client -> server
        self.request_log: list[tuple[float, str]] = []  # (when forwarded, "METHOD /path")
        self.restored_at: Optional[float] = None
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> CountingProxy:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def reset_counters(self) -> None:
        with self._lock:
            self.bytes_up = self.bytes_down = self.connections = self.requests = 0
            self.request_log = []

    def blackhole(self) -> None:
        with self._lock:
            self._dead = True
            self._epoch += 1

    def restore(self) -> float:
        with self._lock:
            self._dead = False
            self.restored_at = time.monotonic()
            return self.restored_at

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            for sock in list(self._open):
                with contextlib.suppress(OSError):
                    sock.close()
            self._open.clear()
        self._thread.join(2.0)

    def __enter__(self) -> CountingProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        self._listener.settimeout(0.1)
        while not self._stop.is_set():
            if time.monotonic() - self._started > self._lifetime:
                self._stop.set()
                break
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                break
            with self._lock:
                too_many = len(self._open) >= self._max
                if not too_many:
                    self._open.add(client)
                    self.connections += 1
            if too_many:
                client.close()
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            epoch = self._epoch
        upstream: Optional[socket.socket] = None
        try:
            # A connection opened while the link is dead is held, unanswered. When the link
            # comes back it goes through only if its client is still waiting (as a TCP
            # retransmission would); one whose client gave up is dropped, not replayed.
            held = False
            while self._is_dead() and not self._stop.is_set():
                held = True
                time.sleep(0.02)
            pending = self._pending(client) if held else b""
            if pending is None:
                return
            with self._lock:
                epoch = self._epoch
            upstream = socket.create_connection(self.upstream, timeout=5.0)
            _no_delay(client, upstream)
            with self._lock:
                self._open.add(upstream)
            self._pump(client, upstream, epoch, pending)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(client)
                if upstream is not None:
                    self._open.discard(upstream)
            for sock in (client, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()

    def _is_dead(self) -> bool:
        with self._lock:
            return self._dead

    def _abandoned(self, epoch: int) -> bool:
        with self._lock:
            return self._epoch != epoch

    @staticmethod
    def _pending(client: socket.socket) -> Optional[bytes]:
        """What a held client has sent so far, or None if it has closed (gave up)."""
        chunks: list[bytes] = []
        client.setblocking(False)
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    return None
                chunks.append(data)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            return None
        finally:
            with contextlib.suppress(OSError):
                client.setblocking(True)
        return b"".join(chunks)

    def _pump(
        self, client: socket.socket, upstream: socket.socket, epoch: int, pending: bytes = b""
    ) -> None:
        peers = {client: upstream, upstream: client}
        tail = b""  # the end of the previous chunk, so a request line split in two counts
        while not self._stop.is_set():
            if self._abandoned(epoch):
                # Black-holed: swallow everything until the client gives up, never answer.
                self._swallow(client)
                return
            if pending:
                readable, pending_data = [client], pending
                pending = b""
            else:
                readable, _, _ = select.select(list(peers), [], [], 0.05)
                pending_data = b""
            for sock in readable:
                data = pending_data or sock.recv(65536)
                pending_data = b""
                if not data:
                    return
                if self._abandoned(epoch):
                    break
                with self._lock:
                    if sock is client:
                        self.bytes_up += len(data)
                        window = tail + data
                        for match in _REQUEST_LINE.finditer(window):
                            if match.end() > len(tail):  # not counted with the last chunk
                                self.requests += 1
                                if len(self.request_log) < 10_000:
                                    line = (match.group(1) + b" " + match.group(2)).decode()
                                    self.request_log.append((time.monotonic(), line))
                        tail = window[-_TAIL:]
                    else:
                        self.bytes_down += len(data)
                peers[sock].sendall(data)

    def _swallow(self, client: socket.socket) -> None:
        end = time.monotonic() + 60.0
        while not self._stop.is_set() and time.monotonic() < end:
            readable, _, _ = select.select([client], [], [], 0.05)
            if readable and not client.recv(65536):
                return


@contextlib.contextmanager
def process(
    args: Sequence[str], *, env: Optional[dict[str, str]] = None, stderr: Any = subprocess.PIPE
) -> Iterator[Any]:
    """A subprocess that is always terminated (by its own pid) when the block ends."""
    proc = subprocess.Popen(
        list(args),
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


# -- the local cloud --------------------------------------------------------------------------


@dataclass
class LocalStack:
    """A running `sync-local serve` subprocess: its endpoint, dev token and moto resources."""

    proc: Any
    endpoint: str
    token: str
    resources: dict[str, Any]

    def register(self, tenant: str, device: str) -> str:
        """A new device token, through sync-local's own registration route."""
        import requests

        answer = requests.post(
            self.endpoint + "/_local/devices",
            json={"tenant": tenant, "device": device},
            timeout=30,
        )
        answer.raise_for_status()
        return str(answer.json()["token"])


@contextlib.contextmanager
def local_stack(
    *extra: str, env: Optional[dict[str, str]] = None, timeout: float = 90.0
) -> Iterator[LocalStack]:
    """Start `sync-local serve --port 0` (the real embedded cloud) and stop it afterwards."""
    import requests

    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    args = [PYTHON, "-m", "local.cli", "serve", "--port", "0", *extra]
    # stderr to a file: a pipe nobody reads could fill up and block the server.
    with tempfile.TemporaryFile(mode="w+") as log, process(args, env=full_env, stderr=log) as proc:
        lines: list[str] = []
        reader = threading.Thread(
            target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True
        )
        reader.start()
        end = time.monotonic() + timeout
        endpoint = token = ""
        while time.monotonic() < end and not (endpoint and token):
            if proc.poll() is not None:
                log.seek(0)
                raise RuntimeError(f"sync-local exited: {log.read()[-800:]}")
            for line in list(lines):
                if line.startswith("endpoint:"):
                    endpoint = line.split(":", 1)[1].strip()
                elif line.startswith("token:"):
                    token = line.split(":", 1)[1].strip()
            time.sleep(0.1)
        if not (endpoint and token):
            raise RuntimeError(f"sync-local did not start within {timeout:g} s")
        resources = requests.get(endpoint + "/_local/resources", timeout=30).json()
        yield LocalStack(proc, endpoint, token, resources)


def _no_delay(*sockets: socket.socket) -> None:
    """Forward small writes at once: with Nagle's algorithm a relayed body could wait for
    a delayed ACK (tens of ms per request)."""
    for sock in sockets:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
