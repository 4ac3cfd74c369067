"""GET /v1/health (no auth): cheap liveness and the server's clock."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.contracts import limits
from shared.logic.clock import server_time
from shared.logic.rest import json_response, make_resolver
from shared.observability import API_GATEWAY_REST_CORRELATION, logger, tracer

if TYPE_CHECKING:
    from aws_lambda_powertools.event_handler import Response
    from aws_lambda_powertools.utilities.typing import LambdaContext

app = make_resolver()


@app.get("/v1/health")
def health() -> Response[str]:
    return json_response(
        {"status": "ok", "server_time": server_time(), "protocol": limits.PROTOCOL_VERSION}
    )


@logger.inject_lambda_context(correlation_id_path=API_GATEWAY_REST_CORRELATION)
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
