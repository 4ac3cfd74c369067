"""Run a REQUEST Lambda authorizer as API Gateway does: identity check, policy, cache.

- A missing identity source (e.g. no Authorization header) is 401 without invoking it.
- The handler raising `Exception("Unauthorized")` is 401; any other failure, or a response
  without principalId/policyDocument, is 500 (AUTHORIZER_FAILURE / CONFIGURATION_ERROR).
- The returned policy is evaluated against the method ARN: an explicit Deny wins, an Allow
  of `execute-api:Invoke` on a matching resource (with `*` and `?` wildcards) is needed,
  otherwise 403.
- With the template's `authorizerResultTtlInSeconds` > 0 the result is cached per identity,
  and the cached policy is evaluated against each later method ARN (as in AWS).
"""

from __future__ import annotations

import fnmatch
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from local.events import HttpRequest, authorizer_context, authorizer_event, method_arn
from local.functions import LocalFunction
from local.template import AuthorizerSpec


@dataclass(frozen=True)
class Decision:
    allowed: bool
    status: int = 200
    response_type: str = ""  # the gateway response type for a refusal
    message: str = ""
    context: dict[str, Any] = field(default_factory=dict)  # requestContext.authorizer


def _refuse(status: int, response_type: str, message: str) -> Decision:
    return Decision(False, status, response_type, message)


def _statements(policy: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    statements = policy.get("Statement", [])
    return [statements] if isinstance(statements, Mapping) else list(statements)


def _as_list(value: Any) -> list[str]:
    return [str(item) for item in value] if isinstance(value, list) else [str(value)]


def policy_allows(policy: Mapping[str, Any], arn: str) -> bool:
    """IAM-style evaluation of an authorizer policy for one method ARN."""
    allowed = False
    for statement in _statements(policy):
        actions = _as_list(statement.get("Action", []))
        if not any(fnmatch.fnmatchcase("execute-api:Invoke", action) for action in actions):
            continue
        resources = _as_list(statement.get("Resource", []))
        if not any(fnmatch.fnmatchcase(arn, resource) for resource in resources):
            continue
        effect = str(statement.get("Effect", ""))
        if effect == "Deny":
            return False
        allowed = allowed or effect == "Allow"
    return allowed


class LocalAuthorizer:
    def __init__(
        self, spec: AuthorizerSpec, function: LocalFunction, *, region: str, stage: str
    ) -> None:
        self._spec = spec
        self._function = function
        self._region = region
        self._stage = stage
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, ...], tuple[float, Mapping[str, Any]]] = {}

    def authorize(
        self, request: HttpRequest, resource: str, path_parameters: Mapping[str, str]
    ) -> Decision:
        identity = tuple(request.header(name) or "" for name in self._spec.identity_headers)
        if not all(identity):
            return _refuse(401, "UNAUTHORIZED", "Unauthorized")
        result = self._cached(identity)
        if result is None:
            event = authorizer_event(
                request,
                resource=resource,
                path_parameters=path_parameters,
                stage=self._stage,
                region=self._region,
            )
            try:
                result = self._function.invoke(event)
            except Exception as exc:
                if str(exc) == "Unauthorized":
                    return _refuse(401, "UNAUTHORIZED", "Unauthorized")
                return _refuse(500, "AUTHORIZER_FAILURE", "Authorizer failure")
            if (
                not isinstance(result, Mapping)
                or not result.get("principalId")
                or not isinstance(result.get("policyDocument"), Mapping)
            ):
                return _refuse(500, "AUTHORIZER_CONFIGURATION_ERROR", "Authorizer misconfigured")
            self._store(identity, result)
        arn = method_arn(self._region, self._stage, request.method, request.path)
        if not policy_allows(result["policyDocument"], arn):
            return _refuse(403, "ACCESS_DENIED", "User is not authorized to access this resource")
        return Decision(
            True,
            context=authorizer_context(str(result["principalId"]), result.get("context") or {}),
        )

    def _cached(self, identity: tuple[str, ...]) -> Optional[Mapping[str, Any]]:
        if self._spec.ttl_s <= 0:
            return None
        with self._lock:
            entry = self._cache.get(identity)
            if entry is None or entry[0] < time.monotonic():
                self._cache.pop(identity, None)
                return None
            return entry[1]

    def _store(self, identity: tuple[str, ...], result: Mapping[str, Any]) -> None:
        if self._spec.ttl_s > 0:
            with self._lock:
                self._cache[identity] = (time.monotonic() + self._spec.ttl_s, result)
