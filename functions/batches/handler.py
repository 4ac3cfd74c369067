"""POST /v1/batches: apply a batch of ops for the authenticated device."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.config import load_settings
from shared.logic.batches import handle_batch_request
from shared.logic.rest import json_response, make_resolver, principal_of
from shared.observability import API_GATEWAY_REST_CORRELATION, logger, metrics, tracer

if TYPE_CHECKING:
    from aws_lambda_powertools.event_handler import Response
    from aws_lambda_powertools.utilities.typing import LambdaContext

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


@logger.inject_lambda_context(correlation_id_path=API_GATEWAY_REST_CORRELATION)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
