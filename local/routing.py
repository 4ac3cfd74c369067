"""What the REST API does before and after the Lambda: routing, body decoding, responses.

- Routes come from the template's OpenAPI body; `{name}` and `{name+}` path parameters.
- A compressed request body (`Content-Encoding: gzip` or `deflate`) is inflated with a hard
  bound: past the limit it is 413, undecodable it is 415, never an out-of-memory.
- Refusals are rendered from the template's gateway responses when it has them
  (`x-amazon-apigateway-gateway-responses`, then DEFAULT_4XX/5XX), else as the protocol's
  error body `{"error": {"code", "message"}}`.
- A Lambda proxy result that is not `{statusCode, headers?, body?, isBase64Encoded?}` is 502.
"""

from __future__ import annotations

import base64
import json
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from local.template import GatewayResponse, Route

_DEFAULT_STATUS = {
    "UNAUTHORIZED": 401,
    "ACCESS_DENIED": 403,
    "MISSING_AUTHENTICATION_TOKEN": 403,
    "RESOURCE_NOT_FOUND": 404,
    "BAD_REQUEST_BODY": 400,
    "REQUEST_TOO_LARGE": 413,
    "UNSUPPORTED_MEDIA_TYPE": 415,
    "AUTHORIZER_FAILURE": 500,
    "AUTHORIZER_CONFIGURATION_ERROR": 500,
    "BAD_GATEWAY": 502,
    "INTEGRATION_FAILURE": 504,
}
_PROTOCOL_CODE = {
    "UNAUTHORIZED": "unauthorized",
    "ACCESS_DENIED": "forbidden",
    "MISSING_AUTHENTICATION_TOKEN": "not_found",
    "RESOURCE_NOT_FOUND": "not_found",
    "BAD_REQUEST_BODY": "bad_request",
    "REQUEST_TOO_LARGE": "payload_too_large",
    "UNSUPPORTED_MEDIA_TYPE": "unsupported_media_type",
}


@dataclass(frozen=True)
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


class Refusal(Exception):
    """The gateway answers itself, without the Lambda: `response_type` names the case."""

    def __init__(
        self, response_type: str, message: str, details: Optional[dict[str, Any]] = None
    ) -> None:
        super().__init__(message)
        self.response_type = response_type
        self.message = message
        self.details = details or {}


@dataclass(frozen=True)
class Match:
    route: Route
    path_parameters: dict[str, str]


class Router:
    def __init__(self, routes: Sequence[Route]) -> None:
        # Literal segments before parameters, as API Gateway prefers the most specific path.
        ordered = sorted(routes, key=lambda r: (r.path.count("{"), -len(r.path)))
        self._routes = [(route, _path_regex(route.path)) for route in ordered]

    def match(self, method: str, path: str) -> Match:
        path_found = False
        for route, regex in self._routes:
            found = regex.match(path)
            if found is None:
                continue
            path_found = True
            if route.method in (method, "ANY"):
                return Match(route, {k.rstrip("+"): v for k, v in found.groupdict().items()})
        detail = "this method is not allowed on it" if path_found else "no such path"
        raise Refusal("RESOURCE_NOT_FOUND", f"{method} {path}: {detail}")


def _path_regex(template: str) -> re.Pattern[str]:
    pattern = ""
    for part in re.split(r"(\{[^}]+\})", template):
        if part.startswith("{") and part.endswith("}"):
            name = part[1:-1]
            greedy = name.endswith("+")
            group = re.sub(r"\W", "_", name.rstrip("+"))
            pattern += f"(?P<{group}>.+)" if greedy else f"(?P<{group}>[^/]+)"
        else:
            pattern += re.escape(part)
    return re.compile(f"^{pattern}\\Z")


