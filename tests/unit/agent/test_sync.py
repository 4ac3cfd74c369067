"""The sync engine through the Agent API, against the protocol server on 127.0.0.1.

Each test: a real SQLite file in tmp_path, real HTTP, the server's hooks for bad days.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from device_agent import Agent, Priority
from device_agent.backoff import ConstantBackoff, ExponentialBackoff, Jitter, RetryPolicy
from device_agent.sync import SyncConfig
from device_agent.testing import FaultTransport
from device_agent.transport import HttpTransport, Transport
from shared.contracts import Op, OpKind, Record, RecordClock, format_hlc, parse_hlc
from tests.support.protocol_server import ProtocolServer

pytestmark = pytest.mark.agent
TOKEN = "device-token"


@pytest.fixture
def server() -> Iterator[ProtocolServer]:
    with ProtocolServer(token=TOKEN) as running:
        yield running


class Rig:
    """Opens agents on one database, optionally through a FaultTransport."""

    def __init__(self, path: Path, server: ProtocolServer) -> None:
        self.path, self.server = path, server
        self.faults: Optional[FaultTransport] = None
        self.opened: list[Agent] = []

    def agent(self, *, faulty: bool = False, **options: Any) -> Agent:
        def factory(endpoint: str, token: str) -> Transport:
            real = HttpTransport(endpoint, token, connect_timeout=1.0, read_timeout=3.0)
            if not faulty:
                return real
            self.faults = FaultTransport(real)
            return self.faults

        options.setdefault("retry_policy", RetryPolicy(ConstantBackoff(0.01)))
        agent = Agent.init(
            self.path,
            endpoint=self.server.url,
            token=TOKEN,
            device_id="pi-7",
            transport_factory=factory,
            **options,
        )
        self.opened.append(agent)
        return agent


@pytest.fixture
def rig(tmp_path: Path, server: ProtocolServer) -> Iterator[Rig]:
    made = Rig(tmp_path / "device.db", server)
    yield made
    for agent in made.opened:
        agent.close()  # closing twice is harmless


def other_device_op(kind: OpKind, key: str, data: Optional[dict[str, Any]], *, ahead_ms: int) -> Op:
    """An op from another device, stamped `ahead_ms` after now."""
    hlc = format_hlc(time.time_ns() // 1_000_000 + ahead_ms, 0, "other-dev")
    return Op(uuid.uuid4().hex, "prefs", key, kind, hlc, data)


def read_wall_clock_ahead(agent: Agent, wall: dict[str, int]) -> None:
    """Make the agent's wall clock read `wall["ahead_ms"]` ahead (the test moves it)."""
    agent.state._now_ms = lambda: time.time_ns() // 1_000_000 + wall["ahead_ms"]


# -- push: statuses ---------------------------------------------------------------------


def test_ops_are_pushed_critical_first_and_fifo_within_a_priority(
    rig: Rig, server: ProtocolServer
) -> None:
    agent = rig.agent(sync_config=SyncConfig(batch_ops=2))
    agent.put("prefs", "bg", {"n": 1}, priority=Priority.BACKGROUND)
    agent.put("prefs", "n1", {"n": 2})
    agent.put("prefs", "crit", {"n": 3}, priority=Priority.CRITICAL)
    agent.put("prefs", "n2", {"n": 4})
    summary = agent.sync(timeout=10)
    assert summary.synced and summary.applied == 4
    assert [op.key for op in server.arrivals] == ["crit", "n1", "n2", "bg"]
    assert agent.status()["pending"] == 0


def test_an_op_whose_ack_was_lost_is_resent_and_applied_once(
    rig: Rig, server: ProtocolServer
) -> None:
    # Given the server applies the batch but its answer never arrives
    agent = rig.agent(faulty=True)
    op_id = agent.put("prefs", "u1", {"currency": "BTC"})
    agent.engine()
    assert rig.faults is not None
    rig.faults.drop_response_next(1)
    # When the agent syncs (and retries)
    summary = agent.sync(timeout=10)
    # Then the resend is answered duplicate, acked, and the op took effect exactly once
    assert summary.synced
    assert summary.duplicate == 1
    assert server.applied[op_id] == 1
    assert [op.op_id for op in server.arrivals] == [op_id, op_id]
    assert agent.status()["pending"] == 0


