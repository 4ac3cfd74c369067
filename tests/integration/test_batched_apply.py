"""The batch endpoint's write path: one read for the batch, one conditional write per record.

Every op still gets the status it would get if the ops were applied one by one; a rival
writer, a throttled write or unprocessed keys are handled per record. Requests are counted
and faults injected with botocore hooks on the client pynamodb really uses.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from shared.config import load_settings
from shared.conflict import apply_lww
from shared.contracts import Record, parse_op
from shared.dal import records_model
from shared.dal.records import load
from shared.logic.apply import apply_op
from tests.integration.conftest import Cloud, Device
from tests.support.aws import (
    before_request,
    count_requests,
    dynamo_fault,
    dynamodb_client_of,
    edit_responses,
    item_pk,
)


def statuses(response_body: dict[str, Any]) -> list[str]:
    return [result["status"] for result in response_body["results"]]


def stored_data(key: str) -> Optional[dict[str, Any]]:
    stored = load("acme", "preferences", key)
    return stored.record.data if stored is not None else None


def sequential_statuses(current: Optional[Record], ops: list[dict[str, Any]]) -> list[str]:
    """What applying the ops one by one with LWW answers (the specification of the batch)."""
    answers = []
    for raw in ops:
        resolution = apply_lww(current, parse_op(raw))
        answers.append(resolution.status.value)
        current = resolution.record if resolution.changed else current
    return answers


def test_several_ops_on_one_record_get_their_own_statuses_and_one_write(cloud: Cloud) -> None:
    # Given a stored record and a batch with five ops on it (one a repeat, one older than
    # a field patch) and one op on another record
    device = Device()
    first = device.op("put", "user-1", {"currency": "EUR", "theme": "dark"})
    cloud.post_batch([first])
    old_put = device.op("put", "user-1", {"currency": "USD", "theme": "light"})
    patch = device.op("patch", "user-1", {"theme": "blue"})
    newer = device.op("patch", "user-1", {"lang": "fr"})
    other = device.op("put", "user-2", {"a": 1})
    ops = [patch, first, old_put, newer, other]
    before = load("acme", "preferences", "user-1")
    assert before is not None
    expected = sequential_statuses(before.record, [patch, first, old_put, newer])
    # When the batch is posted
    with count_requests(dynamodb_client_of(records_model())) as calls:
        response = cloud.post_batch(ops)
    # Then each op has the status sequential application gives it, in request order
    assert statuses(response.body) == [*expected, "applied"]
    assert statuses(response.body) == ["applied", "duplicate", "merged", "applied", "applied"]
    merged = response.body["results"][2]["record"]
    assert merged["data"] == {"currency": "USD", "theme": "blue"}
    # And the store saw one read for the batch and one write per record
    assert calls == {"BatchGetItem": 1, "PutItem": 2}
    assert stored_data("user-1") == {"currency": "USD", "theme": "blue", "lang": "fr"}
    assert stored_data("user-2") == {"a": 1}


def test_a_batch_of_one_record_reads_it_with_one_get_item(cloud: Cloud) -> None:
    # Given a batch whose ops all touch one record
    device = Device()
    ops = [device.op("put", "solo", {"a": 1}), device.op("patch", "solo", {"b": 2})]
    # When it is posted
    with count_requests(dynamodb_client_of(records_model())) as calls:
        response = cloud.post_batch(ops)
    # Then one GetItem (as cheap as a one-key BatchGetItem) and one PutItem are made
    assert statuses(response.body) == ["applied", "applied"]
    assert calls == {"GetItem": 1, "PutItem": 1}


def _post_with_rival(
    cloud: Cloud, ops: list[dict[str, Any]], rival_op: dict[str, Any]
) -> tuple[list[str], Any]:
    """Post `ops` (on "k") plus one op on "calm"; `rival_op` is applied by another writer
    between the batch's read and its write of "k". Returns the statuses and request counts."""
    settings = load_settings()
    client = dynamodb_client_of(records_model())
    rival_wrote: list[bool] = []

    def rival_writes_first(params: dict[str, Any]) -> None:
        if item_pk(params) == "acme#preferences#k" and not rival_wrote:
            rival_wrote.append(True)
            apply_op("acme", parse_op(rival_op), settings)  # its own GetItem + PutItem

    calm = Device("pi-8").op("put", "calm", {"c": 3})
    with before_request(client, "PutItem", rival_writes_first), count_requests(client) as calls:
        response = cloud.post_batch([*ops, calm])
    assert rival_wrote == [True]
    assert stored_data("calm") == {"c": 3}
    return statuses(response.body), calls


