"""A device that was offline for a long time drains its backlog in batches.

Given a device that recorded a large backlog while its cloud was unreachable (its sync exits
75 and nothing is lost), when it reconnects and syncs, then every op reaches the server in
about ops / batch-size requests (the agent's default batch is 100 ops), and the outbox is
empty. The full 10,000-op run is `slow`; the default run drains 1,000.
"""

from __future__ import annotations

import math
import socket

import pytest

from device_agent import Agent
from tests.e2e.conftest import DeviceFactory
from tests.e2e.server_view import server_records
from tests.support.local_stack import LocalStack

BATCH_OPS = 100  # device_agent.sync.SyncConfig.batch_ops
PULL_PAGE = 500  # device_agent.sync.SyncConfig.pull_limit


def _closed_endpoint() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


@pytest.mark.parametrize(
    "ops",
    [1000, pytest.param(10_000, marks=[pytest.mark.slow, pytest.mark.timeout(900)], id="10000")],
)
def test_an_offline_backlog_drains_in_batches(
    cloud: LocalStack, new_device: DeviceFactory, ops: int
) -> None:
    device = new_device(f"backlog-{ops}", "pi", _closed_endpoint())
    with Agent.open(device.db) as agent:
        agent.put_many([("readings", f"r{i:05d}", {"n": i}) for i in range(ops)])
    offline = device.sync(timeout_s=2)
    assert offline["exit"] == "75"
    assert device.status()["pending"] == ops

    device.init(cloud.endpoint)
    summary = device.sync(timeout_s=600)

    pushes = math.ceil(ops / BATCH_OPS)
    pulls = math.ceil(ops / PULL_PAGE) + 2
    assert summary["exit"] == "0"
    assert int(summary["applied"]) == ops
    assert pushes <= int(summary["requests"]) <= pushes + pulls
    assert device.status()["pending"] == 0
    observer = cloud.register(f"backlog-{ops}", f"observer-{ops}")  # (a reader's own writes are
    assert len(server_records(cloud.endpoint, observer)) == ops  # left out of the fresh tail)