@pytest.mark.parametrize("record_in_answer", [True, False])
def test_superseded_write_is_acked_and_the_replica_takes_the_servers_record(
    rig: Rig, server: ProtocolServer, record_in_answer: bool
) -> None:
    # Given a write, and another device's later write (a greater HLC) of the same key; the
    # cloud may leave `record` out of its answer (past its response budget)
    server.records_left_out = not record_in_answer
    agent = rig.agent()
    agent.put("prefs", "u1", {"theme": "light"})
    server.write_as_other_device(
        other_device_op(OpKind.PUT, "u1", {"theme": "dark"}, ahead_ms=5000)
    )
    # When the agent syncs
    summary = agent.sync(timeout=10)
    # Then the op is done, and the replica takes the server's record (from the answer, or
    # else from /v1/changes)
    assert summary.superseded == 1 and summary.synced
    assert agent.status()["pending"] == 0
    assert agent.get("prefs", "u1") == {"theme": "dark"}


def test_a_write_made_after_pulling_a_change_is_stamped_after_it(
    rig: Rig, server: ProtocolServer
) -> None:
    # Given another device, its clock a minute ahead, wrote a document this one pulled
    agent = rig.agent()
    theirs = other_device_op(OpKind.PUT, "u1", {"theme": "dark"}, ahead_ms=60_000)
    server.write_as_other_device(theirs)
    assert agent.sync(timeout=10).pulled == 1
    # When the user, having seen it, writes the document here
    agent.put("prefs", "u1", {"theme": "light"})
    [mine] = [op.hlc for op in agent.outbox.pending_for("prefs", "u1")]
    summary = agent.sync(timeout=10)
    # Then the write is stamped after what it was based on and wins everywhere, and the
    # pulled stamp (another device's clock) did not change the clock-offset estimate
    assert mine > theirs.hlc
    assert summary.applied == 1 and server.document("prefs", "u1") == {"theme": "light"}
    assert abs(agent.status()["clock_offset_ms"]) < 5_000


def test_merged_write_is_acked_and_the_replica_takes_the_merged_record(
    rig: Rig, server: ProtocolServer
) -> None:
    agent = rig.agent()
    agent.put("prefs", "u1", {"theme": "light", "lang": "fr"})
    # A later patch from another device holds "theme"; our older put keeps "lang"
    server.write_as_other_device(
        other_device_op(OpKind.PATCH, "u1", {"theme": "dark"}, ahead_ms=5000)
    )
    summary = agent.sync(timeout=10)
    assert summary.merged == 1
    assert agent.get("prefs", "u1") == {"theme": "dark", "lang": "fr"}
    assert server.document("prefs", "u1") == {"theme": "dark", "lang": "fr"}


def test_queued_ops_are_acked_and_counted(rig: Rig, server: ProtocolServer) -> None:
    agent = rig.agent()
    op_id = agent.put("prefs", "u1", {"a": 1})
    server.force(op_id, "queued")
    summary = agent.sync(timeout=10)
    assert summary.queued == 1 and summary.synced
    assert agent.status()["pending"] == 0


def test_an_acked_write_stays_in_the_local_view_before_the_cloud_sends_it_back(
    rig: Rig, server: ProtocolServer
) -> None:
    # Given a write the cloud queued: acked now, so not in the outbox, and not yet in any pull
    agent = rig.agent()
    op_id = agent.put("prefs", "u1", {"currency": "BTC"})
    server.force(op_id, "queued")
    # When the device syncs
    summary = agent.sync(timeout=10)
    # Then the outbox is empty and the user still sees their write
    assert summary.queued == 1 and agent.status()["pending"] == 0
    assert server.document("prefs", "u1") is None
    assert agent.get("prefs", "u1") == {"currency": "BTC"}


def test_a_rejected_op_is_quarantined_and_does_not_hold_back_the_others(
    rig: Rig, server: ProtocolServer
) -> None:
    agent = rig.agent()
    bad = agent.put("prefs", "bad", {"a": 1})
    good = [agent.put("prefs", f"ok{n}", {"n": n}) for n in range(3)]
    server.force(bad, "rejected", "forbidden")
    summary = agent.sync(timeout=10)
    assert summary.synced and summary.applied == 3 and summary.rejected == 1
    assert all(server.applied[op_id] == 1 for op_id in good)
    [held] = agent.quarantined()
    assert held["op_id"] == bad and held["code"] == "forbidden"
    assert agent.status()["quarantined"] == 1 and agent.status()["pending"] == 0


