"""GET /v1/changes: one page of the authenticated tenant's changes feed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.config import load_settings
from shared.logic.changes import parse_limit, read_changes
from shared.logic.rest import json_response, make_resolver, principal_of
from shared.observability import API_GATEWAY_REST_CORRELATION, MetricUnit, logger, metrics, tracer

if TYPE_CHECKING:
    from aws_lambda_powertools.event_handler import Response
    from aws_lambda_powertools.utilities.typing import LambdaContext

app = make_resolver()


@app.get("/v1/changes")
@tracer.capture_method
def get_changes() -> Response[str]:
    principal = principal_of(app)
    event = app.current_event
    result = read_changes(
        principal,
        after=event.get_query_string_value("after") or None,
        limit=parse_limit(event.get_query_string_value("limit")),
        collection=event.get_query_string_value("collection") or None,
        settings=load_settings(),
    )
    metrics.add_metric(
        name="ChangesReturned", unit=MetricUnit.Count, value=len(result.page.changes)
    )
    # `horizon` is an addition to the protocol's page: every change committed before it
    # has been delivered once a client has paged to has_more=false.
    return json_response({**result.page.to_wire(), "horizon": result.horizon})


@logger.inject_lambda_context(correlation_id_path=API_GATEWAY_REST_CORRELATION)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
