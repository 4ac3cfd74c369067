"""One Logger, Tracer and Metrics for every function (configured by POWERTOOLS_* env vars).

Service name, metrics namespace and log level come from the template's Globals; tests disable
tracing with POWERTOOLS_TRACE_DISABLED. Never log a token or a document body: log ids, sizes
and statuses.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

logger = Logger()
tracer = Tracer()
metrics = Metrics()

__all__ = ["MetricUnit", "logger", "metrics", "tracer"]
