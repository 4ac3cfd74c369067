"""The local SQS event source mapping at shutdown: quick, and nothing handled half-way."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from local.functions import LocalFunction
from local.resources import Queue
from local.retry import QueuePoller
from local.template import EventSourceSpec, FunctionSpec

QUEUE = Queue("RetryQueue", "q", "http://moto/123/q", "arn:aws:sqs:us-east-1:123:q", 30, "")
SOURCE = EventSourceSpec("Worker", "RetryQueue", 10, True)


class SlowSqs:
    """A receive that long-polls `wait_s`, then brings one message back."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s
        self.deleted: list[Any] = []
        self.received = threading.Event()

    def receive_message(self, **_: Any) -> dict[str, Any]:
        time.sleep(self.wait_s)
        self.received.set()
        return {"Messages": [{"MessageId": "m-1", "ReceiptHandle": "r-1", "Body": "op"}]}

    def delete_message_batch(self, **request: Any) -> None:
        self.deleted.append(request)


def _poller(sqs: Any, handler: Any) -> QueuePoller:
    spec = FunctionSpec("Worker", Path("."), "handler.lambda_handler", {}, 30, 128)
    function = LocalFunction(spec, "worker", "arn:worker", {}, handler)
    return QueuePoller(sqs, QUEUE, SOURCE, function, region="us-east-1")


def test_stop_does_not_wait_out_a_long_poll_and_leaves_what_it_brings_on_the_queue() -> None:
    handled: list[Any] = []
    sqs = SlowSqs(wait_s=1.5)
    poller = _poller(sqs, lambda event, context: handled.append(event) or {})
    poller.start()
    time.sleep(0.2)  # the receive is waiting

    started = time.monotonic()
    poller.stop()
    elapsed = time.monotonic() - started

    assert elapsed < 0.5
    assert sqs.received.wait(5)
    time.sleep(0.2)
    assert handled == [] and sqs.deleted == []  # not handled, not deleted: still queued


def test_stop_lets_a_batch_being_handled_finish_and_settle() -> None:
    entered = threading.Event()

    def handler(event: Any, context: Any) -> dict[str, Any]:
        entered.set()
        time.sleep(0.5)
        return {"batchItemFailures": []}

    sqs = SlowSqs(wait_s=0.0)
    poller = _poller(sqs, handler)
    poller.start()
    assert entered.wait(5)

    poller.stop()

    assert sqs.deleted and sqs.deleted[0]["Entries"][0]["ReceiptHandle"] == "r-1"
