"""Gateway behaviour around the Lambda: routes, bounded inflation, refusals, proxy results."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path

import pytest

from local.routing import Refusal, Router, decode_body, lambda_response, render_refusal
from local.template import GatewayResponse, Route


def _router() -> Router:
    return Router(
        [
            Route("GET", "/v1/items/{item_id}", "Items", "auth"),
            Route("GET", "/v1/items/special", "Special", "auth"),
            Route("ANY", "/files/{path+}", "Files", None),
        ]
    )


def test_a_literal_path_wins_over_a_parameter() -> None:
    assert _router().match("GET", "/v1/items/special").route.function == "Special"


def test_path_parameters_are_extracted_including_greedy_ones() -> None:
    assert _router().match("GET", "/v1/items/42").path_parameters == {"item_id": "42"}
    assert _router().match("PUT", "/files/a/b.txt").path_parameters == {"path": "a/b.txt"}


def test_an_unknown_path_or_method_is_refused() -> None:
    with pytest.raises(Refusal, match="no such path"):
        _router().match("GET", "/v2/nothing")
    with pytest.raises(Refusal, match="not allowed"):
        _router().match("DELETE", "/v1/items/42")


def test_a_gzip_body_is_inflated() -> None:
    assert decode_body(gzip.compress(b'{"ops": []}'), "gzip", 1000) == b'{"ops": []}'
    assert decode_body(zlib.compress(b"abc"), "deflate", 1000) == b"abc"
    assert decode_body(b"plain", None, 1000) == b"plain"


def test_a_body_inflating_past_the_limit_is_413_without_inflating_it_all() -> None:
    bomb = gzip.compress(b"\0" * (50 * 1024 * 1024))  # 50 MiB of zeros, about 50 KiB compressed

    with pytest.raises(Refusal) as refused:
        decode_body(bomb, "gzip", 5 * 1024 * 1024)

    assert refused.value.response_type == "REQUEST_TOO_LARGE"
    assert refused.value.details == {"limits": {"max_bytes": 5 * 1024 * 1024}}


@pytest.mark.parametrize(
    ("body", "encoding"),
    [(b"not gzip at all", "gzip"), (gzip.compress(b"x" * 100)[:-12], "gzip"), (b"x", "br")],
)
def test_an_undecodable_or_unknown_encoding_is_415(body: bytes, encoding: str) -> None:
    with pytest.raises(Refusal) as refused:
        decode_body(body, encoding, 1000)
    assert refused.value.response_type == "UNSUPPORTED_MEDIA_TYPE"


def test_a_refusal_uses_the_template_gateway_response_when_there_is_one() -> None:
    responses = {
        "UNAUTHORIZED": GatewayResponse(
            401, {"application/json": '{"error": {"message": $context.error.messageString}}'}
        )
    }

    response = render_refusal(Refusal("UNAUTHORIZED", "Unauthorized"), responses, "r-1")

    assert response.status == 401
    assert json.loads(response.body) == {"error": {"message": "Unauthorized"}}


def test_a_refusal_without_a_template_response_gets_the_protocol_error_body() -> None:
    response = render_refusal(Refusal("ACCESS_DENIED", "denied"), {}, "r-1")

    assert response.status == 403
    assert json.loads(response.body) == {"error": {"code": "forbidden", "message": "denied"}}


def test_a_proxy_result_becomes_the_http_response() -> None:
    response = lambda_response(
        {
            "statusCode": 201,
            "headers": {"Content-Type": "application/json", "X-A": "1"},
            "multiValueHeaders": {"X-A": ["2", "3"]},
            "body": "eyJhIjogMX0=",
            "isBase64Encoded": True,
        }
    )

    assert response.status == 201
    assert response.body == b'{"a": 1}'
    assert ("X-A", "2") in response.headers and ("X-A", "3") in response.headers
    assert ("X-A", "1") not in response.headers  # multiValueHeaders win, as in API Gateway


@pytest.mark.parametrize(
    "result", [None, {"body": "x"}, {"statusCode": "200"}, {"statusCode": 200, "body": 5}]
)
def test_a_malformed_proxy_result_is_a_bad_gateway(result: object) -> None:
    with pytest.raises(Refusal) as refused:
        lambda_response(result)
    assert refused.value.response_type == "BAD_GATEWAY"


def test_a_413_from_the_templates_gateway_response_carries_the_limits() -> None:
    from local.template import load_template

    root = Path(__file__).resolve().parents[3]
    api = load_template(root / "template.yaml", region="us-east-1", overrides={}).apis[0]
    limits = {"limits": {"max_ops": 500, "max_bytes": 5242880}}
    bomb = gzip.compress(b" " * (6 * 1024 * 1024))

    with pytest.raises(Refusal) as refused:
        decode_body(bomb, "gzip", 5242880, limits)
    response = render_refusal(refused.value, api.gateway_responses, "r-1")

    assert response.status == 413
    error = json.loads(response.body)["error"]
    assert error["code"] == "payload_too_large"
    assert error["details"] == limits


def test_a_template_response_that_is_not_the_error_body_is_left_as_written() -> None:
    responses = {"REQUEST_TOO_LARGE": GatewayResponse(413, {"application/json": "too big"})}

    response = render_refusal(Refusal("REQUEST_TOO_LARGE", "x", {"limits": {}}), responses, "")

    assert (response.status, response.body) == (413, b"too big")
