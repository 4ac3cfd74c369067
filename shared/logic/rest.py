"""The REST layer shared by the HTTP functions: one resolver factory, errors mapped in one place.

Every error answer has the protocol's body `{"error": {"code", "message", "details"?}}`.
Bad input is always a 4xx; a 5xx means the server failed (and is logged with its trace).
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types

from shared.contracts import ErrorCode
from shared.dal import Principal
from shared.errors import ApiError, ConfigurationError, Unauthorized
from shared.observability import logger


def error_response(status: int, code: ErrorCode, message: str, **extra: Any) -> Response[str]:
    details = extra.get("details")
    error: dict[str, Any] = {"code": code.value, "message": message}
    if details:
        error["details"] = details
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=json.dumps({"error": error}),
        headers=extra.get("headers") or {},
    )


def json_response(body: dict[str, Any], status: int = 200) -> Response[str]:
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=json.dumps(body, separators=(",", ":"), ensure_ascii=False),
    )


def make_resolver() -> APIGatewayRestResolver:
    """An APIGatewayRestResolver with the project's error mapping registered."""
    app = APIGatewayRestResolver()

    @app.exception_handler(ApiError)  # type: ignore[untyped-decorator]
    def _api_error(exc: ApiError) -> Response[str]:
        level = logger.error if exc.status >= 500 else logger.info
        level("request failed", extra={"status": exc.status, "code": exc.code.value})
        return error_response(
            exc.status, exc.code, exc.message, details=exc.details, headers=exc.headers
        )

    @app.exception_handler(ConfigurationError)  # type: ignore[untyped-decorator]
    def _config_error(exc: ConfigurationError) -> Response[str]:
        logger.exception("function is misconfigured")
        return error_response(500, ErrorCode.INTERNAL, "the server is misconfigured")

    @app.not_found
    def _not_found(exc: Exception) -> Response[str]:
        return error_response(
            HTTPStatus.NOT_FOUND,
            ErrorCode.NOT_FOUND,
            f"no route {app.current_event.http_method} {app.current_event.path}",
        )

    @app.exception_handler(Exception)  # type: ignore[untyped-decorator]
    def _unexpected(exc: Exception) -> Response[str]:
        logger.exception("unexpected error")
        return error_response(
            500, ErrorCode.INTERNAL, "internal error: resend the same request later"
        )

    return app


def principal_of(app: APIGatewayRestResolver) -> Principal:
    """Tenant and device from the authorizer's context; never from the request body."""
    context = app.current_event.raw_event.get("requestContext") or {}
    authorizer = context.get("authorizer") or {}
    tenant_id, device_id = authorizer.get("tenant_id"), authorizer.get("device_id")
    if not isinstance(tenant_id, str) or not isinstance(device_id, str):
        raise Unauthorized(
            "the request is not authenticated: send Authorization: Bearer <device token>"
        )
    if not tenant_id or not device_id:
        raise Unauthorized("the request is not authenticated")
    return Principal(tenant_id, device_id)
