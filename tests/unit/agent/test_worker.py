"""`sync-agent run`: cross-process pickup, reconnects, backoff and a clean SIGTERM."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Optional

import pytest

from device_agent import Agent
from device_agent.backoff import ConstantBackoff, ExponentialBackoff, Jitter, RetryPolicy
from device_agent.outcomes import ServerError
from device_agent.testing import FaultTransport
from device_agent.transport import HttpTransport, Transport
from device_agent.worker import Worker
from shared.contracts import Op, OpKind, format_hlc
from tests.support.protocol_server import ProtocolServer
from tests.support.waiting import wait_for

pytestmark = pytest.mark.agent
TOKEN = "worker-token"
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def server() -> Iterator[ProtocolServer]:
    with ProtocolServer(token=TOKEN) as running:
        yield running


@pytest.fixture
def db(tmp_path: Path, server: ProtocolServer) -> Path:
    path = tmp_path / "device.db"
    Agent.init(path, endpoint=server.url, token=TOKEN, device_id="pi-1").close()
    return path


class Faulty:
    """A transport factory whose FaultTransport the test can reach."""

    def __init__(self, configure: Callable[[FaultTransport], None]) -> None:
        self.configure = configure
        self.transport: Optional[FaultTransport] = None

    def __call__(self, endpoint: str, token: str) -> Transport:
        self.transport = FaultTransport(HttpTransport(endpoint, token, read_timeout=3.0))
        self.configure(self.transport)
        return self.transport


def start(worker: Worker) -> threading.Thread:
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return thread


def spawn_run(db: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "device_agent", "--db", str(db), "run"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_an_op_recorded_by_another_process_is_pushed_within_about_a_second(
    db: Path, server: ProtocolServer
) -> None:
    worker = spawn_run(db)
    try:
        # Given the worker is up and idle (it pulled once at start)
        wait_for(lambda: bool(server.requests_to("/v1/changes")), timeout=15)
        time.sleep(0.3)
        # When this (other) process records an op
        with Agent.open(db) as app:
            app.put("prefs", "u1", {"from": "app"})
        # Then the worker pushes it within about a second
        took = wait_for(lambda: server.document("prefs", "u1") is not None, timeout=5)
        assert took < 1.5
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=10)
    assert worker.returncode == 0, err
    assert "round" in err  # a log line per round
    assert TOKEN not in err


def test_sigterm_stops_cleanly_without_losing_or_duplicating_ops(
    db: Path, server: ProtocolServer
) -> None:
    # Given 300 ops and a slow cloud, so SIGTERM lands in the middle of the upload
    with Agent.open(db) as app:
        ids = app.put_many([("notes", f"k{n}", {"n": n}) for n in range(300)])
    server.batch_delay_s = 0.3
    worker = spawn_run(db)
    wait_for(lambda: bool(server.requests_to("/v1/batches")), timeout=15)
    # When the worker is told to stop
    stopped_at = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=10)
    # Then it exits 0 promptly, having finished only its current batch
    assert worker.returncode == 0, err
    assert time.monotonic() - stopped_at < 5
    applied_before = sum(1 for op_id in ids if server.applied[op_id])
    assert 0 < applied_before < 300
    with Agent.open(db) as app:
        status = app.status()
        assert status["in_flight"] == 0  # nothing left leased
        assert status["pending"] == 300 - applied_before  # acked exactly what was applied
        server.batch_delay_s = 0.0
        assert app.sync(timeout=20).synced
    # And every op took effect exactly once
    assert all(server.applied[op_id] == 1 for op_id in ids)


def test_the_worker_pulls_other_devices_changes_periodically(
    db: Path, server: ProtocolServer
) -> None:
    worker = Worker(db, poll_interval_s=0.05, pull_interval_s=0.3)
    thread = start(worker)
    try:
        wait_for(lambda: bool(server.requests_to("/v1/changes")), timeout=5)
        # When another device writes while this one has nothing to push
        hlc = format_hlc(time.time_ns() // 1_000_000, 0, "other-dev")
        server.write_as_other_device(Op("op-x", "prefs", "shared", OpKind.PUT, hlc, {"v": 1}))

        def seen() -> bool:
            with Agent.open(db) as app:
                return app.get("prefs", "shared") == {"v": 1}

        # Then the next periodic pull (0.3 s +- 20 %) brings it in
        assert wait_for(seen, timeout=3, step=0.05) < 1.0
    finally:
        worker.stop()
        thread.join(5)


def test_a_reconnect_triggers_a_sync_within_the_jitter_window(
    db: Path, server: ProtocolServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="device_agent.worker")
    faulty = Faulty(lambda transport: transport.set_offline())
    with Agent.open(db) as app:
        app.put("prefs", "u1", {"a": 1})
    worker = Worker(
        db,
        poll_interval_s=0.05,
        pull_interval_s=3600,
        reconnect_window_s=0.6,
        probe_backoff=ConstantBackoff(0.1),
        agent_options={"transport_factory": faulty},
    )
    thread = start(worker)
    try:
        # Given the worker found the cloud unreachable and is probing
        wait_for(
            lambda: faulty.transport is not None and len(faulty.transport.times("health")) >= 2, 5
        )
        assert not server.requests_to("/v1/batches")
        # When the link comes back
        assert faulty.transport is not None
        healed_at = time.monotonic()
        faulty.transport.heal()
        wait_for(lambda: server.document("prefs", "u1") is not None, timeout=5)
        took = time.monotonic() - healed_at
    finally:
        worker.stop()
        thread.join(5)
    # Then it synced after the jittered delay it drew (within the window), not at a poll
    [line] = [r.getMessage() for r in caplog.records if "reconnected" in r.getMessage()]
    drawn = float(re.search(r"sync_in_s=([0-9.]+)", line).group(1))  # type: ignore[union-attr]
    assert 0.0 <= drawn <= 0.6
    assert drawn - 0.02 <= took <= drawn + 0.1 + 0.4  # + one probe interval + slack


def test_a_health_probe_answer_sets_the_clock_offset_estimate(
    db: Path, server: ProtocolServer
) -> None:
    # Given a worker probing an unreachable cloud whose clock is a minute behind this device's
    server.now_ms = lambda: time.time_ns() // 1_000_000 - 60_000
    faulty = Faulty(lambda transport: transport.set_offline())
    worker = Worker(
        db,
        poll_interval_s=0.05,
        pull_interval_s=3600,
        reconnect_window_s=3600,  # no sync round before the test ends: only the probes
        probe_backoff=ConstantBackoff(0.1),
        agent_options={"transport_factory": faulty},
    )
    thread = start(worker)
    try:
        wait_for(lambda: faulty.transport is not None and faulty.transport.times("health"), 5)
        # When the link comes back and a probe is answered
        assert faulty.transport is not None
        faulty.transport.heal()
        wait_for(lambda: len(server.requests_to("/v1/health")) >= 1, 5)
        with Agent.open(db) as app:
            wait_for(lambda: app.status()["clock_offset_ms"] is not None, 5)
            offset = app.status()["clock_offset_ms"]
    finally:
        worker.stop()
        thread.join(5)
    # Then the probe's server_time gave the offset estimate
    assert offset == pytest.approx(-60_000, abs=5_000)
    assert not server.requests_to("/v1/batches") and not server.requests_to("/v1/changes")


def test_the_worker_backs_off_exponentially_while_the_cloud_fails(
    db: Path, server: ProtocolServer
) -> None:
    def failing(transport: FaultTransport) -> None:
        transport.fail_next(3, ServerError(502, "bad gateway"), calls=["push"])

    faulty = Faulty(failing)
    with Agent.open(db) as app:
        app.put("prefs", "u1", {"a": 1})
    worker = Worker(
        db,
        poll_interval_s=0.02,
        pull_interval_s=3600,
        retry_policy=RetryPolicy(ExponentialBackoff(base=0.1, cap=5.0, jitter=Jitter.NONE)),
        agent_options={"transport_factory": faulty},
    )
    thread = start(worker)

    def recovered() -> bool:
        with Agent.open(db) as app:
            return bool(app.status()["consecutive_failures"] == 0 and app.status()["pending"] == 0)

    try:
        wait_for(lambda: server.document("prefs", "u1") is not None, timeout=10)
        wait_for(recovered, timeout=5, step=0.05)  # the failure count is reset by the success
    finally:
        worker.stop()
        thread.join(5)
    assert faulty.transport is not None
    gaps = faulty.transport.gaps("push")
    assert len(gaps) == 3
    # Exponential, not a fixed interval: 100, 200, 400 ms (upper slack for a loaded machine)
    for gap, expected in zip(gaps, [0.1, 0.2, 0.4]):
        assert expected <= gap < expected + 0.4


def test_stop_from_another_thread_returns_promptly_when_idle(db: Path) -> None:
    worker = Worker(db, poll_interval_s=5.0, pull_interval_s=3600)
    thread = start(worker)
    time.sleep(0.3)
    stopped_at = time.monotonic()
    worker.stop()
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - stopped_at < 1.0


def test_a_refused_token_stops_retries_until_a_new_token_is_set(
    db: Path, server: ProtocolServer
) -> None:
    # Given the cloud refuses the device's token
    server.token = "rotated"
    with Agent.open(db) as app:
        app.put("prefs", "u1", {"a": 1})
    worker = Worker(db, poll_interval_s=0.05, pull_interval_s=3600)
    thread = start(worker)
    try:
        wait_for(lambda: len(server.requests_to("/v1/batches")) >= 1, timeout=5)
        time.sleep(1.0)
        # Then it does not retry blindly: one refused request, and status says "auth"
        assert len(server.requests_to("/v1/batches")) == 1
        with Agent.open(db) as app:
            assert app.status()["connectivity"] == "auth"
        # When an operator sets the new token (another process runs `init`)
        Agent.init(db, endpoint=server.url, token="rotated").close()
        # Then the worker notices and the op goes through
        wait_for(lambda: server.document("prefs", "u1") is not None, timeout=5)
    finally:
        worker.stop()
        thread.join(5)


@pytest.mark.parametrize("fault", ["offline", "failing"])
def test_an_offline_or_backing_off_worker_sleeps_instead_of_spinning(
    db: Path, server: ProtocolServer, fault: str
) -> None:
    def configure(transport: FaultTransport) -> None:
        if fault == "offline":
            transport.set_offline()
        else:
            transport.fail_next(100, ServerError(500, "down"), calls=["push", "pull"])

    with Agent.open(db) as app:
        app.put("prefs", "u1", {"a": 1})
    worker = Worker(
        db,
        poll_interval_s=0.05,
        probe_backoff=ConstantBackoff(0.5),
        retry_policy=RetryPolicy(ConstantBackoff(0.5)),
        agent_options={"transport_factory": Faulty(configure)},
    )
    thread = start(worker)
    time.sleep(1.0)
    worker.stop()
    thread.join(5)
    # About one iteration per poll interval (20 in 1 s), not thousands
    assert 2 <= worker.loops <= 40
