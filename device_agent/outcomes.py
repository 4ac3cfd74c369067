"""What a request to the FieldSync API comes to: one typed outcome per whole-request result
(PROTOCOL.md), with the bytes it moved. The sync engine, the connectivity monitor and the
CLI act on these; `transport.HttpTransport` and `testing.FaultTransport` return them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from shared.contracts import BatchResponse, ChangesPage

# A 200 whose body is not JSON: on field networks, most often a captive portal or a proxy
# answering in the cloud's place (it passes), else an endpoint that is not a FieldSync API.
NOT_JSON = (
    "the answer is not JSON: a captive portal or proxy on this network (sign in to it), "
    "or an endpoint that is not a FieldSync API"
)


@dataclass(frozen=True)
class Traffic:
    """Bytes on the wire for one request (request body as sent, response body as received)."""

    sent: int = 0
    received: int = 0


@dataclass(frozen=True)
class Accepted:
    """200 from POST /v1/batches: one result per op."""

    response: BatchResponse
    traffic: Traffic = field(default_factory=Traffic)


@dataclass(frozen=True)
class Page:
    """200 from GET /v1/changes."""

    page: ChangesPage
    traffic: Traffic = field(default_factory=Traffic)


@dataclass(frozen=True)
class Healthy:
    """200 from GET /v1/health."""

    server_time: str
    traffic: Traffic = field(default_factory=Traffic)


@dataclass(frozen=True)
class BadRequest:
    """400: malformed JSON or schema. The sender bisects to find the bad op."""

    code: str
    message: str
    traffic: Traffic = field(default_factory=Traffic)


@dataclass(frozen=True)
class AuthFailed:
    """401/403: token missing, invalid or revoked. Retrying cannot help until it changes."""

    status: int
    message: str
    traffic: Traffic = field(default_factory=Traffic)


@dataclass(frozen=True)
class TooLarge:
    """413: more ops or bytes than the server accepts. The sender halves its batch."""

    message: str
    max_ops: Optional[int] = None
    max_bytes: Optional[int] = None
    traffic: Traffic = field(default_factory=Traffic)


@dataclass(frozen=True)
class CursorExpired:
    """410 from /v1/changes: the cursor is older than the tombstone retention."""

    message: str
    traffic: Traffic = field(default_factory=Traffic)


@dataclass(frozen=True)
class Throttled:
    """429 or 503: wait at least `retry_after` seconds (when given), then resend."""

    status: int
    retry_after: Optional[float]
    message: str
    traffic: Traffic = field(default_factory=Traffic)


@dataclass(frozen=True)
class ServerError:
    """Any other 5xx, an unexpected status, or a 200 whose body breaks the protocol."""

    status: int
    message: str
    traffic: Traffic = field(default_factory=Traffic)


@dataclass(frozen=True)
class Unreachable:
    """No HTTP answer at all: DNS, refused connection, reset, timeout."""

    reason: str
    traffic: Traffic = field(default_factory=Traffic)


Failure = Union[
    BadRequest, AuthFailed, TooLarge, CursorExpired, Throttled, ServerError, Unreachable
]
PushOutcome = Union[Accepted, Failure]
PullOutcome = Union[Page, Failure]
HealthOutcome = Union[Healthy, Failure]
Outcome = Union[Accepted, Page, Healthy, Failure]
