"""Several processes on one outbox: concurrent writers, crashed and live lease holders."""

from __future__ import annotations

import pytest

from shared.contracts import parse_hlc
from tests.support.agent_store import open_store
from tests.support.outbox_child import complete_lines, read_until, spawn, wait_ready

pytestmark = pytest.mark.agent


def all_ops(store):
    store.outbox.place_intake()  # (what the writers left in the intake)
    rows = store.conn.execute("SELECT op_id, key, hlc FROM outbox ORDER BY seq").fetchall()
    return {row[0]: (row[1], row[2]) for row in rows}


def test_two_processes_recording_at_once_lose_nothing(tmp_path):
    # Given one database and two writer processes started together
    path = tmp_path / "agent.db"
    open_store(path).close()
    writers = [spawn("enqueue", str(path), "150", tag) for tag in ("left", "right")]
    # When both record 150 ops concurrently
    printed = {tag: complete_lines(child)[1:] for tag, child in zip(("left", "right"), writers)}
    assert all(child.returncode == 0 for child in writers)
    # Then all 300 are stored, once each, with distinct increasing stamps per writer
    store = open_store(path)
    stored = all_ops(store)
    assert set(stored) == set(printed["left"]) | set(printed["right"])
    assert store.outbox.depth() == len(stored) == 300
    hlcs = [hlc for _, hlc in stored.values()]
    assert len(set(hlcs)) == 300
    for tag in ("left", "right"):
        mine = [stored[op_id][1] for op_id in printed[tag]]
        assert mine == sorted(mine)
        assert {parse_hlc(h).node for h in mine} == {store.state.settings().device_id}
    # and stamps that increase in the order the writes committed, across both writers (seq
    # order: one priority, unique keys): each stamp is above every one stored before it
    in_commit_order = [row[0] for row in store.conn.execute("SELECT hlc FROM outbox ORDER BY seq")]
    assert in_commit_order == sorted(in_commit_order)


def test_leases_of_a_crashed_process_become_pending_on_open(tmp_path):
    # Given a process that claimed ops and died without acking or releasing them
    path = tmp_path / "agent.db"
    store = open_store(path)
    ids = [store.outbox.record("items", f"k{i}", "put", {"i": i}).op_id for i in range(3)]
    holder = spawn("claim", str(path), stdin=True)
    wait_ready(holder)
    claimed = read_until(holder, "done")
    holder.kill()
    holder.wait()
    assert set(ids) <= set(claimed)
    assert store.outbox.claim() == []
    # When the outbox is opened again
    reopened = open_store(path)
    # Then the ops are claimable at once, without waiting for the lease to expire
    assert [p.op.op_id for p in reopened.outbox.claim()] == ids


def test_leases_of_a_live_process_are_left_alone(tmp_path):
    # Given a running process holding leases (e.g. `sync-agent run` mid-upload)
    path = tmp_path / "agent.db"
    store = open_store(path)
    store.outbox.record("items", "k", "put", {"v": 1})
    holder = spawn("claim", str(path), stdin=True)
    try:
        wait_ready(holder)
        read_until(holder, "done")
        # When another process opens the outbox (e.g. `sync-agent put`)
        other = open_store(path)
        # Then it neither recovers nor claims the leased op
        assert other.outbox.stats().in_flight == 1
        assert other.outbox.claim() == []
    finally:
        holder.kill()
        complete_lines(holder)
    # And once the holder is gone its lease is recovered
    assert other.outbox.recover_leases() == 1


def test_a_lease_taken_in_the_future_is_void_after_the_clock_went_back(tmp_path):
    # Given a lease taken while the wall clock was a year ahead
    path = tmp_path / "agent.db"
    ahead = open_store(path, now=lambda: 1_800_000_000.0)
    ahead.outbox.record("items", "k", "put", {"v": 1})
    ahead.outbox.claim(lease_s=60)
    # When the clock is corrected and leases are recovered
    corrected = open_store(path, now=lambda: 1_768_000_000.0)
    # Then the op is pending again instead of pinned for a year
    assert corrected.outbox.stats().in_flight == 0
    assert len(corrected.outbox.claim()) == 1
