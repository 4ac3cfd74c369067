"""SQS retry worker: applies queued ops; a failed record is redelivered, then dead-lettered."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.config import load_settings
from shared.logic.retry import process_retry_message, process_sqs_batch
from shared.observability import MetricUnit, logger, metrics, tracer

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
    from aws_lambda_powertools.utilities.typing import LambdaContext


@tracer.capture_method
def record_handler(record: SQSRecord) -> str:
    resolution = process_retry_message(record.body, load_settings())
    metrics.add_metric(name="RetriesApplied", unit=MetricUnit.Count, value=1)
    return resolution.status.value


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return process_sqs_batch(event, context, record_handler)
