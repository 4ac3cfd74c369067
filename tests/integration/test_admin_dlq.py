"""`sync-admin dlq`: listing and redriving end, and keep what a message carries, on moto's SQS.

A large DLQ is scaled down: a visibility timeout of 1 s and slow receives make receiving
every message take longer than the timeout, as thousands of messages do in production.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

import admin.dlq as dlq_module
from admin.dlq import DeadLetterQueue
from tests.integration.conftest import Cloud


class SlowSqs:
    """The moto SQS client, each receive taking `delay_s`; a loop that never ends fails."""

    def __init__(self, sqs: Any, delay_s: float, max_receives: int = 60) -> None:
        self._sqs = sqs
        self.delay_s = delay_s
        self.max_receives = max_receives
        self.receives = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sqs, name)

    def receive_message(self, **kwargs: Any) -> Any:
        self.receives += 1
        if self.receives > self.max_receives:
            raise AssertionError(f"{self.receives - 1} receives and still going: it never ends")
        time.sleep(self.delay_s)
        return self._sqs.receive_message(**kwargs)


def fill(cloud: Cloud, count: int) -> list[str]:
    """`count` dead letters with the attributes the API sends with a retry message."""
    for i in range(count):
        cloud.sqs.send_message(
            QueueUrl=cloud.dlq_url,
            MessageBody=f"message-{i}",
            MessageAttributes={
                "tenant_id": {"DataType": "String", "StringValue": f"tenant-{i}"},
                "reason": {"DataType": "String", "StringValue": "throttled"},
            },
        )
    return [f"message-{i}" for i in range(count)]


def drain(cloud: Cloud, url: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    while True:
        batch = cloud.sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
        ).get("Messages", [])
        if not batch:
            return messages
        messages += batch


@pytest.fixture
def short_visibility(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dlq_module, "_PEEK_VISIBILITY_S", 1)


@pytest.mark.usefixtures("short_visibility")
def test_redrive_all_moves_a_dlq_that_takes_longer_than_the_visibility_timeout_to_receive(
    cloud: Cloud,
) -> None:
    # Given 40 dead letters, and receiving them all takes longer than their visibility timeout
    bodies = fill(cloud, 40)
    sqs = SlowSqs(cloud.sqs, delay_s=0.3)
    # When they are all redriven
    moved = DeadLetterQueue(sqs, cloud.dlq_url, cloud.queue_url).redrive(None)
    # Then every one is back on the retry queue once, with its attributes, and the DLQ is empty
    assert len(moved) == len(set(moved)) == 40
    retried = drain(cloud, cloud.queue_url)
    assert sorted(m["Body"] for m in retried) == sorted(bodies)
    assert all(m["MessageAttributes"]["reason"]["StringValue"] == "throttled" for m in retried)
    assert {m["MessageAttributes"]["tenant_id"]["StringValue"] for m in retried} == {
        f"tenant-{i}" for i in range(40)
    }
    assert cloud.queue_depth(cloud.dlq_url) == 0


def test_redrive_all_stops_after_the_messages_the_dlq_held_when_it_started(
    cloud: Cloud,
) -> None:
    # Given 15 dead letters, and every redriven message fails again into the DLQ at once
    fill(cloud, 15)

    class FailingAgain(SlowSqs):
        def send_message(self, **kwargs: Any) -> Any:
            answer = cloud.sqs.send_message(**kwargs)
            cloud.sqs.send_message(**{**kwargs, "QueueUrl": cloud.dlq_url})
            return answer

    # When they are all redriven
    moved = DeadLetterQueue(FailingAgain(cloud.sqs, 0), cloud.dlq_url, cloud.queue_url).redrive(
        None
    )
    # Then the 15 are moved and the command ends, leaving the returning ones for the operator
    assert len(moved) == 15
    assert cloud.queue_depth(cloud.queue_url) == 15
    assert cloud.queue_depth(cloud.dlq_url) == 15


@pytest.mark.usefixtures("short_visibility")
def test_list_ends_and_shows_each_message_once_when_the_first_ones_reappear(
    cloud: Cloud,
) -> None:
    # Given 40 dead letters, and receiving them all takes longer than their visibility timeout
    bodies = fill(cloud, 40)
    sqs = SlowSqs(cloud.sqs, delay_s=0.3)
    # When they are listed
    letters = DeadLetterQueue(sqs, cloud.dlq_url).peek()
    # Then the listing ends with each message once, and leaves every one in the DLQ
    assert sorted(letter.body for letter in letters) == sorted(bodies)
    assert len({letter.message_id for letter in letters}) == 40
    assert sorted(m["Body"] for m in drain(cloud, cloud.dlq_url)) == sorted(bodies)


def test_redriving_one_message_keeps_its_attributes_and_leaves_the_others(cloud: Cloud) -> None:
    # Given three dead letters
    fill(cloud, 3)
    queue = DeadLetterQueue(cloud.sqs, cloud.dlq_url, cloud.queue_url)
    chosen = next(letter for letter in queue.peek() if letter.body == "message-1")
    # When one of them is redriven by its id
    assert queue.redrive(chosen.message_id) == [chosen.message_id]
    # Then it is on the retry queue with the attributes it was sent with; the others stay
    (retried,) = drain(cloud, cloud.queue_url)
    assert retried["Body"] == "message-1"
    assert {k: v["StringValue"] for k, v in retried["MessageAttributes"].items()} == {
        "tenant_id": "tenant-1",
        "reason": "throttled",
    }
    assert sorted(m["Body"] for m in drain(cloud, cloud.dlq_url)) == ["message-0", "message-2"]
