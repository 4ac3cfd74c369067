"""REQUEST authorizer: `Authorization: Bearer <device token>` -> {tenant_id, device_id}."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.logic.auth import authorize
from shared.observability import logger, tracer

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return authorize(event)
