"""POST /v1/batches: apply a batch of ops for the authenticated device."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from shared.config import load_settings
from shared.logic.batches import handle_batch_request
from shared.logic.rest import json_response, make_resolver, principal_of
from shared.observability import logger, metrics, tracer

app = make_resolver()


@app.post("/v1/batches")
@tracer.capture_method
def post_batch() -> Response[str]:
    principal = principal_of(app)
    event = app.current_event
    response = handle_batch_request(
        event.body,
        is_base64=event.is_base64_encoded,
        content_encoding=event.headers.get("Content-Encoding"),
        principal=principal,
        settings=load_settings(),
    )
    return json_response(response.to_wire())


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
