"""Integration fixtures: moto started before any client, resources built from template.yaml.

`cloud` calls the real handlers with events shaped like API Gateway's and SQS's.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Optional, Union

import boto3
import pytest
from moto import mock_aws

from shared.contracts import HybridLogicalClock
from shared.dal import register_device
from shared.dal.aws import reset_clients
from shared.dal.models import reset_models
from tests.support.aws import (
    REGION,
    LambdaContext,
    Stack,
    build_stack,
    load_event,
    load_handler,
    load_template,
)

TEMPLATE = load_template()
SETTLE_MS = 100
LAMBDA_RESPONSE_LIMIT = 6 * 1024 * 1024


FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "POWERTOOLS_TRACE_DISABLED": "true",
    "POWERTOOLS_METRICS_NAMESPACE": "FieldSyncTest",
    "POWERTOOLS_SERVICE_NAME": "fieldsync",
}
# Never talk to a real or local endpoint from these tests: moto runs in-process.
UNSET_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_DYNAMODB",
    "AWS_ENDPOINT_URL_SQS",
    "DYNAMODB_ENDPOINT_URL",
    "AWS_PROFILE",
    "CONFLICT_STRATEGIES",
)


RECREATED_ATTRIBUTES = {
    "VisibilityTimeout",
    "MessageRetentionPeriod",
    "RedrivePolicy",
    "SqsManagedSseEnabled",
}


@pytest.fixture(scope="module")
def aws_stack() -> Iterator[Stack]:
    """moto started before any client exists, and the template's resources, once per module."""
    with pytest.MonkeyPatch.context() as patch:
        for name in UNSET_ENV:
            patch.delenv(name, raising=False)
        for name, value in FAKE_AWS_ENV.items():
            patch.setenv(name, value)
        reset_models()
        reset_clients()
        with mock_aws():
            yield build_stack(TEMPLATE)
        reset_models()
        reset_clients()


@dataclass
class Response:
    status: int
    body: Any
    headers: dict[str, str]


class Cloud:
    """The deployed functions, called in-process against moto."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.sqs = boto3.client("sqs", region_name=REGION)
        self.context = LambdaContext()
        # Bytes of the last response as the Lambda runtime returns it (ASCII JSON), which
        # Lambda refuses past 6 MB.
        self.last_response_bytes = 0

    @property
    def queue_url(self) -> str:
        return self.stack.queues["RetryQueue"]

    @property
    def dlq_url(self) -> str:
        return self.stack.queues["RetryDeadLetterQueue"]

    def invoke(self, function: str, event: dict[str, Any]) -> Any:
        return load_handler(TEMPLATE, function)(event, self.context)

    def http(self, function: str, event: dict[str, Any]) -> Response:
        raw = self.invoke(function, event)
        self.last_response_bytes = len(json.dumps(raw))
        body = json.loads(raw["body"]) if raw.get("body") else None
        headers = {k: v for k, v in (raw.get("headers") or {}).items()}
        for key, values in (raw.get("multiValueHeaders") or {}).items():
            headers.setdefault(key, values[0])
        return Response(raw["statusCode"], body, headers)

    def post_batch(
        self,
        ops: list[dict[str, Any]],
        *,
        tenant: str = "acme",
        device: str = "pi-7",
        batch_id: str = "b-test",
    ) -> Response:
        event = batch_event(json.dumps({"batch_id": batch_id, "ops": ops}), tenant, device)
        return self.http("BatchesFunction", event)

    def changes(
        self,
        *,
        tenant: str = "acme",
        device: str = "pi-7",
        after: Optional[str] = None,
        limit: Union[int, str, None] = None,
        collection: Optional[str] = None,
    ) -> Response:
        event = load_event("changes_page.json")
        query: dict[str, str] = {}
        if after is not None:
            query["after"] = after
        if limit is not None:
            query["limit"] = str(limit)
        if collection is not None:
            query["collection"] = collection
        event["queryStringParameters"] = query or None
        event["multiValueQueryStringParameters"] = {k: [v] for k, v in query.items()} or None
        event["requestContext"]["authorizer"].update(tenant_id=tenant, device_id=device)
        return self.http("ChangesFunction", event)

    def authorize(self, authorization: Optional[str]) -> Any:
        event = load_event("authorizer_allow.json")
        event["headers"].pop("Authorization", None)
        event["multiValueHeaders"].pop("Authorization", None)
        if authorization is not None:
            event["headers"]["Authorization"] = authorization
            event["multiValueHeaders"]["Authorization"] = [authorization]
        return self.invoke("AuthorizerFunction", event)

    def register(self, tenant: str = "acme", device: str = "pi-7") -> str:
        return register_device(tenant, device)

    def queue_depth(self, url: str) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(
            attributes["ApproximateNumberOfMessagesNotVisible"]
        )

    def run_worker_once(self) -> dict[str, Any]:
        """One poll of the event source mapping: receive, invoke, delete the successes.

        Failed records are made visible again at once (what the visibility timeout does).
        """
        received = self.sqs.receive_message(
            QueueUrl=self.queue_url, MaxNumberOfMessages=10, AttributeNames=["All"]
        ).get("Messages", [])
        if not received:
            return {"received": 0, "failed": 0}
        event = {"Records": [sqs_record(message) for message in received]}
        result = self.invoke("RetryWorkerFunction", event)
        failed = {item["itemIdentifier"] for item in result["batchItemFailures"]}
        for message in received:
            if message["MessageId"] in failed:
                self.sqs.change_message_visibility(
                    QueueUrl=self.queue_url,
                    ReceiptHandle=message["ReceiptHandle"],
                    VisibilityTimeout=0,
                )
            else:
                self.sqs.delete_message(
                    QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"]
                )
        return {"received": len(received), "failed": len(failed)}


def sqs_record(message: dict[str, Any]) -> dict[str, Any]:
    record = copy.deepcopy(load_event("sqs_retry_with_poison.json")["Records"][0])
    record.update(
        messageId=message["MessageId"],
        receiptHandle=message["ReceiptHandle"],
        body=message["Body"],
        attributes=message.get("Attributes", {}),
    )
    return record


def batch_event(body: str, tenant: str, device: str) -> dict[str, Any]:
    event = load_event("batch_valid.json")
    event["body"] = body
    event["requestContext"]["authorizer"].update(
        principalId=device, tenant_id=tenant, device_id=device
    )
    return event


@pytest.fixture
def cloud(aws_stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cloud]:
    """The functions' environment from the template, over tables emptied after each test."""
    for name in UNSET_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in {**FAKE_AWS_ENV, **aws_stack.env}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CHANGES_SETTLE_MS", str(SETTLE_MS))
    monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "WARNING")
    yield Cloud(aws_stack)
    wipe(aws_stack)


