"""One Logger, Tracer and Metrics for every function (configured by POWERTOOLS_* env vars).

Service name, metrics namespace and log level come from the template's Globals; tests disable
tracing with POWERTOOLS_TRACE_DISABLED. Never log a token or a document body: log ids, sizes
and statuses.

Cold start: importing powertools costs ~230 ms (more when its bytecode must be compiled), and
a Tracer with tracing on imports aws_xray_sdk and patches botocore and pynamodb at creation.
So `logger`, `tracer` and `metrics` are created on first use: their decorators
(`@logger.inject_lambda_context`, `@tracer.capture_lambda_handler`, `@tracer.capture_method`,
`@metrics.log_metrics`) can be applied at import time, and wrap the function with the real
powertools decorator at its first call. Any other attribute is the real object's. Importing
a handler stays cheap; its first invocation pays for powertools (docs/architecture.md).
"""

from __future__ import annotations

import functools
import os
import threading
from typing import TYPE_CHECKING, Any, Callable, Generic, Optional, TypeVar

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger, Metrics, Tracer

# The template sets these; the defaults keep in-process use (tests, the local cloud) working
# when the module is imported before the environment is set.
SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME") or "fieldsync"
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "FieldSync"

# powertools' correlation_paths.API_GATEWAY_REST, without importing powertools to read it.
API_GATEWAY_REST_CORRELATION = "requestContext.requestId"

TRACED_MODULES = ("botocore",)

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])


class MetricUnit:
    """The metric units used here, as powertools' `add_metric` accepts them (strings)."""

    Count = "Count"
    Bytes = "Bytes"
    Milliseconds = "Milliseconds"


class _Lazy(Generic[_T]):
    """A powertools object created on first use, once, thread-safely."""

    def __init__(self, build: Callable[[], _T]) -> None:
        self._build = build
        self._made: Optional[_T] = None
        self._lock = threading.Lock()

    def real(self) -> _T:
        made = self._made
        if made is None:
            with self._lock:
                if self._made is None:
                    self._made = self._build()
                made = self._made
        return made

    def _deferred(self, decorate: Callable[[_T, _F], Callable[..., Any]], fn: _F) -> _F:
        """`fn` wrapped by `decorate(real object, fn)`, the wrapping done at the first call."""
        wrapped: list[Callable[..., Any]] = []

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            if not wrapped:
                wrapped.append(decorate(self.real(), fn))
            return wrapped[0](*args, **kwargs)

        return call  # type: ignore[return-value]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real(), name)


class LazyLogger(_Lazy["Logger"]):
    def inject_lambda_context(self, fn: Optional[_F] = None, **options: Any) -> Any:
        if fn is None:
            return functools.partial(self.inject_lambda_context, **options)
        return self._deferred(lambda real, f: real.inject_lambda_context(f, **options), fn)


class LazyTracer(_Lazy["Tracer"]):
    def capture_lambda_handler(self, fn: _F) -> _F:
        return self._deferred(lambda real, f: real.capture_lambda_handler(f), fn)

    def capture_method(self, fn: _F) -> _F:
        return self._deferred(lambda real, f: real.capture_method(f), fn)


class LazyMetrics(_Lazy["Metrics"]):
    def log_metrics(self, fn: _F) -> _F:
        return self._deferred(lambda real, f: real.log_metrics(f), fn)


def _logger() -> Logger:
    from aws_lambda_powertools import Logger

    return Logger(service=SERVICE)


def _tracer() -> Tracer:
    from aws_lambda_powertools import Tracer

    # botocore only: every DynamoDB (pynamodb sends through a botocore client) and SQS call
    # is one subsegment. The default patches every module X-Ray knows (pynamodb again at the
    # HTTP layer, requests, sqlite3, httplib...), importing each of them.
    return Tracer(service=SERVICE, patch_modules=TRACED_MODULES)


def _metrics() -> Metrics:
    from aws_lambda_powertools import Metrics

    return Metrics(namespace=NAMESPACE, service=SERVICE)


logger = LazyLogger(_logger)
tracer = LazyTracer(_tracer)
metrics = LazyMetrics(_metrics)

__all__ = ["API_GATEWAY_REST_CORRELATION", "MetricUnit", "logger", "metrics", "tracer"]
