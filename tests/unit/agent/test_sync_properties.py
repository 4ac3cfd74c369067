"""Property: whatever the network does, every accepted op takes effect exactly once.

Hypothesis draws writes and a schedule of faults (refused connections, lost responses,
429/503/500 answers, timeouts); the agent syncs through them, then once on a healed link.
Afterwards the outbox is empty, each op was applied once on the server, and the device's
local view equals the server's document for every key.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_agent import Agent
from device_agent.backoff import ConstantBackoff, RetryPolicy
from device_agent.outcomes import ServerError
from device_agent.sync import SyncConfig
from device_agent.testing import FaultTransport
from device_agent.transport import HttpTransport, Transport
from tests.support.protocol_server import ProtocolServer

pytestmark = pytest.mark.agent
TOKEN = "prop-token"

FAULTS = ["none", "refuse", "drop", "throttle", "unavailable", "server_error", "timeout"]
writes = st.lists(
    st.tuples(
        st.sampled_from(["put", "patch", "delete"]),
        st.integers(min_value=0, max_value=3),  # key
        st.dictionaries(st.sampled_from("abc"), st.integers(0, 9), min_size=1, max_size=3),
    ),
    min_size=1,
    max_size=12,
)


@pytest.fixture(scope="module")
def server() -> Iterator[ProtocolServer]:
    with ProtocolServer(token=TOKEN) as running:
        yield running


def inject(transport: FaultTransport, fault: str) -> None:
    if fault == "refuse":
        transport.fail_next(1)
    elif fault == "drop":
        transport.drop_response_next(1)
    elif fault == "throttle":
        transport.throttle_next(1, status=429, retry_after=0.0)
    elif fault == "unavailable":
        transport.throttle_next(1, status=503, retry_after=0.0)
    elif fault == "server_error":
        transport.fail_next(1, ServerError(500, "boom"))
    elif fault == "timeout":
        transport.time_out_next(1, after_s=0.0)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    ops=writes,
    schedule=st.lists(st.sampled_from(FAULTS), min_size=1, max_size=6),
    batch_ops=st.integers(min_value=1, max_value=5),
)
def test_every_op_takes_effect_exactly_once_whatever_the_network_does(
    server: ProtocolServer,
    ops: list[tuple[str, int, dict[str, int]]],
    schedule: list[str],
    batch_ops: int,
) -> None:
    collection = f"c{uuid.uuid4().hex[:12]}"  # a fresh namespace per example
    made: list[FaultTransport] = []

    def factory(endpoint: str, token: str) -> Transport:
        made.append(FaultTransport(HttpTransport(endpoint, token, read_timeout=3.0)))
        return made[-1]

    with tempfile.TemporaryDirectory() as tmp:
        agent = Agent.init(
            Path(tmp) / "d.db",
            endpoint=server.url,
            token=TOKEN,
            transport_factory=factory,
            retry_policy=RetryPolicy(ConstantBackoff(0.0)),
            max_attempts=1,
            sync_config=SyncConfig(batch_ops=batch_ops, batch_bytes=1 << 20),
        )
        with agent:
            recorded = []
            for kind, key, data in ops:
                if kind == "delete":
                    recorded.append(agent.delete(collection, f"k{key}"))
                elif kind == "patch":
                    recorded.append(agent.patch(collection, f"k{key}", dict(data)))
                else:
                    recorded.append(agent.put(collection, f"k{key}", dict(data)))
            before = {key: agent.get(collection, f"k{key}") for key in range(4)}
            agent.engine()
            for fault in schedule:
                inject(made[-1], fault)
                agent.sync(timeout=10)
            made[-1].heal()
            assert agent.sync(timeout=10).synced
            assert agent.status()["pending"] == 0 and agent.status()["quarantined"] == 0
            # Exactly once: no op applied twice (one merged into a later write is never sent)
            sent = {op.op_id for op in server.arrivals if op.collection == collection}
            assert sent and sent <= set(recorded)
            assert all(server.applied[op_id] <= 1 for op_id in sent)
            # Nothing lost: the cloud holds what the device showed before syncing
            for key in range(4):
                assert server.document(collection, f"k{key}") == before[key]
                assert agent.get(collection, f"k{key}") == before[key]