def decode_body(
    body: bytes,
    content_encoding: Optional[str],
    limit: int,
    too_large_details: Optional[dict[str, Any]] = None,
) -> bytes:
    """The request body with its content encoding undone, at most `limit` bytes once inflated.

    Past the limit it is a REQUEST_TOO_LARGE refusal with `too_large_details` (the protocol's
    `{"limits": {"max_ops", "max_bytes"}}`), or `{"limits": {"max_bytes": limit}}`.
    """
    encoding = (content_encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        wbits = zlib.MAX_WBITS
    else:
        raise Refusal("UNSUPPORTED_MEDIA_TYPE", f"Content-Encoding {encoding!r} is not supported")
    inflater = zlib.decompressobj(wbits)
    try:
        inflated = inflater.decompress(body, limit + 1)
        if len(inflated) > limit or inflater.unconsumed_tail:
            raise Refusal(
                "REQUEST_TOO_LARGE",
                f"the request body inflates past {limit} bytes",
                too_large_details or {"limits": {"max_bytes": limit}},
            )
        inflated += inflater.flush()
    except zlib.error as exc:
        raise Refusal(
            "UNSUPPORTED_MEDIA_TYPE", f"the body is not valid {encoding} data: {exc}"
        ) from exc
    if not inflater.eof:
        raise Refusal("UNSUPPORTED_MEDIA_TYPE", f"the {encoding} body is truncated")
    return inflated


def render_refusal(
    refusal: Refusal, responses: Mapping[str, GatewayResponse], request_id: str
) -> Response:
    """The gateway response for `refusal`, from the template's definitions if it has one."""
    status = _DEFAULT_STATUS.get(refusal.response_type, 500)
    family = "DEFAULT_4XX" if status < 500 else "DEFAULT_5XX"
    configured = responses.get(refusal.response_type) or responses.get(family)
    template = (configured.templates.get("application/json") if configured else None) or None
    if configured and configured.status:
        status = configured.status
    if template is not None:
        text = (
            template.replace("$context.error.messageString", json.dumps(refusal.message))
            .replace("$context.error.message", refusal.message)
            .replace("$context.error.responseType", refusal.response_type)
            .replace("$context.requestId", request_id)
        )
        body = _with_details(text, refusal.details).encode("utf-8")
    else:
        error: dict[str, Any] = {
            "code": _PROTOCOL_CODE.get(refusal.response_type, "internal"),
            "message": refusal.message,
        }
        if refusal.details:
            error["details"] = refusal.details
        body = json.dumps({"error": error}).encode("utf-8")
    return Response(status, [("Content-Type", "application/json")], body)


def _with_details(text: str, details: Mapping[str, Any]) -> str:
    """A protocol error body from a gateway response, given the refusal's `details` too.

    A static template cannot carry what only this refusal knows (a 413's limits); when the
    rendered body is the protocol's `{"error": {...}}` without details, they are added.
    """
    if not details:
        return text
    try:
        payload = json.loads(text)
    except ValueError:
        return text
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict) or "details" in error:
        return text
    error["details"] = dict(details)
    return json.dumps(payload)


def lambda_response(result: Any) -> Response:
    """The HTTP response for a proxy integration result; raises Refusal if it is malformed."""
    if not isinstance(result, Mapping) or not isinstance(result.get("statusCode"), int):
        raise Refusal("BAD_GATEWAY", "Internal server error: malformed Lambda proxy response")
    headers: list[tuple[str, str]] = []
    single = result.get("headers") or {}
    multi = result.get("multiValueHeaders") or {}
    if not isinstance(single, Mapping) or not isinstance(multi, Mapping):
        raise Refusal("BAD_GATEWAY", "Internal server error: malformed Lambda proxy response")
    for name, values in multi.items():
        headers.extend((str(name), str(value)) for value in values)
    named = {name.lower() for name, _ in headers}
    headers.extend((str(k), str(v)) for k, v in single.items() if k.lower() not in named)
    body = result.get("body") or ""
    if not isinstance(body, str):
        raise Refusal("BAD_GATEWAY", "Internal server error: the body must be a string")
    try:
        raw = base64.b64decode(body) if result.get("isBase64Encoded") else body.encode("utf-8")
    except ValueError as exc:
        raise Refusal("BAD_GATEWAY", "Internal server error: invalid base64 body") from exc
    return Response(int(result["statusCode"]), headers, raw)
