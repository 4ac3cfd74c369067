"""The outbox's fast paths agree with the slow ones they replace.

`record_many` validates and encodes each op once with `encode_valid_op`, falling back to
`parse_op` whenever that is not certain; `claim` decodes its rows together. Both must give
exactly what `parse_op`, `encoded_size` and `pending_from_row` give.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from device_agent.op_ids import new_op_ids
from device_agent.outbox_model import pending_from_row, pending_from_rows
from shared.contracts import ContractError, OpKind, Priority, limits, parse_op
from shared.contracts.model import encoded_size
from shared.contracts.validation import encode_valid_op
from tests.support.agent_store import Store, open_store

pytestmark = pytest.mark.agent

HLC = "1764000000000-00000-dev-7f3a"
OP_ID = new_op_ids(1)[0]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
anything = st.none() | st.integers() | st.text(max_size=6) | st.lists(st.integers(), max_size=2)


def _raw(collection: Any, key: Any, kind: Any, data: Any, priority: int) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "op_id": OP_ID,
        "collection": collection,
        "key": key,
        "kind": kind,
        "hlc": HLC,
        "priority": priority,
    }
    if data is not None or kind != "delete":
        raw["data"] = data
    return raw


@settings(max_examples=400, deadline=None)
@given(
    collection=st.sampled_from(["items", "Items", "", "a" * 65, "x-1"]) | anything,
    key=st.text(max_size=6) | st.sampled_from(['k"1', "k\\", "ключ", "k\x00", "a" * 257]),
    kind=st.sampled_from(["put", "patch", "delete", "merge", None]),
    data=st.none() | st.dictionaries(st.text(max_size=3), json_values, max_size=4) | anything,
    priority=st.integers(min_value=-1, max_value=5),
)
def test_the_fast_check_accepts_only_what_parse_op_accepts_and_encodes_alike(
    collection, key, kind, data, priority
):
    # Given an arbitrary write
    raw = _raw(collection, key, kind, data, priority)

    # When the fast path judges it
    checked = encode_valid_op(
        OP_ID, HLC, collection=collection, key=key, kind=kind, data=data, priority=priority
    )

    # Then whatever it accepts parse_op accepts, with the same stored text and byte count
    if checked is None:
        return
    parse_op(raw)
    text, data_bytes = checked
    expected = None if data is None else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    assert text == expected
    assert data_bytes == (0 if text is None else len(text.encode("utf-8")))


@pytest.mark.parametrize("kind", ["put", "patch"])
def test_the_fast_check_draws_the_size_limit_where_parse_op_does(kind):
    # Given ops whose encoded size is exactly the limit, and one byte over it
    base = _raw("items", "k", kind, {"f": ""}, 2)
    filler = limits.MAX_OP_BYTES - encoded_size(base)
    at_limit = {"f": "x" * filler}
    over = {"f": "x" * (filler + 1)}
    assert encoded_size(_raw("items", "k", kind, at_limit, 2)) == limits.MAX_OP_BYTES

    # When the fast path judges them
    def check(data: dict[str, str]) -> Any:
        return encode_valid_op(
            OP_ID, HLC, collection="items", key="k", kind=kind, data=data, priority=2
        )

    # Then it accepts the one at the limit and leaves the other to parse_op, which refuses it
    assert check(at_limit) is not None
    assert check(over) is None
    with pytest.raises(ContractError, match="exceeds"):
        parse_op(_raw("items", "k", kind, over, 2))


@pytest.fixture
def store(tmp_path) -> Store:
    return open_store(tmp_path / "agent.db")


def test_invalid_writes_are_refused_with_parse_ops_messages(store):
    # Given a write parse_op refuses
    bad = ("items", "k\x00", OpKind.PUT, {"a": 1})

    # When it is recorded, alone or in a batch
    with pytest.raises(ContractError) as alone:
        store.outbox.record(*bad)
    with pytest.raises(ContractError) as batched:
        store.outbox.record_many([("items", "ok", OpKind.PUT, {"a": 1}), bad])

    # Then the message is parse_op's, and nothing was stored
    expected = "op.key: must not contain control characters"
    assert str(alone.value) == str(batched.value) == expected
    assert store.outbox.depth() == 0


def test_a_key_needing_json_escapes_is_stored_like_any_other(store):
    # Given keys the fast path leaves to parse_op (quotes, backslashes, non-ASCII)
    keys = ['say "hi"', "back\\slash", "ключ"]

    # When they are recorded
    ops = store.outbox.record_many([("items", key, "put", {"k": key}) for key in keys])

    # Then each is stored and read back unchanged
    assert [store.outbox.get(op.op_id).op for op in ops] == ops


def test_claimed_ops_decode_as_single_rows_do(store):
    # Given pending ops of every kind and priority
    store.outbox.record_many(
        [
            ("items", "a", "put", {"n": 1, "s": "ü", "l": [1, {"x": None}]}, Priority.CRITICAL),
            ("items", "b", "patch", {"n": None}),
            ("items", "c", "delete", None, Priority.LOW),
        ]
    )

    # When they are claimed
    claimed = store.outbox.claim(limit=10)

    # Then each equals its row decoded alone
    assert claimed == [store.outbox.get(pending.op.op_id) for pending in claimed]
    rows = [
        (p.seq, p.op.op_id, "items", p.op.key, p.op.kind.value, p.op.hlc, None, 0, 0, 0.0, None)
        for p in claimed
    ]
    assert pending_from_rows(rows) == [pending_from_row(row) for row in rows]
