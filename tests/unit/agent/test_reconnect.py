"""Reconnects (issue 6): probe spacing capped under the window, the probe gap counted against
the reconnect window, and the whole window for reconnects learnt at a shared instant."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_agent import Agent
from device_agent.backoff import ConstantBackoff, ExponentialBackoff, Jitter, ReconnectJitter
from device_agent.network import Connectivity, NetworkMonitor
from device_agent.testing import FaultTransport
from device_agent.transport import HttpTransport, Transport
from device_agent.worker import Worker, default_probe_backoff
from tests.support.protocol_server import ProtocolServer
from tests.support.waiting import wait_for

pytestmark = pytest.mark.agent
TOKEN = "reconnect-token"


class Highest(random.Random):
    """Every uniform draw is its upper bound: the longest wait each rule allows."""

    def uniform(self, a: float, b: float) -> float:
        return b


@pytest.fixture
def server() -> Iterator[ProtocolServer]:
    with ProtocolServer(token=TOKEN) as running:
        yield running


@pytest.fixture
def db(tmp_path: Path, server: ProtocolServer) -> Path:
    path = tmp_path / "device.db"
    Agent.init(path, endpoint=server.url, token=TOKEN, device_id="pi-9").close()
    with Agent.open(path) as app:
        app.put("prefs", "u1", {"a": 1})
    return path


class OfflineLink:
    """A transport factory: real HTTP behind a FaultTransport that starts offline."""

    def __init__(self) -> None:
        self.transport: Optional[FaultTransport] = None

    def __call__(self, endpoint: str, token: str) -> Transport:
        self.transport = FaultTransport(HttpTransport(endpoint, token, read_timeout=3.0))
        self.transport.set_offline()
        return self.transport

    def probes(self) -> int:
        return len(self.transport.times("health")) if self.transport else 0

    def found_at(self) -> float:
        """When the first successful probe was sent (after any injected latency)."""
        assert self.transport is not None
        return next(
            a.at for a in self.transport.attempts if a.call == "health" and a.outcome == "Healthy"
        )

    def first_push_after(self, at: float) -> float:
        assert self.transport is not None
        return min(t for t in self.transport.times("push") if t >= at)


@contextmanager
def offline_worker(db: Path, link: OfflineLink, **options: Any) -> Iterator[Worker]:
    """A worker syncing `db` through `link`, running in a thread while the block runs; its
    random draws are always the longest allowed, and it pulls only once."""
    agent_options = {"transport_factory": link, **options.pop("agent_options", {})}
    worker = Worker(
        db,
        poll_interval_s=0.05,
        pull_interval_s=3600,
        rng=Highest(),
        agent_options=agent_options,
        **options,
    )
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(5)


# -- the rules, without a network -------------------------------------------------------


@given(
    window=st.floats(min_value=0.0, max_value=120.0),
    waited=st.floats(min_value=0.0, max_value=300.0),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_the_reconnect_delay_ends_within_the_window_counted_from_when_waiting_began(
    window: float, waited: float, seed: int
) -> None:
    jitter = ReconnectJitter(window, rng=random.Random(seed))
    delay = jitter.delay(waited)
    assert delay >= 0.0
    assert waited + delay <= max(window, waited) + 1e-9  # never past the window


def test_without_time_already_waited_the_whole_window_is_used() -> None:
    assert ReconnectJitter(10.0, rng=Highest()).delay() == 10.0
    assert ReconnectJitter(10.0, rng=Highest()).delay(4.0) == 6.0
    assert ReconnectJitter(10.0, rng=Highest()).delay(12.0) == 0.0


@pytest.mark.parametrize("window", [1.0, 2.0, 10.0, 60.0])
def test_the_default_probe_spacing_stays_under_the_reconnect_window_in_a_long_outage(
    window: float,
) -> None:
    # Given the worker's default probe backoff for this window
    worker = Worker("unused.db", reconnect_window_s=window, rng=random.Random(5))
    probe = worker.probe_backoff
    assert isinstance(probe, ExponentialBackoff)
    assert probe.jitter is Jitter.FULL  # a fleet that went offline together does not probe in step
    # Then however many probes failed (a month offline), the next is at most 90 % of the
    # window away (never less than 1 s, so a tiny window does not make it spin)
    gaps = [probe.delay(n) for n in range(1, 2000)]
    assert max(gaps) <= max(1.0, 0.9 * window)
    assert probe.ceiling(10**6) == max(1.0, 0.9 * window)


def test_an_explicit_probe_backoff_is_kept() -> None:
    mine = ConstantBackoff(42.0)
    assert Worker("unused.db", probe_backoff=mine).probe_backoff is mine
    assert default_probe_backoff(10.0).cap == 9.0


# -- the worker, over real HTTP ------------------------------------------------------------


def test_a_reconnect_found_by_a_late_probe_syncs_at_once(db: Path, server: ProtocolServer) -> None:
    # Given an offline worker whose probes are 1.2 s apart, longer than its 1 s window, and
    # whose random draws are always the longest allowed
    link = OfflineLink()
    with offline_worker(db, link, reconnect_window_s=1.0, probe_backoff=ConstantBackoff(1.2)):
        wait_for(lambda: link.probes() >= 1, timeout=5)
        # When the link comes back
        assert link.transport is not None
        link.transport.heal()
        wait_for(lambda: server.document("prefs", "u1") is not None, timeout=5)
    # Then the probe gap already used up the window: the push follows the probe at once
    # (the worker before issue 6 waited its whole reconnect window, 1 s, on top)
    found_at = link.found_at()
    assert link.first_push_after(found_at) - found_at < 0.5


def test_a_probe_answered_slowly_gets_the_whole_window(db: Path, server: ProtocolServer) -> None:
    # Given an offline worker that treats a probe slower than 0.1 s as held by the dead link
    link = OfflineLink()
    with offline_worker(
        db,
        link,
        reconnect_window_s=0.8,
        quick_probe_s=0.1,
        probe_backoff=ConstantBackoff(1.2),
    ):
        wait_for(lambda: link.probes() >= 1, timeout=5)
        # When the link comes back but the answer takes 0.3 s (released with everyone else's)
        assert link.transport is not None
        link.transport.heal().add_latency(0.3)
        wait_for(lambda: server.document("prefs", "u1") is not None, timeout=10)
    # Then the reconnect delay is the whole window, counted from the probe's answer (the
    # push is recorded after its own 0.3 s of latency); a quick probe 1.2 s after the
    # previous one would have pushed at once
    found_at = link.found_at()
    assert link.first_push_after(found_at) - found_at >= 0.8 + 0.3 - 0.05


def test_a_link_up_event_heard_by_every_device_gets_the_whole_window(
    db: Path, server: ProtocolServer
) -> None:
    # Given an offline worker whose next probe is a minute away, sharing its monitor with
    # something that hears link-up events (an OS network callback)
    link = OfflineLink()
    monitor = NetworkMonitor()
    with offline_worker(
        db,
        link,
        reconnect_window_s=0.8,
        probe_backoff=ConstantBackoff(60.0),
        agent_options={"monitor": monitor},
    ):
        # (its first round found the link down)
        wait_for(lambda: monitor.state is Connectivity.OFFLINE, timeout=5)
        assert link.transport is not None
        link.transport.heal()
        # When the link-up event arrives (at the same instant on every device)
        event_at = time.monotonic()
        monitor.set_state(Connectivity.ONLINE, "link up")
        wait_for(lambda: server.document("prefs", "u1") is not None, timeout=5)
    # Then the worker syncs without waiting for its probe, after its whole reconnect window
    push_at = link.first_push_after(event_at)
    assert 0.8 - 0.05 <= push_at - event_at < 0.8 + 1.0
    assert link.probes() == 0


def test_after_a_black_hole_a_quick_probe_still_gets_the_whole_window(
    db: Path, server: ProtocolServer
) -> None:
    # Given a link that black-holes requests: each hangs 0.3 s, then times out
    link = OfflineLink()
    with offline_worker(
        db,
        link,
        reconnect_window_s=0.8,
        quick_probe_s=0.1,
        probe_backoff=ConstantBackoff(0.5),
    ):
        wait_for(lambda: link.transport is not None, timeout=5)
        assert link.transport is not None
        link.transport.set_offline(False).time_out_next(1000, after_s=0.3)
        wait_for(lambda: link.probes() >= 2, timeout=5)
        # When the link comes back and the next probe is answered at once
        link.transport.heal()
        wait_for(lambda: server.document("prefs", "u1") is not None, timeout=5)
    # Then the answer is not taken as this device's own discovery (in a black hole it may be
    # a held request released with everyone else's): the whole window, not "at once"
    found_at = link.found_at()
    assert link.first_push_after(found_at) - found_at >= 0.8 - 0.05
