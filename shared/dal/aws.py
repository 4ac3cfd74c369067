"""AWS SDK plumbing: lazily created clients and the translation of SDK errors.

Clients are created on first use (never at import time) so moto can be started first in tests
and an endpoint override set by the local cloud (AWS_ENDPOINT_URL) is honoured. boto3 and
botocore are imported then too: a function's cold start does not pay for an SDK it may not
use (the health check uses none).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, Optional

from shared.config import aws_region

# Codes after which a later attempt can succeed: the op is queued, not rejected.
TRANSIENT_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
        "TransactionConflictException",
        "LimitExceededException",
    }
)

_SQS_TIMEOUTS = {"connect_timeout": 2, "read_timeout": 5, "retries": {"mode": "standard"}}
_lock = threading.Lock()
_clients: dict[tuple[str, str], Any] = {}


def sqs_client() -> Any:
    """The process's SQS client (boto3 reads AWS_ENDPOINT_URL[_SQS] itself)."""
    key = ("sqs", aws_region())
    with _lock:
        client = _clients.get(key)
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.client("sqs", region_name=key[1], config=Config(**_SQS_TIMEOUTS))
            _clients[key] = client
        return client


def reset_clients() -> None:
    """Forget cached clients (tests that start a fresh moto, or change endpoints)."""
    with _lock:
        _clients.clear()


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and the errors behind it (pynamodb keeps its cause in `.cause`)."""
    seen: Optional[BaseException] = exc
    depth = 0
    while seen is not None and depth < 8:
        yield seen
        depth += 1
        cause = getattr(seen, "cause", None)  # a PynamoDBException keeps it in `.cause`
        seen = cause if isinstance(cause, BaseException) else seen.__cause__ or seen.__context__


def error_code(exc: BaseException) -> str:
    """The AWS error code behind `exc` (following pynamodb's wrapping), or the class name."""
    from botocore.exceptions import BotoCoreError, ClientError  # loaded by the failed call

    for seen in _chain(exc):
        if isinstance(seen, ClientError):
            return str(seen.response.get("Error", {}).get("Code", "ClientError"))
        if isinstance(seen, BotoCoreError):
            return type(seen).__name__
    return type(exc).__name__


def http_status(exc: BaseException) -> int:
    from botocore.exceptions import ClientError

    for seen in _chain(exc):
        if isinstance(seen, ClientError):
            status = seen.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            return int(status or 0)
    return 0


def is_transient(exc: BaseException) -> bool:
    """True for throttling, server-side 5xx and network errors."""
    if error_code(exc) in TRANSIENT_CODES or http_status(exc) >= 500:
        return True
    from botocore.exceptions import BotoCoreError

    return any(isinstance(seen, BotoCoreError) for seen in _chain(exc))
