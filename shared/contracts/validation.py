"""Parsing wire JSON into protocol types, reporting every problem with its field path.

Whole-request problems raise `ContractError` (the server answers 400 with all of them).
A problem inside one op of a batch does not fail the batch: `parse_batch` returns a
`RejectedOp` in that op's place so the rest can be applied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional, Union

from shared.contracts import limits
from shared.contracts.enums import ErrorCode, OpKind, OpStatus, Priority
from shared.contracts.hlc import is_hlc
from shared.contracts.model import (
    BatchResponse,
    ChangesPage,
    JsonObject,
    Op,
    OpError,
    OpResult,
    Record,
    RecordClock,
    compact_json,
    encoded_size,
)

# \Z, not $: "$" also matches before a trailing newline.
_COLLECTION_RE = re.compile(rf"^{limits.COLLECTION_PATTERN}\Z")
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
# Unicode category Cc is exactly these two ranges; a regex scan is far cheaper per key than
# asking unicodedata about every character (validation runs on every op a device records).
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f]")
_KINDS = frozenset(kind.value for kind in OpKind)
_PRIORITIES = frozenset(int(priority) for priority in Priority)
_OP_FIELDS = frozenset({"op_id", "collection", "key", "kind", "data", "hlc", "priority"})
_HLC_HINT = "expected an HLC like 1764000000000-00000-dev-7f3a"


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ContractError(ValueError):
    """Input that does not follow the protocol; `problems` lists each one with its path."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(problem) for problem in problems))


@dataclass(frozen=True)
class RejectedOp:
    """An op of a batch that failed validation: it is answered `rejected` alone."""

    index: int
    op_id: Optional[str]
    code: ErrorCode
    message: str

    def to_result(self) -> OpResult:
        return OpResult(self.op_id, OpStatus.REJECTED, error=OpError(self.code, self.message))


@dataclass(frozen=True)
class ParsedBatch:
    batch_id: str
    items: list[Union[Op, RejectedOp]]

    @property
    def ops(self) -> list[Op]:
        return [item for item in self.items if isinstance(item, Op)]


