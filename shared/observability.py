"""One Logger, Tracer and Metrics for every function (configured by POWERTOOLS_* env vars).

Service name, metrics namespace and log level come from the template's Globals; tests disable
tracing with POWERTOOLS_TRACE_DISABLED. Never log a token or a document body: log ids, sizes
and statuses.
"""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit

# The template sets these; the defaults keep in-process use (tests, the local cloud) working
# when the module is imported before the environment is set.
SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME") or "fieldsync"
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "FieldSync"

logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)

__all__ = ["MetricUnit", "logger", "metrics", "tracer"]
