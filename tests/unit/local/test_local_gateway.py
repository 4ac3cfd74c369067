"""The gateway core without sockets: local-only routes, body inflation before the handler."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from local.events import HttpRequest
from local.functions import LocalFunction
from local.gateway import Gateway, GatewayConfig
from local.template import ApiSpec, FunctionSpec, Route


def _gateway(seen: list[dict[str, Any]], answer: str = "{}") -> Gateway:
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        seen.append(event)
        return {"statusCode": 200, "body": answer}

    spec = FunctionSpec("Fn", Path("."), "handler.lambda_handler", {}, 3, 128)
    api = ApiSpec("Api", (Route("POST", "/v1/batches", "Fn", None),), {}, (), {}, "test", 1024)
    return Gateway(
        GatewayConfig(
            api=api,
            stage="test",
            functions={"Fn": LocalFunction(spec, "fn", "arn:fn", {}, handler)},
            authorizers={},
            inflate_limit=1024,
            local_routes={("GET", "/_local/resources"): lambda request: (200, {"ok": True})},
        )
    )


def _request(path: str, source_ip: str = "127.0.0.1", **changes: Any) -> HttpRequest:
    values: dict[str, Any] = {"headers": [], "body": b""}
    values.update(changes)
    method = "GET" if path.startswith("/_local") else "POST"
    return HttpRequest(method, path, "", values["headers"], values["body"], source_ip)


def test_a_local_route_answers_a_loopback_client() -> None:
    response = _gateway([]).handle(_request("/_local/resources"))

    assert (response.status, json.loads(response.body)) == (200, {"ok": True})


def test_a_local_route_refuses_any_other_client() -> None:
    response = _gateway([]).handle(_request("/_local/resources", source_ip="192.168.1.20"))

    assert response.status == 403


def test_the_handler_sees_the_inflated_body_without_the_encoding_header() -> None:
    seen: list[dict[str, Any]] = []
    body = gzip.compress(b'{"ops": []}')

    response = _gateway(seen).handle(
        _request("/v1/batches", headers=[("Content-Encoding", "gzip")], body=body)
    )

    assert response.status == 200
    assert seen[0]["body"] == '{"ops": []}'
    assert "Content-Encoding" not in seen[0]["headers"]


def test_a_body_inflating_past_the_limit_never_reaches_the_handler() -> None:
    seen: list[dict[str, Any]] = []

    response = _gateway(seen).handle(
        _request(
            "/v1/batches",
            headers=[("Content-Encoding", "gzip")],
            body=gzip.compress(b"x" * 4096),
        )
    )

    assert response.status == 413
    assert seen == []


def test_a_413_names_the_batch_limits_of_the_functions_environment() -> None:
    gateway = _gateway([])
    gateway.config.functions["Fn"].environment.update(
        {"MAX_BATCH_OPS": "50", "MAX_BATCH_BYTES": "2048"}
    )

    response = gateway.handle(
        _request(
            "/v1/batches",
            headers=[("Content-Encoding", "gzip")],
            body=gzip.compress(b"x" * 4096),
        )
    )

    assert response.status == 413
    error = json.loads(response.body)["error"]
    assert error["details"] == {"limits": {"max_ops": 50, "max_bytes": 2048}}


def test_a_client_gone_before_the_answer_is_no_traceback(capsys: Any) -> None:
    import socket
    import struct
    import threading
    import time

    from local.gateway import GatewayServer

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        time.sleep(0.3)  # the client hangs up meanwhile
        return {"statusCode": 200, "body": "x" * 1_000_000}

    gateway = _gateway([])
    gateway.config.functions["Fn"].handler = handler  # type: ignore[misc]
    handled = threading.Event()

    class Server(GatewayServer):
        def shutdown_request(self, request: Any) -> None:
            super().shutdown_request(request)
            handled.set()

    server = Server(("127.0.0.1", 0), gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with socket.create_connection(server.server_address[:2]) as client:
            client.sendall(b"POST /v1/batches HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            # Close with a reset, as a client that gives up does.
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        assert handled.wait(10)
    finally:
        server.shutdown()
        server.server_close()

    assert capsys.readouterr().err == ""


def test_a_large_answer_is_gzipped_for_a_client_that_accepts_gzip() -> None:
    answer = json.dumps({"results": [{"op_id": f"op-{i}", "status": "applied"} for i in range(50)]})
    accepts = [("Accept-Encoding", "gzip, deflate")]

    zipped = _gateway([], answer).handle(_request("/v1/batches", headers=accepts))
    plain = _gateway([], answer).handle(_request("/v1/batches"))
    small = _gateway([], "{}").handle(_request("/v1/batches", headers=accepts))
    refused = _gateway([], answer).handle(
        _request("/v1/batches", headers=[("Accept-Encoding", "gzip;q=0, identity")])
    )

    # Like API Gateway with MinimumCompressionSize 1024: gzip at or above it, if accepted.
    assert ("Content-Encoding", "gzip") in zipped.headers
    assert gzip.decompress(zipped.body).decode() == answer
    assert len(zipped.body) < len(answer) // 3
    assert plain.body.decode() == answer and ("Content-Encoding", "gzip") not in plain.headers
    assert small.body == b"{}" and ("Content-Encoding", "gzip") not in small.headers
    assert refused.body.decode() == answer  # gzip;q=0 means "not gzip"


def _raw_exchange(gateway: Gateway, request: bytes) -> tuple[int, Any]:
    """Send raw bytes to a real gateway server on 127.0.0.1; the status and JSON body."""
    import socket
    import threading

    from local.gateway import GatewayServer

    server = GatewayServer(("127.0.0.1", 0), gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with socket.create_connection(server.server_address[:2], timeout=10) as client:
            client.sendall(request)
            client.shutdown(socket.SHUT_WR)
            raw = b""
            while chunk := client.recv(65536):
                raw += chunk
    finally:
        server.shutdown()
        server.server_close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body) if body else None


def test_a_chunked_body_reaches_the_handler_whole() -> None:
    seen: list[dict[str, Any]] = []
    request = (
        b"POST /v1/batches HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n"
        b'5\r\n{"a":\r\n3;ext=1\r\n 1}\r\n0\r\nX-Trailer: y\r\n\r\n'
    )
    status, _ = _raw_exchange(_gateway(seen), request)
    assert status == 200
    assert json.loads(seen[0]["body"]) == {"a": 1}


@pytest.mark.parametrize(
    "chunks", [b"zz\r\n{}\r\n0\r\n\r\n", b"0x2\r\n{}\r\n0\r\n\r\n", b"+2\r\n{}\r\n", b"9\r\n{}"]
)
def test_a_malformed_chunked_body_is_a_400_with_a_json_error(chunks: bytes) -> None:
    seen: list[dict[str, Any]] = []
    request = b"POST /v1/batches HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
    status, body = _raw_exchange(_gateway(seen), request)
    assert status == 400 and body["error"]["code"] == "bad_request"
    assert "chunk" in body["error"]["message"] and seen == []


def test_another_transfer_coding_is_refused_not_read_as_empty() -> None:
    seen: list[dict[str, Any]] = []
    request = (
        b"POST /v1/batches HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        b"2\r\n{}\r\n0\r\n\r\n"
    )
    status, body = _raw_exchange(_gateway(seen), request)
    assert status == 415 and "Transfer-Encoding" in body["error"]["message"] and seen == []


def test_a_chunked_body_past_the_limit_is_a_413_before_it_is_read() -> None:
    seen: list[dict[str, Any]] = []
    request = (
        b"POST /v1/batches HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFF\r\n{}"
    )
    status, body = _raw_exchange(_gateway(seen), request)
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert body["error"]["details"]["limits"]["max_ops"] > 0 and seen == []
