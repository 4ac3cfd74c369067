"""The cloud side's error hierarchy.

`ApiError` subclasses carry the HTTP status and protocol error code they map to; the REST
layer (`shared.logic.rest`) turns them into `{"error": {"code", "message", "details"?}}` in
one place. `StoreError` and `QueueError` come from the data-access layer and say whether a
retry can help. Messages say what happened and what to do.
"""

from __future__ import annotations

from typing import Any, Optional

from shared.contracts import ErrorCode


class FieldSyncError(Exception):
    """Base of every error raised on purpose by the cloud code."""


class ConfigurationError(FieldSyncError):
    """The function's environment is wrong (a missing table name, a bad number)."""


# --- errors answered to the client -----------------------------------------------------------


class ApiError(FieldSyncError):
    status: int = 500
    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        details: Optional[dict[str, Any]] = None,
        headers: Optional[dict[str, str]] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code.value, "message": self.message}
        if self.details:
            error["details"] = self.details
        return {"error": error}


class BadRequest(ApiError):
    status, code = 400, ErrorCode.BAD_REQUEST


class InvalidCursor(ApiError):
    status, code = 400, ErrorCode.INVALID_CURSOR


class Unauthorized(ApiError):
    status, code = 401, ErrorCode.UNAUTHORIZED


class Forbidden(ApiError):
    status, code = 403, ErrorCode.FORBIDDEN


class CursorExpired(ApiError):
    status, code = 410, ErrorCode.CURSOR_EXPIRED


class PayloadTooLarge(ApiError):
    status, code = 413, ErrorCode.PAYLOAD_TOO_LARGE


class UnsupportedMediaType(ApiError):
    status, code = 415, ErrorCode.UNSUPPORTED_MEDIA_TYPE


class ServiceUnavailable(ApiError):
    status, code = 503, ErrorCode.UNAVAILABLE

    def __init__(
        self, message: str, *, retry_after_s: int, details: Optional[dict[str, Any]] = None
    ) -> None:
        super().__init__(message, details=details, headers={"Retry-After": str(retry_after_s)})
        self.retry_after_s = retry_after_s


# --- data-access errors ----------------------------------------------------------------------


class StoreError(FieldSyncError):
    """DynamoDB failed. `transient` says whether trying again later can succeed."""

    transient: bool = False

    def __init__(self, message: str, *, aws_code: str = "") -> None:
        super().__init__(message)
        self.aws_code = aws_code


class TransientStoreError(StoreError):
    """Throttling, a 5xx or a network fault: the op goes to the retry queue."""

    transient = True


class WriteConflict(StoreError):
    """A conditional write lost a race with another writer: re-read and resolve again."""

    transient = True


class RecordTooLarge(StoreError):
    """The resolved record would exceed DynamoDB's 400 KB item limit: permanent."""


class QueueError(FieldSyncError):
    """SQS refused a message (the op could be neither applied nor queued)."""

    def __init__(self, message: str, *, aws_code: str = "") -> None:
        super().__init__(message)
        self.aws_code = aws_code


class DeviceError(FieldSyncError):
    """A device registry operation cannot be done (unknown device, id held by a tenant)."""


class InvalidToken(FieldSyncError):
    """A bearer token that is malformed, unknown or revoked."""


# --- apply errors ----------------------------------------------------------------------------


class ApplyFailed(FieldSyncError):
    """An op could not be applied now for a server-side reason; it belongs on the retry queue.

    `reason` is a short machine-readable cause (`throttled`, `store_unavailable`,
    `contention`, `resolver_failed`, `unknown_resolver`).
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
