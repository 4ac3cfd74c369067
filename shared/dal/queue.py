"""The retry queue: ops that could not be applied now, in a versioned JSON message.

Message body (documented in docs/architecture.md, read by the retry worker and `sync-admin`):

    {"v": 1, "type": "apply_op", "tenant_id": "acme", "device_id": "pi-7",
     "batch_id": "b-1", "reason": "throttled", "queued_at": "<server HLC>",
     "op": {<the op in its wire form>}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from shared.config import retry_queue_url
from shared.contracts import ContractError, Op, parse_op
from shared.dal.aws import error_code, sqs_client
from shared.errors import QueueError

MESSAGE_VERSION = 1
MESSAGE_TYPE = "apply_op"


@dataclass(frozen=True)
class RetryMessage:
    tenant_id: str
    device_id: str
    batch_id: str
    op: Op
    reason: str
    queued_at: str

    def to_body(self) -> str:
        return json.dumps(
            {
                "v": MESSAGE_VERSION,
                "type": MESSAGE_TYPE,
                "tenant_id": self.tenant_id,
                "device_id": self.device_id,
                "batch_id": self.batch_id,
                "reason": self.reason,
                "queued_at": self.queued_at,
                "op": self.op.to_wire(),
            },
            separators=(",", ":"),
            ensure_ascii=False,
        )


class MalformedMessage(ValueError):
    """A retry message this worker cannot read: it stays failed and ends in the DLQ."""


def parse_message(body: str) -> RetryMessage:
    try:
        raw: Any = json.loads(body)
    except ValueError as exc:
        raise MalformedMessage(f"retry message is not JSON: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("v") != MESSAGE_VERSION:
        raise MalformedMessage(f"retry message is not version {MESSAGE_VERSION} JSON object")
    if raw.get("type") != MESSAGE_TYPE:
        raise MalformedMessage(f"retry message type {raw.get('type')!r} is not {MESSAGE_TYPE}")
    for name in ("tenant_id", "device_id"):
        if not isinstance(raw.get(name), str) or not raw[name]:
            raise MalformedMessage(f"retry message lacks {name}")
    try:
        # Every check but the size limit: the op passed it when the API accepted it, and its
        # form here can be larger (`priority` written out when the device left it out).
        op = parse_op(raw.get("op"), "op", max_bytes=None)
    except ContractError as exc:
        raise MalformedMessage(f"retry message holds an invalid op: {exc}") from exc
    return RetryMessage(
        tenant_id=raw["tenant_id"],
        device_id=raw["device_id"],
        batch_id=str(raw.get("batch_id", "")),
        op=op,
        reason=str(raw.get("reason", "")),
        queued_at=str(raw.get("queued_at", "")),
    )


def enqueue(message: RetryMessage) -> str:
    """Send the message to $RETRY_QUEUE_URL; returns its id. Raises QueueError."""
    client = sqs_client()
    from botocore.exceptions import BotoCoreError, ClientError  # loaded by sqs_client()

    try:
        response = client.send_message(
            QueueUrl=retry_queue_url(),
            MessageBody=message.to_body(),
            MessageAttributes={
                "tenant_id": {"DataType": "String", "StringValue": message.tenant_id},
                "reason": {"DataType": "String", "StringValue": message.reason or "unknown"},
            },
        )
    except (ClientError, BotoCoreError) as exc:
        code = error_code(exc)
        raise QueueError(f"sending to the retry queue failed with {code}", aws_code=code) from exc
    return str(response["MessageId"])
