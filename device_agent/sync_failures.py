"""Naming and describing why a sync round stopped, for summaries, status and logs."""

from __future__ import annotations

from typing import Union

from device_agent.outcomes import AuthFailed, Failure, Throttled, Unreachable


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
