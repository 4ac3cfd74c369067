"""Coalescing: repeated writes to one key shrink the outbox without changing the server's result."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from shared.conflict import apply_lww
from shared.contracts import Op, OpKind, Priority, Record, RecordClock
from tests.support.agent_store import Store, open_store, placed

pytestmark = pytest.mark.agent


@pytest.fixture
def store(tmp_path) -> Store:
    return open_store(tmp_path / "agent.db")


def record(store: Store, kind: str, data: Optional[dict], key: str = "k", **kw) -> Op:
    return store.outbox.record("items", key, OpKind(kind), data, **kw)


def test_a_newer_put_replaces_a_pending_op(store):
    record(store, "patch", {"a": 1})

    newer = record(store, "put", {"b": 2})

    assert placed(store.outbox).pending_for("items", "k") == [newer]


def test_a_delete_replaces_a_pending_put(store):
    record(store, "put", {"a": 1})

    newer = record(store, "delete", None)

    assert placed(store.outbox).pending_for("items", "k") == [newer]


def test_a_patch_naming_every_field_of_a_pending_patch_replaces_it(store):
    record(store, "patch", {"a": 1, "b": 1})

    newer = record(store, "patch", {"a": None, "b": 2, "c": 3})

    assert newer.data == {"a": None, "b": 2, "c": 3}
    assert placed(store.outbox).pending_for("items", "k") == [newer]


def test_patches_on_different_fields_are_kept_apart(store):
    # Merged at the newer HLC, "a" would beat a write of "a" another device made between them
    older = record(store, "patch", {"a": 1, "b": 1})

    newer = record(store, "patch", {"b": 2})

    assert placed(store.outbox).pending_for("items", "k") == [older, newer]


@pytest.mark.parametrize("first", [("put", {"a": 1}), ("delete", None)])
def test_a_patch_after_a_pending_put_or_delete_is_kept_apart(store, first):
    # A put at the patch's HLC would erase fields another device wrote between the two
    older = record(store, *first)

    newer = record(store, "patch", {"a": 2})

    assert placed(store.outbox).pending_for("items", "k") == [older, newer]


def test_a_put_also_drops_the_older_pending_ops_it_makes_dead(store):
    record(store, "patch", {"a": 1})
    record(store, "patch", {"b": 1})

    newer = record(store, "put", {"c": 1})

    assert placed(store.outbox).pending_for("items", "k") == [newer]
    assert store.outbox.depth() == 1


def test_a_patch_drops_an_older_patch_on_no_other_fields(store):
    record(store, "patch", {"a": 1})
    other = record(store, "patch", {"b": 1})

    newer = record(store, "patch", {"a": 2})

    assert placed(store.outbox).pending_for("items", "k") == [other, newer]


def test_a_dead_op_more_urgent_than_the_new_one_is_kept(store):
    urgent = record(store, "patch", {"a": 1}, priority=Priority.CRITICAL)
    record(store, "patch", {"b": 1})

    newer = record(store, "put", {"c": 1})

    assert placed(store.outbox).pending_for("items", "k") == [urgent, newer]


def test_a_coalesced_op_keeps_its_place_and_takes_the_more_urgent_priority(store):
    record(store, "put", {"v": 1}, key="first", priority=Priority.LOW)
    record(store, "put", {"v": 1}, key="second", priority=Priority.LOW)

    record(store, "put", {"v": 2}, key="first", priority=Priority.HIGH)
    record(store, "put", {"v": 2}, key="second", priority=Priority.BACKGROUND)

    claimed = store.outbox.claim()
    assert [(p.op.key, p.op.priority) for p in claimed] == [
        ("first", Priority.HIGH),
        ("second", Priority.LOW),
    ]


def test_an_op_in_flight_is_never_coalesced_into(store):
    first = record(store, "put", {"a": 1})
    store.outbox.claim()

    second = record(store, "patch", {"b": 2})

    assert placed(store.outbox).pending_for("items", "k") == [first, second]


def test_an_op_that_was_handed_out_once_is_never_coalesced_into_again(store):
    # Given an op that was sent and put back (the send may have reached the server)
    first = record(store, "put", {"a": 1})
    store.outbox.claim()
    store.outbox.release_unattempted([first.op_id])

    second = record(store, "patch", {"b": 2})

    assert placed(store.outbox).pending_for("items", "k") == [first, second]


def test_a_write_merges_into_the_newest_op_behind_one_in_flight(store):
    record(store, "put", {"a": 1})
    store.outbox.claim()
    pending = record(store, "patch", {"b": 2})

    merged = record(store, "patch", {"b": 3, "c": 3})

    assert merged.data == {"b": 3, "c": 3}
    assert placed(store.outbox).pending_for("items", "k")[1:] == [merged]
    assert merged.op_id != pending.op_id


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
        OpKind.PATCH,
        OpKind.PATCH,
        OpKind.DELETE,
    ]


def test_a_batch_replaces_only_the_newest_op_of_a_key_as_one_by_one_would(tmp_path):
    writes = [
        ("items", "k", "patch", {"a": 1}),
        ("items", "k", "patch", {"b": 1}),  # another field: kept apart
        ("items", "k", "patch", {"b": 2}),  # replaces the second, not the first
    ]
    batched = open_store(tmp_path / "batched.db", device_id="d")
    single = open_store(tmp_path / "single.db", device_id="d")

    batched.outbox.record_many(writes)
    for write in writes:
        single.outbox.record(*write)

    for store in (batched, single):
        assert [op.data for op in placed(store.outbox).pending_for("items", "k")] == [
            {"a": 1},
            {"b": 2},
        ]


def test_a_batch_over_several_collections_merges_each_key_in_its_own_collection(store):
    store.outbox.record_many([("items", "k", "put", {"a": 1}), ("notes", "k", "put", {"n": 1})])

    store.outbox.record_many(
        [
            ("notes", "k", "put", {"m": 2}),
            ("items", "k", "put", {"b": 2}),
            ("tasks", "k", "patch", {"t": 3}),
        ]
    )

    assert [op.data for op in placed(store.outbox).pending_for("items", "k")] == [{"b": 2}]
    assert [op.data for op in placed(store.outbox).pending_for("notes", "k")] == [{"m": 2}]
    assert [op.data for op in placed(store.outbox).pending_for("tasks", "k")] == [{"t": 3}]
    assert store.outbox.depth() == 3


def test_a_batch_raising_a_new_ops_priority_claims_in_the_order_one_by_one_would(tmp_path):
    writes = [
        ("items", "k", "put", {"a": 1}, "normal"),
        ("items", "c", "put", {"c": 1}, "high"),
        ("items", "k", "put", {"a": 1, "b": 2}, "high"),  # replaces the batch's first op
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
# A write by another device, stamped between this device's latest op and its next one.
others = st.one_of(
    st.tuples(st.just("other put"), st.sampled_from(KEYS), put_data),
    st.tuples(st.just("other patch"), st.sampled_from(KEYS), patch_data),
)
actions = st.one_of(
    writes,
    others,
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


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=st.lists(actions, max_size=25), base=base_records, rejected=st.integers(0, 15))
# Another device's field between a put and a patch, and between two patches on other fields:
# merged at the newer HLC, the put would erase it and the older patch's field would beat it.
@example(
    script=[("put", "k1", {"a": 1}), ("other patch", "k1", {"x": 1}), ("patch", "k1", {"b": 2})],
    base=None,
    rejected=99,
)
@example(
    script=[("patch", "k1", {"a": 1}), ("other patch", "k1", {"a": 2}), ("patch", "k1", {"b": 2})],
    base=None,
    rejected=99,
)
# The newer of two puts refused: the older one, which it had replaced, reaches the server.
@example(script=[("put", "k1", {"a": 1}), ("put", "k1", {"b": 2})], base=None, rejected=1)
def test_coalesced_ops_leave_the_server_where_all_original_ops_would(script, base, rejected):
    """Given any interleaving of writes, claims, acks and releases on two keys, a server
    record written earlier by another device, and that device's writes stamped between this
    one's: when everything is finally delivered, the server (apply_lww) shows the same
    documents as if every original op had been sent. The server rejects this device's
    `rejected`-th write if it reaches it (quarantined): then as if every other op had been
    sent, whatever that write had replaced."""
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
        latest = OTHER

        refused: list[str] = []
        own_writes = 0

        def deliver(op_ids: list[str]) -> None:
            for op_id in op_ids:
                if op_id in refused:
                    store.outbox.quarantine(op_id, "invalid_op", "refused by a server rule")
                    continue
                op = store.outbox.get(op_id).op
                server[op.key] = apply_lww(server[op.key], op).record
            store.outbox.ack([op_id for op_id in op_ids if op_id not in refused])

        for name, arg, data in script:
            if name in ("put", "patch", "delete"):
                stored = store.outbox.record("items", arg, OpKind(name), data)
                if own_writes == rejected:
                    refused.append(stored.op_id)
                own_writes += 1
                originals.append(Op(stored.op_id, "items", arg, OpKind(name), stored.hlc, data))
                latest = stored.hlc
            elif name.startswith("other"):
                # Same time and counter as this device's latest stamp, a greater node id:
                # after that op, before this device's next one.
                physical, logical, _ = latest.split("-", 2)
                hlc = f"{physical}-{logical}-other"
                other = Op(f"other-{len(originals)}", "items", arg, OpKind(name[6:]), hlc, data)
                originals.append(other)
                server[arg] = apply_lww(server[arg], other).record
            elif name == "claim":
                in_flight += [p.op.op_id for p in store.outbox.claim(limit=arg)]
            elif name == "ack":
                deliver(in_flight[:arg])
                del in_flight[:arg]
            else:
                store.outbox.release(in_flight[:arg], error="x", retry_at=0)
                del in_flight[:arg]
        placed(store.outbox)
        count, size = store.conn.execute("SELECT COUNT(*), TOTAL(size) FROM outbox").fetchone()
        stats = store.outbox.stats()
        assert (stats.total_ops, stats.total_bytes) == (count, size), "counters drifted"
        deliver(in_flight)
        while batch := store.outbox.claim(limit=10):
            deliver([p.op.op_id for p in batch])
        store.close()

    expected = dict(start)
    for op in originals:
        if op.op_id not in refused:
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


prioritised_writes = st.tuples(
    st.sampled_from(["put", "patch", "delete"]),
    st.sampled_from(KEYS),
    patch_data,
    st.sampled_from(list(Priority)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=st.lists(prioritised_writes, max_size=4),
    claimed=st.integers(0, 2),
    batch=st.lists(prioritised_writes, min_size=1, max_size=8),
)
# A put raised to critical by a replacement in the batch, then put behind a patch: a later
# high put must not drop it (it is critical now).
@example(
    before=[],
    claimed=0,
    batch=[
        ("put", "k2", {"a": 1}, Priority.HIGH),
        ("put", "k2", {"a": 2}, Priority.CRITICAL),
        ("patch", "k2", {"a": 3}, Priority.CRITICAL),
        ("put", "k2", {"a": 4}, Priority.HIGH),
    ],
)
def test_a_batch_stores_exactly_what_recording_its_writes_one_by_one_would(before, claimed, batch):
    """Over pending ops (some handed out), a batch leaves the same ops in the same claim
    order as recording each of its writes alone: replacements, drops and priority moves."""

    def item(kind: str, key: str, data: dict, priority: Priority) -> tuple:
        document = {name: value for name, value in data.items() if value is not None}
        return ("items", key, kind, {"delete": None, "put": document}.get(kind, data), priority)

    def outcome(store: Store) -> list[tuple]:
        """The pending ops in claim order, each with the ops it keeps as replaced."""
        kept: dict[str, list[tuple]] = {}
        placed(store.outbox)
        for op_id, key, kind, data, priority in store.conn.execute(
            "SELECT o.op_id, r.key, r.kind, r.data, r.priority FROM outbox_replaced AS r "
            "JOIN outbox AS o ON o.seq = r.by_seq ORDER BY r.hlc"
        ):
            kept.setdefault(op_id, []).append((key, kind, data, priority))
        return [
            (p.op.key, p.op.kind, p.op.data, p.op.priority, kept.get(p.op.op_id))
            for p in store.outbox.claim(limit=50)
        ]

    with tempfile.TemporaryDirectory() as tmp:
        stores = [
            open_store(Path(tmp) / f"{name}.db", device_id="dev", synchronous="OFF")
            for name in ("batched", "single")
        ]
        for store in stores:
            for write in before:
                store.outbox.record(*item(*write))
            store.outbox.claim(limit=claimed)  # handed out: never replaced or dropped
        batched, single = stores
        batched.outbox.record_many([item(*write) for write in batch])
        for write in batch:
            single.outbox.record(*item(*write))
        assert outcome(batched) == outcome(single)
        for store in stores:
            store.close()
