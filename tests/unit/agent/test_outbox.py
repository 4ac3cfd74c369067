"""The outbox queue: recording, priority order, leases, retries, bounds, quarantine, restamp."""

from __future__ import annotations

import pytest

from device_agent.db import transaction
from device_agent.errors import NotFound, OutboxFull
from shared.contracts import ContractError, OpKind, Priority, parse_hlc
from shared.contracts.hlc import format_hlc
from tests.support.agent_store import Store, open_store

pytestmark = pytest.mark.agent

T0 = 1_764_000_000.0


class FakeTime:
    def __init__(self, start: float = T0) -> None:
        self.value = start

    def __call__(self) -> float:
        return self.value


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime()


@pytest.fixture
def store(tmp_path, clock) -> Store:
    return open_store(tmp_path / "agent.db", now=clock)


def put(store: Store, key: str, priority: Priority = Priority.NORMAL, **data: object) -> str:
    return store.outbox.record("items", key, OpKind.PUT, dict(data) or {"v": key}, priority).op_id


def keys_of(claimed) -> list[str]:
    return [pending.op.key for pending in claimed]


# --- recording ---------------------------------------------------------------------------


def test_a_recorded_op_is_validated_stamped_and_stored(store):
    op = store.outbox.record("prefs", "user-42", OpKind.PUT, {"currency": "BTC"}, "critical")

    stored = store.outbox.get(op.op_id)
    assert stored.op == op
    assert op.priority is Priority.CRITICAL
    assert parse_hlc(op.hlc).node == store.state.settings().device_id
    assert stored.attempts == 0


def test_an_invalid_op_raises_a_contract_error_and_stores_nothing(store):
    with pytest.raises(ContractError, match="collection"):
        store.outbox.record("Bad Collection!", "k", OpKind.PUT, {"a": 1})

    assert store.outbox.depth() == 0


def test_a_batch_with_one_invalid_write_stores_nothing(store):
    with pytest.raises(ContractError):
        store.outbox.record_many(
            [
                ("items", "a", "put", {"v": 1}),
                ("items", "b", "patch", {}),
                ("items", "c", "delete", None),
            ]
        )

    assert store.outbox.depth() == 0


def test_a_batch_is_stored_in_order_with_increasing_stamps(store):
    ops = store.outbox.record_many([("items", f"k{i}", "put", {"i": i}, "low") for i in range(5)])

    assert [op.key for op in ops] == [f"k{i}" for i in range(5)]
    assert [op.hlc for op in ops] == sorted(op.hlc for op in ops)
    assert keys_of(store.outbox.claim()) == [f"k{i}" for i in range(5)]


# --- claim order and leases --------------------------------------------------------------


def test_priorities_drain_in_order_and_fifo_within_a_priority(store):
    # Given writes recorded in an interleaved order of priorities
    plan = [
        ("bg1", Priority.BACKGROUND),
        ("n1", Priority.NORMAL),
        ("c1", Priority.CRITICAL),
        ("n2", Priority.NORMAL),
        ("h1", Priority.HIGH),
        ("c2", Priority.CRITICAL),
        ("l1", Priority.LOW),
        ("n3", Priority.NORMAL),
    ]
    for key, priority in plan:
        put(store, key, priority)
    # When they are claimed three at a time and acked
    drained = []
    while batch := store.outbox.claim(limit=3):
        drained += keys_of(batch)
        store.outbox.ack(p.op.op_id for p in batch)
    # Then critical comes first, background last, and each priority keeps its order
    assert drained == ["c1", "c2", "h1", "n1", "n2", "n3", "l1", "bg1"]


def test_claim_stops_at_the_byte_budget_but_always_returns_one_op(store):
    for i in range(3):
        put(store, f"k{i}", blob="x" * 1000)

    assert len(store.outbox.claim(max_bytes=1500)) == 1
    assert len(store.outbox.claim(max_bytes=2500)) == 2


def test_leased_ops_are_not_claimed_twice_until_the_lease_expires(store, clock):
    put(store, "a")
    first = store.outbox.claim(lease_s=30)

    assert store.outbox.claim() == []
    clock.value += 31
    again = store.outbox.claim()

    assert keys_of(first) == keys_of(again) == ["a"]


