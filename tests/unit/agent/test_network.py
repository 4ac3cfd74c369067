"""The connectivity monitor: states from outcomes and probes, observers, waiting."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from device_agent.backoff import ConstantBackoff
from device_agent.network import Connectivity, NetworkMonitor
from device_agent.outcomes import AuthFailed, Healthy, ServerError, Throttled, Unreachable
from device_agent.testing import FaultTransport
from device_agent.transport import HttpTransport
from tests.support.protocol_server import ProtocolServer

pytestmark = pytest.mark.agent


@pytest.fixture
def server() -> Iterator[ProtocolServer]:
    with ProtocolServer() as running:
        yield running


def test_any_http_answer_means_online_and_no_answer_means_offline() -> None:
    monitor = NetworkMonitor()
    assert monitor.state is Connectivity.UNKNOWN
    assert monitor.observe(Throttled(503, 1.0, "busy")) is Connectivity.ONLINE
    assert monitor.observe(Unreachable("refused")) is Connectivity.OFFLINE
    assert monitor.observe(ServerError(500, "boom")) is Connectivity.ONLINE


def test_observers_hear_every_change_once_with_old_and_new_state() -> None:
    monitor = NetworkMonitor()
    heard: list[tuple[Connectivity, Connectivity]] = []
    unsubscribe = monitor.subscribe(lambda old, new: heard.append((old, new)))
    monitor.observe(Unreachable("down"))
    monitor.observe(Unreachable("still down"))  # no change: no call
    monitor.observe(Healthy("1764000000000-00000-server"))
    unsubscribe()
    monitor.observe(Unreachable("down again"))
    assert heard == [
        (Connectivity.UNKNOWN, Connectivity.OFFLINE),
        (Connectivity.OFFLINE, Connectivity.ONLINE),
    ]


def test_a_failing_observer_does_not_stop_the_others() -> None:
    monitor = NetworkMonitor()
    heard: list[Connectivity] = []

    def broken(old: Connectivity, new: Connectivity) -> None:
        raise RuntimeError("observer bug")

    monitor.subscribe(broken)
    monitor.subscribe(lambda old, new: heard.append(new))
    monitor.observe(Unreachable("down"))
    assert heard == [Connectivity.OFFLINE]


def test_an_auth_failure_sticks_until_the_token_changes() -> None:
    # Given the cloud refused our token
    monitor = NetworkMonitor()
    monitor.observe(AuthFailed(401, "revoked"))
    # When a health probe (which needs no token) succeeds, we are still in auth state
    monitor.observe(Healthy("1764000000000-00000-server"))
    assert monitor.state is Connectivity.AUTH
    # Then only a token change clears it
    monitor.clear_auth()
    assert monitor.state is Connectivity.UNKNOWN


def test_a_waiter_wakes_as_soon_as_the_state_changes() -> None:
    monitor = NetworkMonitor(initial=Connectivity.OFFLINE)
    since = monitor.version
    timer = threading.Timer(0.1, monitor.set_state, args=(Connectivity.ONLINE,))
    started = time.monotonic()
    timer.start()
    assert monitor.wait_for_change(since, timeout=5.0)
    assert time.monotonic() - started < 2.0
    assert not monitor.wait_for_change(monitor.version, timeout=0.05)


def test_the_probe_thread_notices_the_cloud_coming_back(server: ProtocolServer) -> None:
    # Given a monitor probing through a link that is down
    link = FaultTransport(HttpTransport(server.url, "t")).set_offline()
    monitor = NetworkMonitor(link.health, probe_backoff=ConstantBackoff(0.05))
    monitor.start()
    try:
        deadline = time.monotonic() + 5
        while monitor.state is not Connectivity.OFFLINE and time.monotonic() < deadline:
            time.sleep(0.01)
        assert monitor.state is Connectivity.OFFLINE
        since = monitor.version
        # When the link heals
        link.heal()
        # Then the monitor reports online within a few probe intervals
        assert monitor.wait_for_change(since, timeout=2.0)
        assert monitor.state is Connectivity.ONLINE
    finally:
        monitor.stop()
    # And it probed repeatedly while down, spaced by its backoff
    assert len(link.times("health")) >= 2
    assert all(gap >= 0.04 for gap in link.gaps("health"))


def test_the_probe_thread_stops_promptly() -> None:
    link = FaultTransport(HttpTransport("http://127.0.0.1:9", "t")).set_offline()
    monitor = NetworkMonitor(link.health, probe_backoff=ConstantBackoff(30.0))
    monitor.start()
    time.sleep(0.05)
    started = time.monotonic()
    monitor.stop()
    assert time.monotonic() - started < 1.0
