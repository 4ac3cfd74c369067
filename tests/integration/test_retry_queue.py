"""Server-side failures: queued ops, the retry worker, the DLQ after 5 receives, the dual failure.

Faults are raised by botocore hooks on the very clients pynamodb and boto3 use.
"""

from __future__ import annotations

import json

import pytest

from shared.conflict import Resolution
from shared.contracts import limits, parse_op
from shared.contracts.model import encoded_size
from shared.dal import records_model
from shared.dal.aws import sqs_client
from shared.dal.queue import MalformedMessage, RetryMessage, parse_message
from shared.logic.apply import register_resolver, unregister_resolver
from tests.integration.conftest import Cloud, Device, settle
from tests.support.aws import dynamo_fault, item_pk, load_event, sqs_fault


def test_throttled_op_is_queued_while_the_rest_of_the_batch_applies(cloud: Cloud) -> None:
    # Given DynamoDB throttles writes of one record
    device = Device()
    hot = device.op("put", "hot", {"a": 1})
    cold = device.op("put", "cold", {"b": 2})
    with dynamo_fault(records_model(), "PutItem", when=lambda p: item_pk(p).endswith("#hot")):
        # When a batch with it and another op arrives
        response = cloud.post_batch([hot, cold])
    # Then the throttled op is queued and the other applied
    assert [r["status"] for r in response.body["results"]] == ["queued", "applied"]
    messages = cloud.sqs.receive_message(QueueUrl=cloud.queue_url)["Messages"]
    body = json.loads(messages[0]["Body"])
    assert body["v"] == 1 and body["type"] == "apply_op"
    assert (body["tenant_id"], body["device_id"], body["reason"]) == ("acme", "pi-7", "throttled")
    assert body["op"] == hot


def test_queued_op_is_applied_later_by_the_worker(cloud: Cloud) -> None:
    # Given an op queued because of a throttle
    device = Device()
    op = device.op("put", "later", {"currency": "BTC"})
    with dynamo_fault(records_model(), "PutItem"):
        assert cloud.post_batch([op]).body["results"][0]["status"] == "queued"
    # When the throttle is over and the worker runs
    run = cloud.run_worker_once()
    # Then the op is applied, the queue is empty and the change reaches the feed
    assert run == {"received": 1, "failed": 0}
    assert cloud.queue_depth(cloud.queue_url) == 0
    settle()
    changes = cloud.changes().body["changes"]
    assert [(c["key"], c["data"]) for c in changes] == [("later", {"currency": "BTC"})]
    # and resending the batch now answers duplicate (the op took effect once)
    assert cloud.post_batch([op]).body["results"][0]["status"] == "duplicate"


def test_a_queued_op_at_the_size_limit_without_priority_is_applied_by_the_worker(
    cloud: Cloud,
) -> None:
    # Given an op that leaves out the optional priority and is exactly at the op size limit
    op = Device().op("put", "big", {"blob": ""})
    del op["priority"]
    op["data"]["blob"] = "x" * (limits.MAX_OP_BYTES - encoded_size(op))
    assert encoded_size(op) == limits.MAX_OP_BYTES
    # and DynamoDB throttles its write, so the API queues it (the message writes priority out)
    with dynamo_fault(records_model(), "PutItem"):
        assert cloud.post_batch([op]).body["results"][0]["status"] == "queued"
    # When the worker polls
    run = cloud.run_worker_once()
    # Then the op is applied, not refused as too large on its way to the DLQ
    assert run == {"received": 1, "failed": 0}
    assert cloud.queue_depth(cloud.queue_url) == 0
    assert cloud.queue_depth(cloud.dlq_url) == 0
    assert cloud.post_batch([op]).body["results"][0]["status"] == "duplicate"


def test_a_retry_message_skips_only_the_size_limit_of_its_op() -> None:
    # Given retry messages whose ops are over the size limit, one of them also with a bad key
    op = parse_op(Device().op("put", "k", {"blob": "x" * limits.MAX_OP_BYTES}), max_bytes=None)
    body = RetryMessage("acme", "pi-7", "b-1", op, "throttled", "").to_body()
    bad_key = json.loads(body)
    bad_key["op"]["key"] = "line\nbreak"
    # When the worker reads them
    # Then the size alone is no reason to refuse it, while every other rule still holds
    assert parse_message(body).op == op
    with pytest.raises(MalformedMessage, match=r"op\.key"):
        parse_message(json.dumps(bad_key))


