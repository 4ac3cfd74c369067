"""Turning an API Gateway request body into JSON, with bounded decompression.

API Gateway may hand the Lambda a gzip body base64-encoded (when it did not decompress it
itself); inflating is bounded so a small body cannot expand past the batch limit into memory.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from typing import Any, Optional

from shared.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

GZIP_MAGIC = b"\x1f\x8b"
# Encodings a body may be labelled with; API Gateway decodes deflate itself.
_KNOWN = ("", "identity", "gzip", "x-gzip", "deflate")


def limits_details(max_ops: int, max_bytes: int) -> dict[str, Any]:
    return {"limits": {"max_ops": max_ops, "max_bytes": max_bytes}}


def _too_large(size_hint: str, max_ops: int, max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the request body is {size_hint}, over the {max_bytes}-byte limit: "
        "split the batch in smaller ones",
        details=limits_details(max_ops, max_bytes),
    )


def _gunzip(raw: bytes, max_ops: int, max_bytes: int) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(raw, max_bytes + 1)
    except zlib.error as exc:
        # 415, as a deployed REST API answers a body it cannot decode (PROTOCOL.md).
        raise UnsupportedMediaType(
            f"the gzip body could not be decompressed ({exc}): send valid gzip or plain JSON"
        ) from exc
    if len(out) > max_bytes:
        raise _too_large("larger than that once decompressed", max_ops, max_bytes)
    if not inflater.eof:
        raise UnsupportedMediaType("the gzip body is truncated: send the complete compressed body")
    return out


def decode_json_body(
    body: Optional[str],
    *,
    is_base64: bool,
    content_encoding: Optional[str],
    max_ops: int,
    max_bytes: int,
) -> Any:
    """The request's JSON value. Raises BadRequest, PayloadTooLarge or UnsupportedMediaType."""
    if not body:
        raise BadRequest("the request has no body: send a JSON batch")
    if is_base64:
        try:
            raw = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadRequest(
                "the body is marked base64-encoded but is not valid base64: fix the encoding"
            ) from exc
    else:
        raw = body.encode("utf-8", errors="surrogateescape")
    encoding = (content_encoding or "").strip().lower()
    if encoding not in _KNOWN:
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding!r} is not supported: send gzip or uncompressed JSON"
        )
    # Decide by the bytes, not the header: API Gateway may have inflated the body already
    # while passing `Content-Encoding: gzip` on, and JSON never starts with the gzip magic.
    if raw[:2] == GZIP_MAGIC:
        raw = _gunzip(raw, max_ops, max_bytes)
    if len(raw) > max_bytes:
        raise _too_large(f"{len(raw)} bytes", max_ops, max_bytes)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the body is not UTF-8 (byte {exc.start}): send UTF-8 JSON") from exc
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except ValueError as exc:  # NaN / Infinity, refused by _refuse_constant
        raise BadRequest(f"the body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise BadRequest(
            "the body nests arrays or objects too deeply to parse: flatten the data"
        ) from exc


def _refuse_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity, which are not JSON: storing them would make the
    # changes feed unreadable for strict clients.
    raise ValueError(f"{name} is not a JSON value; send finite numbers only")
