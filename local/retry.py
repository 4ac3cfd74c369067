"""The SQS event source mapping, locally: poll a queue, invoke the handler, settle messages.

As Lambda does for an SQS trigger: up to `BatchSize` messages (10 per receive) go to the
handler as one event; with `ReportBatchItemFailures` the messages it lists in
`batchItemFailures` stay on the queue and the rest are deleted; a handler that raises, or
answers a malformed failure list, fails the whole batch. Failed messages come back after the
visibility timeout, and moto moves a message to the dead-letter queue once its receive count
passes the redrive policy's `maxReceiveCount` - the same path a poison op takes in AWS.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Optional

from local.events import failed_message_ids, sqs_event
from local.functions import LocalFunction
from local.resources import Queue
from local.template import EventSourceSpec

log = logging.getLogger("fieldsync.local.retry")

_POLL_WAIT_S = 1
_HANDLING_GRACE_S = 15.0  # a batch being handled at shutdown gets this long to finish


class QueuePoller:
    """One event source mapping, run by a daemon thread until `stop()`."""

    def __init__(
        self,
        sqs: Any,
        queue: Queue,
        source: EventSourceSpec,
        function: LocalFunction,
        *,
        region: str,
        failure_visibility_s: Optional[int] = None,
    ) -> None:
        self._sqs = sqs
        self._queue = queue
        self._source = source
        self._function = function
        self._region = region
        self._failure_visibility_s = failure_visibility_s
        self._stop = threading.Event()
        self._handling = threading.Lock()  # held while a received batch is handled/settled
        self._thread = threading.Thread(
            target=self._run, name=f"poller-{queue.logical_id}", daemon=True
        )
        self.invocations = 0

    def start(self) -> None:
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the poller to stop; a batch being handled is finished. Does not wait."""
        self._stop.set()

    def stop(self) -> None:
        """Stop now, but let a batch being handled finish and settle first.

        A receive still waiting is not waited for: whatever it brings back once stopping is
        not handled and stays on the queue (visible again after its visibility timeout), as
        a Lambda poller that stops mid-poll leaves it in AWS.
        """
        self._stop.set()
        if self._handling.acquire(timeout=_HANDLING_GRACE_S):
            self._handling.release()
        else:
            log.warning("the retry handler is still running at shutdown")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # the poller outlives a failed receive, as Lambda's does
                if not self._stop.is_set():
                    log.warning("retry queue poll failed", extra={"error": repr(exc)})
                self._stop.wait(1)

    def poll_once(self) -> int:
        """Receive one batch and run it through the handler; returns how many messages."""
        received = self._sqs.receive_message(
            QueueUrl=self._queue.url,
            MaxNumberOfMessages=max(1, min(self._source.batch_size, 10)),
            WaitTimeSeconds=_POLL_WAIT_S,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        messages = received.get("Messages") or []
        if not messages:
            return 0
        with self._handling:
            if self._stop.is_set():
                return 0  # stopping: the messages stay on the queue, nothing is lost
            return self._handle(messages)

    def _handle(self, messages: list[dict[str, Any]]) -> int:
        ids = [message["MessageId"] for message in messages]
        self.invocations += 1
        try:
            result = self._function.invoke(sqs_event(messages, self._queue.arn, self._region))
            failed = (
                failed_message_ids(result, ids)
                if self._source.report_batch_item_failures
                else set()
            )
        except Exception as exc:
            log.warning(
                "retry handler raised; the whole batch stays on the queue",
                extra={"error": type(exc).__name__, "messages": len(messages)},
            )
            failed = None
        failed_ids = set(ids) if failed is None else failed
        done = [m for m in messages if m["MessageId"] not in failed_ids]
        again = [m for m in messages if m["MessageId"] in failed_ids]
        if done:
            self._sqs.delete_message_batch(
                QueueUrl=self._queue.url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)
                ],
            )
        if again and self._failure_visibility_s is not None:
            with contextlib.suppress(Exception):
                self._sqs.change_message_visibility_batch(
                    QueueUrl=self._queue.url,
                    Entries=[
                        {
                            "Id": str(i),
                            "ReceiptHandle": m["ReceiptHandle"],
                            "VisibilityTimeout": self._failure_visibility_s,
                        }
                        for i, m in enumerate(again)
                    ],
                )
        return len(messages)
