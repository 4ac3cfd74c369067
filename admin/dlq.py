"""Inspect and replay the dead-letter queue of the retry queue.

SQS has no "peek": listing receives every message with a short visibility timeout and then
makes the ones it did not consume visible again at once. The DLQ has no redrive policy of
its own, so the receive counts this adds are harmless. Redriving sends a message back to the
retry queue (where the retry worker applies it, idempotently) and only then deletes it from
the DLQ, so a failure in between duplicates a message rather than losing it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional

from admin.errors import AdminError

_PEEK_VISIBILITY_S = 30
_MAX_MESSAGES = 10_000


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    receipt_handle: str
    body: str
    sent_at: str
    receive_count: int
    attributes: dict[str, Any]

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
        """Every message in the DLQ, left in place."""
        messages = self._receive_all()
        self._release(messages)
        return messages

    def redrive(self, message_id: Optional[str]) -> list[str]:
        """Move one message (or all, for None) back to the retry queue; returns their ids."""
        if not self._source:
            raise AdminError("no retry queue to redrive to: pass --queue-url or --stack-name")
        messages = self._receive_all()
        chosen = [m for m in messages if message_id is None or m.message_id == message_id]
        self._release([m for m in messages if m not in chosen])
        if message_id is not None and not chosen:
            raise AdminError(
                f"no message {message_id} in the dead-letter queue: see `sync-admin dlq list`"
            )
        moved: list[str] = []
        for message in chosen:
            self._sqs.send_message(QueueUrl=self._source, MessageBody=message.body)
            self._sqs.delete_message(QueueUrl=self._url, ReceiptHandle=message.receipt_handle)
            moved.append(message.message_id)
        return moved

    def purge(self) -> int:
        """Delete every message; returns how many there were (approximately)."""
        depth = self.depth()
        self._sqs.purge_queue(QueueUrl=self._url)
        return depth

    def depth(self) -> int:
        return queue_depth(self._sqs, self._url)["visible"]

    def _receive_all(self) -> list[DeadLetter]:
        messages: dict[str, DeadLetter] = {}
        while len(messages) < _MAX_MESSAGES:
            answer = self._sqs.receive_message(
                QueueUrl=self._url,
                MaxNumberOfMessages=10,
                VisibilityTimeout=_PEEK_VISIBILITY_S,
                WaitTimeSeconds=1,
                MessageSystemAttributeNames=["All"],
            )
            batch = answer.get("Messages") or []
            if not batch:
                break
            for raw in batch:
                attributes = dict(raw.get("Attributes") or {})
                messages[raw["MessageId"]] = DeadLetter(
                    message_id=raw["MessageId"],
                    receipt_handle=raw["ReceiptHandle"],
                    body=raw.get("Body", ""),
                    sent_at=_sent_at(attributes),
                    receive_count=int(attributes.get("ApproximateReceiveCount", 0)),
                    attributes=attributes,
                )
        return list(messages.values())

    def _release(self, messages: list[DeadLetter]) -> None:
        for message in messages:
            with contextlib.suppress(Exception):  # it reappears after the timeout anyway
                self._sqs.change_message_visibility(
                    QueueUrl=self._url, ReceiptHandle=message.receipt_handle, VisibilityTimeout=0
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
