"""A small, honest implementation of the FieldSync HTTP protocol for agent tests.

It validates batches with `shared.contracts.parse_batch`, resolves them with
`shared.conflict.apply_lww` in memory, serves `/v1/changes` from an append-only change
log, and checks the bearer token. Hooks inject what the real cloud does on a bad day:

    server.fail_next(503, retry_after=1)      # whole-request errors, in order
    server.drop_next()                        # apply the batch, then lose the answer
    server.offline = True                     # close every connection unanswered
    server.poison("bad")                      # a batch holding key "bad" is answered 400
    server.max_ops = 3                        # batches over the limit are answered 413
    server.now_ms = lambda: ...               # the server's clock (for clock_ahead)
    server.batch_delay_s = 0.2                # a slow cloud
    server.force("op-id", "queued")           # answer one op with a given status
    server.expire_cursors()                   # cursors issued so far answer 410
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, urlparse

from shared.conflict import apply_lww
from shared.contracts import (
    BatchResponse,
    ContractError,
    ErrorCode,
    HybridLogicalClock,
    Op,
    OpError,
    OpResult,
    OpStatus,
    Record,
    RejectedOp,
    encoded_size,
    limits,
    parse_batch,
    parse_hlc,
)


@dataclass(frozen=True)
class Seen:
    """One request the server received."""

    method: str
    path: str
    status: int
    ops: int
    at: float
    gzipped: bool = False


class ProtocolServer:
    def __init__(self, *, token: str = "test-token") -> None:
        self.token: Optional[str] = token
        self.max_ops = limits.MAX_OPS_PER_BATCH
        self.max_bytes = limits.MAX_BATCH_BYTES
        self.skew_s = limits.MAX_CLOCK_SKEW_S
        self.now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000
        self.offline = False
        self.batch_delay_s = 0.0  # slow every POST /v1/batches down (outside the lock)
        self.records: dict[tuple[str, str], Record] = {}
        self.applied: Counter[str] = Counter()  # op_id -> times it took effect
        self.seen: list[Seen] = []
        self.arrivals: list[Op] = []  # every valid op received, in arrival order
        self._log: list[tuple[str, str]] = []  # change log: index + 1 is the cursor
        self._epoch = 0  # cursors are "<epoch>.<position>"; older epochs have expired
        self._failures: list[tuple[int, Optional[float], str]] = []
        self._drops = 0
        self._poison: set[str] = set()
        self._forced: dict[str, tuple[OpStatus, Optional[ErrorCode]]] = {}
        self._omitted: set[str] = set()
        # Answer superseded and merged without `record`, as the cloud does past its response
        # budget (shared/logic/batches.py).
        self.records_left_out = False
        self._lock = threading.RLock()
        self._clock = HybridLogicalClock("server", now_ms=lambda: self.now_ms())  # noqa: PLW0108 (now_ms is swappable)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> ProtocolServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> ProtocolServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- hooks -------------------------------------------------------------------------

    def fail_next(
        self, status: int, *, times: int = 1, retry_after: Optional[float] = None, path: str = ""
    ) -> None:
        """Answer the next `times` requests (to `path`, or any authenticated path) `status`."""
        with self._lock:
            self._failures += [(status, retry_after, path)] * times

    def drop_next(self, times: int = 1) -> None:
        with self._lock:
            self._drops += times

    def poison(self, key: str) -> None:
        with self._lock:
            self._poison.add(key)

    def force(self, op_id: str, status: str, code: Optional[str] = None) -> None:
        with self._lock:
            self._forced[op_id] = (OpStatus(status), ErrorCode(code) if code else None)

    def omit(self, op_id: str) -> None:
        """Leave this op's result out of every answer (a broken server)."""
        with self._lock:
            self._omitted.add(op_id)

    def expire_cursors(self) -> None:
        with self._lock:
            self._epoch += 1

    def document(self, collection: str, key: str) -> Optional[dict[str, Any]]:
        with self._lock:
            record = self.records.get((collection, key))
            return None if record is None or record.deleted else dict(record.data)

    def requests_to(self, path: str) -> list[Seen]:
        with self._lock:
            return [seen for seen in self.seen if seen.path == path]

    def write_as_other_device(self, op: Op) -> None:
        """Apply an op as if another device had sent it."""
        with self._lock:
            self._apply(op)
            self.arrivals.pop()

    # -- the protocol ------------------------------------------------------------------

    def _apply(self, op: Op) -> OpResult:
        self.arrivals.append(op)
        forced = self._forced.get(op.op_id)
        if forced is not None:
            status, code = forced
            error = OpError(code, "forced by the test") if code else None
            return OpResult(op.op_id, status, error=error)
        ahead_ms = parse_hlc(op.hlc).physical_ms - self.now_ms()
        if ahead_ms > self.skew_s * 1000:
            error = OpError(
                ErrorCode.CLOCK_AHEAD,
                f"op is {ahead_ms // 1000}s ahead of the server clock",
                {"server_time": self._clock.send()},
            )
            return OpResult(op.op_id, OpStatus.REJECTED, error=error)
        resolution = apply_lww(self.records.get((op.collection, op.key)), op)
        if resolution.changed:
            self.records[(op.collection, op.key)] = resolution.record
            self._log.append((op.collection, op.key))
            self.applied[op.op_id] += 1
        record = (
            resolution.record
            if resolution.status in (OpStatus.SUPERSEDED, OpStatus.MERGED)
            and not self.records_left_out
            else None
        )
        return OpResult(op.op_id, resolution.status, record=record)

    def handle_batch(self, body: Any) -> tuple[int, dict[str, Any]]:
        try:
            parsed = parse_batch(body, max_ops=self.max_ops)
        except ContractError as exc:
            return 400, _error("bad_request", str(exc))
        except ValueError as exc:  # BatchTooLarge
            return 413, _error("payload_too_large", str(exc), limits=self._limits())
        if any(isinstance(i, Op) and i.key in self._poison for i in parsed.items):
            return 400, _error("bad_request", "ops: a poisoned op (injected)")
        results = [
            item.to_result() if isinstance(item, RejectedOp) else self._apply(item)
            for item in parsed.items
        ]
        results = [result for result in results if result.op_id not in self._omitted]
        response = BatchResponse(parsed.batch_id, self._clock.send(), results)
        return 200, response.to_wire()

    def _limits(self) -> dict[str, int]:
        """The limits as the cloud states them in a 413's details (shared/logic/body.py)."""
        return {"max_ops": self.max_ops, "max_bytes": self.max_bytes}

    def handle_changes(self, query: dict[str, list[str]]) -> tuple[int, dict[str, Any]]:
        epoch_text, _, after_text = (query.get("after") or ["0.0"])[0].rpartition(".")
        limit = int((query.get("limit") or [str(limits.DEFAULT_CHANGES_LIMIT)])[0])
        if not (epoch_text.isdigit() and after_text.isdigit()):
            return 400, _error("invalid_cursor", "cursor is not one this server issued")
        after = int(after_text)
        if after and int(epoch_text) < self._epoch:
            return 410, _error("cursor_expired", "cursor is older than the retention; resync")
        window = self._log[after : after + limit]
        position = after + len(window)
        keys = list(dict.fromkeys(window))
        changes = [self.records[key].to_wire() for key in keys]
        cursor = f"{self._epoch}.{position}"
        return 200, {"changes": changes, "cursor": cursor, "has_more": position < len(self._log)}


