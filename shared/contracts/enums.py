"""The closed vocabularies of the wire protocol."""

from __future__ import annotations

from enum import Enum, IntEnum


class OpKind(str, Enum):
    PUT = "put"
    PATCH = "patch"
    DELETE = "delete"


class Priority(IntEnum):
    """Upload priority: lower drains first."""

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3
    BACKGROUND = 4

    @classmethod
    def parse(cls, value: str | int | Priority) -> Priority:
        """Accept a member, its number or its name (`critical`, `HIGH`, ...)."""
        if isinstance(value, Priority):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(value)
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                pass
        names = ", ".join(member.name.lower() for member in cls)
        raise ValueError(f"unknown priority {value!r}: use one of {names} or 0-4")


class OpStatus(str, Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    SUPERSEDED = "superseded"
    MERGED = "merged"
    REJECTED = "rejected"
    QUEUED = "queued"


class ErrorCode(str, Enum):
    INVALID_OP = "invalid_op"
    TOO_LARGE = "too_large"
    FORBIDDEN = "forbidden"
    CLOCK_AHEAD = "clock_ahead"
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    THROTTLED = "throttled"
    UNAVAILABLE = "unavailable"
    CURSOR_EXPIRED = "cursor_expired"
    INVALID_CURSOR = "invalid_cursor"
    NOT_FOUND = "not_found"
    INTERNAL = "internal"
