"""The protocol's value types: ops, results, records and changes, with their wire forms."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any, Callable, Optional

from shared.contracts.enums import ErrorCode, OpKind, OpStatus, Priority
from shared.contracts.hlc import parse_hlc

JsonObject = dict[str, Any]


def _compact_encoder() -> Callable[[Any], str]:
    base = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if c_make_encoder is None:
        return base.encode
    fast = _fast_encoder(base)
    return fast if _encodes_like(fast, base.encode) else base.encode


def _encodes_like(fast: Callable[[Any], str], reference: Callable[[Any], str]) -> bool:
    """Whether the C encoder, a private interface, still behaves as this module expects."""
    sample = {"a": [1, 2.5, "é\n", None, True, {"b": {}}], "c": -0.0}
    try:
        return fast(sample) == reference(sample)
    except Exception:  # e.g. a changed signature: TypeError
        return False


def _fast_encoder(base: json.JSONEncoder) -> Callable[[Any], str]:
    # What `base.encode` does for a dict or list, minus building the encoder on every call
    # (most of the cost for a small document): one encoder per thread, since its table of
    # the containers being encoded (a cycle is a ValueError) must not be shared.
    local = threading.local()

    def encode(value: Any) -> str:
        if not isinstance(value, (dict, list)):
            return base.encode(value)
        make = getattr(local, "make", None)
        if make is None:
            make = local.make = c_make_encoder(
                {}, base.default, encode_basestring, None, ":", ",", False, False, False
            )
        try:
            return "".join(make(value, 0))
        except BaseException:
            local.make = None  # an error can leave containers in its table
            raise

    return encode


compact_json: Callable[[Any], str] = _compact_encoder()
"""`value` as compact JSON text (no spaces, UTF-8 left as is; NaN, Infinity and cycles refused
with ValueError, non-JSON values with TypeError): the form ops are stored and measured in."""


def encoded_size(value: Any) -> int:
    """Bytes of `value` as compact UTF-8 JSON: the size the limits are measured in.

    Raises ValueError for NaN or Infinity (not JSON) and TypeError for non-JSON values.
    """
    return len(compact_json(value).encode("utf-8"))


def response_size(value: Any) -> int:
    """Bytes `value` adds to a Lambda proxy response: its compact JSON, as the response's
    string `body`, which the Lambda runtime encodes once more as ASCII JSON (a quote takes
    two bytes there, a non-ASCII character six or twelve). What response budgets count in.
    """
    return len(json.dumps(compact_json(value))) - 2  # less the quotes around the body


@dataclass(frozen=True)
class Op:
    """One write recorded by a device: the unit of sync, idempotent by its HLC."""

    op_id: str
    collection: str
    key: str
    kind: OpKind
    hlc: str
    data: Optional[JsonObject] = None
    priority: Priority = Priority.NORMAL

    def to_wire(self) -> JsonObject:
        wire: JsonObject = {
            "op_id": self.op_id,
            "collection": self.collection,
            "key": self.key,
            "kind": self.kind.value,
            "hlc": self.hlc,
            "priority": int(self.priority),
        }
        if self.kind is not OpKind.DELETE:
            wire["data"] = self.data if self.data is not None else {}
        return wire

    @property
    def device_id(self) -> str:
        """The node that stamped the op (the device id, or `server`)."""
        return parse_hlc(self.hlc).node


@dataclass(frozen=True)
class RecordClock:
    """`reset`: HLC of the latest put/delete ("" if none); `fields`: HLC of each field's last write,
    including removed fields (field tombstones)."""

    reset: str = ""
    fields: dict[str, str] = field(default_factory=dict)

    def to_wire(self) -> JsonObject:
        return {"reset": self.reset, "fields": dict(self.fields)}


@dataclass(frozen=True)
class Record:
    """A last-writer-wins map with a reset clock. `data` holds the live fields only."""

    collection: str
    key: str
    data: JsonObject = field(default_factory=dict)
    clock: RecordClock = field(default_factory=RecordClock)

    @property
    def deleted(self) -> bool:
        """A record with no live field is deleted (a delete is a put of the empty document)."""
        return not self.data

    @property
    def hlc(self) -> str:
        """The greatest HLC in the record: its latest change."""
        return max([self.clock.reset, *self.clock.fields.values()])

    @property
    def device_id(self) -> str:
        latest = self.hlc
        return parse_hlc(latest).node if latest else ""

    def carries(self, hlc: str) -> bool:
        """True if some part of the record was written by the op stamped `hlc`."""
        return hlc == self.clock.reset or hlc in self.clock.fields.values()

    def to_wire(self) -> JsonObject:
        return {
            "collection": self.collection,
            "key": self.key,
            "data": dict(self.data),
            "deleted": self.deleted,
            "hlc": self.hlc,
            "device_id": self.device_id,
            "clock": self.clock.to_wire(),
        }


@dataclass(frozen=True)
class OpError:
    code: ErrorCode
    message: str
    details: Optional[JsonObject] = None

    def to_wire(self) -> JsonObject:
        wire: JsonObject = {"code": self.code.value, "message": self.message}
        if self.details:
            wire["details"] = dict(self.details)
        return wire


@dataclass(frozen=True)
class OpResult:
    """The cloud's answer for one op, in request order."""

    op_id: Optional[str]
    status: OpStatus
    record: Optional[Record] = None
    error: Optional[OpError] = None

    def to_wire(self) -> JsonObject:
        wire: JsonObject = {"op_id": self.op_id, "status": self.status.value}
        if self.record is not None:
            wire["record"] = self.record.to_wire()
        if self.error is not None:
            wire["error"] = self.error.to_wire()
        return wire


@dataclass(frozen=True)
class BatchResponse:
    batch_id: str
    server_time: str
    results: list[OpResult]

    def to_wire(self) -> JsonObject:
        return {
            "batch_id": self.batch_id,
            "server_time": self.server_time,
            "results": [result.to_wire() for result in self.results],
        }


@dataclass(frozen=True)
class ChangesPage:
    changes: list[Record]
    cursor: str
    has_more: bool

    def to_wire(self) -> JsonObject:
        return {
            "changes": [record.to_wire() for record in self.changes],
            "cursor": self.cursor,
            "has_more": self.has_more,
        }
