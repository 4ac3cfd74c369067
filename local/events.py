"""The events a deployed stack hands its Lambdas, built from local requests and messages.

- `proxy_event`: API Gateway REST API, Lambda proxy integration (payload format 1.0).
- `authorizer_event`: a REQUEST Lambda authorizer's input.
- `sqs_event`: an SQS event source mapping's batch.

Pure functions over plain values, so the unit tests check the shapes without sockets.
"""

from __future__ import annotations

import base64
import fnmatch
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import parse_qsl

ACCOUNT_ID = "123456789012"  # moto's default account
API_ID = "local"


@dataclass(frozen=True)
class HttpRequest:
    """One request as the gateway received it (body already decompressed)."""

    method: str
    path: str  # without the query string
    query: str
    headers: Sequence[tuple[str, str]]  # in arrival order, original case
    body: bytes
    source_ip: str = "127.0.0.1"
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def header(self, name: str) -> Optional[str]:
        """The last value of a header, matched case-insensitively (as API Gateway does)."""
        found = None
        for key, value in self.headers:
            if key.lower() == name.lower():
                found = value
        return found


def _single_and_multi(
    pairs: Sequence[tuple[str, str]],
) -> tuple[Optional[dict[str, str]], Optional[dict[str, list[str]]]]:
    if not pairs:
        return None, None
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for key, value in pairs:
        single[key] = value  # the last value wins, as in API Gateway's `headers`
        multi.setdefault(key, []).append(value)
    return single, multi


def is_binary(content_type: Optional[str], binary_media_types: Sequence[str]) -> bool:
    """True when API Gateway would pass the body base64-encoded (binaryMediaTypes match)."""
    if not content_type:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    return any(fnmatch.fnmatch(media_type, pattern.lower()) for pattern in binary_media_types)


def _body(request: HttpRequest, binary_media_types: Sequence[str]) -> tuple[Optional[str], bool]:
    if not request.body:
        return None, False
    if is_binary(request.header("Content-Type"), binary_media_types):
        return base64.b64encode(request.body).decode("ascii"), True
    try:
        return request.body.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(request.body).decode("ascii"), True


def request_context(
    request: HttpRequest, resource: str, stage: str, *, now_ms: Optional[int] = None
) -> dict[str, Any]:
    epoch_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    return {
        "accountId": ACCOUNT_ID,
        "apiId": API_ID,
        "domainName": request.header("Host") or "localhost",
        "domainPrefix": "localhost",
        "extendedRequestId": request.request_id,
        "httpMethod": request.method,
        "identity": {
            "sourceIp": request.source_ip,
            "userAgent": request.header("User-Agent"),
            "accessKey": None,
            "accountId": None,
            "caller": None,
            "cognitoIdentityId": None,
            "cognitoIdentityPoolId": None,
            "principalOrgId": None,
            "user": None,
            "userArn": None,
        },
        "path": f"/{stage}{request.path}",
        "protocol": "HTTP/1.1",
        "requestId": request.request_id,
        "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(epoch_ms / 1000)),
        "requestTimeEpoch": epoch_ms,
        "resourceId": "local",
        "resourcePath": resource,
        "stage": stage,
    }


def _request_parts(request: HttpRequest, path_parameters: Mapping[str, str]) -> dict[str, Any]:
    headers, multi_headers = _single_and_multi(list(request.headers))
    query, multi_query = _single_and_multi(parse_qsl(request.query, keep_blank_values=True))
    return {
        "path": request.path,
        "httpMethod": request.method,
        "headers": headers,
        "multiValueHeaders": multi_headers,
        "queryStringParameters": query,
        "multiValueQueryStringParameters": multi_query,
        "pathParameters": dict(path_parameters) or None,
        "stageVariables": None,
    }


def authorizer_context(principal_id: str, context: Mapping[str, Any]) -> dict[str, Any]:
    """`requestContext.authorizer`: the authorizer's context, values as REST APIs pass them."""
    values: dict[str, Any] = {"principalId": principal_id}
    for key, value in context.items():
        values[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return values


def proxy_event(
    request: HttpRequest,
    *,
    resource: str,
    path_parameters: Mapping[str, str],
    stage: str,
    binary_media_types: Sequence[str],
    authorizer: Optional[Mapping[str, Any]] = None,
    now_ms: Optional[int] = None,
) -> dict[str, Any]:
    """The Lambda proxy integration event for `request` routed to `resource`."""
    body, is_base64 = _body(request, binary_media_types)
    context = request_context(request, resource, stage, now_ms=now_ms)
    if authorizer is not None:
        context["authorizer"] = dict(authorizer)
    return {
        "resource": resource,
        **_request_parts(request, path_parameters),
        "requestContext": context,
        "body": body,
        "isBase64Encoded": is_base64,
    }


def method_arn(region: str, stage: str, method: str, path: str) -> str:
    return f"arn:aws:execute-api:{region}:{ACCOUNT_ID}:{API_ID}/{stage}/{method}{path}"


def authorizer_event(
    request: HttpRequest,
    *,
    resource: str,
    path_parameters: Mapping[str, str],
    stage: str,
    region: str,
    now_ms: Optional[int] = None,
) -> dict[str, Any]:
    """The input of a REQUEST authorizer for `request`."""
    return {
        "type": "REQUEST",
        "methodArn": method_arn(region, stage, request.method, request.path),
        "resource": resource,
        **_request_parts(request, path_parameters),
        "requestContext": request_context(request, resource, stage, now_ms=now_ms),
    }


def sqs_record(message: Mapping[str, Any], queue_arn: str, region: str) -> dict[str, Any]:
    """One record of an SQS event, from a ReceiveMessage result entry."""
    attributes = dict(message.get("Attributes") or {})
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message.get("Body", ""),
        "attributes": {
            "ApproximateReceiveCount": attributes.get("ApproximateReceiveCount", "1"),
            "SentTimestamp": attributes.get("SentTimestamp", ""),
            "SenderId": attributes.get("SenderId", ACCOUNT_ID),
            "ApproximateFirstReceiveTimestamp": attributes.get(
                "ApproximateFirstReceiveTimestamp", ""
            ),
        },
        "messageAttributes": {
            name: {
                "stringValue": value.get("StringValue"),
                "binaryValue": value.get("BinaryValue"),
                "stringListValues": [],
                "binaryListValues": [],
                "dataType": value.get("DataType", "String"),
            }
            for name, value in (message.get("MessageAttributes") or {}).items()
        },
        "md5OfBody": message.get("MD5OfBody", ""),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


def sqs_event(messages: Sequence[Mapping[str, Any]], queue_arn: str, region: str) -> dict[str, Any]:
    return {"Records": [sqs_record(message, queue_arn, region) for message in messages]}


def failed_message_ids(result: Any, batch_ids: Sequence[str]) -> Optional[set[str]]:
    """Which messages failed, from a handler's partial-batch response.

    None means the response is malformed, which Lambda treats as the whole batch failing.
    """
    if result is None:
        return set()
    if not isinstance(result, Mapping):
        return None
    failures = result.get("batchItemFailures")
    if failures is None:
        return set()
    if not isinstance(failures, list):
        return None
    failed: set[str] = set()
    for failure in failures:
        item = failure.get("itemIdentifier") if isinstance(failure, Mapping) else None
        if not item or item not in batch_ids:
            return None  # Lambda fails the whole batch on an empty or unknown identifier
        failed.add(str(item))
    return failed
