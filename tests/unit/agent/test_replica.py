"""The replica of cloud records and the local view (replica + pending local ops)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.contracts import Op, OpKind, Record, RecordClock
from tests.support.agent_store import Store, open_store

pytestmark = pytest.mark.agent


def hlc(ms: int, node: str = "server") -> str:
    return f"{ms:013d}-00000-{node}"


def cloud_record(data: dict, at: int, key: str = "k", reset: int = 0) -> Record:
    return Record(
        "items", key, data, RecordClock(hlc(reset) if reset else "", dict.fromkeys(data, hlc(at)))
    )


@pytest.fixture
def store(tmp_path) -> Store:
    return open_store(tmp_path / "agent.db")


def test_an_applied_record_is_stored_with_its_clock(store):
    record = cloud_record({"a": 1}, at=10)

    store.replica.apply(record)

    assert store.replica.get_record("items", "k") == record


def test_a_record_delivered_again_changes_nothing_and_is_not_counted(store):
    page = [cloud_record({"a": 1}, at=10)]
    assert store.replica.apply_many(page) == 1
    version = store.conn.execute("PRAGMA data_version").fetchone()[0]
    total = store.conn.total_changes

    assert store.replica.apply_many(page) == 0
    assert store.replica.apply(cloud_record({"a": 0}, at=5)) is False  # older: nothing
    assert store.conn.total_changes == total  # and nothing written
    assert store.conn.execute("PRAGMA data_version").fetchone()[0] == version


def test_an_unknown_record_is_none(store):
    assert store.replica.get_record("items", "nothing") is None
    assert store.replica.view("items", "nothing", []) is None


def test_an_older_record_arriving_late_does_not_overwrite_a_newer_one(store):
    store.replica.apply(cloud_record({"a": "new"}, at=20))

    store.replica.apply(cloud_record({"a": "old"}, at=10))

    assert store.replica.get_record("items", "k").data == {"a": "new"}


def test_a_deleted_record_keeps_its_tombstone_and_views_as_none(store):
    store.replica.apply(cloud_record({"a": 1}, at=10))

    store.replica.apply(Record("items", "k", {}, RecordClock(hlc(20), {})))
    store.replica.apply(cloud_record({"a": 1}, at=10))

    assert store.replica.get_record("items", "k").clock.reset == hlc(20)
    assert store.replica.view("items", "k", []) is None


def test_apply_many_folds_a_page_in_one_transaction(store):
    page = [cloud_record({"n": i}, at=10, key=f"k{i}") for i in range(5)]

    assert store.replica.apply_many(page) == 5

    assert store.replica.count() == 5


def test_the_view_applies_pending_local_ops_over_the_replica(store):
    store.replica.apply(cloud_record({"a": 1, "b": 1}, at=10))
    store.outbox.record("items", "k", OpKind.PATCH, {"b": 2})

    view = store.replica.view("items", "k", store.outbox.pending_for("items", "k"))

    assert view == {"a": 1, "b": 2}


def test_the_view_of_a_locally_deleted_record_is_none(store):
    store.replica.apply(cloud_record({"a": 1}, at=10))
    store.outbox.record("items", "k", OpKind.DELETE, None)

    assert store.replica.view("items", "k", store.outbox.pending_for("items", "k")) is None


def test_the_view_of_a_record_only_written_locally(store):
    store.outbox.record("items", "new", OpKind.PUT, {"x": 1})

    assert store.replica.view("items", "new", store.outbox.pending_for("items", "new")) == {"x": 1}


def test_the_view_ignores_ops_of_other_keys(store):
    other = Op("o1", "items", "other", OpKind.PUT, hlc(5, "dev"), {"x": 1})

    assert store.replica.view("items", "k", [other]) is None


def test_a_resync_keeps_every_record_visible_until_it_completes(store):
    store.replica.apply_many(
        [cloud_record({"a": 1}, at=10, key="kept"), cloud_record({"b": 1}, at=10, key="gone")]
    )

    store.replica.begin_resync()
    store.replica.apply_many([cloud_record({"a": 2}, at=20, key="kept")])  # a first page

    assert store.replica.view("items", "kept", []) == {"a": 2}
    assert store.replica.view("items", "gone", []) == {"b": 1}


def test_a_completed_resync_drops_what_the_cloud_no_longer_has(store):
    # Given a record whose field "old" the cloud dropped (its tombstone expired), and one the
    # cloud deleted long ago
    store.replica.apply_many(
        [cloud_record({"a": 1, "old": 1}, at=10, key="kept"), cloud_record({}, at=10, key="gone")]
    )
    store.replica.begin_resync()
    # When the resync's pages bring only the first, without that field
    store.replica.apply_many([cloud_record({"a": 1}, at=10, key="kept")])
    dropped = store.replica.finish_resync()
    # Then the replica holds exactly what the cloud sent
    assert dropped == 1
    assert store.replica.get_record("items", "kept") == cloud_record({"a": 1}, at=10, key="kept")
    assert store.replica.get_record("items", "gone") is None
    assert store.replica.finish_resync() == 0  # nothing under way any more


def test_an_op_acked_during_a_resync_stays_in_the_view_and_merges_with_later_pages(store):
    store.replica.begin_resync()
    mine = Op("op-1", "items", "k", OpKind.PATCH, hlc(30, "dev"), {"mine": 1})
    store.replica.apply_op(mine)

    store.replica.apply_many([cloud_record({"a": 1}, at=10)])
    store.replica.finish_resync()

    assert store.replica.view("items", "k", []) == {"mine": 1, "a": 1}


def test_a_restarted_resync_forgets_what_the_expired_pass_saw(store):
    # Given a resync that saw "x", then was cut off long enough for its cursor to expire,
    # while "x" was deleted and its tombstone expired too
    store.replica.apply_many([cloud_record({"a": 1}, at=10, key=k) for k in ("x", "y")])
    store.replica.begin_resync()
    store.replica.apply_many([cloud_record({"a": 1}, at=10, key="x")])
    # When it starts over and the cloud sends only "y"
    store.replica.begin_resync()
    store.replica.apply_many([cloud_record({"a": 1}, at=10, key="y")])
    store.replica.finish_resync()
    # Then "x" is gone, as on the cloud
    assert store.replica.get_record("items", "x") is None
    assert store.replica.view("items", "y", []) == {"a": 1}


def test_a_write_acked_during_a_resync_survives_and_fields_the_cloud_dropped_go(store):
    # Given a record with a field the cloud has since dropped (its tombstone expired)
    store.replica.apply(cloud_record({"old": 1, "a": 1}, at=10))
    store.replica.begin_resync()
    # When this device's patch is acked before the resync's page for the key arrives
    store.replica.apply_op(Op("op-1", "items", "k", OpKind.PATCH, hlc(30, "dev"), {"mine": 1}))
    store.replica.apply_many([cloud_record({"a": 1}, at=10)])
    store.replica.finish_resync()
    # Then the view has the patch and what the cloud sent, not the dropped field
    assert store.replica.view("items", "k", []) == {"a": 1, "mine": 1}


def test_a_write_acked_after_the_resyncs_last_page_stays_in_the_view(store):
    store.replica.apply(cloud_record({"a": 1, "b": 1}, at=10))
    store.replica.begin_resync()

    patch = Op("op-1", "items", "k", OpKind.PATCH, hlc(30, "dev"), {"a": None})
    store.replica.apply_op(patch)
    store.replica.finish_resync()  # no page brought "k" (the next pull will)

    assert store.replica.view("items", "k", []) == {"b": 1}


# A field written at one HLC always has one value (HLCs are unique per op).
records = st.lists(
    st.builds(
        lambda names, at, reset: cloud_record({n: f"{n}@{at}" for n in names}, at=at, reset=reset),
        st.sets(st.sampled_from("abc"), max_size=3),
        st.integers(1, 30),
        st.sampled_from([0, 5, 15, 25]),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=40, deadline=None)
@given(page=records, order=st.randoms(use_true_random=False))
def test_any_order_with_duplicates_gives_the_same_replica(tmp_path_factory, page, order):
    """Pages delivered twice or out of order leave the same replica."""
    base = tmp_path_factory.mktemp("replica")
    forward = open_store(base / "f.db", synchronous="OFF")
    shuffled = open_store(base / "s.db", synchronous="OFF")
    again = page + page[: len(page) // 2]
    order.shuffle(again)

    forward.replica.apply_many(page)
    shuffled.replica.apply_many(again)

    assert forward.replica.get_record("items", "k") == shuffled.replica.get_record("items", "k")
    forward.close()
    shuffled.close()
