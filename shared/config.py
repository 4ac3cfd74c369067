"""Cloud-side settings, read from the environment variables the SAM template sets.

Read at call time (never at import time) so tests, the local cloud and Lambda can each point
the same code at their own tables, queue and endpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from shared.contracts import limits
from shared.errors import ConfigurationError

# Environment variable names: the template's Globals/Function environment sets exactly these.
ENV_RECORDS_TABLE = "RECORDS_TABLE"
ENV_DEVICES_TABLE = "DEVICES_TABLE"
ENV_RETRY_QUEUE_URL = "RETRY_QUEUE_URL"
ENV_MAX_CLOCK_SKEW = "MAX_CLOCK_SKEW_SECONDS"
ENV_TOMBSTONE_RETENTION = "TOMBSTONE_RETENTION_DAYS"
ENV_MAX_BATCH_OPS = "MAX_BATCH_OPS"
ENV_MAX_BATCH_BYTES = "MAX_BATCH_BYTES"
ENV_CHANGES_SETTLE_MS = "CHANGES_SETTLE_MS"
ENV_CONFLICT_STRATEGIES = "CONFLICT_STRATEGIES"
ENV_APPLY_MAX_ATTEMPTS = "APPLY_MAX_ATTEMPTS"
ENV_APPLY_CONCURRENCY = "APPLY_CONCURRENCY"
ENV_REQUIRE_DEVICE_NODE = "REQUIRE_DEVICE_NODE"

# Endpoint overrides (local cloud, moto server). boto3 honours AWS_ENDPOINT_URL[_<SERVICE>]
# itself; pynamodb does not, so the DAL passes the same value to it explicitly.
ENDPOINT_ENV_DYNAMODB = ("DYNAMODB_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL")

DEFAULT_SETTLE_MS = 20_000
DEFAULT_RETENTION_DAYS = 30
DEFAULT_APPLY_MAX_ATTEMPTS = 8
DEFAULT_APPLY_CONCURRENCY = 8


def _int_env(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{name}={raw!r} is not an integer: set it to a number") from exc
    if value < minimum:
        raise ConfigurationError(f"{name}={value} is below the minimum {minimum}")
    return value


def _required(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise ConfigurationError(
            f"environment variable {name} is not set: the function's template entry must set it"
        )
    return value


def dynamodb_endpoint() -> Optional[str]:
    """The DynamoDB endpoint override, if any (None means the AWS default for the region)."""
    for name in ENDPOINT_ENV_DYNAMODB:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def aws_region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


@dataclass(frozen=True)
class Settings:
    max_clock_skew_s: int = limits.MAX_CLOCK_SKEW_S
    tombstone_retention_days: int = DEFAULT_RETENTION_DAYS
    max_batch_ops: int = limits.MAX_OPS_PER_BATCH
    max_batch_bytes: int = limits.MAX_BATCH_BYTES
    changes_settle_ms: int = DEFAULT_SETTLE_MS
    conflict_strategies: str = ""
    apply_max_attempts: int = DEFAULT_APPLY_MAX_ATTEMPTS
    apply_concurrency: int = DEFAULT_APPLY_CONCURRENCY
    require_device_node: bool = False

    @property
    def tombstone_retention_ms(self) -> int:
        return self.tombstone_retention_days * 86_400_000


def records_table_name() -> str:
    return _required(ENV_RECORDS_TABLE)


def devices_table_name() -> str:
    return _required(ENV_DEVICES_TABLE)


def retry_queue_url() -> str:
    return _required(ENV_RETRY_QUEUE_URL)


def load_settings() -> Settings:
    """The sync functions' tunables (resource names are read by the DAL when it needs them).

    Raises ConfigurationError naming a malformed value.
    """
    return Settings(
        max_clock_skew_s=_int_env(ENV_MAX_CLOCK_SKEW, limits.MAX_CLOCK_SKEW_S),
        tombstone_retention_days=_int_env(ENV_TOMBSTONE_RETENTION, DEFAULT_RETENTION_DAYS),
        max_batch_ops=_int_env(ENV_MAX_BATCH_OPS, limits.MAX_OPS_PER_BATCH, minimum=1),
        max_batch_bytes=_int_env(ENV_MAX_BATCH_BYTES, limits.MAX_BATCH_BYTES, minimum=1024),
        changes_settle_ms=_int_env(ENV_CHANGES_SETTLE_MS, DEFAULT_SETTLE_MS),
        conflict_strategies=os.environ.get(ENV_CONFLICT_STRATEGIES, ""),
        apply_max_attempts=_int_env(ENV_APPLY_MAX_ATTEMPTS, DEFAULT_APPLY_MAX_ATTEMPTS, minimum=1),
        apply_concurrency=_int_env(ENV_APPLY_CONCURRENCY, DEFAULT_APPLY_CONCURRENCY, minimum=1),
        require_device_node=os.environ.get(ENV_REQUIRE_DEVICE_NODE, "").lower()
        in ("1", "true", "yes"),
    )