def test_a_rival_write_during_the_batched_write_falls_back_to_per_op_apply(
    cloud: Cloud,
) -> None:
    # Given a batch of two ops on "k", and another device's newer put of "k" landing
    # between the batch's read and its write
    device, rival = Device("pi-7"), Device("pi-9")
    ops = [device.op("put", "k", {"a": 1}), device.op("patch", "k", {"b": 2})]
    rival_put = rival.op("put", "k", {"z": 9})
    rival_record = apply_lww(None, parse_op(rival_put)).record
    # When the batch is posted
    answers, calls = _post_with_rival(cloud, ops, rival_put)
    # Then the batched write lost the race and each op was re-applied on the rival's record:
    # the answers and the record are those of applying rival, then the ops, one by one
    assert answers == [*sequential_statuses(rival_record, ops), "applied"]
    assert answers[0] == "superseded"  # the put is older than the rival's put
    expected = rival_record
    for raw in ops:
        resolution = apply_lww(expected, parse_op(raw))
        expected = resolution.record if resolution.changed else expected
    assert stored_data("k") == expected.data
    # (one batch read; the rival's GetItem and PutItem; the lost write; a GetItem per op)
    assert calls["BatchGetItem"] == 1
    assert calls["GetItem"] == 3


def test_a_rival_write_that_loses_on_time_keeps_every_op_of_the_batch(cloud: Cloud) -> None:
    # Given a rival's older patch of "k" landing between the batch's read and its write
    rival, device = Device("pi-1"), Device("pi-7")
    rival_patch = rival.op("patch", "k", {"r": 1})
    ops = [device.op("patch", "k", {"a": 1}), device.op("patch", "k", {"b": 2})]
    # When the batch is posted
    answers, _ = _post_with_rival(cloud, ops, rival_patch)
    # Then the ops were re-applied on top of the rival's write: no update is lost
    assert answers == ["applied", "applied", "applied"]
    assert stored_data("k") == {"r": 1, "a": 1, "b": 2}


def test_unprocessed_keys_are_read_again(cloud: Cloud) -> None:
    # Given two stored records, and DynamoDB leaving every key unprocessed the first time
    device = Device()
    older = [device.op("put", "a", {"n": 0}), device.op("put", "b", {"n": 0})]
    cloud.post_batch([device.op("put", "a", {"n": 1}), device.op("put", "b", {"n": 1})])
    client = dynamodb_client_of(records_model())
    table = records_model().Meta.table_name
    answers: list[int] = []

    def leave_unprocessed_once(parsed: dict[str, Any]) -> None:
        items = parsed.get("Responses", {}).get(table, [])
        answers.append(len(items))
        if len(answers) == 1:
            parsed["Responses"][table] = []
            parsed["UnprocessedKeys"] = {table: {"Keys": [{"pk": i["pk"]} for i in items]}}

    # When a batch with an older put of each arrives
    with edit_responses(client, "BatchGetItem", leave_unprocessed_once):
        response = cloud.post_batch(older)
    # Then the keys were asked again and both ops were decided against the stored records
    assert answers == [2, 2]
    assert statuses(response.body) == ["superseded", "superseded"]


def test_a_throttled_batch_read_queues_every_op(cloud: Cloud) -> None:
    # Given a batch on two records and a throttled BatchGetItem
    device = Device()
    ops = [device.op("put", "a", {"n": 1}), device.op("put", "b", {"n": 2})]
    with dynamo_fault(records_model(), "BatchGetItem", "ThrottlingException"):
        response = cloud.post_batch(ops)
    # Then both ops are queued for the worker and nothing is written
    assert statuses(response.body) == ["queued", "queued"]
    assert stored_data("a") is None and stored_data("b") is None
    assert cloud.queue_depth(cloud.queue_url) == 2
    # And the worker applies them later
    assert cloud.run_worker_once() == {"received": 2, "failed": 0}
    assert stored_data("a") == {"n": 1} and stored_data("b") == {"n": 2}


def test_a_throttled_batched_write_queues_the_ops_it_carried(cloud: Cloud) -> None:
    # Given a stored record, and a batch with an older put of it (decided against the stored
    # record) then a newer patch (which needs the write), and throttled writes to it
    device = Device()
    older = device.op("put", "hot", {"v": 0})
    stored = device.op("put", "hot", {"v": 1})
    newer = device.op("patch", "hot", {"w": 2})
    cloud.post_batch([stored])
    with dynamo_fault(records_model(), "PutItem", when=lambda p: item_pk(p).endswith("#hot")):
        response = cloud.post_batch([older, newer, device.op("put", "cool", {"c": 1})])
    # Then the older put keeps its answer, the patch is queued, the other record applies
    assert statuses(response.body) == ["superseded", "queued", "applied"]
    messages = cloud.sqs.receive_message(QueueUrl=cloud.queue_url, MaxNumberOfMessages=10)
    bodies = [json.loads(m["Body"]) for m in messages["Messages"]]
    assert [(b["op"]["op_id"], b["reason"]) for b in bodies] == [(newer["op_id"], "throttled")]
    assert stored_data("hot") == {"v": 1}


def test_a_combined_record_too_large_rejects_only_the_op_that_overflows(cloud: Cloud) -> None:
    # Given two patches of one record, each under the op limit, together over the item limit
    device = Device()
    first = device.op("patch", "growing", {"a": "x" * 300_000})
    second = device.op("patch", "growing", {"b": "y" * 300_000})
    # When they arrive in one batch
    response = cloud.post_batch([first, second])
    # Then the first is applied and only the second is rejected too_large
    assert statuses(response.body) == ["applied", "rejected"]
    assert response.body["results"][1]["error"]["code"] == "too_large"
    assert stored_data("growing") == {"a": "x" * 300_000}