def test_an_op_the_cloud_leaves_unanswered_is_kept_and_resent_later_not_in_a_loop(
    rig: Rig, server: ProtocolServer
) -> None:
    agent = rig.agent(max_attempts=1)
    unanswered = agent.put("prefs", "a", {"n": 1})
    answered = agent.put("prefs", "b", {"n": 2})
    server.omit(unanswered)
    summary = agent.sync(timeout=10)
    assert summary.deferred == 1 and summary.applied == 1 and not summary.synced
    assert server.applied[answered] == 1
    assert [op.op_id for op in server.arrivals].count(unanswered) == 1
    assert agent.status()["pending"] == 1


def test_a_device_clock_ahead_of_the_cloud_is_corrected_and_its_ops_restamped(
    rig: Rig, server: ProtocolServer
) -> None:
    # Given the cloud's clock is an hour behind this device's (the device is "ahead")
    hour_ms = 3_600_000
    server.now_ms = lambda: time.time_ns() // 1_000_000 - hour_ms
    agent = rig.agent()
    first = agent.put("prefs", "a", {"n": 1})
    second = agent.put("prefs", "b", {"n": 2})
    # When the agent syncs
    summary = agent.sync(timeout=10)
    # Then the ops were re-stamped from the corrected clock, in order, and applied
    assert summary.synced and summary.restamped >= 2
    assert server.applied[first] == 1 and server.applied[second] == 1
    applied = [op for op in server.arrivals if server.applied[op.op_id]]
    stamps = {op.op_id: op.hlc for op in applied}
    assert stamps[first] < stamps[second]
    assert abs(parse_hlc(stamps[first]).physical_ms - server.now_ms()) < 60_000
    assert agent.status()["clock_offset_ms"] == pytest.approx(-hour_ms, abs=60_000)


def test_a_restamped_write_still_beats_a_change_this_device_had_seen(
    rig: Rig, server: ProtocolServer
) -> None:
    # Given another device, two minutes ahead (within the cloud's allowance), wrote a
    # document this device pulled
    agent = rig.agent()
    theirs = other_device_op(OpKind.PUT, "doc", {"by": "them"}, ahead_ms=120_000)
    server.write_as_other_device(theirs)
    assert agent.sync(timeout=10).pulled == 1
    # When this device's clock jumps ten minutes ahead, the user edits the document, and the
    # cloud answers clock_ahead
    wall = {"ahead_ms": 600_000}
    read_wall_clock_ahead(agent, wall)
    mine = agent.put("prefs", "doc", {"by": "me"})
    summary = agent.sync(timeout=10)
    # Then the write is re-stamped from the cloud's time but still after the change it was
    # based on, and wins
    assert summary.synced and summary.restamped == 1 and server.applied[mine] == 1
    sent = [op for op in server.arrivals if op.op_id == mine][-1]  # the re-stamped one
    assert sent.hlc > theirs.hlc
    assert server.document("prefs", "doc") == {"by": "me"}


def test_a_restamped_write_still_beats_an_earlier_write_of_ours_the_cloud_took(
    rig: Rig, server: ProtocolServer
) -> None:
    # Given a device 200 s ahead (within the cloud's skew) whose first write was applied
    wall = {"ahead_ms": 200_000}
    agent = rig.agent()
    read_wall_clock_ahead(agent, wall)
    earlier = agent.put("prefs", "k", {"v": "earlier"})
    assert agent.sync(timeout=10).synced
    # When its wall clock jumps further ahead, past the skew, and it writes the key again
    wall["ahead_ms"] = 900_000
    later = agent.put("prefs", "k", {"v": "later"})
    summary = agent.sync(timeout=10)
    # Then the re-stamped write is stamped above the one the cloud took, and wins
    assert summary.synced and summary.restamped == 1
    assert server.applied[earlier] == 1 and server.applied[later] == 1
    assert server.document("prefs", "k") == {"v": "later"}
    assert agent.get("prefs", "k") == {"v": "later"}


def test_a_restamped_write_beats_an_earlier_write_of_ours_whose_answer_was_lost(
    rig: Rig, server: ProtocolServer
) -> None:
    # Given a device 200 s ahead whose first write was applied but the answer lost
    wall = {"ahead_ms": 200_000}
    agent = rig.agent(max_attempts=1, sync_config=SyncConfig(batch_ops=1))
    read_wall_clock_ahead(agent, wall)
    earlier = agent.put("prefs", "k", {"v": "earlier"})
    server.drop_next()
    assert not agent.sync(timeout=10).synced
    assert server.applied[earlier] == 1 and agent.status()["pending"] == 1
    # When its clock jumps past the skew and it writes the key again, sent first (critical)
    wall["ahead_ms"] = 900_000
    later = agent.put("prefs", "k", {"v": "later"}, priority=Priority.CRITICAL)
    summary = agent.sync(timeout=10)
    # Then the re-stamp went above the write the cloud may have had, and the later one wins
    assert summary.synced and summary.restamped == 1
    assert server.applied[later] == 1 and server.applied[earlier] == 1
    assert server.document("prefs", "k") == {"v": "later"}


