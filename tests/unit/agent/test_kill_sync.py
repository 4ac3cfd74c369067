"""Kill test: SIGKILL the real sync engine mid-sync, over real HTTP, and nothing is lost.

A device database holds a backlog of puts, patches and deletes (a few hot keys and many
distinct ones, at every priority), recorded through the `Agent` API. In each of 25 rounds
a child process runs `Agent.sync` (small batches) or `sync-agent sync` against the in-test
protocol server on 127.0.0.1, slowed before and after it applies a batch, and is killed
with SIGKILL at a random moment: while starting, while a request is in flight, or between
the server's apply and the device's ack. Between rounds the parent records a few more
writes, some on documents the killed sync had just sent. Then one clean `sync-agent sync`
runs to completion.

After every kill the database passes integrity_check, nothing is quarantined, every write
whose call returned is still in the outbox, reached the server, or was coalesced into a
later write on its key before it was ever sent, and the device's local view still shows
its writes. No op ever takes effect twice on the server (a repeat is answered
`duplicate`). At the end the outbox is empty, and the server, the device's local view and
a model applying the writes in order agree on every document.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from device_agent import Agent
from shared.contracts import Priority
from tests.support.protocol_server import ProtocolServer

pytestmark = [
    pytest.mark.agent,
    pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX"),
]

ROOT = Path(__file__).resolve().parents[3]
CHILD_ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
SEED = 20261125
ROUNDS = 25
TOKEN = "kill-token"
NOTES, ITEMS = "notes", "items"  # a few hot keys; many keys written once
HOT_KEYS = [f"hot-{index}" for index in range(6)]
FIELDS = "abcd"

# Each child syncs like an app calling `Agent.sync`, with a batch size the test chooses
# (the CLI always uses 100): small batches put many apply/ack windows in a short run.
API_SYNC = (
    "import sys\n"
    "from device_agent import Agent\n"
    "from device_agent.sync import SyncConfig\n"
    "config = SyncConfig(batch_ops=int(sys.argv[2]))\n"
    "with Agent.open(sys.argv[1], sync_config=config) as agent:\n"
    "    sys.exit(0 if agent.sync(timeout=60).synced else 75)\n"
)


class SlowServer(ProtocolServer):
    """The protocol server, pausing after each applied batch (the window between the cloud's
    apply and the device's ack) and keeping every per-op status it answered."""

    def __init__(self, *, token: str, after_apply_s: float) -> None:
        super().__init__(token=token)
        self.after_apply_s = after_apply_s
        self.batches = 0
        self.answers: defaultdict[str, list[str]] = defaultdict(list)

    def handle_batch(self, body: Any) -> tuple[int, dict[str, Any]]:
        status, answer = super().handle_batch(body)
        if status == 200:
            for result in answer["results"]:
                self.answers[result["op_id"]].append(result["status"])
            self.batches += 1
            time.sleep(self.after_apply_s)
        return status, answer


class Device:
    """The parent's side: records writes through the real Agent API, remembering each op id
    whose call returned, the op ids a later write coalesced away, and what applying the
    writes in order gives (the model)."""

    def __init__(self, agent: Agent, rng: random.Random) -> None:
        self.agent, self.rng = agent, rng
        self.accepted: list[str] = []
        self.replaced_by: dict[str, str] = {}
        self.model: dict[tuple[str, str], dict[str, Any]] = {}
        self._fresh = 0

    def write(self, collection: str, key: str) -> None:
        """One put, patch or delete at a random priority, noting any op it coalesced away."""
        rng, agent = self.rng, self.agent
        names = rng.sample(FIELDS, rng.randint(1, 3))
        priority = rng.choice(list(Priority))
        before = {op.op_id for op in agent.outbox.pending_for(collection, key)}
        roll = rng.random()
        current = self.model.get((collection, key), {})
        if roll < 0.1:
            op_id = agent.delete(collection, key, priority=priority)
            current = {}
        elif roll < 0.45:
            data = {name: rng.randint(0, 99) for name in names}
            op_id = agent.put(collection, key, data, priority=priority)
            current = dict(data)
        else:  # a patch; a None removes the field
            patch = {name: rng.choice([None, rng.randint(0, 99)]) for name in names}
            op_id = agent.patch(collection, key, patch, priority=priority)
            current = {**current, **patch}
        self.model[(collection, key)] = {k: v for k, v in current.items() if v is not None}
        self.accepted.append(op_id)
        agent.outbox.place_intake()  # (coalesced where it will be sent: seen in `after`)
        after = {op.op_id for op in agent.outbox.pending_for(collection, key)}
        for gone in before - after:
            self.replaced_by[gone] = op_id

    def write_hot(self) -> None:
        self.write(NOTES, self.rng.choice(HOT_KEYS))

    def write_fresh(self, count: int) -> None:
        """`count` puts on keys never written before, in one transaction."""
        items = []
        for _ in range(count):
            self._fresh += 1
            key = f"item-{self._fresh}"
            data = {"n": self._fresh, "pad": "x" * self.rng.randint(0, 300)}
            items.append((ITEMS, key, data))
            self.model[(ITEMS, key)] = data
        self.accepted += self.agent.put_many(items, priority=self.rng.choice(list(Priority)))

    def expected(self, collection: str, key: str) -> Optional[dict[str, Any]]:
        return self.model.get((collection, key)) or None

    def lost(self, server: SlowServer) -> list[str]:
        """Accepted ops that are neither in the outbox nor on the server nor coalesced into
        an op that is."""
        self.agent.outbox.place_intake()
        in_outbox = {row[0] for row in self.agent.conn.execute("SELECT op_id FROM outbox")}
        arrived = {op.op_id for op in list(server.arrivals)}

        def kept(op_id: str) -> bool:
            while op_id not in in_outbox and op_id not in arrived:
                if op_id not in self.replaced_by:
                    return False
                op_id = self.replaced_by[op_id]
            return True

        return [op_id for op_id in self.accepted if not kept(op_id)]


@pytest.fixture
def server() -> Iterator[SlowServer]:
    running = SlowServer(token=TOKEN, after_apply_s=0.01)
    running.batch_delay_s = 0.01  # before the apply: kills land while a request is in flight
    with running:
        yield running


@pytest.fixture
def agent(tmp_path: Path, server: SlowServer) -> Iterator[Agent]:
    with Agent.init(
        tmp_path / "device.db", endpoint=server.url, token=TOKEN, device_id="kill-dev"
    ) as opened:
        yield opened


def sync_command(path: str, batch_ops: Optional[int]) -> list[str]:
    """A child syncing the database: `sync-agent sync` when batch_ops is None."""
    if batch_ops is None:
        return [sys.executable, "-m", "device_agent", "--db", path, "sync", "--timeout", "60"]
    return [sys.executable, "-c", API_SYNC, path, str(batch_ops)]


def sync_and_kill(path: str, server: SlowServer, rng: random.Random) -> tuple[int, str]:
    """Start a child sync and SIGKILL it at a random moment; its exit code and stderr.

    Mostly the kill comes a random time after a first batch of the child was applied, so it
    lands mid-push; sometimes at any time, start-up included.
    """
    batch_ops = None if rng.random() < 0.2 else rng.choice([1, 2, 3, 5, 8, 13, 25])
    before = server.batches
    child = subprocess.Popen(
        sync_command(path, batch_ops),
        cwd=ROOT,
        env=CHILD_ENV,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if rng.random() < 0.2:
            time.sleep(rng.uniform(0.0, 0.3))
        else:
            deadline = time.monotonic() + 20
            while server.batches == before and child.poll() is None:
                assert time.monotonic() < deadline, "the child sent no batch within 20 s"
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.25))
    finally:
        child.send_signal(signal.SIGKILL)
        _, errors = child.communicate()
    return child.returncode, errors


