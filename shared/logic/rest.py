"""The REST layer shared by the HTTP functions: one resolver factory, errors mapped in one place.

Every error answer has the protocol's body `{"error": {"code", "message", "details"?}}`.
Bad input is always a 4xx; a 5xx means the server failed (and is logged with its trace).
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Callable, Optional

from shared.contracts import ErrorCode
from shared.dal.principal import Principal
from shared.errors import ApiError, ConfigurationError, Unauthorized
from shared.observability import logger

if TYPE_CHECKING:
    from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response

APPLICATION_JSON = "application/json"


def error_response(status: int, code: ErrorCode, message: str, **extra: Any) -> Response[str]:
    details = extra.get("details")
    error: dict[str, Any] = {"code": code.value, "message": message}
    if details:
        error["details"] = details
    from aws_lambda_powertools.event_handler import Response

    return Response(
        status_code=status,
        content_type=APPLICATION_JSON,
        body=json.dumps({"error": error}),
        headers=extra.get("headers") or {},
    )


def json_response(body: dict[str, Any], status: int = 200) -> Response[str]:
    from aws_lambda_powertools.event_handler import Response

    return Response(status_code=status, content_type=APPLICATION_JSON, body=encode_json(body))


def encode_json(body: dict[str, Any]) -> str:
    """Compact JSON that is always valid UTF-8: non-ASCII text as it is, unless the body holds
    a lone surrogate (echoed from a request), which only an ASCII escape can carry."""
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(body, separators=(",", ":"))
    return text


class RestApp:
    """An APIGatewayRestResolver with the project's error mapping, built at its first request.

    Routes are declared at import time as on the resolver itself (`@app.get(path)`,
    `@app.post(path)`); powertools' event_handler (which imports every resolver it has) is
    imported when the first event is resolved, not when the handler module is imported.
    Anything else (`current_event`, ...) is the resolver's.
    """

    def __init__(self) -> None:
        self._routes: list[tuple[str, str, Callable[..., Any]]] = []
        self._resolver: Optional[APIGatewayRestResolver] = None
        self._lock = threading.Lock()

    def get(self, path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return self._route("get", path)

    def post(self, path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        return self._route("post", path)

    def _route(self, method: str, path: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            if self._resolver is not None:
                raise RuntimeError("routes must be declared before the first request")
            self._routes.append((method, path, fn))
            return fn

        return register

    @property
    def resolver(self) -> APIGatewayRestResolver:
        resolver = self._resolver
        if resolver is None:
            with self._lock:
                if self._resolver is None:
                    built = _error_mapped_resolver()
                    for method, path, fn in self._routes:
                        getattr(built, method)(path)(fn)
                    self._resolver = built
                resolver = self._resolver
        return resolver

    def resolve(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        return self.resolver.resolve(event, context)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.resolver, name)


def make_resolver() -> RestApp:
    """The REST app of one function: APIGatewayRestResolver + the project's error mapping."""
    return RestApp()


def _error_mapped_resolver() -> APIGatewayRestResolver:
    from aws_lambda_powertools.event_handler import APIGatewayRestResolver

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


def principal_of(app: RestApp) -> Principal:
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
