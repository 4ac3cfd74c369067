"""The local REST API: a stdlib HTTP server that does what API Gateway does for the template.

Each request is routed by the template's OpenAPI routes, authorized by the template's
REQUEST authorizer, turned into the proxy event and answered by the real handler, in process.
Paths under `/_local/` are the local cloud's own admin routes (not part of the public API,
answered only to loopback clients).
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from local.authorizer import LocalAuthorizer
from local.events import HttpRequest, proxy_event
from local.functions import LocalFunction
from local.routing import (
    Refusal,
    Response,
    Router,
    decode_body,
    lambda_response,
    render_refusal,
)
from local.template import ApiSpec

log = logging.getLogger("fieldsync.local.gateway")

MAX_RAW_BODY_BYTES = 10 * 1024 * 1024  # API Gateway's REST payload limit
LocalRoute = Callable[[HttpRequest], tuple[int, Any]]


@dataclass
class GatewayConfig:
    api: ApiSpec
    stage: str
    functions: Mapping[str, LocalFunction]
    authorizers: Mapping[str, LocalAuthorizer]
    inflate_limit: int  # the batch limit: a compressed body may not inflate past it
    max_ops: int = 500  # the batch op limit, reported with the byte limit in a 413
    local_routes: Mapping[tuple[str, str], LocalRoute] = field(default_factory=dict)
    verbose: bool = False


class Gateway:
    """Routing, authorization and invocation, independent of the socket server."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self._router = Router(config.api.routes)

    def handle(self, request: HttpRequest) -> Response:
        try:
            local = self.config.local_routes.get((request.method, request.path))
            if local is not None:
                return self._local(local, request)
            return self._compressed(self._invoke(request), request)
        except Refusal as refusal:
            return render_refusal(refusal, self.config.api.gateway_responses, request.request_id)

    def _compressed(self, response: Response, request: HttpRequest) -> Response:
        """The response gzipped, as API Gateway does for a client that accepts gzip when the
        body reaches the API's MinimumCompressionSize."""
        threshold = self.config.api.minimum_compression_size
        if (
            threshold is None
            or len(response.body) < threshold
            or not _accepts_gzip(request.header("Accept-Encoding") or "")
            or any(name.lower() == "content-encoding" for name, _ in response.headers)
        ):
            return response
        headers = [*response.headers, ("Content-Encoding", "gzip")]
        return Response(response.status, headers, gzip.compress(response.body, mtime=0))

    def limits(self, function: Optional[str] = None) -> tuple[int, int]:
        """(max ops, max bytes) of a batch: the function's environment, else the stack's."""
        environment = self.config.functions[function].environment if function else {}
        return (
            _positive(environment.get("MAX_BATCH_OPS"), self.config.max_ops),
            _positive(environment.get("MAX_BATCH_BYTES"), self.config.inflate_limit),
        )

    def _local(self, route: LocalRoute, request: HttpRequest) -> Response:
        if not ip_address(request.source_ip).is_loopback:
            raise Refusal("ACCESS_DENIED", "local admin routes answer only to this machine")
        status, payload = route(request)
        body = json.dumps(payload).encode("utf-8")
        return Response(status, [("Content-Type", "application/json")], body)

    def _invoke(self, request: HttpRequest) -> Response:
        match = self._router.match(request.method, request.path)
        max_ops, max_bytes = self.limits(match.route.function)
        body = decode_body(
            request.body,
            request.header("Content-Encoding"),
            max_bytes,
            limits_details(max_ops, max_bytes),
        )
        if body is not request.body:
            # Like a REST API with content encoding: the Lambda sees the inflated body.
            headers = [
                (k, v)
                for k, v in request.headers
                if k.lower() not in ("content-encoding", "content-length")
            ]
            headers.append(("Content-Length", str(len(body))))
            request = HttpRequest(
                request.method,
                request.path,
                request.query,
                headers,
                body,
                request.source_ip,
                request.request_id,
            )
        authorizer_context: Optional[dict[str, Any]] = None
        if match.route.authorizer is not None:
            decision = self.config.authorizers[match.route.authorizer].authorize(
                request, match.route.path, match.path_parameters
            )
            if not decision.allowed:
                raise Refusal(decision.response_type, decision.message)
            authorizer_context = decision.context
        event = proxy_event(
            request,
            resource=match.route.path,
            path_parameters=match.path_parameters,
            stage=self.config.stage,
            binary_media_types=self.config.api.binary_media_types,
            authorizer=authorizer_context,
        )
        try:
            result = self.config.functions[match.route.function].invoke(event)
        except Exception as exc:
            log.error(
                "handler raised",
                extra={"function": match.route.function, "error": type(exc).__name__},
                exc_info=self.config.verbose,
            )
            raise Refusal("BAD_GATEWAY", "Internal server error") from exc
        return lambda_response(result)


