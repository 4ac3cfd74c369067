"""The retry worker's per-message step: apply a queued op with the batch endpoint's code path.

Any failure is raised, so the SQS batch processor reports the message as failed; SQS
delivers it again after the visibility timeout and moves it to the DLQ after 5 receives.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable

from shared.config import Settings
from shared.conflict import Resolution
from shared.dal.queue import parse_message
from shared.errors import ApplyFailed
from shared.logic.apply import apply_op
from shared.observability import logger

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.batch import BatchProcessor


def process_retry_message(body: str, settings: Settings) -> Resolution:
    """Apply the op in one retry-queue message body (format: shared.dal.queue).

    Raises MalformedMessage for a body that is not a retry message, ApplyFailed when the op
    still cannot be applied, RecordTooLarge when it never can; each leaves the message to be
    redelivered and, in the end, dead-lettered for an operator.
    """
    message = parse_message(body)
    try:
        resolution = apply_op(message.tenant_id, message.op, settings)
    except ApplyFailed as exc:
        logger.warning(
            "queued op failed again",
            extra={"op_id": message.op.op_id, "tenant_id": message.tenant_id, "reason": exc.reason},
        )
        raise
    logger.info(
        "queued op applied",
        extra={
            "op_id": message.op.op_id,
            "tenant_id": message.tenant_id,
            "status": resolution.status.value,
        },
    )
    return resolution


@functools.cache
def _sqs_processor() -> BatchProcessor:
    from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType

    return BatchProcessor(event_type=EventType.SQS)


def process_sqs_batch(
    event: dict[str, Any], context: Any, record_handler: Callable[[Any], Any]
) -> dict[str, Any]:
    """powertools' SQS BatchProcessor over `event`: `{"batchItemFailures": [...]}`.

    A record whose handler raises is reported failed (and only it is redelivered). powertools'
    batch utility is imported at the first event, not at cold start.
    """
    from aws_lambda_powertools.utilities.batch import process_partial_response

    response = process_partial_response(
        event=event, record_handler=record_handler, processor=_sqs_processor(), context=context
    )
    return dict(response)