def test_a_restamp_after_a_lost_answer_stays_above_the_write_the_cloud_took_from_it(
    rig: Rig, server: ProtocolServer
) -> None:
    # Given one batch: a write 200 s ahead (taken) and a later one 900 s ahead (refused),
    # whose answer is lost
    wall = {"ahead_ms": 200_000}
    agent = rig.agent(max_attempts=1)
    read_wall_clock_ahead(agent, wall)
    earlier = agent.put("prefs", "k", {"v": "earlier"})
    wall["ahead_ms"] = 900_000
    later = agent.patch("prefs", "k", {"v": "later"})
    server.drop_next()
    assert not agent.sync(timeout=10).synced and server.applied[earlier] == 1
    # When it is sent again (the earlier one is a duplicate, the later one clock_ahead)
    summary = agent.sync(timeout=10)
    # Then the later write is re-stamped above the earlier one, and wins
    assert summary.synced and summary.restamped == 1 and server.applied[later] == 1
    assert server.document("prefs", "k") == {"v": "later"}


# -- push: whole-request errors ---------------------------------------------------------


def test_413_halves_the_batch_until_the_server_takes_it(rig: Rig, server: ProtocolServer) -> None:
    server.max_ops = 3
    agent = rig.agent(sync_config=SyncConfig(batch_ops=10))
    ids = [agent.put("prefs", f"k{n}", {"n": n}) for n in range(10)]
    summary = agent.sync(timeout=10)
    assert summary.synced and summary.applied == 10
    assert all(server.applied[op_id] == 1 for op_id in ids)
    statuses = [seen.status for seen in server.requests_to("/v1/batches")]
    assert statuses[0] == 413 and statuses.count(413) <= 3
    # The agent learnt the limit: later batches fit
    assert max(seen.ops for seen in server.requests_to("/v1/batches")) <= 3
    # And the refused batches hold no re-stamp floor up: every batch sent was answered
    [raw] = agent.conn.execute("SELECT value FROM kv WHERE name = 'stamps_out'").fetchone()
    assert json.loads(raw)["unsettled"] == []


def test_the_limits_a_413_states_size_the_next_batches(rig: Rig, server: ProtocolServer) -> None:
    # Given a cloud that takes 3 ops per batch, and an agent that has been told so by a 413
    server.max_ops = 3
    agent = rig.agent(sync_config=SyncConfig(batch_ops=10))
    for n in range(10):
        agent.put("prefs", f"k{n}", {"n": n})
    assert agent.sync(timeout=10).synced
    sent_before = len(server.requests_to("/v1/batches"))
    # When 9 more writes are synced
    for n in range(9):
        agent.put("prefs", f"later-{n}", {"n": n})
    summary = agent.sync(timeout=10)
    # Then they go in batches of exactly the stated limit, none refused (halving alone
    # would have sent batches of 2)
    later = server.requests_to("/v1/batches")[sent_before:]
    assert summary.synced and summary.applied == 9
    assert [(seen.status, seen.ops) for seen in later] == [(200, 3)] * 3


def test_a_slow_answer_does_not_hold_a_sync_past_its_timeout(
    rig: Rig, server: ProtocolServer
) -> None:
    # Given a cloud that takes 2 s to answer a batch
    agent = rig.agent()
    op_id = agent.put("prefs", "k", {"n": 1})
    server.batch_delay_s = 2.0
    # When the agent syncs with a half-second timeout
    started = time.monotonic()
    summary = agent.sync(timeout=0.5)
    elapsed = time.monotonic() - started
    # Then it gives up when its time is up, says so, keeps the op and does not call the
    # link down (the cloud was slow, not unreachable)
    assert elapsed < 1.5, elapsed
    assert not summary.synced and summary.stopped_by == "timeout"
    assert agent.outbox.depth() == 1
    assert agent.status()["connectivity"] != "offline"
    # And once the cloud is quick again the op is applied exactly once
    server.batch_delay_s = 0.0
    time.sleep(1.6)  # the slow request lands meanwhile
    assert agent.sync(timeout=10).synced and agent.outbox.depth() == 0
    assert server.applied[op_id] == 1


