"""The REQUEST authorizer's decision.

No or malformed `Authorization` header: raise `Unauthorized` ("Unauthorized" is the message
API Gateway turns into a 401). A token that is unknown, wrong or revoked: a Deny policy
(403). A valid token: Allow on every route of the stage (so a cached decision fits all routes)
with context {tenant_id, device_id}, which the handlers read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.dal import authenticate
from shared.errors import InvalidToken, StoreError
from shared.observability import logger

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.data_classes.api_gateway_authorizer_event import (
        APIGatewayAuthorizerRequestEvent,
    )

BEARER = "bearer "


class NotAuthenticated(Exception):
    """Raised with the exact message "Unauthorized": API Gateway answers 401."""

    def __init__(self) -> None:
        super().__init__("Unauthorized")


def bearer_token(event: APIGatewayAuthorizerRequestEvent) -> str:
    header = event.headers.get("Authorization") or ""
    if not header.lower().startswith(BEARER) or not header[len(BEARER) :].strip():
        raise NotAuthenticated()
    return header[len(BEARER) :].strip()


def authorize(raw_event: dict[str, Any]) -> dict[str, Any]:
    """The authorizer's answer for one REQUEST event (see the module docstring)."""
    # Imported at the first request, not at cold start (see shared/observability.py).
    from aws_lambda_powertools.utilities.data_classes.api_gateway_authorizer_event import (
        APIGatewayAuthorizerRequestEvent,
        APIGatewayAuthorizerResponse,
    )

    event = APIGatewayAuthorizerRequestEvent(raw_event)
    token = bearer_token(event)
    arn = event.parsed_arn
    try:
        principal = authenticate(token)
    except InvalidToken as exc:
        logger.info("token denied", extra={"reason": str(exc)})
        response = APIGatewayAuthorizerResponse(
            principal_id="anonymous",
            region=arn.region,
            aws_account_id=arn.aws_account_id,
            api_id=arn.api_id,
            stage=arn.stage,
        )
        response.deny_all_routes()
        return response.asdict()
    except StoreError:
        # Fail closed; API Gateway answers 500 for an authorizer error, and the agent retries.
        logger.exception("device lookup failed")
        raise
    response = APIGatewayAuthorizerResponse(
        principal_id=principal.device_id,
        region=arn.region,
        aws_account_id=arn.aws_account_id,
        api_id=arn.api_id,
        stage=arn.stage,
        context={"tenant_id": principal.tenant_id, "device_id": principal.device_id},
    )
    response.allow_all_routes()
    logger.info(
        "token allowed", extra={"tenant_id": principal.tenant_id, "device_id": principal.device_id}
    )
    return response.asdict()
