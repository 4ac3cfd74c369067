"""Whole-request errors: each malformed input gets its 4xx with a clear JSON error, never a 5xx."""

from __future__ import annotations

import base64
import gzip
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.conftest import Cloud, Device, batch_event
from tests.support.aws import load_event


def test_malformed_json_is_400_with_the_position(cloud: Cloud) -> None:
    response = cloud.http("BatchesFunction", load_event("batch_malformed_json.json"))
    assert response.status == 400
    assert response.body["error"]["code"] == "bad_request"
    assert "not valid JSON" in response.body["error"]["message"]
    assert "line 1" in response.body["error"]["message"]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"batch_id": "b-1", "ops": "nope"}, "ops"),
        ({"batch_id": "b-1", "ops": []}, "ops"),
        ({"ops": [{}]}, "batch_id"),
        ([1, 2, 3], "body"),
    ],
)
def test_batch_that_breaks_the_schema_is_400_listing_the_problem(
    cloud: Cloud, body: object, problem: str
) -> None:
    response = cloud.http("BatchesFunction", batch_event(json.dumps(body), "acme", "pi-7"))
    assert response.status == 400
    assert response.body["error"]["code"] == "bad_request"
    assert problem in [p["path"] for p in response.body["error"]["details"]["problems"]]


def test_body_marked_base64_that_is_not_is_400(cloud: Cloud) -> None:
    event = load_event("batch_gzip_base64.json")
    event["body"] = "%%% not base64 %%%"
    response = cloud.http("BatchesFunction", event)
    assert response.status == 400
    assert "base64" in response.body["error"]["message"]


def test_corrupt_gzip_is_415(cloud: Cloud) -> None:
    event = load_event("batch_gzip_base64.json")
    event["body"] = base64.b64encode(b"\x1f\x8b\x08\x00garbage-not-deflate").decode()
    response = cloud.http("BatchesFunction", event)
    assert response.status == 415
    assert "gzip" in response.body["error"]["message"]


def test_truncated_gzip_is_415(cloud: Cloud) -> None:
    event = load_event("batch_gzip_base64.json")
    whole = base64.b64decode(event["body"])
    event["body"] = base64.b64encode(whole[: len(whole) // 2]).decode()
    response = cloud.http("BatchesFunction", event)
    assert response.status == 415
    assert "truncated" in response.body["error"]["message"]


def test_unsupported_content_encoding_is_415(cloud: Cloud) -> None:
    event = load_event("batch_gzip_base64.json")
    event["headers"]["Content-Encoding"] = "br"
    event["multiValueHeaders"]["Content-Encoding"] = ["br"]
    response = cloud.http("BatchesFunction", event)
    assert response.status == 415
    assert response.body["error"]["code"] == "unsupported_media_type"


def test_more_ops_than_allowed_is_413_with_the_limits(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a server configured for at most 3 ops per batch
    monkeypatch.setenv("MAX_BATCH_OPS", "3")
    device = Device()
    ops = [device.op("put", f"k{i}", {"i": i}) for i in range(4)]
    # When 4 ops arrive
    response = cloud.post_batch(ops)
    # Then the whole request is 413 and says what the limits are
    assert response.status == 413
    assert response.body["error"]["code"] == "payload_too_large"
    assert response.body["error"]["details"]["limits"] == {"max_ops": 3, "max_bytes": 5242880}


def test_gzip_bomb_is_413_not_an_out_of_memory(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a 64 KiB limit and a small gzip body that inflates to 1 MiB
    monkeypatch.setenv("MAX_BATCH_BYTES", str(64 * 1024))
    bomb = gzip.compress(b'{"batch_id": "b", "ops": [' + b" " * (1024 * 1024) + b"]}")
    event = load_event("batch_gzip_base64.json")
    event["body"] = base64.b64encode(bomb).decode()
    # Then it is refused as too large
    response = cloud.http("BatchesFunction", event)
    assert len(bomb) < 64 * 1024
    assert response.status == 413
    assert response.body["error"]["details"]["limits"]["max_bytes"] == 64 * 1024


def test_request_without_authorizer_context_is_401(cloud: Cloud) -> None:
    response = cloud.http("BatchesFunction", load_event("batch_unauthenticated.json"))
    assert response.status == 401
    assert response.body["error"]["code"] == "unauthorized"


def test_health_needs_no_token_and_reports_the_protocol(cloud: Cloud) -> None:
    response = cloud.http("HealthFunction", load_event("health.json"))
    assert response.status == 200
    assert response.body["status"] == "ok"
    assert response.body["protocol"] == 1
    assert response.body["server_time"].endswith("-server")


def test_body_already_inflated_upstream_with_a_gzip_header_is_accepted(cloud: Cloud) -> None:
    # Given API Gateway inflated the body but passed Content-Encoding: gzip on
    event = load_event("batch_gzip_base64.json")
    event["body"] = gzip.decompress(base64.b64decode(event["body"])).decode()
    event["isBase64Encoded"] = False
    # Then the handler reads it as the JSON it is
    response = cloud.http("BatchesFunction", event)
    assert response.status == 200
    assert [r["status"] for r in response.body["results"]] == ["applied"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.one_of(
        st.text(max_size=60),
        json_values.map(json.dumps),
        st.fixed_dictionaries(
            {"batch_id": st.text(max_size=8), "ops": st.lists(json_values, max_size=3)}
        ).map(json.dumps),
    )
)
def test_no_input_gets_a_5xx(cloud: Cloud, body: str) -> None:
    response = cloud.http("BatchesFunction", batch_event(body, "acme", "pi-7"))
    assert response.status < 500, response.body
    if response.status != 200:
        assert set(response.body["error"]) >= {"code", "message"}


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_400_not_stored(cloud: Cloud, constant: str) -> None:
    event = load_event("batch_valid.json")
    body = json.loads(event["body"])
    text = json.dumps(body).replace('"BTC"', constant, 1)
    assert constant in text
    event["body"] = text
    response = cloud.http("BatchesFunction", event)
    assert response.status == 400
    assert constant in response.body["error"]["message"]


def test_json_nested_too_deeply_to_parse_is_400_not_500(cloud: Cloud) -> None:
    event = load_event("batch_valid.json")
    event["body"] = "[" * 100_000 + "]" * 100_000
    response = cloud.http("BatchesFunction", event)
    assert response.status == 400
    assert "too deeply" in response.body["error"]["message"]
