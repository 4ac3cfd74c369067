"""The shipped FaultTransport: each failure pattern, and the attempt log."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from device_agent.outcomes import Accepted, Healthy, ServerError, Throttled, Unreachable
from device_agent.testing import FaultTransport
from device_agent.transport import HttpTransport, new_batch_id
from shared.contracts import Op, OpKind, OpStatus
from tests.support.protocol_server import ProtocolServer

pytestmark = pytest.mark.agent
TOKEN = "tok"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def op(n: int) -> Op:
    return Op(f"op-{n}", "notes", f"k{n}", OpKind.PUT, f"1764000000000-{n:05d}-dev-1", {"n": n})


@pytest.fixture
def server() -> Iterator[ProtocolServer]:
    with ProtocolServer(token=TOKEN) as running:
        yield running


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def faulty(server: ProtocolServer, clock: FakeClock) -> FaultTransport:
    return FaultTransport(HttpTransport(server.url, TOKEN), clock=clock, sleep=clock.sleep)


def test_fail_next_fails_exactly_n_calls_without_reaching_the_server(
    faulty: FaultTransport, server: ProtocolServer
) -> None:
    faulty.fail_next(2)
    outcomes = [faulty.push(new_batch_id(), [op(1)]) for _ in range(3)]
    assert [type(o) for o in outcomes] == [Unreachable, Unreachable, Accepted]
    assert len(server.requests_to("/v1/batches")) == 1
    assert [a.injected for a in faulty.attempts] == [True, True, False]


def test_fail_next_can_return_a_chosen_outcome_for_chosen_calls(faulty: FaultTransport) -> None:
    faulty.fail_next(1, ServerError(502, "bad gateway"), calls=["push"])
    assert isinstance(faulty.health(), Healthy)  # health is not affected
    assert isinstance(faulty.push(new_batch_id(), [op(1)]), ServerError)


def test_fail_for_a_duration_then_recover(faulty: FaultTransport, clock: FakeClock) -> None:
    faulty.fail_for(10.0)
    assert isinstance(faulty.health(), Unreachable)
    clock.now = 9.9
    assert isinstance(faulty.health(), Unreachable)
    clock.now = 10.0
    assert isinstance(faulty.health(), Healthy)


def test_flapping_alternates_up_and_down(faulty: FaultTransport, clock: FakeClock) -> None:
    faulty.flap(up_s=1.0, down_s=2.0)
    seen = []
    for t in (0.5, 1.5, 2.5, 3.5, 4.5):
        clock.now = t
        seen.append(isinstance(faulty.health(), Healthy))
    assert seen == [True, False, False, True, False]


def test_latency_and_timeouts_take_time_before_answering(
    faulty: FaultTransport, clock: FakeClock
) -> None:
    faulty.add_latency(0.5).time_out_next(1, after_s=3.0)
    outcome = faulty.health()
    assert isinstance(outcome, Unreachable) and "timed out" in outcome.reason
    assert clock.now == pytest.approx(3.5)
    assert isinstance(faulty.health(), Healthy)
    assert clock.now == pytest.approx(4.0)


def test_an_injected_hang_or_latency_ends_at_the_calls_deadline(
    faulty: FaultTransport, clock: FakeClock
) -> None:
    # As the real transport does: a call waits no longer than the deadline it is given
    faulty.time_out_next(1, after_s=30.0)
    hung = faulty.push(new_batch_id(), [op(1)], deadline=time.monotonic() + 2.0)
    assert isinstance(hung, Unreachable) and "no time left" in hung.reason
    assert clock.now == pytest.approx(2.0, abs=0.1)
    faulty.add_latency(5.0)
    slow = faulty.pull(None, 10, deadline=time.monotonic() + 1.0)
    assert isinstance(slow, Unreachable) and "no time left" in slow.reason
    assert clock.now == pytest.approx(3.0, abs=0.1)
    assert [a.call for a in faulty.attempts] == ["push", "pull"]


def test_throttling_answers_with_retry_after(faulty: FaultTransport) -> None:
    faulty.throttle_next(1, status=503, retry_after=4.0)
    outcome = faulty.push(new_batch_id(), [op(1)])
    assert isinstance(outcome, Throttled) and outcome.status == 503 and outcome.retry_after == 4.0


def test_a_dropped_response_was_applied_and_a_resend_is_a_duplicate(
    faulty: FaultTransport, server: ProtocolServer
) -> None:
    # Given the answer to a push is lost
    faulty.drop_response_next(1)
    lost = faulty.push(new_batch_id(), [op(1)])
    assert isinstance(lost, Unreachable)
    # Then the server did apply it, and the resent op is recognised
    assert server.document("notes", "k1") == {"n": 1}
    again = faulty.push(new_batch_id(), [op(1)])
    assert isinstance(again, Accepted)
    assert again.response.results[0].status is OpStatus.DUPLICATE
    assert server.applied["op-1"] == 1


def test_every_attempt_is_recorded_with_its_time(faulty: FaultTransport, clock: FakeClock) -> None:
    for t in (0.0, 1.0, 3.0, 7.0):
        clock.now = t
        faulty.health()
    assert faulty.times("health") == [0.0, 1.0, 3.0, 7.0]
    assert faulty.gaps("health") == [1.0, 2.0, 4.0]


def test_heal_removes_every_fault(faulty: FaultTransport) -> None:
    faulty.set_offline().fail_next(5).add_latency(1.0)
    faulty.heal()
    started = time.monotonic()
    assert isinstance(faulty.health(), Healthy)
    assert time.monotonic() - started < 1.0


def test_unknown_call_names_are_refused(faulty: FaultTransport) -> None:
    with pytest.raises(ValueError, match="unknown calls"):
        faulty.fail_next(1, calls=["posh"])