def _error(code: str, message: str, **details: Any) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = details
    return {"error": error}


def _handler_for(server: ProtocolServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # else each body waits ~40 ms for a delayed ACK

        def log_message(self, format: str, *args: Any) -> None:
            return None

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def _serve(self, method: str) -> None:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if url.path == "/v1/batches" and server.batch_delay_s:
                time.sleep(server.batch_delay_s)
            with server._lock:
                if server.offline:
                    self.close_connection = True
                    return
                status, body, drop, retry_after = self._answer(method, url.path, url.query, raw)
                ops = len(body.get("results", [])) if isinstance(body, dict) else 0
                gzipped = self.headers.get("Content-Encoding") == "gzip"
                server.seen.append(Seen(method, url.path, status, ops, time.monotonic(), gzipped))
            if drop:
                self.close_connection = True
                return
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if retry_after is not None:
                self.send_header("Retry-After", f"{retry_after:g}")
            self.end_headers()
            self.wfile.write(payload)

        def _answer(
            self, method: str, path: str, query: str, raw: bytes
        ) -> tuple[int, Any, bool, Optional[float]]:
            if path == "/v1/health" and method == "GET":
                return (
                    200,
                    {"status": "ok", "server_time": server._clock.send(), "protocol": 1},
                    False,
                    None,
                )
            if self.headers.get("Authorization") != f"Bearer {server.token}" or not server.token:
                return 401, _error("unauthorized", "token missing, invalid or revoked"), False, None
            for index, (status, retry_after, only) in enumerate(server._failures):
                if not only or only == path:
                    del server._failures[index]
                    return (
                        status,
                        _error("injected", f"HTTP {status} (injected)"),
                        False,
                        retry_after,
                    )
            if path == "/v1/batches" and method == "POST":
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                if len(raw) > server.max_bytes:
                    return (
                        413,
                        _error("payload_too_large", "body too large", limits=server._limits()),
                        False,
                        None,
                    )
                try:
                    body = json.loads(raw)
                except ValueError:
                    return 400, _error("bad_request", "body is not JSON"), False, None
                status, answer = server.handle_batch(body)
                drop = status == 200 and server._drops > 0
                if drop:
                    server._drops -= 1
                return status, answer, drop, None
            if path == "/v1/changes" and method == "GET":
                status, answer = server.handle_changes(parse_qs(query))
                return status, answer, False, None
            return 404, _error("not_found", f"no route {method} {path}"), False, None

    return Handler


def op_size(op: Op) -> int:
    return encoded_size(op.to_wire())
