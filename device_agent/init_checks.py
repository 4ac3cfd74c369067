"""What `init` stores, checked before it is stored: the API's endpoint, and the device id a
cloud-issued token names (so a token and a `--device-id` that disagree are caught)."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from typing import Optional
from urllib.parse import urlsplit

from shared.contracts.hlc import NODE_PATTERN

# A cloud-issued token: `fs1.<base64url(device id), unpadded>.<43+ chars of secret>` (the
# format of shared/dal/devices.py, restated here: the agent does not import the DAL).
_TOKEN_PREFIX = "fs1"  # noqa: S105 - a format marker, not a secret
_TOKEN_SECRET_MIN_CHARS = 43
_NODE_RE = re.compile(rf"^{NODE_PATTERN}\Z")  # \Z: $ allows a final newline


def token_device_id(token: str) -> Optional[str]:
    """The device id a cloud-issued token names, or None if the token is not of that form."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != _TOKEN_PREFIX or len(parts[2]) < _TOKEN_SECRET_MIN_CHARS:
        return None
    try:
        padded = parts[1] + "=" * (-len(parts[1]) % 4)
        device_id = base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError):
        return None
    return device_id if _NODE_RE.match(device_id) else None


_ENDPOINT_EXAMPLE = "https://abc123.execute-api.eu-west-1.amazonaws.com/prod"


def check_endpoint(endpoint: str) -> str:
    """`endpoint` if the transport can send requests to it, else ValueError saying why.

    The base URL of the API: http or https, a host, an optional port and path; no spaces or
    control characters, no query or fragment (the transport appends `/v1/...` to it). Checked
    by `init`, so a typo is refused there instead of showing up later as "unreachable".
    """
    if not isinstance(endpoint, str):
        raise ValueError(f"endpoint must be a URL string, not {type(endpoint).__name__}")
    problem = _endpoint_problem(endpoint)
    if problem:
        raise ValueError(f"endpoint {endpoint!r} {problem}; e.g. {_ENDPOINT_EXAMPLE}")
    return endpoint


def _endpoint_problem(endpoint: str) -> str:
    """What makes `endpoint` unusable, or "" if nothing does."""
    if any(ch.isspace() or not ch.isprintable() for ch in endpoint):
        return "contains a space or a control character: remove it"
    if not endpoint.lower().startswith(("http://", "https://")):
        return "must start with http:// or https://"
    try:
        parts = urlsplit(endpoint)
        port = parts.port  # a port that is not a number from 0 to 65535 is a ValueError
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    host = parts.hostname or ""
    if not host:
        return "has no host name: give one after the //"
    if parts.query or parts.fragment or endpoint.endswith(("?", "#")):
        return "must not have a query (?...) or fragment (#...): give the API's base URL"
    if port == 0:
        return "has port 0: give the port the API listens on, or none"
    if ":" in host:  # an IPv6 address, written in brackets
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return f"has an invalid IPv6 address {host!r}"
    elif host.startswith((".", "-")) or not all(ch.isalnum() or ch in "-._" for ch in host):
        return f"has an invalid host name {host!r}"
    return ""
