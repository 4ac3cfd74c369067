"""Naming and describing why a sync round stopped, for summaries, status and logs, and
whether trying again later may help (the CLI's exit code, `Agent.sync`'s retries)."""

from __future__ import annotations

from typing import Union

from device_agent.outcomes import (
    NOT_JSON,
    AuthFailed,
    Failure,
    ServerError,
    Throttled,
    Unreachable,
)


class Stop(Exception):
    """Raised inside a round to end it with a failure that concerns the whole request."""

    def __init__(self, failure: Union[Failure, str]) -> None:
        super().__init__(str(failure))
        self.failure = failure


def failure_name(failure: Union[Failure, str]) -> str:
    """A short stable name for why a round stopped (used in summaries and status)."""
    if isinstance(failure, str):
        return failure
    names = {
        "Unreachable": "unreachable",
        "Throttled": "throttled",
        "AuthFailed": "auth",
        "ServerError": "server_error",
        "BadRequest": "bad_request",
        "TooLarge": "too_large",
        "CursorExpired": "cursor_expired",
    }
    return names.get(type(failure).__name__, type(failure).__name__)


def describe(failure: Union[Failure, str]) -> str:
    if isinstance(failure, str):
        return failure
    if isinstance(failure, Unreachable):
        return f"cloud unreachable: {failure.reason}"
    if isinstance(failure, Throttled):
        hint = f", retry after {failure.retry_after:g}s" if failure.retry_after else ""
        return f"cloud busy (HTTP {failure.status}{hint}): {failure.message}"
    if isinstance(failure, AuthFailed):
        return f"token refused (HTTP {failure.status}): {failure.message}"
    status = getattr(failure, "status", None)
    message = getattr(failure, "message", "")
    return f"{failure_name(failure)}{f' (HTTP {status})' if status else ''}: {message}"


def retry_may_help(failure: Failure) -> bool:
    """Whether the same request may succeed later: True for an unreachable cloud, a timeout
    (408 too), throttling (429/503), other 5xx and an answer that is not JSON (a captive
    portal); False for an answer that will not change by itself - a refused token, a 400, a
    404 or any other 4xx, JSON that breaks the protocol."""
    if isinstance(failure, (Unreachable, Throttled)):
        return True
    if not isinstance(failure, ServerError):
        return False
    return 500 <= failure.status <= 599 or failure.status == 408 or failure.message == NOT_JSON
