"""HTTP to the FieldSync API: one typed outcome per whole-request result (PROTOCOL.md).

The sync engine never sees an exception from the network: every call returns a value it
can act on (the outcomes of `device_agent.outcomes`: `Accepted`, `Page`, `BadRequest`,
`AuthFailed`, `TooLarge`, `CursorExpired`, `Throttled`, `ServerError`, `Unreachable`).
`Transport` is the interface; `HttpTransport` speaks HTTP with `requests`, and
`device_agent.testing.FaultTransport` wraps any transport to inject failures.

The device token goes only into the Authorization header: it is never logged and never
shown by `repr`.
"""

from __future__ import annotations

import email.utils
import gzip
import json
import logging
import math
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional, Protocol, Union

from device_agent.outcomes import (
    NOT_JSON,
    Accepted,
    AuthFailed,
    BadRequest,
    CursorExpired,
    Failure,
    HealthOutcome,
    Healthy,
    Page,
    PullOutcome,
    PushOutcome,
    ServerError,
    Throttled,
    TooLarge,
    Traffic,
    Unreachable,
)
from shared.contracts import (
    ContractError,
    Op,
    encoded_size,
    limits,
    parse_batch_response,
    parse_changes_page,
)

if TYPE_CHECKING:
    import requests

log = logging.getLogger("device_agent.transport")

DEFAULT_GZIP_THRESHOLD = 8 * 1024
# Bytes of the batch envelope around the ops: {"batch_id":"<36>","ops":[...]} and commas.
_ENVELOPE_BYTES = 64


class Transport(Protocol):
    """What the sync engine needs from the network. Implementations never raise for
    network or HTTP failures: they return the matching outcome. A `deadline` (a
    `time.monotonic()` reading) bounds how long a call may wait for its answer: past it, the
    call gives up with `Unreachable`."""

    def health(self) -> HealthOutcome: ...

    def push(
        self, batch_id: str, ops: Sequence[Op], *, deadline: Optional[float] = None
    ) -> PushOutcome: ...

    def pull(
        self, after: Optional[str], limit: int, *, deadline: Optional[float] = None
    ) -> PullOutcome: ...

    def close(self) -> None: ...


def new_batch_id() -> str:
    return str(uuid.uuid4())


def batch_body(batch_id: str, ops: Sequence[Op]) -> dict[str, Any]:
    return {"batch_id": batch_id, "ops": [op.to_wire() for op in ops]}


def op_bytes(op: Op) -> int:
    """The op's share of a batch body (its encoded size plus a separating comma)."""
    return encoded_size(op.to_wire()) + 1


def plan_batches(
    ops: Sequence[Op],
    max_ops: int = limits.MAX_OPS_PER_BATCH,
    max_bytes: int = limits.MAX_BATCH_BYTES,
) -> list[list[Op]]:
    """Split `ops`, keeping their order, into batches bounded by op count AND encoded bytes.

    An op bigger than `max_bytes` on its own still gets a batch of one: the server answers it
    (`rejected`/`too_large` or 413) and the engine quarantines it, instead of it blocking others.
    """
    if max_ops < 1:
        raise ValueError("max_ops must be at least 1")
    batches: list[list[Op]] = []
    current: list[Op] = []
    size = _ENVELOPE_BYTES
    for op in ops:
        cost = op_bytes(op)
        if current and (len(current) >= max_ops or size + cost > max_bytes):
            batches.append(current)
            current, size = [], _ENVELOPE_BYTES
        current.append(op)
        size += cost
    if current:
        batches.append(current)
    return batches


