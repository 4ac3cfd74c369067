"""Kill test: SIGKILL at random points while enqueuing and while syncing loses no accepted op.

A writer process records puts and prints each op id once `record()` has returned (the
moment the write counts as accepted); a syncer process claims batches, "sends" them to a
recorder database standing in for the cloud, acks them, and records the ack. Both are killed
with SIGKILL at random moments, 25 rounds of two kills. Afterwards every accepted op is
still in the outbox or reached the cloud, no op was acked twice, and no acked op came back.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import sys
import time
from collections import Counter

import pytest

from tests.support.agent_store import open_store
from tests.support.outbox_child import complete_lines, spawn, wait_ready

pytestmark = [
    pytest.mark.agent,
    pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX"),
]

ROUNDS = 25


def test_sigkill_while_enqueuing_and_syncing_loses_nothing_and_acks_nothing_twice(tmp_path):
    path, server_path = tmp_path / "agent.db", tmp_path / "server.db"
    open_store(path).close()
    rng = random.Random(20261124)
    accepted: set[str] = set()
    kills = 0
    for round_no in range(ROUNDS):
        # Given a writer and a syncer working on the same outbox
        writer = spawn("enqueue", str(path), "100000", f"r{round_no}")
        syncer = spawn("sync", str(path), str(server_path))
        wait_ready(writer)
        wait_ready(syncer)
        # When each is killed at a random moment
        victims = [writer, syncer]
        rng.shuffle(victims)
        for victim in victims:
            time.sleep(rng.uniform(0.0, 0.25))
            victim.send_signal(signal.SIGKILL)
            kills += 1
        accepted.update(complete_lines(writer)[1:])
        complete_lines(syncer)
    assert kills == 2 * ROUNDS

    # Then nothing accepted was lost, nothing acked twice, nothing acked came back
    store = open_store(path)
    store.outbox.place_intake()  # (what the writers recorded and no syncer placed)
    in_outbox = {row[0] for row in store.conn.execute("SELECT op_id FROM outbox")}
    server = sqlite3.connect(server_path)
    sent = Counter(row[0] for row in server.execute("SELECT op_id FROM sent"))
    acked = Counter(row[0] for row in server.execute("SELECT op_id FROM acked"))
    assert len(accepted) > 100, "the writers were killed before doing any work"
    assert sent, "the syncers were killed before sending anything"
    assert accepted <= in_outbox | set(sent)
    assert [op_id for op_id, n in acked.items() if n > 1] == []
    assert in_outbox.isdisjoint(acked)
    assert store.outbox.depth() == len(in_outbox)

    # And what is left drains completely once a sender survives
    while batch := store.outbox.claim(limit=500):
        sent.update(p.op.op_id for p in batch)
        store.outbox.ack(p.op.op_id for p in batch)
    assert accepted <= set(sent)
    assert store.outbox.stats().in_flight == 0