def integrity(path: str) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def test_sigkill_mid_sync_loses_nothing_and_applies_nothing_twice(
    agent: Agent, server: SlowServer
) -> None:
    # Given a device with a backlog of writes on hot and fresh keys at every priority
    rng = random.Random(SEED)
    device = Device(agent, rng)
    for _ in range(12):
        device.write_fresh(rng.randint(300, 450))
        for _ in range(rng.randint(5, 25)):
            device.write_hot()
    killed = mid_push = 0
    for round_no in range(ROUNDS):
        where = f"seed={SEED} round={round_no}"
        # When a child syncs and is killed at a random moment
        before, arrived_before = server.batches, len(server.arrivals)
        code, errors = sync_and_kill(agent.path, server, rng)
        assert code in (-signal.SIGKILL, 0), f"{where}: child exited {code}: {errors}"
        killed += code == -signal.SIGKILL
        mid_push += code == -signal.SIGKILL and server.batches > before
        # Then the database is sound and every accepted write is kept
        assert integrity(agent.path) == "ok", where
        assert device.lost(server) == [], where
        assert agent.outbox.stats().quarantined == 0, where
        # And the device still shows its own writes on the keys this sync sent and the hot ones
        sent = {(op.collection, op.key) for op in server.arrivals[arrived_before:]}
        for collection, key in sent | {(NOTES, key) for key in HOT_KEYS}:
            expected = device.expected(collection, key)
            assert agent.get(collection, key) == expected, f"{where} {collection}/{key}"
        # And the app may record more writes before the next sync, some on documents whose
        # ops this sync sent but never acked (a write must not be coalesced into those)
        if rng.random() < 0.7:
            unacked = sorted(key for key in sent if agent.outbox.pending_for(*key))
            for _ in range(rng.randint(1, 5)):
                if unacked and rng.random() < 0.5:
                    device.write(*rng.choice(unacked))
                else:
                    device.write_hot()
            device.write_fresh(rng.randint(0, 3))

    # When one sync finally runs to completion (the real CLI)
    final = subprocess.run(
        sync_command(agent.path, None),
        cwd=ROOT,
        env=CHILD_ENV,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    where = f"seed={SEED}"
    assert final.returncode == 0, f"{where}: final sync: {final.stdout} {final.stderr}"

    # Then everything reached the server: nothing is left, lost or quarantined
    assert integrity(agent.path) == "ok", where
    assert agent.status()["pending"] == 0 and agent.status()["quarantined"] == 0, where
    assert device.lost(server) == [], where
    # And nothing took effect twice: a repeat is answered `duplicate` (or `superseded` once
    # newer writes hold all it wrote), never applied again
    arrivals = Counter(op.op_id for op in server.arrivals)
    repeats = [op_id for op_id, n in arrivals.items() if n > 1]
    assert [op_id for op_id, n in server.applied.items() if n > 1] == [], where
    for op_id in repeats:
        assert set(server.answers[op_id][1:]) <= {"duplicate", "superseded"}, where
    # And no write was coalesced into a later one after being sent
    assert set(device.replaced_by) & set(arrivals) == set(), where
    # And the server, the device's local view and the model agree on every document
    live = {key for key, record in server.records.items() if not record.deleted}
    assert live == {key for key, data in device.model.items() if data}, where
    for collection, key in device.model:
        expected = device.expected(collection, key)
        assert server.document(collection, key) == expected, f"{where} {collection}/{key}"
        assert agent.get(collection, key) == expected, f"{where} {collection}/{key}"
    # And the kills did land mid-sync: nearly all hit a running child, most after a batch of
    # it was applied, and some between an apply and its ack (the op came again: `duplicate`)
    assert killed >= ROUNDS * 3 // 4, f"{where}: only {killed} kills hit a running sync"
    assert mid_push >= ROUNDS // 2, f"{where}: only {mid_push} kills landed mid-push"
    assert repeats, f"{where}: no kill landed between an apply and its ack"
    duplicates = [op_id for op_id in repeats if "duplicate" in server.answers[op_id][1:]]
    assert duplicates, f"{where}: no repeat was answered duplicate"