def test_poison_op_reaches_the_dlq_after_5_receives_while_others_succeed(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given "inventory" is configured to a resolver nobody registered
    monkeypatch.setenv("CONFLICT_STRATEGIES", "inventory=max_count")
    device = Device()
    poison = device.op("put", "widget", {"count": 3}, collection="inventory")
    response = cloud.post_batch([poison])
    assert response.body["results"][0]["status"] == "queued"
    receives = 0
    for round_ in range(6):
        # and good ops keep arriving on the queue (throttled at the time)
        good = device.op("put", f"good-{round_}", {"n": round_})
        with dynamo_fault(records_model(), "PutItem", when=lambda p: "#good-" in item_pk(p)):
            cloud.post_batch([good])
        # When the worker polls
        run = cloud.run_worker_once()
        receives += 1 if run["failed"] else 0
    # Then the poison op failed on each of its 5 receives and then moved to the DLQ
    assert receives == 5
    assert cloud.queue_depth(cloud.queue_url) == 0
    dead = cloud.sqs.receive_message(QueueUrl=cloud.dlq_url)["Messages"]
    assert [json.loads(m["Body"])["op"]["op_id"] for m in dead] == [poison["op_id"]]
    assert json.loads(dead[0]["Body"])["reason"] == "unknown_resolver"
    # and every good op was applied
    settle()
    keys = {c["key"] for c in cloud.changes(limit=100).body["changes"]}
    assert keys == {f"good-{i}" for i in range(6)}


def test_worker_reports_only_the_poison_record_of_the_sample_event(cloud: Cloud) -> None:
    # Given the sample SQS event: one valid retry message, one that is not a retry message
    event = load_event("sqs_retry_with_poison.json")
    # When the worker handles it
    result = cloud.invoke("RetryWorkerFunction", event)
    # Then only the poison record is reported failed, and the valid op is applied
    assert result == {"batchItemFailures": [{"itemIdentifier": event["Records"][1]["messageId"]}]}
    settle()
    changes = cloud.changes().body["changes"]
    assert [(c["key"], c["data"]) for c in changes] == [("user-70", {"currency": "JPY"})]


def test_store_and_queue_both_failing_is_503_naming_both_causes(cloud: Cloud) -> None:
    # Given DynamoDB fails with a 500 and SQS refuses messages
    device = Device()
    with (
        dynamo_fault(records_model(), "PutItem", "InternalServerError", status=500),
        sqs_fault(sqs_client(), "SendMessage", "InternalError"),
    ):
        response = cloud.post_batch([device.op("put", "k", {"a": 1})])
    # Then the server does not pretend: 503, Retry-After, both causes in the body
    assert response.status == 503
    assert int(response.headers["Retry-After"]) > 0
    error = response.body["error"]
    assert error["code"] == "unavailable"
    assert "InternalServerError" in error["details"]["causes"]["dynamodb"]
    assert "InternalError" in error["details"]["causes"]["sqs"]


def test_read_throttle_also_queues_the_op(cloud: Cloud) -> None:
    device = Device()
    with dynamo_fault(records_model(), "GetItem", "ThrottlingException"):
        response = cloud.post_batch([device.op("patch", "k", {"a": 1})])
    assert response.body["results"][0]["status"] == "queued"


def test_op_whose_resolver_raises_is_queued_as_a_server_failure(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a custom resolver with a bug, assigned to "fragile"
    def explodes(current: object, op: object) -> Resolution:
        raise RuntimeError("bug in a custom resolver")

    register_resolver("explodes", explodes)
    monkeypatch.setenv("CONFLICT_STRATEGIES", "fragile=explodes")
    try:
        # When an op of that collection arrives
        device = Device()
        response = cloud.post_batch(
            [device.op("put", "k", {"a": 1}, collection="fragile"), device.op("put", "k", {"a": 2})]
        )
    finally:
        unregister_resolver("explodes")
    # Then it is queued (not rejected: the fault is the server's), the other op applies
    assert [r["status"] for r in response.body["results"]] == ["queued", "applied"]
    message = cloud.sqs.receive_message(QueueUrl=cloud.queue_url)["Messages"][0]
    assert json.loads(message["Body"])["reason"] == "resolver_failed"