def parse_retry_after(value: Optional[str], *, now: Optional[float] = None) -> Optional[float]:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date. None if absent/bad."""
    if not value:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _error_of(body: Any) -> tuple[str, str, dict[str, Any]]:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        details = err.get("details") if isinstance(err.get("details"), dict) else {}
        return str(err.get("code", "")), str(err.get("message", "")), details
    return "", "", {}


def _int_or_none(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class _OutOfTime(Exception):
    """The deadline passed while an answer was still arriving."""


def _body_by(response: requests.Response, deadline: float) -> bytes:
    """The response body, given up on (_OutOfTime) once `deadline` passes: a read timeout
    bounds each read, not an answer that trickles in over a slow link."""
    read1 = getattr(response.raw, "read1", None)  # urllib3 2; older ones read it whole
    if read1 is None:
        return response.content
    parts: list[bytes] = []
    try:
        while True:
            if time.monotonic() >= deadline:
                raise _OutOfTime
            part = read1(64 * 1024, decode_content=True)
            if not part:
                return b"".join(parts)
            parts.append(part)
    finally:
        response.close()


class HttpTransport:
    """The real transport: a `requests.Session` with connect/read timeouts and gzip bodies."""

    def __init__(
        self,
        endpoint: str,
        token: str,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        probe_timeout: float = 5.0,
        gzip_threshold: int = DEFAULT_GZIP_THRESHOLD,
        session: Optional[requests.Session] = None,
        user_agent: str = "fieldsync-agent/1",
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._token = token
        self.timeout = (connect_timeout, read_timeout)
        # The health probe is tiny: a link that holds it longer is as good as down, and a
        # worker stuck on a black-holed probe would notice a reconnect late.
        self.probe_timeout = (min(connect_timeout, probe_timeout), probe_timeout)
        self.gzip_threshold = gzip_threshold
        # Imported here: `put`, `get` and `status` never touch the network, and a Pi starts
        # the CLI noticeably faster without loading requests.
        import requests

        self._session = session or requests.Session()
        self._session.headers["User-Agent"] = user_agent

    def __repr__(self) -> str:
        return f"HttpTransport(endpoint={self.endpoint!r}, token=<redacted>)"

    def close(self) -> None:
        self._session.close()

    # -- the three calls ---------------------------------------------------------------

    def health(self) -> HealthOutcome:
        result = self._request("GET", "/v1/health", auth=False, timeout=self.probe_timeout)
        if not isinstance(result, tuple):
            return result
        body, traffic = result
        server_time = body.get("server_time") if isinstance(body, dict) else None
        if not isinstance(server_time, str):
            return ServerError(200, "health answer without server_time", traffic)
        return Healthy(server_time, traffic)

    def push(
        self, batch_id: str, ops: Sequence[Op], *, deadline: Optional[float] = None
    ) -> PushOutcome:
        payload = json.dumps(batch_body(batch_id, ops), separators=(",", ":"), ensure_ascii=False)
        result = self._request(
            "POST", "/v1/batches", body=payload.encode("utf-8"), deadline=deadline
        )
        if not isinstance(result, tuple):
            return result
        body, traffic = result
        try:
            response = parse_batch_response(body)
        except (ContractError, KeyError, TypeError) as exc:
            return ServerError(200, f"batch response breaks the protocol: {exc}", traffic)
        if response.batch_id != batch_id:
            # Results for someone else's ops must never ack ours: resend later instead.
            return ServerError(
                200,
                f"the answer is for batch {response.batch_id!r}, not {batch_id!r}: "
                "a proxy or the server mixed up responses",
                traffic,
            )
        return Accepted(response, traffic)

    def pull(
        self, after: Optional[str], limit: int, *, deadline: Optional[float] = None
    ) -> PullOutcome:
        params: dict[str, Any] = {"limit": limit}
        if after:
            params["after"] = after
        result = self._request("GET", "/v1/changes", params=params, deadline=deadline)
        if not isinstance(result, tuple):
            return result
        body, traffic = result
        try:
            return Page(parse_changes_page(body), traffic)
        except (ContractError, KeyError, TypeError) as exc:
            return ServerError(200, f"changes page breaks the protocol: {exc}", traffic)

    # -- plumbing ------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Optional[bytes] = None,
        params: Optional[dict[str, Any]] = None,
        auth: bool = True,
        timeout: Optional[tuple[float, float]] = None,
        deadline: Optional[float] = None,
    ) -> Union[tuple[Any, Traffic], Failure]:
        connect_s, read_s = timeout or self.timeout
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return Unreachable("no time left for the request")
            connect_s, read_s = min(connect_s, left), min(read_s, left)
        headers: dict[str, str] = {"Accept": "application/json"}
        if auth:
            headers["Authorization"] = f"Bearer {self._token}"
        if body is not None:
            headers["Content-Type"] = "application/json"
            if len(body) > self.gzip_threshold:
                body = gzip.compress(body, compresslevel=6)
                headers["Content-Encoding"] = "gzip"
        sent = len(body) if body is not None else 0
        started = time.monotonic()
        import requests
        from urllib3.exceptions import HTTPError, ReadTimeoutError

        # (math.inf, no time limit: read the answer whole, as without a deadline)
        until = deadline if deadline is not None and math.isfinite(deadline) else None

        try:
            response = self._session.request(
                method,
                self.endpoint + path,
                data=body,
                params=params,
                headers=headers,
                timeout=(connect_s, read_s),
                stream=until is not None,
            )
            raw = response.content if until is None else _body_by(response, until)
        except _OutOfTime:
            return Unreachable("no time left to read the answer", Traffic(sent, 0))
        except (requests.Timeout, ReadTimeoutError) as exc:
            return Unreachable(f"timed out: {type(exc).__name__}", Traffic(sent, 0))
        except (requests.RequestException, HTTPError) as exc:
            # (urllib3's own errors: _body_by reads the raw stream, which requests does not
            # translate)
            return Unreachable(f"connection failed: {type(exc).__name__}", Traffic(sent, 0))
        traffic = Traffic(sent, len(raw))
        log.debug(
            "http method=%s path=%s status=%s sent=%d received=%d ms=%d",
            method,
            path,
            response.status_code,
            traffic.sent,
            traffic.received,
            (time.monotonic() - started) * 1000,
        )
        try:
            parsed: Any = json.loads(raw) if raw else None
        except (ValueError, RecursionError):  # (not JSON, or nested past the parser)
            parsed = None
        status = response.status_code
        if status == 200:
            if parsed is None:
                return ServerError(200, NOT_JSON, traffic)
            return parsed, traffic
        return self._failure(status, parsed, response.headers.get("Retry-After"), traffic)

    @staticmethod
    def _failure(status: int, body: Any, retry_after: Optional[str], traffic: Traffic) -> Failure:
        code, message, details = _error_of(body)
        message = message or f"HTTP {status}"
        if status == 400:
            return BadRequest(code or "bad_request", message, traffic)
        if status in (401, 403):
            return AuthFailed(status, message, traffic)
        if status == 410:
            return CursorExpired(message, traffic)
        if status == 413:
            # PROTOCOL.md: "413 with the limits in the error body" (details.limits).
            stated = details.get("limits")
            bounds = stated if isinstance(stated, dict) else {}
            return TooLarge(
                message,
                _int_or_none(bounds.get("max_ops")),
                _int_or_none(bounds.get("max_bytes")),
                traffic,
            )
        if status in (429, 503):
            return Throttled(status, parse_retry_after(retry_after), message, traffic)
        return ServerError(status, message, traffic)
