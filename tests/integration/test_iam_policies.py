"""Each function's IAM policy in template.yaml grants exactly the AWS operations its code sends.

The real handlers run against in-process moto through their real paths, while every request
leaving botocore is recorded: `Endpoint.make_request` is where boto3's clients and pynamodb
(which bypasses `BaseClient._make_api_call`) both send. Each recorded operation must be
allowed by a statement of that function's `Policies` on the table, index or queue it
addressed; and each action a policy grants must have been used (least privilege).
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import parse_qs

import pytest
from botocore.endpoint import Endpoint

from shared.dal import records_model
from tests.integration.conftest import TEMPLATE, Cloud, Device, settle, sqs_record
from tests.support.aws import Stack, dynamo_fault, item_pk, load_event, resources_of_type

FUNCTIONS = resources_of_type(TEMPLATE, "AWS::Serverless::Function")

# A resource a call addresses, or a policy grants: (logical id, index name or None).
Target = tuple[str, Optional[str]]


@dataclass(frozen=True)
class Call:
    action: str  # as IAM names it: "dynamodb:BatchGetItem"
    targets: tuple[str, ...]  # table names ("table/index/name" for an index) or queue URLs


class Recorder:
    """The AWS operations sent while `recording()` is active, from any thread."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.active = False
        self._lock = threading.Lock()

    def record(self, operation_model: Any, request_dict: Mapping[str, Any]) -> None:
        if not self.active:
            return
        service = operation_model.service_model.signing_name
        call = Call(f"{service}:{operation_model.name}", _targets(request_dict.get("body")))
        with self._lock:
            self.calls.append(call)

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Record what is sent inside the block (the functions), not the test's own calls."""
        self.active = True
        try:
            yield
        finally:
            self.active = False


def _targets(body: Any) -> tuple[str, ...]:
    """The tables (with their index) or queues a request body names."""
    text = body.decode("utf-8") if isinstance(body, bytes) else str(body or "")
    try:
        params: dict[str, Any] = json.loads(text) if text else {}
    except ValueError:  # a query-protocol body
        params = {key: values[0] for key, values in parse_qs(text).items()}
    if "QueueUrl" in params:
        return (str(params["QueueUrl"]),)
    tables = (
        [params["TableName"]] if "TableName" in params else list(params.get("RequestItems", {}))
    )
    index = params.get("IndexName")
    return tuple(f"{table}/index/{index}" if index else table for table in tables)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    recorder = Recorder()
    send = Endpoint.make_request

    def make_request(self: Endpoint, operation_model: Any, request_dict: Any) -> Any:
        recorder.record(operation_model, request_dict)
        return send(self, operation_model, request_dict)

    monkeypatch.setattr(Endpoint, "make_request", make_request)
    yield recorder


def _granted_target(resource: Any) -> Target:
    """(logical id, index) of a statement's Resource: !GetAtt X.Arn, !Ref X, !Sub "${X.Arn}..."."""
    if isinstance(resource, dict) and "Fn::GetAtt" in resource:
        return str(resource["Fn::GetAtt"][0]), None
    if isinstance(resource, dict) and "Ref" in resource:
        return str(resource["Ref"]), None
    if isinstance(resource, dict) and "Fn::Sub" in resource:
        match = re.fullmatch(r"\$\{(\w+)\.Arn\}(?:/index/([\w*-]+))?", resource["Fn::Sub"])
        assert match, f"a resource this test cannot read: {resource}"
        return match.group(1), match.group(2)
    raise AssertionError(f"a resource this test cannot read: {resource}")


def granted(function: str) -> dict[str, set[Target]]:
    """Action -> the resources the function's policy statements allow it on."""
    grants: dict[str, set[Target]] = {}
    for policy in FUNCTIONS[function]["Properties"].get("Policies", []):
        for statement in policy["Statement"]:
            assert statement["Effect"] == "Allow", f"{function}: {statement}"
            actions = statement["Action"]
            resources = statement["Resource"]
            for action in [actions] if isinstance(actions, str) else actions:
                for resource in resources if isinstance(resources, list) else [resources]:
                    grants.setdefault(action, set()).add(_granted_target(resource))
    return grants


