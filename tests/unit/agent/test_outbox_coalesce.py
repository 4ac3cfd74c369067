"""Coalescing: repeated writes to one key shrink the outbox without changing the server's result."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.conflict import apply_lww
from shared.contracts import Op, OpKind, Priority, Record, RecordClock
from tests.support.agent_store import Store, open_store

pytestmark = pytest.mark.agent


@pytest.fixture
def store(tmp_path) -> Store:
    return open_store(tmp_path / "agent.db")


def record(store: Store, kind: str, data: Optional[dict], key: str = "k", **kw) -> Op:
    return store.outbox.record("items", key, OpKind(kind), data, **kw)


def test_a_newer_put_replaces_a_pending_op(store):
    record(store, "patch", {"a": 1})

    newer = record(store, "put", {"b": 2})

    assert store.outbox.pending_for("items", "k") == [newer]


def test_a_delete_replaces_a_pending_put(store):
    record(store, "put", {"a": 1})

    newer = record(store, "delete", None)

    assert store.outbox.pending_for("items", "k") == [newer]


def test_a_patch_merges_into_a_pending_patch_with_newer_values_winning(store):
    record(store, "patch", {"a": 1, "b": 1})

    merged = record(store, "patch", {"b": 2, "c": None})

    assert merged.kind is OpKind.PATCH
    assert merged.data == {"a": 1, "b": 2, "c": None}
    assert store.outbox.pending_for("items", "k") == [merged]


def test_a_patch_merged_into_a_pending_put_makes_a_put_at_the_newer_hlc(store):
    put = record(store, "put", {"a": 1, "b": 1})

    merged = record(store, "patch", {"b": 2, "a": None})

    assert merged.kind is OpKind.PUT
    assert merged.data == {"b": 2}
    assert merged.hlc > put.hlc
    assert store.outbox.pending_for("items", "k") == [merged]


def test_a_patch_after_a_pending_delete_becomes_a_put_of_its_fields(store):
    record(store, "delete", None)

    merged = record(store, "patch", {"a": 1, "gone": None})

    assert (merged.kind, merged.data) == (OpKind.PUT, {"a": 1})


def test_a_coalesced_op_keeps_its_place_and_takes_the_more_urgent_priority(store):
    record(store, "put", {"v": 1}, key="first", priority=Priority.LOW)
    record(store, "put", {"v": 1}, key="second", priority=Priority.LOW)

    record(store, "patch", {"v": 2}, key="first", priority=Priority.HIGH)
    record(store, "patch", {"v": 2}, key="second", priority=Priority.BACKGROUND)

    claimed = store.outbox.claim()
    assert [(p.op.key, p.op.priority) for p in claimed] == [
        ("first", Priority.HIGH),
        ("second", Priority.LOW),
    ]


def test_an_op_in_flight_is_never_coalesced_into(store):
    first = record(store, "put", {"a": 1})
    store.outbox.claim()

    second = record(store, "patch", {"b": 2})

    assert store.outbox.pending_for("items", "k") == [first, second]


def test_an_op_that_was_handed_out_once_is_never_coalesced_into_again(store):
    # Given an op that was sent and put back (the send may have reached the server)
    first = record(store, "put", {"a": 1})
    store.outbox.claim()
    store.outbox.release_unattempted([first.op_id])

    second = record(store, "patch", {"b": 2})

    assert store.outbox.pending_for("items", "k") == [first, second]


def test_a_write_merges_into_the_newest_op_behind_one_in_flight(store):
    record(store, "put", {"a": 1})
    store.outbox.claim()
    pending = record(store, "patch", {"b": 2})

    merged = record(store, "patch", {"c": 3})

    assert merged.data == {"b": 2, "c": 3}
    assert store.outbox.pending_for("items", "k")[1:] == [merged]
    assert merged.op_id != pending.op_id


def test_a_merge_that_would_be_too_large_keeps_both_ops(store):
    record(store, "patch", {"a": "x" * 200_000})

    second = record(store, "patch", {"b": "y" * 200_000})

    assert len(store.outbox.pending_for("items", "k")) == 2
    assert second.data == {"b": "y" * 200_000}


def test_a_batch_coalesces_exactly_as_one_by_one_recording_would(tmp_path):
    writes = [
        ("items", "k", "put", {"a": 1}),
        ("items", "j", "patch", {"x": 1}),
        ("items", "k", "patch", {"b": 2}),
        ("items", "j", "patch", {"x": None, "y": 2}),
        ("items", "k", "delete", None),
    ]
    batched = open_store(tmp_path / "batched.db", device_id="d")
    single = open_store(tmp_path / "single.db", device_id="d")

    batch_result = batched.outbox.record_many(writes)
    for write in writes:
        single.outbox.record(*write)

    def shape(store: Store) -> list[tuple]:
        return [(p.op.key, p.op.kind, p.op.data) for p in store.outbox.claim()]

    assert shape(batched) == shape(single)
    assert [op.kind for op in batch_result] == [
        OpKind.PUT,
        OpKind.PATCH,
        OpKind.PUT,
        OpKind.PATCH,
        OpKind.DELETE,
    ]


def test_a_batch_after_a_refused_merge_merges_into_the_newer_op_as_one_by_one_would(tmp_path):
    big = "x" * 200_000
    writes = [
        ("items", "k", "patch", {"a": big}),
        ("items", "k", "patch", {"b": big}),  # too large to merge: kept apart
        ("items", "k", "patch", {"c": 1}),  # merges into the second, not the first
    ]
    batched = open_store(tmp_path / "batched.db", device_id="d")
    single = open_store(tmp_path / "single.db", device_id="d")

    batched.outbox.record_many(writes)
    for write in writes:
        single.outbox.record(*write)

    for store in (batched, single):
        assert [op.data for op in store.outbox.pending_for("items", "k")] == [
            {"a": big},
            {"b": big, "c": 1},
        ]


def test_a_batch_over_several_collections_merges_each_key_in_its_own_collection(store):
    store.outbox.record_many([("items", "k", "put", {"a": 1}), ("notes", "k", "put", {"n": 1})])

    store.outbox.record_many(
        [
            ("notes", "k", "patch", {"m": 2}),
            ("items", "k", "patch", {"b": 2}),
            ("tasks", "k", "patch", {"t": 3}),
        ]
    )

    assert [op.data for op in store.outbox.pending_for("items", "k")] == [{"a": 1, "b": 2}]
    assert [op.data for op in store.outbox.pending_for("notes", "k")] == [{"n": 1, "m": 2}]
    assert [op.data for op in store.outbox.pending_for("tasks", "k")] == [{"t": 3}]
    assert store.outbox.depth() == 3


def test_a_batch_raising_a_new_ops_priority_claims_in_the_order_one_by_one_would(tmp_path):
    writes = [
        ("items", "k", "put", {"a": 1}, "normal"),
        ("items", "c", "put", {"c": 1}, "high"),
        ("items", "k", "patch", {"b": 2}, "high"),  # merges into the batch's first op
    ]
    batched = open_store(tmp_path / "batched.db", device_id="d")
    single = open_store(tmp_path / "single.db", device_id="d")

    batched.outbox.record_many(writes)
    for write in writes:
        single.outbox.record(*write)

    def order(store: Store) -> list[tuple]:
        return [(p.op.key, p.op.priority, p.op.data) for p in store.outbox.claim()]

    assert (
        order(batched)
        == order(single)
        == [
            ("c", Priority.HIGH, {"c": 1}),
            ("k", Priority.HIGH, {"a": 1, "b": 2}),
        ]
    )


# --- the property: coalescing never changes what the server ends up with -------------------

FIELDS = ("a", "b", "c")
KEYS = ("k1", "k2")
OTHER = "0000000000001-00000-other"

values = st.one_of(st.integers(0, 3), st.text(max_size=2))
put_data = st.dictionaries(st.sampled_from(FIELDS), values, max_size=3)
patch_data = st.dictionaries(st.sampled_from(FIELDS), st.none() | values, min_size=1, max_size=3)
writes = st.one_of(
    st.tuples(st.just("put"), st.sampled_from(KEYS), put_data),
    st.tuples(st.just("patch"), st.sampled_from(KEYS), patch_data),
    st.tuples(st.just("delete"), st.sampled_from(KEYS), st.none()),
)
actions = st.one_of(
    writes,
    st.tuples(st.just("claim"), st.integers(1, 3), st.none()),
    st.tuples(st.just("ack"), st.integers(0, 3), st.none()),
    st.tuples(st.just("release"), st.integers(0, 3), st.none()),
)
base_records = st.one_of(
    st.none(),
    st.dictionaries(st.sampled_from(FIELDS), values, min_size=1).map(
        lambda data: {"data": data, "fields": dict.fromkeys(data, OTHER)}
    ),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=st.lists(actions, max_size=25), base=base_records)
def test_coalesced_ops_leave_the_server_where_all_original_ops_would(script, base):
    """Given any interleaving of writes, claims, acks and releases on two keys, and a server
    record written earlier by another device: when everything is finally delivered, the
    server (apply_lww) shows the same documents as if every original op had been sent."""
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp) / "agent.db", device_id="dev", synchronous="OFF")
        start = {
            key: None
            if base is None
            else Record("items", key, dict(base["data"]), RecordClock("", dict(base["fields"])))
            for key in KEYS
        }
        server = dict(start)
        originals: list[Op] = []
        in_flight: list[str] = []

        def deliver(op_ids: list[str]) -> None:
            for op_id in op_ids:
                op = store.outbox.get(op_id).op
                server[op.key] = apply_lww(server[op.key], op).record
            store.outbox.ack(op_ids)

        for name, arg, data in script:
            if name in ("put", "patch", "delete"):
                stored = store.outbox.record("items", arg, OpKind(name), data)
                originals.append(Op(stored.op_id, "items", arg, OpKind(name), stored.hlc, data))
            elif name == "claim":
                in_flight += [p.op.op_id for p in store.outbox.claim(limit=arg)]
            elif name == "ack":
                deliver(in_flight[:arg])
                del in_flight[:arg]
            else:
                store.outbox.release(in_flight[:arg], error="x", retry_at=0)
                del in_flight[:arg]
        count, size = store.conn.execute("SELECT COUNT(*), TOTAL(size) FROM outbox").fetchone()
        stats = store.outbox.stats()
        assert (stats.total_ops, stats.total_bytes) == (count, size), "counters drifted"
        deliver(in_flight)
        while batch := store.outbox.claim(limit=10):
            deliver([p.op.op_id for p in batch])
        store.close()

    expected = dict(start)
    for op in originals:
        expected[op.key] = apply_lww(expected[op.key], op).record
    for key in KEYS:
        assert visible(server[key]) == visible(expected[key]), key


def visible(record: Optional[Record]) -> Optional[dict]:
    return None if record is None or record.deleted else dict(record.data)


@settings(max_examples=60, deadline=None)
@given(
    kinds=st.lists(st.sampled_from(["put", "delete"]), min_size=1, max_size=6), base=base_records
)
def test_puts_and_deletes_coalesce_exactly_clocks_included(kinds, base):
    """A put or delete replacing pending ops is exact: the same record, clocks and all."""
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp) / "agent.db", device_id="dev", synchronous="OFF")
        originals = []
        for index, kind in enumerate(kinds):
            data = None if kind == "delete" else {"n": index}
            stored = store.outbox.record("items", "k", OpKind(kind), data)
            originals.append(Op(stored.op_id, "items", "k", OpKind(kind), stored.hlc, data))
        sent = [p.op for p in store.outbox.claim()]
        store.close()
    start = (
        None
        if base is None
        else Record("items", "k", dict(base["data"]), RecordClock("", dict(base["fields"])))
    )
    via_outbox, via_all = start, start
    for op in sent:
        via_outbox = apply_lww(via_outbox, op).record
    for op in originals:
        via_all = apply_lww(via_all, op).record
    assert len(sent) == 1
    assert via_outbox == via_all