def _describe(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def _shown(name: str) -> str:
    """A field name as a message quotes it: as it is when printable, else escaped (a control
    character or a lone surrogate, which cannot even be encoded as UTF-8)."""
    return name if name.isprintable() else ascii(name)


def check_collection(value: Any, path: str) -> list[Problem]:
    if not isinstance(value, str):
        return [Problem(path, f"must be a string, got {_describe(value)}")]
    if not _COLLECTION_RE.match(value):
        return [Problem(path, "must be 1-64 characters of lowercase letters, digits, '_' or '-'")]
    return []


def check_key(value: Any, path: str) -> list[Problem]:
    if not isinstance(value, str):
        return [Problem(path, f"must be a string, got {_describe(value)}")]
    if not value:
        return [Problem(path, "must not be empty")]
    if len(value) > limits.MAX_KEY_CHARS:
        return [Problem(path, f"longer than {limits.MAX_KEY_CHARS} characters")]
    if _CONTROL_RE.search(value):
        return [Problem(path, "must not contain control characters")]
    return []


def check_data(value: Any, path: str, *, allow_null_fields: bool) -> list[Problem]:
    if not isinstance(value, dict):
        return [Problem(path, f"must be a JSON object, got {_describe(value)}")]
    problems: list[Problem] = []
    for name, field_value in value.items():
        if not isinstance(name, str):
            problems.append(Problem(f"{path}.{name!r}", "field names must be strings"))
        elif not 1 <= len(name) <= limits.MAX_FIELD_NAME_CHARS:
            problems.append(
                Problem(f"{path}.{name[:32]!r}", "field names must be 1-128 characters long")
            )
        elif field_value is None and not allow_null_fields:
            problems.append(
                Problem(
                    f"{path}.{_shown(name)}", "null is only allowed in a patch (to remove a field)"
                )
            )
        elif isinstance(field_value, (dict, list)) and _too_deep(field_value):
            problems.append(
                Problem(
                    f"{path}.{_shown(name)}",
                    f"nested more than {limits.MAX_NESTING_DEPTH} levels deep: flatten it",
                )
            )
    return problems


# More dicts and lists than this cannot fit in an op (each takes at least 2 bytes): a
# structure that has them (a cycle, or one list referenced again and again) is refused
# without being walked whole.
_MAX_CONTAINERS = limits.MAX_OP_BYTES // 2


def _too_deep(value: Any) -> bool:
    """True if `value` nests dicts/lists deeper than the store accepts (checked iteratively),
    or holds more of them than an op can."""
    level: list[Any] = [value]
    seen = 1
    for _ in range(limits.MAX_NESTING_DEPTH):
        children: list[Any] = []
        for item in level:
            if isinstance(item, dict):
                children.extend(v for v in item.values() if isinstance(v, (dict, list)))
            elif isinstance(item, list):
                children.extend(v for v in item if isinstance(v, (dict, list)))
        if not children:
            return False
        seen += len(children)
        if seen > _MAX_CONTAINERS:
            return True
        level = children
    return True


def _op_problems(raw: JsonObject, path: str) -> list[Problem]:
    problems: list[Problem] = []
    if not isinstance(raw.get("op_id"), str) or not _ID_RE.match(raw["op_id"]):
        problems.append(Problem(f"{path}.op_id", "must be 1-64 characters of [A-Za-z0-9_-]"))
    problems += check_collection(raw.get("collection"), f"{path}.collection")
    problems += check_key(raw.get("key"), f"{path}.key")
    kind = raw.get("kind")
    # Type first: an array or object is unhashable, so a set look-up alone would raise.
    if not isinstance(kind, str) or kind not in _KINDS:
        problems.append(Problem(f"{path}.kind", "must be one of put, patch, delete"))
    if not is_hlc(raw.get("hlc")):
        problems.append(Problem(f"{path}.hlc", _HLC_HINT))
    priority = raw.get("priority", int(Priority.NORMAL))
    # An integer, not 2.0 or true (both equal a member of the set) nor an unhashable value.
    if not isinstance(priority, int) or isinstance(priority, bool) or priority not in _PRIORITIES:
        problems.append(Problem(f"{path}.priority", "must be an integer from 0 to 4"))
    data = raw.get("data")
    if kind == OpKind.DELETE.value:
        if data is not None:
            problems.append(Problem(f"{path}.data", "a delete carries no data"))
    elif kind in (OpKind.PUT.value, OpKind.PATCH.value):
        if "data" not in raw:
            problems.append(Problem(f"{path}.data", f"required for a {kind}"))
        else:
            problems += check_data(
                data, f"{path}.data", allow_null_fields=kind == OpKind.PATCH.value
            )
            if kind == OpKind.PATCH.value and data == {}:
                problems.append(Problem(f"{path}.data", "a patch must set at least one field"))
    if not _OP_FIELDS.issuperset(raw):
        unknown = sorted(set(raw) - _OP_FIELDS)
        problems.append(Problem(path, f"unknown fields: {', '.join(map(_shown, unknown))}"))
    return problems


def parse_op(raw: Any, path: str = "op", *, max_bytes: Optional[int] = limits.MAX_OP_BYTES) -> Op:
    """Parse one op, raising ContractError listing every problem.

    `max_bytes=None` skips the size limit, for an op the server accepted once and now reads
    back in another form (a retry message carries `priority` even when the device left it
    out): what passed the limit once must not be refused for it later.
    """
    if not isinstance(raw, dict):
        raise ContractError([Problem(path, f"must be a JSON object, got {_describe(raw)}")])
    problems = _op_problems(raw, path)
    if problems:
        raise ContractError(problems)
    try:
        size = encoded_size(raw)
    except (TypeError, ValueError) as exc:
        raise ContractError(
            [Problem(f"{path}.data", f"is not JSON ({exc}); NaN and Infinity are not valid JSON")]
        ) from exc
    if max_bytes is not None and size > max_bytes:
        raise ContractError([Problem(path, f"encoded size {size} bytes exceeds {max_bytes} bytes")])
    kind = OpKind(raw["kind"])
    return Op(
        op_id=raw["op_id"],
        collection=raw["collection"],
        key=raw["key"],
        kind=kind,
        hlc=raw["hlc"],
        data=None if kind is OpKind.DELETE else dict(raw["data"]),
        priority=Priority(raw.get("priority", int(Priority.NORMAL))),
    )


# The compact JSON of an op without its values: {"op_id":"","collection":"","key":"",...}.
_OP_FRAME = len('{"op_id":"","collection":"","key":"","kind":"","hlc":"","priority":}')
_DATA_FRAME = len(',"data":')
# A key that check_key accepts and that JSON writes as it is: printable ASCII without '"' and
# '\\' (anything else is left to parse_op to decide).
_PLAIN_KEY_RE = re.compile(rf"[\x20\x21\x23-\x5b\x5d-\x7e]{{1,{limits.MAX_KEY_CHARS}}}")
# Collections are few and written again and again: remember the ones already checked.
_KNOWN_COLLECTIONS: set[str] = set()
_KNOWN_COLLECTIONS_MAX = 4096


def encode_valid_op(
    op_id: str,
    hlc: str,
    *,
    collection: Any,
    key: Any,
    kind: Any,
    data: Any,
    priority: int,
) -> Optional[tuple[Optional[str], int]]:
    """The compact JSON of an op's data and its length in UTF-8 bytes, if the op is valid.

    For a device recording its own writes: the op is encoded once, for the size limit and
    for storage. None means "not certainly valid": call `parse_op`, which decides and names
    every problem (so messages stay those of `parse_op`). The op is the one `parse_op` would
    get as `{op_id, collection, key, kind, hlc, priority[, data]}` (`data` absent for a delete
    without data).
    """
    if not _ID_RE.match(op_id) or not is_hlc(hlc):
        return None
    return encode_valid_write(
        collection=collection,
        key=key,
        kind=kind,
        data=data,
        priority=priority,
        stamp_chars=len(op_id) + len(hlc),
    )


def encode_valid_write(
    *,
    collection: Any,
    key: Any,
    kind: Any,
    data: Any,
    priority: int,
    stamp_chars: int,
) -> Optional[tuple[Optional[str], int]]:
    """`encode_valid_op` for an op whose id and HLC are valid by construction (a device
    stamps them itself) and together `stamp_chars` characters long."""
    if (
        type(collection) is not str
        or type(key) is not str
        or type(priority) is not int
        or priority not in _PRIORITIES
        or not _PLAIN_KEY_RE.fullmatch(key)
    ):
        return None
    if collection not in _KNOWN_COLLECTIONS:
        if not _COLLECTION_RE.match(collection):
            return None
        if len(_KNOWN_COLLECTIONS) < _KNOWN_COLLECTIONS_MAX:
            _KNOWN_COLLECTIONS.add(collection)
    size = _OP_FRAME + stamp_chars + len(collection) + len(key) + 1  # + 1: priority's digit
    if kind == "delete":
        if data is not None:
            return None
        text, data_bytes = None, 0
        size += len(kind)
    elif kind in ("put", "patch"):
        if type(data) is not dict or not (data or kind == "put"):
            return None
        try:
            # NaN, Infinity and cycles are not JSON: the ValueError sends the op to parse_op,
            # which names the problem.
            text = compact_json(data)
            "".join(data)  # every field name is a string (JSON would turn 1 into "1")
            data_bytes = len(text) if text.isascii() else len(text.encode("utf-8"))
        except (TypeError, ValueError, RecursionError):  # incl. a lone surrogate's encoding
            return None
        if data and (min(map(len, data)) < 1 or max(map(len, data)) > limits.MAX_FIELD_NAME_CHARS):
            return None
        if kind == "put" and None in data.values():
            return None  # null only removes a field in a patch
        if (text.find("{", 1) > 0 or "[" in text) and any(
            type(value) in (dict, list) and _too_deep(value) for value in data.values()
        ):
            return None
        size += len(kind) + _DATA_FRAME + data_bytes
    else:
        return None
    if size > limits.MAX_OP_BYTES:
        return None
    return text, data_bytes


def parse_batch(raw: Any, *, max_ops: int = limits.MAX_OPS_PER_BATCH) -> ParsedBatch:
    """Parse a `POST /v1/batches` body.

    Raises ContractError for problems with the envelope; an invalid op becomes a RejectedOp
    (code `too_large` for an oversized op, `invalid_op` otherwise).
    """
    if not isinstance(raw, dict):
        raise ContractError([Problem("body", f"must be a JSON object, got {_describe(raw)}")])
    problems: list[Problem] = []
    batch_id = raw.get("batch_id")
    if not isinstance(batch_id, str) or not _ID_RE.match(batch_id):
        problems.append(Problem("batch_id", "must be 1-64 characters of [A-Za-z0-9_-]"))
    ops = raw.get("ops")
    if not isinstance(ops, list):
        problems.append(Problem("ops", f"must be an array of ops, got {_describe(ops)}"))
    elif not ops:
        problems.append(Problem("ops", "must contain at least one op"))
    unknown = sorted(set(raw) - {"batch_id", "ops"})
    if unknown:
        problems.append(Problem("body", f"unknown fields: {', '.join(map(_shown, unknown))}"))
    if problems:
        raise ContractError(problems)
    assert isinstance(ops, list) and isinstance(batch_id, str)
    if len(ops) > max_ops:
        raise BatchTooLarge(f"{len(ops)} ops in one batch; at most {max_ops} are accepted")
    items: list[Union[Op, RejectedOp]] = []
    for index, raw_op in enumerate(ops):
        path = f"ops[{index}]"
        try:
            items.append(parse_op(raw_op, path))
        except ContractError as exc:
            op_id = raw_op.get("op_id") if isinstance(raw_op, dict) else None
            code = ErrorCode.TOO_LARGE if "exceeds" in str(exc) else ErrorCode.INVALID_OP
            items.append(
                RejectedOp(index, op_id if isinstance(op_id, str) else None, code, str(exc))
            )
    return ParsedBatch(batch_id, items)


class BatchTooLarge(ValueError):
    """More ops or bytes in one request than the server accepts (HTTP 413)."""


def parse_record(raw: Any, path: str = "record") -> Record:
    if not isinstance(raw, dict):
        raise ContractError([Problem(path, f"must be a JSON object, got {_describe(raw)}")])
    problems = check_collection(raw.get("collection"), f"{path}.collection")
    problems += check_key(raw.get("key"), f"{path}.key")
    data = raw.get("data", {})
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(Problem(f"{path}.data", "must be a JSON object"))
    clock = raw.get("clock")
    reset: str = ""
    fields: dict[str, str] = {}
    if not isinstance(clock, dict):
        problems.append(Problem(f"{path}.clock", "must be an object with reset and fields"))
    else:
        reset = clock.get("reset") or ""
        fields = clock.get("fields") or {}
        if reset and not is_hlc(reset):
            problems.append(Problem(f"{path}.clock.reset", _HLC_HINT))
        if not isinstance(fields, dict) or not all(is_hlc(v) for v in fields.values()):
            problems.append(Problem(f"{path}.clock.fields", f"values: {_HLC_HINT}"))
    if problems:
        raise ContractError(problems)
    return Record(raw["collection"], raw["key"], dict(data), RecordClock(reset, dict(fields)))


def parse_op_result(raw: Any, path: str) -> OpResult:
    if not isinstance(raw, dict):
        raise ContractError([Problem(path, "must be a JSON object")])
    try:
        status = OpStatus(raw.get("status"))
    except ValueError as exc:
        raise ContractError([Problem(f"{path}.status", "unknown status")]) from exc
    record = parse_record(raw["record"], f"{path}.record") if raw.get("record") else None
    error = None
    if isinstance(raw.get("error"), dict):
        err = raw["error"]
        try:
            code = ErrorCode(err.get("code"))
        except ValueError:
            code = ErrorCode.INVALID_OP
        details = err.get("details") if isinstance(err.get("details"), dict) else None
        error = OpError(code, str(err.get("message", "")), details)
    op_id = raw.get("op_id")
    return OpResult(op_id if isinstance(op_id, str) else None, status, record, error)


def parse_batch_response(raw: Any) -> BatchResponse:
    if not isinstance(raw, dict) or not isinstance(raw.get("results"), list):
        raise ContractError([Problem("body", "a batch response needs a results array")])
    server_time = raw.get("server_time")
    if not isinstance(server_time, str) or not is_hlc(server_time):
        raise ContractError([Problem("server_time", _HLC_HINT)])
    results = [parse_op_result(item, f"results[{i}]") for i, item in enumerate(raw["results"])]
    return BatchResponse(str(raw.get("batch_id", "")), server_time, results)


def parse_changes_page(raw: Any) -> ChangesPage:
    if not isinstance(raw, dict) or not isinstance(raw.get("changes"), list):
        raise ContractError([Problem("body", "a changes page needs a changes array")])
    if not isinstance(raw.get("cursor"), str):
        raise ContractError([Problem("cursor", "must be a string")])
    changes = [parse_record(item, f"changes[{i}]") for i, item in enumerate(raw["changes"])]
    return ChangesPage(changes, raw["cursor"], bool(raw.get("has_more")))