def test_400_bisects_the_batch_and_quarantines_only_the_bad_op(
    rig: Rig, server: ProtocolServer
) -> None:
    agent = rig.agent(sync_config=SyncConfig(batch_ops=8))
    ids = {agent.put("prefs", f"k{n}", {"n": n}): f"k{n}" for n in range(8)}
    server.poison("k5")
    summary = agent.sync(timeout=10)
    assert summary.applied == 7 and summary.quarantined == 1 and summary.synced
    [held] = agent.quarantined()
    assert ids[held["op_id"]] == "k5" and held["code"] == "bad_request"
    # Bisection, not one request per op: at most 1 + 2*log2(8) requests
    assert len(server.requests_to("/v1/batches")) <= 7


def test_a_400_for_every_request_does_not_quarantine_the_whole_outbox(
    rig: Rig, server: ProtocolServer
) -> None:
    # Given a cloud (or a proxy) that answers 400 to any batch, whatever is in it
    agent = rig.agent(sync_config=SyncConfig(batch_ops=8), max_attempts=1)
    for n in range(8):
        agent.put("prefs", f"k{n}", {"n": n})
    server.fail_next(400, times=100, path="/v1/batches")
    summary = agent.sync(timeout=10)
    # Then bisection gives up after a few lone refusals: the rest wait, not quarantined
    assert summary.stopped_by == "bad_request" and not summary.synced
    assert summary.quarantined <= 3
    assert agent.status()["pending"] == 8 - summary.quarantined


def test_auth_failure_stops_retrying_and_shows_in_status(rig: Rig, server: ProtocolServer) -> None:
    agent = rig.agent()
    agent.put("prefs", "u1", {"a": 1})
    server.token = "rotated"
    summary = agent.sync(timeout=10)
    assert summary.stopped_by == "auth" and not summary.synced
    assert len(server.requests_to("/v1/batches")) == 1  # no blind retries
    status = agent.status()
    assert status["connectivity"] == "auth" and status["pending"] == 1
    assert "token" in status["last_error"]
    # When the device gets the new token, the same op goes through
    agent.close()
    server.token = "fresh"
    with Agent.init(rig.path, endpoint=server.url, token="fresh") as renewed:
        assert renewed.sync(timeout=10).synced
        assert renewed.status()["pending"] == 0


@pytest.mark.parametrize("status", [429, 503])
def test_throttling_waits_at_least_retry_after_then_resends(
    rig: Rig, server: ProtocolServer, status: int
) -> None:
    agent = rig.agent()
    op_id = agent.put("prefs", "u1", {"a": 1})
    server.fail_next(status, retry_after=0.4, path="/v1/batches")
    summary = agent.sync(timeout=10)
    assert summary.synced and server.applied[op_id] == 1
    first, second = server.requests_to("/v1/batches")[:2]
    assert first.status == status and second.status == 200
    assert second.at - first.at >= 0.4


def test_a_5xx_is_retried_with_backoff_and_nothing_is_lost(
    rig: Rig, server: ProtocolServer
) -> None:
    agent = rig.agent()
    ids = [agent.put("prefs", f"k{n}", {"n": n}) for n in range(3)]
    server.fail_next(500, times=2, path="/v1/batches")
    summary = agent.sync(timeout=10)
    assert summary.synced and all(server.applied[i] == 1 for i in ids)
    assert summary.errors and "server_error" in summary.errors[0]


def test_fault_transport_timestamps_show_the_backoff_actually_used(rig: Rig) -> None:
    # Given exponential backoff without jitter (base 50 ms) and three failed pushes
    policy = RetryPolicy(ExponentialBackoff(base=0.05, cap=1.0, jitter=Jitter.NONE))
    agent = rig.agent(faulty=True, retry_policy=policy, max_attempts=5)
    agent.put("prefs", "u1", {"a": 1})
    agent.engine()
    assert rig.faults is not None
    rig.faults.fail_next(3, calls=["push"])
    assert agent.sync(timeout=10).synced
    # Then the gaps between push attempts follow 50, 100, 200 ms
    gaps = rig.faults.gaps("push")
    assert len(gaps) == 3
    for gap, expected in zip(gaps, [0.05, 0.1, 0.2]):
        assert expected <= gap < expected + 0.4  # upper slack for a loaded machine


def test_an_unreachable_cloud_raises_nothing_and_loses_nothing(tmp_path: Path) -> None:
    with Agent.init(tmp_path / "d.db", endpoint="http://127.0.0.1:9", token="t") as agent:
        agent.retry_policy = RetryPolicy(ConstantBackoff(0.01))
        agent.put("prefs", "u1", {"a": 1})
        summary = agent.sync(timeout=5)
        assert not summary.synced and not summary.reached_cloud
        assert summary.stopped_by == "unreachable"
        assert agent.status()["pending"] == 1
        assert agent.status()["connectivity"] == "offline"
        assert agent.get("prefs", "u1") == {"a": 1}