def _accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header admits gzip (`gzip;q=0` refuses it)."""
    for part in accept_encoding.lower().split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip() in ("gzip", "*"):
            quality = params.strip().removeprefix("q=").strip() if "q=" in params else "1"
            try:
                return float(quality) > 0
            except ValueError:
                return False
    return False


def _positive(value: Optional[str], default: int) -> int:
    return int(value) if value and value.isdigit() and int(value) > 0 else default


def limits_details(max_ops: int, max_bytes: int) -> dict[str, Any]:
    """The protocol's 413 details, as the handlers give them (shared.logic.body)."""
    return {"limits": {"max_ops": max_ops, "max_bytes": max_bytes}}


# A chunk-size line (hex size, extensions) or a trailer field is never longer than this.
_CHUNK_LINE_MAX = 1024
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")


class _Handler(BaseHTTPRequestHandler):
    server: GatewayServer
    protocol_version = "HTTP/1.1"
    timeout = 60  # an idle kept-alive connection does not hold a thread forever
    # Headers and body go out in separate writes: with Nagle's algorithm the body waited for
    # the client's delayed ACK, about 40 ms per request.
    disable_nagle_algorithm = True

    def _serve(self) -> None:
        started = time.monotonic()
        try:
            body = self._body()
        except Refusal as refusal:
            self._send(
                render_refusal(refusal, self.server.gateway.config.api.gateway_responses, "")
            )
            self.close_connection = True
            return
        url = urlsplit(self.path)
        request = HttpRequest(
            method=self.command,
            path=url.path or "/",
            query=url.query,
            headers=list(self.headers.items()),
            body=body,
            source_ip=self.client_address[0],
        )
        response = self.server.gateway.handle(request)
        self._send(response)
        if self.server.gateway.config.verbose:
            log.info(
                "%s %s %d %.1f ms",
                self.command,
                url.path,
                response.status,
                (time.monotonic() - started) * 1000,
            )

    def _body(self) -> bytes:
        """The request body, by Content-Length or chunked, never more than the gateway takes
        (raises Refusal)."""
        coding = self.headers.get("Transfer-Encoding", "").strip().lower()
        if coding == "chunked":
            return self._chunked_body()
        if coding:
            raise Refusal(
                "UNSUPPORTED_MEDIA_TYPE",
                f"Transfer-Encoding {coding!r} is not supported: send the body plain or "
                "chunked, compressed with Content-Encoding: gzip if at all",
            )
        length = self.headers.get("Content-Length")
        size = int(length) if length and length.isascii() and length.isdigit() else 0
        if size > MAX_RAW_BODY_BYTES:
            raise self._too_large()
        return self.rfile.read(size) if size else b""

    def _chunked_body(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(_CHUNK_LINE_MAX)
            digits = line.split(b";", 1)[0].strip()
            if not _CHUNK_SIZE.fullmatch(digits):
                raise Refusal(
                    "BAD_REQUEST_BODY", f"malformed chunked body: chunk size line {line[:40]!r}"
                )
            size = int(digits, 16)
            if size == 0:
                while self.rfile.readline(_CHUNK_LINE_MAX).strip():
                    pass  # trailer fields, ignored
                return b"".join(parts)
            total += size
            if total > MAX_RAW_BODY_BYTES:
                raise self._too_large()
            part = self.rfile.read(size)
            if len(part) < size:
                raise Refusal("BAD_REQUEST_BODY", "malformed chunked body: it ends mid-chunk")
            parts.append(part)
            self.rfile.readline(_CHUNK_LINE_MAX)  # the CRLF after the chunk

    def _too_large(self) -> Refusal:
        return Refusal(
            "REQUEST_TOO_LARGE",
            f"the request body exceeds {MAX_RAW_BODY_BYTES} bytes",
            limits_details(*self.server.gateway.limits()),
        )

    def _send(self, response: Response) -> None:
        try:
            self.send_response(response.status)
            for name, value in response.headers:
                if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)
        except ConnectionError:
            # The client hung up before the answer (BrokenPipe, reset): a normal event.
            self.close_connection = True
            if self.server.gateway.config.verbose:
                log.info("client gone before the answer: %s %s", self.command, self.path)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are logged by _serve when verbose


class GatewayServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False  # a port in use must fail, not be shared

    def __init__(self, address: tuple[str, int], gateway: Gateway) -> None:
        self.gateway = gateway
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client gone mid-request is normal; anything else keeps the stdlib's report."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            if self.gateway is not None and self.gateway.config.verbose:
                log.info("client %s gone mid-request", client_address[0])
            return
        super().handle_error(request, client_address)