def wipe(stack: Stack) -> None:
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    for table in stack.tables.values():
        keys = [
            schema["AttributeName"]
            for schema in dynamodb.describe_table(TableName=table)["Table"]["KeySchema"]
        ]
        for page in dynamodb.get_paginator("scan").paginate(TableName=table):
            for item in page["Items"]:
                dynamodb.delete_item(TableName=table, Key={k: item[k] for k in keys})
    # PurgeQueue is rate-limited and leaves in-flight messages: recreate the queues instead
    # (same names, same attributes), dead-letter queues first.
    sqs = boto3.client("sqs", region_name=REGION)
    saved = {
        url: sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        for url in stack.queues.values()
    }
    for url in saved:
        sqs.delete_queue(QueueUrl=url)
    for url, attributes in sorted(saved.items(), key=lambda kv: "RedrivePolicy" in kv[1]):
        keep = {k: v for k, v in attributes.items() if k in RECREATED_ATTRIBUTES}
        sqs.create_queue(QueueName=url.rsplit("/", 1)[1], Attributes=keep)


def settle() -> None:
    """Wait past the changes feed's settle horizon."""
    time.sleep(SETTLE_MS / 1000 + 0.05)


class Device:
    """Stamps ops the way a device does (HLC with its id as node)."""

    def __init__(self, device_id: str = "pi-7") -> None:
        self.clock = HybridLogicalClock(device_id)
        self.count = 0

    def op(
        self,
        kind: str,
        key: str,
        data: Optional[dict[str, Any]] = None,
        *,
        collection: str = "preferences",
        hlc: Optional[str] = None,
    ) -> dict[str, Any]:
        self.count += 1
        op: dict[str, Any] = {
            "op_id": f"{self.clock.node}-op-{self.count}".replace(".", "-").replace(":", "-"),
            "collection": collection,
            "key": key,
            "kind": kind,
            "hlc": hlc or self.clock.send(),
            "priority": 2,
        }
        if kind != "delete":
            op["data"] = data if data is not None else {}
        return op
