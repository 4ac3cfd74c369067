"""What a pending op replaced or made dead when it was recorded comes back if the cloud
rejects it (outbox_replaced, schema.MIGRATIONS version 6): a refused write never takes older
accepted writes down with it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from device_agent import Agent
from shared.conflict.lww import apply_lww
from shared.contracts import OpKind, parse_hlc
from shared.contracts.hlc import format_hlc
from tests.support.agent_store import Store, open_store
from tests.support.protocol_server import ProtocolServer

pytestmark = pytest.mark.agent


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return open_store(tmp_path / "agent.db", device_id="dev")


def write(store: Store, kind: str, data: Optional[dict[str, Any]] = None, key: str = "k") -> str:
    return store.outbox.record("items", key, OpKind(kind), data).op_id


def pending(store: Store) -> list[tuple[str, str, Optional[dict[str, Any]]]]:
    """(op id, kind, data) of every pending op, in claim order (claims nothing)."""
    store.outbox.place_intake()
    ids = [row[0] for row in store.conn.execute("SELECT op_id FROM outbox ORDER BY seq")]
    ops = [store.outbox.get(op_id).op for op_id in ids]
    return [(op.op_id, op.kind.value, op.data) for op in ops]


def reject(store: Store, op_id: str) -> None:
    """As the sync engine does with an op the cloud rejected permanently."""
    store.outbox.claim()
    store.outbox.quarantine(op_id, "invalid_op", "refused by a server-side rule")


def test_a_rejected_put_gives_back_the_put_it_replaced(store: Store) -> None:
    first = write(store, "put", {"v": 1})
    first_hlc = store.outbox.get(first).op.hlc
    second = write(store, "put", {"v": 2})
    assert [op_id for op_id, _, _ in pending(store)] == [second]  # coalesced

    reject(store, second)

    assert pending(store) == [(first, "put", {"v": 1})]
    assert store.outbox.get(first).op.hlc == first_hlc  # as recorded: same id, same stamp
    assert [held.op.op_id for held in store.outbox.quarantined()] == [second]
    # It counts as handed out once: a newer write is not coalesced into it
    third = write(store, "put", {"v": 3})
    assert [op_id for op_id, _, _ in pending(store)] == [first, third]
    assert store.outbox.stats().total_ops == 2


def test_a_rejected_patch_gives_back_the_patch_it_replaced(store: Store) -> None:
    first = write(store, "patch", {"a": 1})
    second = write(store, "patch", {"a": 2, "b": 2})

    reject(store, second)

    assert pending(store) == [(first, "patch", {"a": 1})]


def test_a_rejected_put_gives_back_the_ops_it_made_dead_in_their_order(store: Store) -> None:
    # A put, then a patch kept apart from it, then a put that replaces the patch and drops
    # the first put (dead under its reset)
    first = write(store, "put", {"a": 1})
    patch = write(store, "patch", {"b": 2})
    last = write(store, "put", {"c": 3})
    assert [op_id for op_id, _, _ in pending(store)] == [last]

    reject(store, last)

    assert pending(store) == [(first, "put", {"a": 1}), (patch, "patch", {"b": 2})]


def test_only_the_op_directly_replaced_comes_back(store: Store) -> None:
    write(store, "put", {"v": 1})
    second = write(store, "put", {"v": 2})
    third = write(store, "put", {"v": 3})

    reject(store, third)

    # The second already carried the first's effect (it erased it): one level suffices
    # unless the cloud rejects that one too.
    assert pending(store) == [(second, "put", {"v": 2})]


def test_a_batch_keeps_what_its_ops_replaced_as_one_by_one_recording_would(
    store: Store,
) -> None:
    first = write(store, "put", {"v": 1})
    ops = store.outbox.record_many(
        [
            ("items", "k", "put", {"v": 2}),
            ("items", "other", "put", {"o": 1}),
            ("items", "k", "put", {"v": 3}),
        ]
    )
    second, third = ops[0].op_id, ops[2].op_id

    reject(store, third)

    kept = [(op_id, data) for op_id, _, data in pending(store)]
    assert (second, {"v": 2}) in kept and (ops[1].op_id, {"o": 1}) in kept
    assert first not in [op_id for op_id, _ in kept]


def test_what_acked_ops_replaced_is_swept_when_the_outbox_empties(store: Store) -> None:
    write(store, "put", {"v": 1})
    write(store, "put", {"v": 2})
    write(store, "put", {"v": 1}, key="other")
    write(store, "put", {"v": 2}, key="other")
    store.outbox.place_intake()
    assert store.conn.execute("SELECT COUNT(*) FROM outbox_replaced").fetchone()[0] == 2

    store.outbox.ack([p.op.op_id for p in store.outbox.claim()])

    assert store.conn.execute("SELECT COUNT(*) FROM outbox_replaced").fetchone()[0] == 0


@pytest.fixture
def server() -> Iterator[ProtocolServer]:
    with ProtocolServer() as running:
        yield running


def test_a_sync_delivers_the_older_write_when_the_cloud_rejects_the_newer(
    tmp_path: Path, server: ProtocolServer
) -> None:
    agent = Agent.init(tmp_path / "agent.db", endpoint=server.url, token="test-token")
    agent.put("prefs", "u1", {"theme": "dark"})
    refused = agent.put("prefs", "u1", {"theme": "neon"})
    server.force(refused, "rejected", "invalid_op")

    summary = agent.sync(timeout=10)

    assert summary.synced and summary.rejected == 1 and agent.status()["pending"] == 0
    assert server.document("prefs", "u1") == {"theme": "dark"}
    assert agent.get("prefs", "u1") == {"theme": "dark"}
    assert [held["op_id"] for held in agent.quarantined()] == [refused]
    agent.close()


def test_a_re_stamp_moves_the_kept_ops_with_the_op_that_replaced_them(tmp_path: Path) -> None:
    # Given two puts on a key stamped while the wall clock ran an hour ahead; the second
    # replaced the first
    t0 = 1_764_000_000_000
    wall = [t0 + 3_600_000]
    store = open_store(tmp_path / "agent.db", device_id="dev", now_ms=lambda: wall[0])
    first = write(store, "put", {"v": 1})
    second = write(store, "put", {"v": 2})
    store.outbox.claim()
    # When the cloud answers clock_ahead: the clock is set back and the op re-stamped
    wall[0] = t0
    store.state.restamp_clock(format_hlc(t0, 0, "server"))
    store.outbox.restamp([second])
    store.outbox.release_unattempted([second])
    latest = write(store, "put", {"v": 3})  # the user's newest write
    # And the cloud then rejects the re-stamped op for good
    reject(store, second)

    # Then the op that comes back is stamped below the newest write, not an hour ahead
    back = store.outbox.get(first).op
    assert back.hlc < store.outbox.get(latest).op.hlc
    assert parse_hlc(back.hlc).physical_ms == t0
    server = None
    for op in sorted(
        (store.outbox.get(op_id).op for op_id, _, _ in pending(store)),
        key=lambda op: op.hlc,
        reverse=True,
    ):
        server = apply_lww(server, op).record  # in any order: the newest write wins
    assert server is not None and server.data == {"v": 3}


def test_kept_ops_stay_bounded_by_the_pending_ops_while_offline(store: Store) -> None:
    # A put then a patch on one key, again and again, nothing sent: each put drops the
    # previous pair, and with them what they kept
    for round_no in range(200):
        write(store, "put", {"v": round_no})
        write(store, "patch", {"a": round_no})

    store.outbox.place_intake()  # (the writes still waiting there are counted as written)
    assert store.outbox.depth() == 2
    kept, orphans = store.conn.execute(
        "SELECT COUNT(*), TOTAL(NOT EXISTS (SELECT 1 FROM outbox AS o WHERE o.seq = r.by_seq)) "
        "FROM outbox_replaced AS r"
    ).fetchone()
    assert kept <= 2 and orphans == 0