def test_acked_ops_leave_the_outbox(store):
    put(store, "a")
    put(store, "b")
    claimed = store.outbox.claim()

    assert store.outbox.ack([claimed[0].op.op_id, "no-such-op"]) == 1

    with pytest.raises(NotFound):
        store.outbox.get(claimed[0].op.op_id)
    assert store.outbox.depth() == 1


def test_a_released_op_counts_an_attempt_and_waits_for_its_retry_time(store, clock):
    op_id = put(store, "a")
    store.outbox.claim()

    store.outbox.release([op_id], error="HTTP 503", retry_at=clock.value + 10)

    assert store.outbox.claim() == []
    clock.value += 10
    (again,) = store.outbox.claim()
    assert again.attempts == 1
    assert again.last_error == "HTTP 503"


def test_an_op_released_unattempted_is_ready_at_once_without_an_attempt(store):
    op_id = put(store, "a")
    store.outbox.claim()

    store.outbox.release_unattempted([op_id])

    (again,) = store.outbox.claim()
    assert again.attempts == 0


# --- bounds ------------------------------------------------------------------------------


def test_a_full_outbox_refuses_a_write_and_says_what_to_do(tmp_path):
    store = open_store(tmp_path / "agent.db", max_ops=3)
    for i in range(3):
        put(store, f"k{i}")

    with pytest.raises(OutboxFull) as caught:
        put(store, "k3")

    assert "3 ops" in str(caught.value) and "sync" in str(caught.value)
    assert store.outbox.depth() == 3
    assert [op.key for op in store.outbox.pending_for("items", "k3")] == []


def test_a_byte_bound_refuses_a_write_that_would_pass_it(tmp_path):
    store = open_store(tmp_path / "agent.db", max_bytes=5_000)
    put(store, "a", blob="x" * 3_000)

    with pytest.raises(OutboxFull, match="5000 bytes"):
        put(store, "b", blob="x" * 3_000)


def test_a_batch_that_would_overflow_is_refused_whole(tmp_path):
    store = open_store(tmp_path / "agent.db", max_ops=5)
    put(store, "a")

    with pytest.raises(OutboxFull):
        store.outbox.record_many([("items", f"k{i}", "put", {"i": i}) for i in range(5)])

    assert store.outbox.depth() == 1


def test_a_full_outbox_still_accepts_a_write_coalesced_into_a_pending_op(tmp_path):
    store = open_store(tmp_path / "agent.db", max_ops=2)
    put(store, "a")
    put(store, "b")

    op = store.outbox.record("items", "b", OpKind.PUT, {"v": "b2"})

    assert store.outbox.depth() == 2
    assert store.outbox.pending_for("items", "b") == [op]


def test_a_quarantined_op_is_not_retried_into_a_full_outbox(tmp_path):
    store = open_store(tmp_path / "agent.db", max_ops=1)
    op_id = put(store, "a")
    store.outbox.quarantine(op_id, "invalid_op", "bad")
    put(store, "b")

    with pytest.raises(OutboxFull):
        store.outbox.retry_quarantined(op_id)

    assert [entry.op.op_id for entry in store.outbox.quarantined()] == [op_id]


def test_acked_ops_make_room_again(tmp_path):
    store = open_store(tmp_path / "agent.db", max_ops=1)
    put(store, "a")
    store.outbox.ack(p.op.op_id for p in store.outbox.claim())

    put(store, "b")

    assert store.outbox.depth() == 1


# --- quarantine --------------------------------------------------------------------------


def test_a_quarantined_op_is_listed_with_its_reason_and_never_claimed(store):
    op_id = put(store, "a")
    store.outbox.claim()

    store.outbox.quarantine(op_id, "invalid_op", "field too long")

    (entry,) = store.outbox.quarantined()
    assert (entry.op.op_id, entry.code, entry.message) == (op_id, "invalid_op", "field too long")
    assert store.outbox.claim() == []
    assert store.outbox.stats().quarantined == 1


def test_a_retried_quarantined_op_is_pending_again_with_its_id_and_hlc(store):
    op = store.outbox.record("items", "a", OpKind.PUT, {"v": 1})
    store.outbox.quarantine(op.op_id, "forbidden", "no")

    retried = store.outbox.retry_quarantined(op.op_id)

    assert retried == op
    assert store.outbox.quarantined() == []
    assert keys_of(store.outbox.claim()) == ["a"]