def _logical(stack: Stack, target: str) -> Target:
    physical = {name: logical for logical, name in stack.tables.items()}
    physical.update({url: logical for logical, url in stack.queues.items()})
    table, _, index = target.partition("/index/")
    return physical[table], index or None


def assert_policy_matches(stack: Stack, function: str, calls: list[Call]) -> None:
    grants = granted(function)
    for call in calls:
        allowed = grants.get(call.action, set())
        for target in map(lambda t: _logical(stack, t), call.targets):
            wildcard = (target[0], "*") if target[1] else target
            assert target in allowed or wildcard in allowed, (
                f"{function} sends {call.action} to {target}, which its policy does not allow "
                f"(it allows {call.action} on {sorted(allowed, key=str) or 'nothing'})"
            )
    unused = set(grants) - {call.action for call in calls}
    assert not unused, f"{function} is granted {sorted(unused)}, which its code never sends"


def test_batches_function_may_send_what_a_batch_sends(cloud: Cloud, recorder: Recorder) -> None:
    device = Device()
    throttled = lambda params: item_pk(params).endswith("#user-3")  # noqa: E731
    with recorder.recording():
        # A batch of one record (GetItem), then of several (BatchGetItem), one of them
        # throttled and queued (SendMessage)
        assert cloud.post_batch([device.op("put", "user-1", {"a": 1})]).status == 200
        ops = [device.op("put", f"user-{n}", {"n": n}) for n in (1, 2, 3)]
        with dynamo_fault(records_model(), "PutItem", when=throttled):
            response = cloud.post_batch(ops, batch_id="b-2")
    assert [r["status"] for r in response.body["results"]] == ["applied", "applied", "queued"]
    actions = {call.action for call in recorder.calls}
    assert {"dynamodb:GetItem", "dynamodb:BatchGetItem", "sqs:SendMessage"} <= actions
    assert_policy_matches(cloud.stack, "BatchesFunction", recorder.calls)


def test_retry_worker_may_send_what_applying_a_queued_op_sends(
    cloud: Cloud, recorder: Recorder
) -> None:
    # Given an op on the retry queue
    with dynamo_fault(records_model(), "PutItem"):
        queued = cloud.post_batch([Device().op("put", "later", {"a": 1})])
    assert queued.body["results"][0]["status"] == "queued"
    messages = cloud.sqs.receive_message(QueueUrl=cloud.queue_url)["Messages"]
    # When the worker consumes it (receiving and deleting is the event source mapping's job)
    with recorder.recording():
        result = cloud.invoke("RetryWorkerFunction", {"Records": list(map(sqs_record, messages))})
    assert result["batchItemFailures"] == []
    assert_policy_matches(cloud.stack, "RetryWorkerFunction", recorder.calls)


def test_changes_function_may_send_what_paging_the_feed_sends(
    cloud: Cloud, recorder: Recorder
) -> None:
    device = Device()
    cloud.post_batch([device.op("put", f"user-{n}", {"n": n}) for n in range(3)])
    settle()
    with recorder.recording():
        first = cloud.changes(limit=2)
        rest = cloud.changes(after=first.body["cursor"], collection="preferences")
    assert len(first.body["changes"] + rest.body["changes"]) == 3
    assert_policy_matches(cloud.stack, "ChangesFunction", recorder.calls)


def test_authorizer_may_send_what_checking_a_token_sends(cloud: Cloud, recorder: Recorder) -> None:
    token = cloud.register("acme", "pi-7")
    with recorder.recording():
        allowed = cloud.authorize(f"Bearer {token}")
        denied = cloud.authorize(f"Bearer {token[:-4]}AAAA")
    assert allowed["policyDocument"]["Statement"][0]["Effect"] == "Allow"
    assert denied["policyDocument"]["Statement"][0]["Effect"] == "Deny"
    assert_policy_matches(cloud.stack, "AuthorizerFunction", recorder.calls)


def test_health_function_sends_nothing_and_is_granted_nothing(
    cloud: Cloud, recorder: Recorder
) -> None:
    with recorder.recording():
        assert cloud.http("HealthFunction", load_event("health.json")).status == 200
    assert recorder.calls == []
    assert_policy_matches(cloud.stack, "HealthFunction", recorder.calls)