# -- pull -------------------------------------------------------------------------------


def test_pull_brings_other_devices_changes_and_keeps_its_cursor(
    rig: Rig, server: ProtocolServer
) -> None:
    agent = rig.agent(sync_config=SyncConfig(pull_limit=2))
    for n in range(5):
        server.write_as_other_device(other_device_op(OpKind.PUT, f"r{n}", {"n": n}, ahead_ms=0))
    first = agent.sync(timeout=10)
    assert first.pulled == 5 and first.synced
    assert agent.get("prefs", "r4") == {"n": 4}
    assert agent.sync(timeout=10).pulled == 0  # the cursor was persisted


def test_an_expired_cursor_triggers_a_full_resync(rig: Rig, server: ProtocolServer) -> None:
    agent = rig.agent()
    server.write_as_other_device(other_device_op(OpKind.PUT, "r1", {"n": 1}, ahead_ms=0))
    agent.sync(timeout=10)
    server.write_as_other_device(other_device_op(OpKind.PUT, "r2", {"n": 2}, ahead_ms=0))
    server.expire_cursors()
    summary = agent.sync(timeout=10)
    assert summary.resyncs == 1 and summary.synced
    assert agent.get("prefs", "r1") == {"n": 1} and agent.get("prefs", "r2") == {"n": 2}


def test_an_interrupted_resync_leaves_every_record_in_the_local_view(
    rig: Rig, server: ProtocolServer
) -> None:
    # Given two records pulled, then a cursor that expired with a third change behind it
    agent = rig.agent(max_attempts=1, sync_config=SyncConfig(pull_limit=1))
    for name in ("r1", "r2"):
        server.write_as_other_device(other_device_op(OpKind.PUT, name, {"n": 1}, ahead_ms=0))
    assert agent.sync(timeout=10).synced
    server.write_as_other_device(other_device_op(OpKind.PUT, "r3", {"n": 1}, ahead_ms=0))
    server.expire_cursors()

    # When the link fails after the resync's first page
    def cut_after_first_page(summary: Any) -> None:
        if summary.resyncs:
            server.offline = True

    summary = agent.sync(timeout=10, progress=cut_after_first_page)
    # Then the records the resync has not reached yet are still shown
    assert summary.resyncs == 1 and not summary.synced
    assert agent.get("prefs", "r1") == {"n": 1} and agent.get("prefs", "r2") == {"n": 1}
    # And the resync completes later
    server.offline = False
    assert agent.sync(timeout=10).synced
    assert [agent.get("prefs", name) for name in ("r1", "r2", "r3")] == [{"n": 1}] * 3


def pulled_then_one_more(
    rig: Rig, server: ProtocolServer, names: tuple[str, ...], later: str
) -> None:
    """Another device's records `names` pulled into the rig's database, then `later`
    written by it (not pulled yet)."""
    for name in names:
        server.write_as_other_device(other_device_op(OpKind.PUT, name, {"n": 1}, ahead_ms=0))
    rig.agent().close()
    with Agent.open(rig.path) as first:
        assert first.sync(timeout=10).synced
    server.write_as_other_device(other_device_op(OpKind.PUT, later, {"n": 1}, ahead_ms=0))


def resync_one_page(rig: Rig, server: ProtocolServer, *, begin: bool = False) -> None:
    """Another process pulls one page of a full resync (`begin`: starts one itself, as when
    its own cursor expired), then its link fails."""
    with Agent.open(rig.path, sync_config=SyncConfig(pull_limit=1), max_attempts=1) as other:
        if begin:
            other.replica.begin_resync()
            other.state.set_cursor(None)

        def cut(summary: Any) -> None:
            if summary.pulled:
                server.offline = True

        other.sync(timeout=10, progress=cut)
    server.offline = False


def raced_before_first_pull(race: Callable[[], None]) -> type[HttpTransport]:
    """A transport that runs `race` (another process's work) once, before its first pull."""

    class RacedTransport(HttpTransport):
        raced = False

        def pull(self, after: Optional[str], limit: int, *, deadline: Any = None) -> Any:
            if not RacedTransport.raced:
                RacedTransport.raced = True
                race()
            return super().pull(after, limit, deadline=deadline)

    return RacedTransport


