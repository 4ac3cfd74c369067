"""GET /v1/health (no auth): cheap liveness and the server's clock."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from shared.contracts import limits
from shared.logic.clock import server_time
from shared.logic.rest import json_response, make_resolver
from shared.observability import logger, tracer

app = make_resolver()


@app.get("/v1/health")
def health() -> Response[str]:
    return json_response(
        {"status": "ok", "server_time": server_time(), "protocol": limits.PROTOCOL_VERSION}
    )


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