def test_a_dropped_quarantined_op_is_gone(store):
    op_id = put(store, "a")
    store.outbox.quarantine(op_id, "invalid_op", "bad")

    store.outbox.drop_quarantined(op_id)

    assert store.outbox.quarantined() == []
    assert store.outbox.depth() == 0


@pytest.mark.parametrize("action", ["quarantine", "retry_quarantined", "drop_quarantined"])
def test_quarantine_actions_on_an_unknown_op_raise_not_found(store, action):
    call = getattr(store.outbox, action)
    args = ("missing", "invalid_op", "x") if action == "quarantine" else ("missing",)

    with pytest.raises(NotFound, match="missing"):
        call(*args)


# --- restamp -----------------------------------------------------------------------------


def test_restamp_gives_order_preserving_stamps_above_the_server_time(tmp_path):
    # Given a device clock a year ahead that stamped three ops on one key (a put in flight,
    # then two writes recorded while it was in flight)
    wall_ms = [1_764_000_000_000 + 365 * 24 * 3600 * 1000]
    store = open_store(tmp_path / "agent.db", now_ms=lambda: wall_ms[0])
    first = store.outbox.record("items", "k", OpKind.PUT, {"v": 1})
    store.outbox.claim()
    second = store.outbox.record("items", "k", OpKind.PATCH, {"v": 2})
    other = store.outbox.record("items", "z", OpKind.PUT, {"v": 3})
    # When the server rejects the first as clock_ahead and the agent restamps
    server_time = format_hlc(1_764_000_000_000, 0, "server")
    with transaction(store.conn):  # as the sync engine does
        store.outbox.place_intake()
        store.state.restamp_clock(server_time)
    renewed = store.outbox.restamp([first.op_id])
    # Then every op stamped from the future is renewed, in the same order, above server time
    assert [op.op_id for op in renewed] == [first.op_id, second.op_id, other.op_id]
    assert all(server_time < op.hlc for op in renewed)
    assert [op.hlc for op in renewed] == sorted(op.hlc for op in renewed)
    assert renewed[-1].hlc < format_hlc(1_764_000_000_000 + 300_000, 0, "server")
    assert [op.hlc for op in store.outbox.pending_for("items", "k")] == [
        renewed[0].hlc,
        renewed[1].hlc,
    ]


def test_restamp_carries_later_ops_along_so_none_is_overtaken(store):
    a = store.outbox.record("items", "a", OpKind.PUT, {"v": 1})
    b = store.outbox.record("items", "b", OpKind.PUT, {"v": 1})
    c = store.outbox.record("items", "c", OpKind.PUT, {"v": 1})

    renewed = store.outbox.restamp([b.op_id])

    assert [op.op_id for op in renewed] == [b.op_id, c.op_id]
    assert store.outbox.get(a.op_id).op.hlc == a.hlc
    assert a.hlc < renewed[0].hlc < renewed[1].hlc


def test_restamp_of_unknown_ids_changes_nothing(store):
    op_id = put(store, "a")
    before = store.outbox.get(op_id).op.hlc

    assert store.outbox.restamp(["gone"]) == []
    assert store.outbox.get(op_id).op.hlc == before


# --- reading -----------------------------------------------------------------------------


def test_pending_for_lists_pending_and_in_flight_ops_of_one_key_in_hlc_order(store):
    first = store.outbox.record("items", "k", OpKind.PUT, {"v": 1})
    store.outbox.claim()
    second = store.outbox.record("items", "k", OpKind.PATCH, {"w": 2})
    put(store, "other")

    assert store.outbox.pending_for("items", "k") == [first, second]


def test_stats_report_depth_by_priority_bytes_age_and_in_flight(store, clock):
    put(store, "c", Priority.CRITICAL)
    put(store, "n1")
    put(store, "n2")
    clock.value += 7
    store.outbox.claim(limit=1)

    stats = store.outbox.stats()

    assert stats.depth == {"critical": 1, "high": 0, "normal": 2, "low": 0, "background": 0}
    assert stats.total_ops == 3
    assert stats.total_bytes > 3 * 100
    assert stats.oldest_pending_age_s == pytest.approx(7)
    assert stats.in_flight == 1
    assert stats.to_dict()["depth"]["normal"] == 2


def test_stats_of_an_empty_outbox(store):
    stats = store.outbox.stats()

    assert stats.total_ops == 0 and stats.total_bytes == 0
    assert stats.oldest_pending_age_s is None
