"""A write as the application gives it, validated and encoded once, before it is stamped.

`record` and `record_many` turn each write into a `Draft` before taking the write lock: the
checks of `shared.contracts.parse_op` (which still decides and words every refusal), the
data's compact JSON, and the size it is stored and counted at.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

from device_agent.op_ids import OP_ID_CHARS, new_op_ids
from device_agent.outbox_model import WriteItem, make_op
from device_agent.outbox_write import encode, stored_size
from shared.contracts import JsonObject, Op, OpKind, Priority, parse_op
from shared.contracts.validation import encode_valid_write

_KINDS = {kind.value: kind for kind in OpKind}


class Draft(NamedTuple):
    """A validated write before its op id and HLC: the op's fields and its encoded data."""

    collection: str
    key: str
    kind: OpKind
    data: Optional[JsonObject]
    priority: Priority
    text: Optional[str]
    size: int

    def op(self, op_id: str, hlc: str) -> Op:
        """The op this write becomes with its id and stamp."""
        return make_op(
            op_id=op_id,
            collection=self.collection,
            key=self.key,
            kind=self.kind,
            hlc=hlc,
            data=self.data,
            priority=self.priority,
        )


# An op id for parse_op when it decides about a write (ids all have the same length).
_SAMPLE_OP_ID = new_op_ids(1)[0]


def prepare_write(item: WriteItem, placeholder_hlc: str) -> Draft:
    if len(item) not in (4, 5):
        raise ValueError(f"a write is (collection, key, kind, data[, priority]), got {item!r}")
    return draft_write(*item, placeholder_hlc=placeholder_hlc)  # type: ignore[misc]


# Priority.parse for the values it is usually given: members and plain ints (members hash
# and compare like their numbers).
_PRIORITY_OF: dict[object, Priority] = {priority: priority for priority in Priority}


def draft_write(
    collection: str,
    key: str,
    kind: Union[OpKind, str],
    data: Optional[JsonObject],
    priority: Union[Priority, int, str] = Priority.NORMAL,
    *,
    placeholder_hlc: str,
) -> Draft:
    """A validated write: its fields, its data encoded once, and its stored size."""
    known = _PRIORITY_OF.get(priority) if type(priority) in (int, Priority) else None
    priority = known if known is not None else Priority.parse(priority)
    kind_value = kind.value if isinstance(kind, OpKind) else kind
    checked = encode_valid_write(
        collection=collection,
        key=key,
        kind=kind_value,
        data=data,
        priority=int(priority),
        stamp_chars=OP_ID_CHARS + len(placeholder_hlc),
    )
    if checked is not None:
        text, data_bytes = checked
        return Draft(
            collection,
            key,
            _KINDS[kind_value],
            None if data is None else dict(data),
            priority,
            text,
            stored_size(OP_ID_CHARS, collection, key, data_bytes),
        )
    # Not certainly valid: parse_op decides, and names every problem if there is one.
    raw: JsonObject = {
        "op_id": _SAMPLE_OP_ID,
        "collection": collection,
        "key": key,
        "kind": kind_value,
        "hlc": placeholder_hlc,
        "priority": int(priority),
    }
    if data is not None or kind_value != OpKind.DELETE.value:
        raw["data"] = data
    op = parse_op(raw)
    text, size = encode(op)
    return Draft(op.collection, op.key, op.kind, op.data, op.priority, text, size)
