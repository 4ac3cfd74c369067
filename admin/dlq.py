"""Inspect and replay the dead-letter queue of the retry queue.

SQS has no "peek": listing receives every message with a short visibility timeout and then
makes the ones it did not consume visible again at once; it ends when receives bring only
messages already seen, so a DLQ too large to receive within the timeout still lists (each
message once). The DLQ has no redrive policy of its own, so the receive counts this adds are
harmless. Redriving sends a message back to the retry queue (where the retry worker applies
it, idempotently), with its message attributes, and only then deletes it from the DLQ, so a
failure in between duplicates a message rather than losing it; `--all` moves each received
batch at once, and stops after as many messages as the DLQ held when it started.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional

from admin.errors import AdminError

_PEEK_VISIBILITY_S = 30
_MAX_VISIBILITY_S = 43_200  # SQS refuses more (12 hours)
_MAX_MESSAGES = 10_000
# Receives in a row that bring only messages already seen, after which listing stops (each
# hides them again, so the next ones reach the others).
_IDLE_RECEIVES = 10
# What ReceiveMessage answers of a message attribute that SendMessage takes back.
_ATTRIBUTE_FIELDS = ("DataType", "StringValue", "BinaryValue")


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    receipt_handle: str
    body: str
    sent_at: str
    receive_count: int
    attributes: dict[str, Any]
    # As SendMessage takes them back: the attributes the message was sent with.
    message_attributes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """What an operator needs to decide: who sent which op, and why it was queued."""
        from shared.dal import parse_message

        info: dict[str, Any] = {
            "message_id": self.message_id,
            "sent_at": self.sent_at,
            "receive_count": self.receive_count,
        }
        try:
            message = parse_message(self.body)
        except ValueError:
            info.update({"tenant_id": "?", "readable": False, "body": self.body[:200]})
            return info
        info.update(
            {
                "tenant_id": message.tenant_id,
                "device_id": message.device_id,
                "op_id": message.op.op_id,
                "collection": message.op.collection,
                "key": message.op.key,
                "kind": message.op.kind.value,
                "reason": message.reason,
                "readable": True,
            }
        )
        return info


def _sent_at(attributes: dict[str, Any]) -> str:
    stamp = attributes.get("SentTimestamp")
    if not stamp:
        return ""
    moment = datetime.fromtimestamp(int(stamp) / 1000, tz=timezone.utc)
    return moment.isoformat(timespec="seconds")


class DeadLetterQueue:
    def __init__(self, sqs: Any, dlq_url: str, source_url: str = "") -> None:
        self._sqs = sqs
        self._url = dlq_url
        self._source = source_url

    def peek(self) -> list[DeadLetter]:
        """Every message in the DLQ, left in place (up to as many as it held when this began:
        the depth is approximate, so a listing during a burst of new dead letters may miss
        the newest)."""
        held: dict[str, DeadLetter] = {}
        limit = min(_MAX_MESSAGES, max(sum(queue_depth(self._sqs, self._url).values()), 10))
        try:
            return [message for batch in self._batches(limit, held) for message in batch]
        finally:
            self._release(list(held.values()))

    def redrive(self, message_id: Optional[str]) -> list[str]:
        """Move one message (or all, for None) back to the retry queue; returns their ids."""
        if not self._source:
            raise AdminError("no retry queue to redrive to: pass --queue-url or --stack-name")
        if message_id is None:
            return self._redrive_all()
        held: dict[str, DeadLetter] = {}
        found: Optional[DeadLetter] = None
        try:
            for batch in self._batches(_MAX_MESSAGES, held):
                found = next((m for m in batch if m.message_id == message_id), None)
                if found is not None:
                    del held[message_id]
                    break
        finally:
            self._release(list(held.values()))
        if found is None:
            raise AdminError(
                f"no message {message_id} in the dead-letter queue: see `sync-admin dlq list`"
            )
        self._move(found)
        return [found.message_id]

    def _redrive_all(self) -> list[str]:
        # Each batch is moved as it arrives, so none is held past its visibility timeout.
        # Bounded by the depth at the start: a message redriven now that fails again comes
        # back under a new id, and must not keep the loop going. The depth is approximate:
        # at least one receive is made; run the command again if some were left.
        depth = queue_depth(self._sqs, self._url)
        moved: list[str] = []
        for batch in self._batches(max(sum(depth.values()), 10)):
            for message in batch:
                self._move(message)
                moved.append(message.message_id)
        return moved

    def _move(self, message: DeadLetter) -> None:
        """Send to the retry queue, then delete here: a failure between duplicates, never loses."""
        extra = (
            {"MessageAttributes": message.message_attributes} if message.message_attributes else {}
        )
        self._sqs.send_message(QueueUrl=self._source, MessageBody=message.body, **extra)
        self._sqs.delete_message(QueueUrl=self._url, ReceiptHandle=message.receipt_handle)

    def purge(self) -> int:
        """Delete every message; returns how many there were (approximately)."""
        depth = self.depth()
        self._sqs.purge_queue(QueueUrl=self._url)
        return depth

    def depth(self) -> int:
        return queue_depth(self._sqs, self._url)["visible"]

    def _batches(
        self, limit: int, held: Optional[dict[str, DeadLetter]] = None
    ) -> Iterator[list[DeadLetter]]:
        """The DLQ's messages not received before, a receive at a time, each hidden for
        _PEEK_VISIBILITY_S; ends when a receive is empty, `limit` messages have come, or
        _IDLE_RECEIVES receives in a row bring only messages seen before.

        A caller holding the messages longer than the timeout gets the first ones again, so
        the queue never answers empty; this still ends. A message seen again stays hidden for
        a longer timeout each time, which lets the next receives reach the others. `held`, if
        given, gets the latest receipt of every message received, for releasing them.
        """
        seen: set[str] = set()
        idle = again = 0
        while len(seen) < limit and idle < _IDLE_RECEIVES:
            answer = self._sqs.receive_message(
                QueueUrl=self._url,
                MaxNumberOfMessages=10,  # (also hides as many of those that come again)
                # Longer each time messages come again: those keep coming first, and would
                # otherwise crowd out the ones not received yet.
                VisibilityTimeout=min(_PEEK_VISIBILITY_S * (1 + again), _MAX_VISIBILITY_S),
                WaitTimeSeconds=1,
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
            received = [_dead_letter(raw) for raw in answer.get("Messages") or []]
            if not received:
                return
            if held is not None:
                held.update((message.message_id, message) for message in received)
            fresh = [message for message in received if message.message_id not in seen]
            fresh = fresh[: limit - len(seen)]
            seen.update(message.message_id for message in fresh)
            idle = 0 if fresh else idle + 1
            again += len(fresh) < len(received)
            if fresh:
                yield fresh

    def _release(self, messages: list[DeadLetter]) -> None:
        for message in messages:
            with contextlib.suppress(Exception):  # it reappears after the timeout anyway
                self._sqs.change_message_visibility(
                    QueueUrl=self._url, ReceiptHandle=message.receipt_handle, VisibilityTimeout=0
                )


def _dead_letter(raw: dict[str, Any]) -> DeadLetter:
    attributes = dict(raw.get("Attributes") or {})
    return DeadLetter(
        message_id=raw["MessageId"],
        receipt_handle=raw["ReceiptHandle"],
        body=raw.get("Body", ""),
        sent_at=_sent_at(attributes),
        receive_count=int(attributes.get("ApproximateReceiveCount", 0)),
        attributes=attributes,
        message_attributes={
            name: {k: v for k, v in value.items() if k in _ATTRIBUTE_FIELDS}
            for name, value in (raw.get("MessageAttributes") or {}).items()
        },
    )


def queue_depth(sqs: Any, url: str) -> dict[str, int]:
    attributes = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    )["Attributes"]
    return {
        "visible": int(attributes.get("ApproximateNumberOfMessages", 0)),
        "in_flight": int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
        "delayed": int(attributes.get("ApproximateNumberOfMessagesDelayed", 0)),
    }
