"""The events handed to the Lambdas: REST proxy, REQUEST authorizer, SQS batch."""

from __future__ import annotations

import base64

from local.events import (
    HttpRequest,
    authorizer_context,
    authorizer_event,
    failed_message_ids,
    proxy_event,
    sqs_event,
)


def _request(**changes: object) -> HttpRequest:
    values: dict[str, object] = {
        "method": "POST",
        "path": "/v1/items/42",
        "query": "a=1&a=2&b=",
        "headers": [("Content-Type", "application/json"), ("X-Tag", "one"), ("X-Tag", "two")],
        "body": b'{"x": 1}',
        "request_id": "req-1",
    }
    values.update(changes)
    return HttpRequest(**values)  # type: ignore[arg-type]


def test_a_proxy_event_carries_single_and_multi_value_headers_and_query() -> None:
    event = proxy_event(
        _request(),
        resource="/v1/items/{item_id}",
        path_parameters={"item_id": "42"},
        stage="prod",
        binary_media_types=(),
        now_ms=0,
    )

    assert event["resource"] == "/v1/items/{item_id}"
    assert event["path"] == "/v1/items/42"
    assert event["httpMethod"] == "POST"
    assert event["headers"]["X-Tag"] == "two"
    assert event["multiValueHeaders"]["X-Tag"] == ["one", "two"]
    assert event["queryStringParameters"] == {"a": "2", "b": ""}
    assert event["multiValueQueryStringParameters"] == {"a": ["1", "2"], "b": [""]}
    assert event["pathParameters"] == {"item_id": "42"}
    assert event["body"] == '{"x": 1}'
    assert event["isBase64Encoded"] is False
    assert event["requestContext"]["stage"] == "prod"
    assert event["requestContext"]["requestId"] == "req-1"
    assert event["requestContext"]["path"] == "/prod/v1/items/42"


def test_a_request_without_query_headers_or_body_has_nulls_like_api_gateway() -> None:
    event = proxy_event(
        _request(query="", headers=[], body=b""),
        resource="/r",
        path_parameters={},
        stage="s",
        binary_media_types=(),
    )

    assert event["queryStringParameters"] is None
    assert event["multiValueHeaders"] is None
    assert event["pathParameters"] is None
    assert event["body"] is None


def test_a_binary_media_type_body_is_base64_encoded() -> None:
    raw = b"\x00\x01binary"
    event = proxy_event(
        _request(headers=[("Content-Type", "application/octet-stream")], body=raw),
        resource="/r",
        path_parameters={},
        stage="s",
        binary_media_types=("application/*",),
    )

    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == raw


def test_the_authorizer_output_is_in_the_request_context_as_strings() -> None:
    context = authorizer_context("acme/pi-7", {"tenant_id": "acme", "admin": False, "n": 3})
    event = proxy_event(
        _request(),
        resource="/r",
        path_parameters={},
        stage="s",
        binary_media_types=(),
        authorizer=context,
    )

    assert event["requestContext"]["authorizer"] == {
        "principalId": "acme/pi-7",
        "tenant_id": "acme",
        "admin": "false",
        "n": "3",
    }


def test_an_authorizer_event_has_the_method_arn_of_the_request() -> None:
    event = authorizer_event(
        _request(),
        resource="/v1/items/{item_id}",
        path_parameters={"item_id": "42"},
        stage="prod",
        region="eu-west-1",
    )

    assert event["type"] == "REQUEST"
    assert (
        event["methodArn"]
        == "arn:aws:execute-api:eu-west-1:123456789012:local/prod/POST/v1/items/42"
    )
    assert event["headers"]["Content-Type"] == "application/json"


def test_an_sqs_event_record_has_the_lambda_trigger_shape() -> None:
    message = {
        "MessageId": "m-1",
        "ReceiptHandle": "rh",
        "Body": "{}",
        "MD5OfBody": "md5",
        "Attributes": {"ApproximateReceiveCount": "3", "SentTimestamp": "1"},
        "MessageAttributes": {"kind": {"StringValue": "op", "DataType": "String"}},
    }

    (record,) = sqs_event([message], "arn:aws:sqs:eu-west-1:1:q", "eu-west-1")["Records"]

    assert record["messageId"] == "m-1"
    assert record["receiptHandle"] == "rh"
    assert record["attributes"]["ApproximateReceiveCount"] == "3"
    assert record["eventSourceARN"] == "arn:aws:sqs:eu-west-1:1:q"
    assert record["eventSource"] == "aws:sqs"
    assert record["messageAttributes"]["kind"]["stringValue"] == "op"


def test_batch_item_failures_name_the_messages_to_keep() -> None:
    assert failed_message_ids({"batchItemFailures": [{"itemIdentifier": "b"}]}, ["a", "b"]) == {"b"}
    assert failed_message_ids({"batchItemFailures": []}, ["a"]) == set()
    assert failed_message_ids(None, ["a"]) == set()


def test_a_malformed_failure_list_fails_the_whole_batch() -> None:
    assert failed_message_ids({"batchItemFailures": [{"itemIdentifier": "zz"}]}, ["a"]) is None
    assert failed_message_ids({"batchItemFailures": [{}]}, ["a"]) is None
    assert failed_message_ids("nope", ["a"]) is None