def test_a_resync_another_process_began_meanwhile_is_joined_not_started_over(
    rig: Rig, server: ProtocolServer
) -> None:
    # Given records pulled, one written since, then a cursor that expired
    pulled_then_one_more(rig, server, ("r1", "r2", "r3"), "r4")
    server.expire_cursors()

    # And another process that begins the resync while this one's pull is on its way
    RacedTransport = raced_before_first_pull(lambda: resync_one_page(rig, server))
    agent = Agent.open(
        rig.path,
        transport_factory=RacedTransport,
        sync_config=SyncConfig(pull_limit=1),
        max_attempts=1,
    )
    rig.opened.append(agent)
    # When this one's stale cursor is answered 410
    summary = agent.sync(timeout=10)
    # Then it joins the other's resync rather than starting over, and every record stays
    assert summary.synced and summary.resyncs == 0
    assert [agent.get("prefs", f"r{n}") for n in range(1, 5)] == [{"n": 1}] * 4


def test_a_pull_begun_before_another_process_began_a_resync_follows_it_to_its_sweep(
    rig: Rig, server: ProtocolServer
) -> None:
    # Given a record pulled, one written since, and one in the replica that the cloud no
    # longer has (its tombstone expired)
    pulled_then_one_more(rig, server, ("r1",), "r2")
    with Agent.open(rig.path) as first:
        stamp = format_hlc(time.time_ns() // 1_000_000 - 10**9, 0, "gone-dev")
        first.replica.apply(Record("prefs", "ghost", {"n": 0}, RecordClock(stamp, {"n": stamp})))

    def another_process_begins_a_resync() -> None:  # its cursor expired just now
        with Agent.open(rig.path) as other:
            other.replica.begin_resync()
            other.state.set_cursor(None)

    RacedTransport = raced_before_first_pull(another_process_begins_a_resync)
    agent = Agent.open(rig.path, transport_factory=RacedTransport, max_attempts=1)
    rig.opened.append(agent)
    # When this pull, begun from the old cursor, gets its page back
    assert agent.sync(timeout=10).synced
    # Then it went on along the resync's chain to its end: the resync swept what the cloud
    # no longer has, and kept the rest
    assert not agent.replica.resyncing()
    assert agent.get("prefs", "ghost") is None
    assert agent.get("prefs", "r1") == {"n": 1} and agent.get("prefs", "r2") == {"n": 1}


def test_pull_is_not_blocked_by_pushes_that_fail(rig: Rig, server: ProtocolServer) -> None:
    agent = rig.agent(max_attempts=1)
    agent.put("prefs", "mine", {"a": 1})
    server.write_as_other_device(other_device_op(OpKind.PUT, "theirs", {"b": 2}, ahead_ms=0))
    server.fail_next(503, retry_after=30, path="/v1/batches")
    summary = agent.sync(timeout=10)
    assert summary.stopped_by == "throttled" and summary.pulled == 1
    assert agent.get("prefs", "theirs") == {"b": 2}
    assert agent.status()["pending"] == 1


def test_a_rejected_op_another_process_settled_meanwhile_does_not_end_the_sync(
    rig: Rig, server: ProtocolServer
) -> None:
    # Given an op the cloud will reject, and another process that acks it while the request
    # is under way (its lease ran out there)
    agent = rig.agent(max_attempts=1)
    rejected = agent.put("prefs", "a", {"n": 1})
    fine = agent.put("prefs", "b", {"n": 2})
    server.force(rejected, "rejected", "invalid_op")
    server.batch_delay_s = 0.5
    acked: list[int] = []

    def ack_elsewhere() -> None:
        with Agent.open(rig.path) as other:
            acked.append(other.outbox.ack([rejected]))

    acker = threading.Timer(0.2, ack_elsewhere)
    acker.start()
    # When the answer arrives
    summary = agent.sync(timeout=10)
    acker.join()
    assert acked == [1]
    # Then the sync goes on: the other op is acked, nothing is quarantined or lost
    assert summary.synced and server.applied[fine] == 1
    assert summary.quarantined == 0 and not summary.errors
    assert agent.status()["pending"] == 0 and agent.status()["quarantined"] == 0


def test_pull_is_not_blocked_by_a_backlog_slower_to_send_than_the_sync_allows(
    rig: Rig, server: ProtocolServer
) -> None:
    # Given a slow cloud and more ops than the sync's time can send
    agent = rig.agent(max_attempts=1, sync_config=SyncConfig(batch_ops=1, push_slice_s=0.5))
    for n in range(30):
        agent.put("prefs", f"k{n}", {"n": n})
    server.write_as_other_device(other_device_op(OpKind.PUT, "theirs", {"b": 2}, ahead_ms=0))
    server.batch_delay_s = 0.1
    # When it syncs for less time than the backlog needs
    summary = agent.sync(timeout=2)
    # Then the other device's change was pulled all the same, between slices of pushing
    assert agent.get("prefs", "theirs") == {"b": 2}
    assert summary.pulled >= 1 and summary.stopped_by == "timeout"
    assert 0 < agent.status()["pending"] < 30


def test_a_backlog_pushed_in_slices_is_sent_whole_in_one_sync(
    rig: Rig, server: ProtocolServer
) -> None:
    agent = rig.agent(max_attempts=1, sync_config=SyncConfig(batch_ops=1, push_slice_s=0.2))
    ids = [agent.put("prefs", f"k{n}", {"n": n}) for n in range(12)]
    server.batch_delay_s = 0.05

    summary = agent.sync(timeout=30)

    assert summary.synced and summary.applied == 12
    assert all(server.applied[op_id] == 1 for op_id in ids)
    assert len(server.requests_to("/v1/changes")) >= 2  # a pull after each slice


def test_an_op_still_clock_ahead_after_restamping_is_deferred_not_looped(
    rig: Rig, server: ProtocolServer
) -> None:
    # Given the cloud keeps answering clock_ahead for one op, whatever its stamp
    agent = rig.agent(max_attempts=1)
    stubborn = agent.put("prefs", "a", {"n": 1})
    fine = agent.put("prefs", "b", {"n": 2})
    server.force(stubborn, "rejected", "clock_ahead")
    summary = agent.sync(timeout=10)
    # Then it is re-stamped a bounded number of times, then put off; the other op is applied
    assert summary.restamped == 3 and summary.deferred == 1 and not summary.synced
    assert server.applied[fine] == 1
    assert [op.op_id for op in server.arrivals].count(stubborn) == 4
    assert agent.status()["pending"] == 1 and agent.status()["quarantined"] == 0


def test_a_sync_that_runs_out_of_time_stops_between_batches_and_keeps_the_rest(
    rig: Rig, server: ProtocolServer
) -> None:
    server.batch_delay_s = 0.25
    agent = rig.agent(sync_config=SyncConfig(batch_ops=1))
    ids = [agent.put("prefs", f"k{n}", {"n": n}) for n in range(8)]
    summary = agent.sync(timeout=0.6)
    assert summary.stopped_by == "timeout" and not summary.synced
    sent = sum(server.applied[op_id] for op_id in ids)
    assert 1 <= sent < 8
    status = agent.status()
    assert status["pending"] == 8 - sent and status["in_flight"] == 0


def test_giving_up_on_a_clock_ahead_op_leaves_the_clock_where_it_was(
    rig: Rig, server: ProtocolServer
) -> None:
    # Given a cloud an hour behind that refuses one op as clock_ahead, and no re-stamps left
    server.now_ms = lambda: time.time_ns() // 1_000_000 - 3_600_000
    agent = rig.agent(max_attempts=1, sync_config=SyncConfig(max_restamps=0))
    stubborn = agent.put("prefs", "a", {"n": 1})
    server.force(stubborn, "rejected", "clock_ahead")
    summary = agent.sync(timeout=10)
    assert summary.deferred == 1 and summary.restamped == 0
    # When the device records a newer write
    newer = agent.put("prefs", "b", {"n": 2})
    # Then it is stamped after the op still pending (a clock set back alone would stamp it an
    # hour earlier, and the pending op would win over it)
    assert agent.outbox.get(newer).op.hlc > agent.outbox.get(stubborn).op.hlc


def test_a_pull_begun_before_another_process_began_a_resync_does_not_move_its_cursor(
    rig: Rig, server: ProtocolServer
) -> None:
    # Given three records pulled, and a fourth written since
    pulled_then_one_more(rig, server, ("r1", "r2", "r3"), "r4")

    # And another process whose cursor expired, which resyncs one page while this one's pull
    # (from the old cursor) is on its way
    RacedTransport = raced_before_first_pull(lambda: resync_one_page(rig, server, begin=True))
    agent = Agent.open(rig.path, transport_factory=RacedTransport, max_attempts=1)
    rig.opened.append(agent)
    # When this pull's page (of the old chain) comes back
    assert agent.sync(timeout=10).synced
    # Then it went on along the resync's chain: the resync ended there, with every record
    assert not agent.replica.resyncing()
    assert agent.sync(timeout=10).synced
    assert [agent.get("prefs", f"r{n}") for n in range(1, 5)] == [{"n": 1}] * 4
