"""The outbox's layout (schema versions 2 and 3): the v1 -> v2 -> v3 migrations, seqs in
priority bands, totals kept by the outbox code (and the copy each connection keeps), ops by
key in outbox_keys (stale rows after large-backlog acks), ops found by id through delivery,
and the clock cached on the connection."""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import device_agent.outbox_removal as removal_module
from device_agent.db import open_database, transaction
from device_agent.errors import NotFound, OutboxFull
from device_agent.op_ids import new_op_id, new_op_ids
from device_agent.outbox import Outbox
from device_agent.outbox_totals import read_totals
from device_agent.outbox_write import encode
from device_agent.schema import MIGRATIONS, SCHEMA_VERSION
from device_agent.state import AgentState
from shared.contracts import ErrorCode, Op, OpKind, Priority, parse_hlc
from shared.contracts.hlc import format_hlc
from tests.support.agent_store import Store, open_store, placed

pytestmark = pytest.mark.agent

T0 = 1_764_000_000.0
BAND = 48  # seq = (priority << BAND) + a counter of that priority


class FakeTime:
    def __init__(self, start: float = T0) -> None:
        self.value = start

    def __call__(self) -> float:
        return self.value


def band(seq: int) -> int:
    return seq >> BAND


def totals(conn: sqlite3.Connection) -> dict[int, tuple[int, int]]:
    """outbox_totals as {priority: (ops, bytes)}."""
    return {
        p: (ops, size)
        for p, ops, size in conn.execute("SELECT priority, ops, bytes FROM outbox_totals")
    }


def counted(conn: sqlite3.Connection) -> dict[int, tuple[int, int]]:
    """What outbox_totals should say, counted from the outbox itself."""
    out = {int(p): (0, 0) for p in Priority}
    for p, ops, size in conn.execute(
        "SELECT priority, COUNT(*), SUM(size) FROM outbox GROUP BY priority"
    ):
        out[p] = (ops, size)
    return out


def next_seqs(conn: sqlite3.Connection) -> dict[int, int]:
    return {p: seq for p, seq in conn.execute("SELECT priority, next_seq FROM outbox_totals")}


def seqs_by_op(conn: sqlite3.Connection) -> dict[str, int]:
    return {op_id: seq for seq, op_id in conn.execute("SELECT seq, op_id FROM outbox")}


def key_rows(conn: sqlite3.Connection, key: Optional[str] = None) -> list[tuple[str, str, int]]:
    sql = "SELECT collection, key, seq FROM outbox_keys"
    if key is None:
        return [tuple(row) for row in conn.execute(sql + " ORDER BY seq")]
    return [tuple(row) for row in conn.execute(sql + " WHERE key = ? ORDER BY seq", (key,))]


def stale_key_rows(conn: sqlite3.Connection) -> int:
    """outbox_keys rows whose op is gone."""
    return int(
        conn.execute(
            "SELECT COUNT(*) FROM outbox_keys AS k WHERE NOT EXISTS "
            "(SELECT 1 FROM outbox AS o WHERE o.seq = k.seq)"
        ).fetchone()[0]
    )


def put(store: Store, key: str, priority: Priority = Priority.NORMAL, **data: object) -> Op:
    return store.outbox.record("items", key, OpKind.PUT, dict(data) or {"v": key}, priority)


# --- 1. migrating a version-1 database ----------------------------------------------------


V1_NODE = "dev-v1"
V1_MS = 1_700_000_000_000
# (name, key, kind, priority) in the order a version-1 agent recorded them.
V1_PLAN = [
    ("n1", "a", OpKind.PUT, Priority.NORMAL),  # leased, attempted twice
    ("c1", "b", OpKind.PUT, Priority.CRITICAL),
    ("q1", "q", OpKind.PUT, Priority.HIGH),  # quarantined
    ("n2", "c", OpKind.PUT, Priority.NORMAL),
    ("h1", "d", OpKind.PUT, Priority.HIGH),
    ("n3", "a", OpKind.PATCH, Priority.NORMAL),  # pending behind the leased n1
    ("c2", "e", OpKind.DELETE, Priority.CRITICAL),
    ("x1", "x", OpKind.PUT, Priority.NORMAL),  # acked before the upgrade: a gap in the seqs
    ("bg1", "f", OpKind.PUT, Priority.BACKGROUND),
]


def build_v1_database(path: Path) -> dict[str, Op]:
    """A version-1 database as a v1 agent left it (its triggers keep the totals)."""
    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    for statement in MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    ops: dict[str, Op] = {}
    conn.execute("BEGIN")
    for index, ((name, key, kind, priority), op_id) in enumerate(
        zip(V1_PLAN, new_op_ids(len(V1_PLAN)))
    ):
        data = None if kind is OpKind.DELETE else {"name": name, "n": index}
        op = Op(op_id, "items", key, kind, format_hlc(V1_MS + index, 0, V1_NODE), data, priority)
        text, size = encode(op)
        conn.execute(
            "INSERT INTO outbox (op_id, collection, key, kind, hlc, data, priority, size, "
            "enqueued_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (op_id, "items", key, kind.value, op.hlc, text, int(priority), size, T0 - 1000 + index),
        )
        ops[name] = op
    # n1 was handed out, failed twice and is leased again (the lease has expired since).
    conn.execute(
        "INSERT INTO delivery (seq, leased_at, lease_until, lease_owner, attempts, "
        "next_attempt_at, last_error) SELECT seq, ?, ?, ?, 2, ?, 'timeout' FROM outbox "
        "WHERE op_id = ?",
        (T0 - 100, T0 - 40, f"pid:{os.getpid()}", T0 - 50, ops["n1"].op_id),
    )
    # q1 was rejected for good: moved to quarantine as a v1 agent did.
    conn.execute(
        "INSERT INTO quarantine (op_id, collection, key, kind, hlc, data, priority, size, "
        "enqueued_at, attempts, code, message, quarantined_at) SELECT op_id, collection, key, "
        "kind, hlc, data, priority, size, enqueued_at, 1, 'invalid_op', 'bad', ? FROM outbox "
        "WHERE op_id = ?",
        (T0 - 10, ops["q1"].op_id),
    )
    conn.execute("DELETE FROM outbox WHERE op_id = ?", (ops.pop("q1").op_id,))
    conn.execute("DELETE FROM outbox WHERE op_id = ?", (ops.pop("x1").op_id,))
    last = format_hlc(V1_MS + len(V1_PLAN), 0, V1_NODE)
    conn.executemany(
        "INSERT INTO kv (name, value) VALUES (?, ?)",
        [
            ("device_id", json.dumps(V1_NODE)),
            ("clock", json.dumps({"last": last, "correction_ms": 0})),
        ],
    )
    conn.execute("COMMIT")
    # The fixture itself is sound: the v1 triggers counted what is in the outbox.
    assert totals(conn) == counted(conn)
    conn.close()
    return ops


def test_a_version_1_database_is_migrated_with_its_ops_leases_totals_and_keys(
    tmp_path: Path,
) -> None:
    path = tmp_path / "agent.db"
    ops = build_v1_database(path)
    v1 = sqlite3.connect(str(path))
    v1_totals = totals(v1)
    v1_seqs = {op_id: seq for seq, op_id in v1.execute("SELECT seq, op_id FROM outbox")}
    v1.close()

    conn = open_database(path)

    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
    # The old claim, key and op_id indexes and the totals triggers are gone; what is left is
    # the trigger adding outbox_keys rows.
    leftovers = conn.execute(
        "SELECT name FROM sqlite_master WHERE type IN ('index', 'trigger') AND tbl_name = 'outbox'"
    ).fetchall()
    assert leftovers == [("outbox_keys_add",)]
    # Every op got the seq of its band: (priority << 48) + its v1 seq.
    seqs = seqs_by_op(conn)
    assert set(seqs) == {op.op_id for op in ops.values()}
    for op in ops.values():
        assert seqs[op.op_id] == (int(op.priority) << BAND) + v1_seqs[op.op_id]
    # The leased op's delivery row survived under its new seq.
    delivery = conn.execute(
        "SELECT seq, op_id, leased_at, lease_until, attempts, next_attempt_at, last_error "
        "FROM delivery"
    ).fetchall()
    n1 = ops["n1"].op_id
    assert delivery == [(seqs[n1], n1, T0 - 100, T0 - 40, 2, T0 - 50, "timeout")]
    # Totals are unchanged and match the outbox.
    assert totals(conn) == v1_totals == counted(conn)
    # Each band's next seq lies in the band, above every seq there.
    for priority, next_seq in next_seqs(conn).items():
        assert band(next_seq) == priority
        assert all(next_seq > seq for seq in seqs.values() if band(seq) == priority)
    # Every op is listed by key.
    assert sorted(key_rows(conn)) == sorted(
        ("items", op.key, seqs[op.op_id]) for op in ops.values()
    )
    assert conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0] == 1

    clock = FakeTime()
    state = AgentState(conn)
    outbox = Outbox(conn, state, now=clock)  # recovers the expired lease

    assert placed(outbox).pending_for("items", "a") == [ops["n1"], ops["n3"]]
    for name in ("c1", "n2", "h1", "c2", "bg1"):
        assert placed(outbox).pending_for("items", ops[name].key) == [ops[name]]
    leased = outbox.get(ops["n1"].op_id)
    assert (leased.attempts, leased.last_error, leased.seq) == (2, "timeout", seqs[ops["n1"].op_id])
    # Claim order: most urgent priority first, FIFO within one, the leased op's history kept.
    claimed = outbox.claim(limit=100, now=T0)
    assert [p.op for p in claimed] == [ops[n] for n in ("c1", "c2", "h1", "n1", "n2", "n3", "bg1")]
    assert [(p.attempts, p.last_error) for p in claimed if p.op == ops["n1"]] == [(2, "timeout")]
    stats = outbox.stats()
    assert stats.depth == {"critical": 2, "high": 1, "normal": 3, "low": 0, "background": 1}
    assert stats.total_bytes == sum(size for _, size in counted(conn).values())
    assert stats.oldest_pending_age_s == 1000.0  # n1, the first op recorded
    assert (stats.in_flight, stats.quarantined) == (7, 1)


def test_a_version_1_agent_still_running_after_the_migration_cannot_write(
    tmp_path: Path,
) -> None:
    # Given a v1 database migrated by a new agent while an old one keeps its connection
    path = tmp_path / "agent.db"
    build_v1_database(path)
    old = sqlite3.connect(str(path), isolation_level=None)
    open_database(path).close()
    # When the old agent records a write the v1 way (SQLite picks the seq)
    with pytest.raises(sqlite3.IntegrityError, match="CHECK constraint failed"):
        old.execute(
            "INSERT INTO outbox (op_id, collection, key, kind, hlc, data, priority, size, "
            "enqueued_at) VALUES ('old', 'items', 'k', 'put', ?, '{}', 2, 10, 0)",
            (format_hlc(V1_MS, 99, V1_NODE),),
        )
    # Then it is refused loudly and nothing is stored behind the totals' back
    assert totals(old) == counted(old)
    old.close()


def build_v2_database(path: Path) -> dict[str, Op]:
    """The v1 fixture migrated to version 2 only, as an agent of version 2 left it."""
    ops = build_v1_database(path)
    with (
        mock.patch("device_agent.schema.MIGRATIONS", MIGRATIONS[:2]),
        mock.patch("device_agent.schema.SCHEMA_VERSION", 2),
    ):
        open_database(path).close()
    v2 = sqlite3.connect(str(path))
    assert v2.execute("PRAGMA user_version").fetchone()[0] == 2
    v2.close()
    return ops


def test_a_version_2_database_is_migrated_without_the_op_id_index(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    ops = build_v2_database(path)
    v2 = sqlite3.connect(str(path))
    v2_rows = v2.execute("SELECT * FROM outbox ORDER BY seq").fetchall()
    v2_keys = key_rows(v2)
    v2_totals = v2.execute("SELECT * FROM outbox_totals ORDER BY priority").fetchall()
    v2.close()

    conn = open_database(path)

    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 7
    # The ops, their key rows and the totals are as they were.
    assert conn.execute("SELECT * FROM outbox ORDER BY seq").fetchall() == v2_rows
    assert key_rows(conn) == v2_keys
    assert conn.execute("SELECT * FROM outbox_totals ORDER BY priority").fetchall() == v2_totals
    # The outbox has no index at all now; the leased op is found by id through delivery.
    indexes = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'outbox'"
    ).fetchall()
    assert indexes == []
    plan = " ".join(
        str(row[-1])
        for row in conn.execute(
            "EXPLAIN QUERY PLAN SELECT seq FROM delivery WHERE op_id = ?", (ops["n1"].op_id,)
        )
    )
    assert "delivery_op_id" in plan
    outbox = Outbox(conn, AgentState(conn), now=FakeTime())
    claimed = {p.op.op_id for p in outbox.claim(limit=100, now=T0)}
    assert outbox.ack([ops["n1"].op_id, ops["c1"].op_id]) == 2
    assert not {ops["n1"].op_id, ops["c1"].op_id} & {
        row[0] for row in conn.execute("SELECT op_id FROM outbox")
    }
    assert outbox.release(claimed, error="x", retry_at=T0) == len(claimed) - 2
    # A write after the migration gets its key row from the trigger.
    fresh = outbox.record("items", "after", OpKind.PUT, {"v": 1})
    placed(outbox)
    assert key_rows(conn, "after") == [("items", "after", outbox.get(fresh.op_id).seq)]
    assert totals(conn) == counted(conn)


def test_a_version_2_agent_still_running_after_the_migration_cannot_write(
    tmp_path: Path,
) -> None:
    # Given a v2 database migrated by a new agent while an old one keeps its connection
    path = tmp_path / "agent.db"
    build_v2_database(path)
    old = sqlite3.connect(str(path), isolation_level=None)
    open_database(path).close()
    seq = (2 << BAND) + 1000
    # When the old agent records a write the v2 way (the op, then its key row), in one
    # transaction, the second statement fails (the trigger added that row already)
    old.execute("BEGIN IMMEDIATE")
    old.execute(
        "INSERT INTO outbox (seq, op_id, collection, key, kind, hlc, data, priority, size, "
        "enqueued_at) VALUES (?, 'old', 'items', 'k', 'put', ?, '{}', 2, 10, 0)",
        (seq, format_hlc(V1_MS, 99, V1_NODE)),
    )
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE constraint failed"):
        old.execute(
            "INSERT INTO outbox_keys (collection, key, seq) VALUES ('items', 'k', ?)", (seq,)
        )
    old.execute("ROLLBACK")
    # And a v2 lease (no op id) is refused too
    with pytest.raises(sqlite3.IntegrityError, match="NOT NULL constraint failed"):
        old.execute(
            "INSERT INTO delivery (seq, leased_at) SELECT seq, 0 FROM outbox ORDER BY seq LIMIT 1"
        )
    # Then nothing is stored behind the totals' back
    assert totals(old) == counted(old)
    old.close()


def test_writes_after_the_migration_get_larger_seqs_in_their_band_and_coalesce(
    tmp_path: Path,
) -> None:
    path = tmp_path / "agent.db"
    ops = build_v1_database(path)
    conn = open_database(path)
    state = AgentState(conn)
    outbox = Outbox(conn, state, now=FakeTime())
    before = seqs_by_op(conn)

    # A patch on "a" naming n3's fields replaces n3 (pending, never handed out) in place,
    # not n1.
    merged = outbox.record("items", "a", OpKind.PATCH, {"name": "n4", "n": 6, "more": 1})
    assert merged.hlc > max(op.hlc for op in ops.values())
    assert parse_hlc(merged.hlc).node == V1_NODE
    assert placed(outbox).pending_for("items", "a") == [ops["n1"], merged]
    assert merged.data == {"name": "n4", "n": 6, "more": 1}
    assert outbox.get(merged.op_id).seq == before[ops["n3"].op_id]
    # New ops land in their bands above every older seq there.
    fresh = {p: outbox.record("items", f"new-{p.name}", OpKind.PUT, {"v": 1}, p) for p in Priority}
    placed(outbox)
    after = seqs_by_op(conn)
    for priority, op in fresh.items():
        seq = after[op.op_id]
        assert band(seq) == int(priority)
        assert all(seq > old for old in before.values() if band(old) == int(priority))
    # The quarantined op comes back as the newest op of its band.
    retried = outbox.retry_quarantined(conn.execute("SELECT op_id FROM quarantine").fetchone()[0])
    retried_seq = outbox.get(retried.op_id).seq
    assert band(retried_seq) == int(Priority.HIGH)
    assert retried_seq > after[fresh[Priority.HIGH].op_id]
    assert totals(conn) == counted(conn)
    assert [p.op.key for p in outbox.claim(limit=100, now=T0 + 100)] == [
        "b", "e", "new-CRITICAL", "d", "new-HIGH", "q", "a", "c", "a", "new-NORMAL",
        "new-LOW", "f", "new-BACKGROUND",
    ]  # fmt: skip


# --- 2. the invariants under any sequence of operations ---------------------------------


KEYS = ("k0", "k1", "k2")
FIELDS = ("a", "b")
priorities = st.sampled_from(list(Priority))
small = st.integers(0, 3)
writes = st.one_of(
    st.tuples(
        st.just("put"),
        st.sampled_from(KEYS),
        st.dictionaries(st.sampled_from(FIELDS), small, max_size=2),
        priorities,
    ),
    st.tuples(
        st.just("patch"),
        st.sampled_from(KEYS),
        st.dictionaries(st.sampled_from(FIELDS), st.none() | small, min_size=1, max_size=2),
        priorities,
    ),
    st.tuples(st.just("delete"), st.sampled_from(KEYS), st.none(), priorities),
)
# Writes are drawn most often, so that keys are written again while their ops wait.
actions = st.one_of(
    st.tuples(st.just("record"), writes),
    st.tuples(st.just("record"), writes),
    st.tuples(st.just("record_many"), st.lists(writes, min_size=1, max_size=4)),
    st.tuples(st.just("record_many"), st.lists(writes, min_size=1, max_size=4)),
    st.tuples(st.just("claim"), st.integers(1, 4)),
    st.tuples(st.just("ack"), st.integers(1, 4)),
    st.tuples(st.just("ack_oldest"), st.integers(1, 6)),
    st.tuples(st.just("release"), st.integers(1, 4)),
    st.tuples(st.just("quarantine"), st.integers(0, 20)),
    st.tuples(st.just("retry"), st.integers(0, 20)),
    # A write through a second connection: the first one's copy of the totals must notice.
    st.tuples(st.just("record_elsewhere"), writes),
)


class SeqHistory:
    """Every seq the outbox has used, to check that none is ever given out again."""

    def __init__(self) -> None:
        self.live: set[int] = set()
        self.retired: set[int] = set()
        self.highest: dict[int, int] = {}

    def observe(self, current: set[int]) -> None:
        for seq in current - self.live:
            # A new row: above every seq its band ever had, never a retired one.
            assert seq not in self.retired, f"seq {seq:#x} reused"
            assert seq > self.highest.get(band(seq), -1), f"seq {seq:#x} went back"
        self.retired |= self.live - current
        self.live = set(current)
        for seq in current:
            self.highest[band(seq)] = max(seq, self.highest.get(band(seq), -1))


def check_invariants(store: Store, threshold: int, history: SeqHistory) -> None:
    conn = store.conn
    rows = conn.execute("SELECT seq, priority, collection, key FROM outbox").fetchall()
    # Totals are what the outbox holds.
    assert totals(conn) == counted(conn)
    waiting = conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox_intake").fetchone()
    assert store.outbox.depth() == len(rows) + waiting[0]
    # The connection's copy of the totals (kept across transactions) is what the tables say.
    kept = read_totals(conn)
    assert (kept.ops, kept.size) == tuple(map(sum, zip(*counted(conn).values())))
    assert (kept.intake_ops, kept.intake_size) == waiting
    assert kept.next_seqs == next_seqs(conn)
    assert kept.stale == conn.execute("SELECT SUM(stale_keys) FROM outbox_totals").fetchone()[0]
    # Seqs sit in their priority's band, below its next seq, and are never reused.
    for seq, priority, _, _ in rows:
        assert band(seq) == priority
    for priority, next_seq in next_seqs(conn).items():
        assert band(next_seq) == priority
        assert next_seq > history.highest.get(priority, -1)
    history.observe({row[0] for row in rows})
    # Every op is listed under its own key, and no row names another key's op.
    listed = set(key_rows(conn))
    assert {(c, k, seq) for seq, _, c, k in rows} <= listed
    assert (
        conn.execute(
            "SELECT COUNT(*) FROM outbox_keys AS k JOIN outbox AS o ON o.seq = k.seq "
            "WHERE o.collection != k.collection OR o.key != k.key"
        ).fetchone()[0]
        == 0
    )
    # Stale rows never outnumber both the live ops and the sweep threshold; none once empty.
    assert stale_key_rows(conn) <= max(threshold, len(rows))
    if not rows:
        assert listed == set()
    # pending_for is exactly the key's ops, placed or in the intake, in HLC order.
    for key in KEYS:
        expected = [
            row[0]
            for row in conn.execute(
                "SELECT op_id, hlc FROM outbox WHERE collection = 'items' AND key = :key "
                "UNION ALL SELECT op_id, hlc FROM outbox_intake "
                "WHERE collection = 'items' AND key = :key ORDER BY hlc",
                {"key": key},
            )
        ]
        stored = store.outbox.pending_for("items", key)
        assert stored == [store.outbox.get(i).op for i in expected]


def run_action(
    store: Store, action: tuple[Any, ...], in_flight: list[str], elsewhere: Outbox
) -> None:
    name, arg = action
    outbox = store.outbox
    if name == "record_elsewhere":
        kind, key, data, priority = arg
        elsewhere.record("items", key, kind, data, priority)
    elif name == "record":
        kind, key, data, priority = arg
        outbox.record("items", key, kind, data, priority)
    elif name == "record_many":
        outbox.record_many([("items", key, kind, data, p) for kind, key, data, p in arg])
    elif name == "claim":
        in_flight += [p.op.op_id for p in outbox.claim(limit=arg)]
    elif name == "ack":
        outbox.ack(in_flight[:arg])
        del in_flight[:arg]
    elif name == "ack_oldest":
        placed(outbox)  # (placing may coalesce, and so remove, a pending op)
        oldest = [row[0] for row in store.conn.execute("SELECT op_id FROM outbox ORDER BY seq")]
        outbox.ack(oldest[:arg])
    elif name == "release":
        outbox.release(in_flight[:arg], error="boom", retry_at=0)
        del in_flight[:arg]
    elif name == "quarantine":
        placed(outbox)
        live = [row[0] for row in store.conn.execute("SELECT op_id FROM outbox ORDER BY seq")]
        if live:
            outbox.quarantine(live[arg % len(live)], ErrorCode.INVALID_OP, "rejected")
    else:
        held = outbox.quarantined()
        if held:
            outbox.retry_quarantined(held[arg % len(held)].op.op_id)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    script=st.lists(actions, min_size=5, max_size=40),
    threshold=st.sampled_from([0, 2, 1_000]),
    returning=st.booleans(),
)
def test_totals_keys_and_seqs_stay_consistent_under_any_operations(
    script: list[tuple[Any, ...]], threshold: int, returning: bool
) -> None:
    """Given any sequence of writes (priority-raising merges included), claims, acks, releases,
    quarantines and retries, with stale key rows swept above `threshold`: after every
    step the totals match the outbox, every op is found by its key, and no seq is reused."""
    lazy = mock.patch.object(removal_module, "SWEEP_STALE_KEYS_ABOVE", threshold)
    # Removal by DELETE ... RETURNING, or by the read-then-delete of SQLite before 3.35.
    removal = mock.patch.object(
        removal_module, "HAS_RETURNING", returning and removal_module.HAS_RETURNING
    )
    with tempfile.TemporaryDirectory() as tmp, lazy, removal:
        store = open_store(Path(tmp) / "agent.db", device_id="dev", synchronous="OFF")
        other = open_store(Path(tmp) / "agent.db", synchronous="OFF")
        history = SeqHistory()
        in_flight: list[str] = []
        try:
            for action in script:
                run_action(store, action, in_flight, other.outbox)
                check_invariants(store, threshold, history)
            # Draining everything leaves nothing behind in outbox_keys.
            placed(store.outbox)
            rest = [row[0] for row in store.conn.execute("SELECT op_id FROM outbox")]
            store.outbox.ack(rest)
            check_invariants(store, threshold, history)
            assert key_rows(store.conn) == []
        finally:
            other.close()
            store.close()


# --- 3. acks on a large backlog leave outbox_keys rows stale ------------------------------


@pytest.fixture
def lazy_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setattr(removal_module, "SWEEP_STALE_KEYS_ABOVE", 5)
    return open_store(tmp_path / "agent.db", device_id="dev", now=FakeTime())


def test_acks_leave_stale_key_rows_that_readers_skip(lazy_store: Store) -> None:
    store = lazy_store
    ops = [put(store, f"k{i}") for i in range(20)]

    assert store.outbox.ack(op.op_id for op in ops[:10]) == 10

    # The acked ops' rows are still listed by key, but no reader sees them.
    assert len(key_rows(store.conn)) == 20
    assert stale_key_rows(store.conn) == 10
    assert totals(store.conn) == counted(store.conn)
    assert placed(store.outbox).pending_for("items", "k0") == []
    with pytest.raises(NotFound):
        store.outbox.get(ops[0].op_id)
    assert placed(store.outbox).pending_for("items", "k10") == [ops[10]]
    # A write on an acked key merges into nothing: it is a new op. Placed by a plain copy
    # (no pending op on its key), it leaves the stale row to the sweep.
    patch = store.outbox.record("items", "k0", OpKind.PATCH, {"x": 1})
    assert (patch.kind, patch.data) == (OpKind.PATCH, {"x": 1})
    assert placed(store.outbox).pending_for("items", "k0") == [patch]
    assert ("items", "k0", store.outbox.get(patch.op_id).seq) in key_rows(store.conn, "k0")
    assert stale_key_rows(store.conn) == 10
    assert store.outbox.depth() == 11
    # A write on a live key still replaces its op.
    merged = store.outbox.record("items", "k10", OpKind.PUT, {"x": 2})
    assert (merged.kind, merged.data) == (OpKind.PUT, {"x": 2})
    assert placed(store.outbox).pending_for("items", "k10") == [merged]
    assert store.outbox.depth() == 11


def test_stale_rows_are_swept_once_they_outnumber_the_live_ops(lazy_store: Store) -> None:
    store = lazy_store
    ops = [put(store, f"k{i}") for i in range(20)]
    store.outbox.ack(op.op_id for op in ops[:10])  # 10 stale, 10 live: kept
    assert stale_key_rows(store.conn) == 10

    store.outbox.ack([ops[10].op_id])  # 11 stale > 9 live (and > 5): swept

    assert stale_key_rows(store.conn) == 0
    assert key_rows(store.conn) == sorted(
        ("items", op.key, store.outbox.get(op.op_id).seq) for op in ops[11:]
    )
    # The count starts again from the sweep: 4 more acks leave 4 stale rows (not above 5).
    store.outbox.ack(op.op_id for op in ops[11:15])
    assert stale_key_rows(store.conn) == 4
    store.outbox.ack(op.op_id for op in ops[15:])
    assert key_rows(store.conn) == []
    assert totals(store.conn) == counted(store.conn) == {int(p): (0, 0) for p in Priority}


def test_emptying_a_large_backlog_at_once_clears_every_key_row(lazy_store: Store) -> None:
    store = lazy_store
    ops = [put(store, f"k{i}") for i in range(20)]
    store.outbox.ack(op.op_id for op in ops[:10])
    assert stale_key_rows(store.conn) == 10

    store.outbox.ack(op.op_id for op in ops[10:])  # 10 -> 0 in one ack

    assert key_rows(store.conn) == []
    assert store.outbox.depth() == 0


def test_quarantine_on_a_large_backlog_leaves_a_stale_row_and_retry_lists_the_op_again(
    lazy_store: Store,
) -> None:
    store = lazy_store
    ops = [put(store, f"k{i}") for i in range(8)]
    store.outbox.quarantine(ops[0].op_id, ErrorCode.INVALID_OP, "no")
    assert stale_key_rows(store.conn) == 1
    assert placed(store.outbox).pending_for("items", "k0") == []

    back = store.outbox.retry_quarantined(ops[0].op_id)

    assert placed(store.outbox).pending_for("items", "k0") == [back] == [ops[0]]
    assert totals(store.conn) == counted(store.conn)


# --- 4. a merge that raises the priority moves the op up the claim order ----------------


def test_a_replacement_that_raises_the_priority_is_claimed_first_with_that_priority(
    tmp_path: Path,
) -> None:
    clock = FakeTime()
    store = open_store(tmp_path / "agent.db", device_id="dev", now=clock)
    first = put(store, "A", Priority.NORMAL, a=1)
    others = [put(store, f"other{i}", Priority.NORMAL) for i in range(30)]
    old_seq = store.outbox.get(first.op_id).seq
    clock.value += 60

    patch = store.outbox.record("items", "A", OpKind.PUT, {"a": 1, "b": 2}, Priority.CRITICAL)

    head = store.outbox.claim(limit=1)
    assert [p.op for p in head] == [patch]
    # It has been waiting since the first write on its key, wherever it moved.
    assert head[0].enqueued_at == T0
    assert (patch.kind, patch.data, patch.priority) == (
        OpKind.PUT,
        {"a": 1, "b": 2},
        Priority.CRITICAL,
    )
    assert patch.op_id != first.op_id
    assert band(head[0].seq) == int(Priority.CRITICAL) and head[0].seq != old_seq
    assert key_rows(store.conn, "A") == [("items", "A", head[0].seq)]
    assert placed(store.outbox).pending_for("items", "A") == [patch]
    assert totals(store.conn) == counted(store.conn)
    assert store.outbox.depth() == 31
    # The rest keep their FIFO order behind it.
    assert [p.op for p in store.outbox.claim(limit=100)] == others


def test_a_raised_op_goes_behind_ops_already_in_its_new_band(tmp_path: Path) -> None:
    store = open_store(tmp_path / "agent.db", device_id="dev", now=FakeTime())
    put(store, "A", Priority.LOW)
    put(store, "n", Priority.NORMAL)
    put(store, "h", Priority.HIGH)
    put(store, "c", Priority.CRITICAL)

    store.outbox.record("items", "A", OpKind.PUT, {"x": 1}, Priority.HIGH)

    claimed = store.outbox.claim(limit=10)
    assert [(p.op.key, p.op.priority) for p in claimed] == [
        ("c", Priority.CRITICAL),
        ("h", Priority.HIGH),
        ("A", Priority.HIGH),
        ("n", Priority.NORMAL),
    ]


def test_a_batch_raising_a_priority_claims_in_the_order_one_by_one_recording_would(
    tmp_path: Path,
) -> None:
    writes: list[Any] = [
        ("items", "A", "put", {"x": 1}, "critical"),
        ("items", "B", "put", {"y": 1}, "critical"),
    ]
    batched = open_store(tmp_path / "batched.db", device_id="dev")
    single = open_store(tmp_path / "single.db", device_id="dev")
    for store in (batched, single):
        put(store, "A", Priority.NORMAL)

    batched.outbox.record_many(writes)
    for write in writes:
        single.outbox.record(*write)

    assert [p.op.key for p in single.outbox.claim()] == ["A", "B"]
    assert [p.op.key for p in batched.outbox.claim()] == ["A", "B"]


# --- 5. the clock cached on the connection ----------------------------------------------


def frozen(ms: int) -> Callable[[], int]:
    """A wall clock that never moves: every new stamp must come from the logical counter."""
    return lambda: ms


def test_two_connections_recording_alternately_stamp_strictly_increasing(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    one = open_store(path, device_id="dev", now_ms=frozen(V1_MS))
    two = open_store(path, now_ms=frozen(V1_MS))

    stamps = []
    for index in range(12):
        store = (one, two)[index % 2]
        stamps.append(store.outbox.record("items", f"k{index}", OpKind.PUT, {"i": index}).hlc)
        if index % 3 == 2:
            stamps += [op.hlc for op in store.outbox.record_many([("items", "m", "put", {})] * 2)]

    assert stamps == sorted(stamps)
    assert len(set(stamps)) == len(stamps)
    assert one.state.last_hlc() == two.state.last_hlc() == stamps[-1]


def test_a_stamp_after_another_connections_commit_is_above_its_last_stamp(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    behind = open_store(path, device_id="dev", now_ms=frozen(V1_MS))
    ahead = open_store(path, now_ms=frozen(V1_MS + 60_000))
    mine = behind.outbox.record("items", "a", OpKind.PUT, {}).hlc  # caches the clock

    theirs = ahead.outbox.record("items", "b", OpKind.PUT, {}).hlc
    again = behind.outbox.record("items", "c", OpKind.PUT, {}).hlc

    assert mine < theirs < again
    assert behind.state.stamp() > again


def test_changing_the_device_id_renames_the_node_of_the_next_stamps(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    one = open_store(path, device_id="dev-old", now_ms=frozen(V1_MS))
    two = open_store(path, now_ms=frozen(V1_MS))
    before = one.outbox.record("items", "a", OpKind.PUT, {}).hlc
    assert two.outbox.record("items", "b", OpKind.PUT, {}).hlc > before  # both cache a clock

    with transaction(one.conn):  # as Agent.init does
        one.outbox.place_intake()
        one.state.update_settings(device_id="dev-new")
    mine = one.outbox.record("items", "c", OpKind.PUT, {}).hlc
    theirs = two.outbox.record("items", "d", OpKind.PUT, {}).hlc

    assert parse_hlc(mine).node == parse_hlc(theirs).node == "dev-new"
    assert before < mine < theirs
    assert parse_hlc(one.state.stamp()).node == "dev-new"


def test_writes_rolled_back_with_an_outer_transaction_leave_the_totals_as_committed(
    tmp_path: Path,
) -> None:
    # Given an outbox with one op, whose connection keeps the totals between transactions
    store = open_store(tmp_path / "agent.db", device_id="dev", max_ops=3)
    put(store, "kept")
    # When writes inside an outer transaction are rolled back with it
    with pytest.raises(RuntimeError), transaction(store.conn):
        put(store, "gone")
        store.outbox.record_many([("items", "gone-too", OpKind.PUT, {"v": 1})])
        raise RuntimeError("the application changed its mind")
    # Then the totals are the committed ones: depth 1, and room for exactly two more ops
    assert store.outbox.depth() == 1
    assert len(placed(store.outbox)._conn.execute("SELECT * FROM outbox").fetchall()) == 1
    put(store, "second")
    put(store, "third")
    with pytest.raises(OutboxFull):
        put(store, "fourth")
    assert totals(store.conn) == counted(store.conn)


def test_a_transaction_begun_by_hand_sees_another_connections_commit(tmp_path: Path) -> None:
    # Given two connections to one outbox, the first keeping its totals and clock
    first = open_store(tmp_path / "agent.db", device_id="dev")
    second = open_store(tmp_path / "agent.db")
    put(first, "a")
    put(second, "b")  # commits: the first connection's copies are out of date
    # When the first records inside a transaction its caller began by hand
    first.conn.execute("BEGIN IMMEDIATE")
    op = put(first, "c")
    first.conn.execute("COMMIT")
    # Then it used the committed totals and clock: a fresh seq, a stamp above the others
    assert op.hlc > max(o.hlc for o in placed(first.outbox).pending_for("items", "b"))
    assert totals(first.conn) == counted(first.conn)
    assert first.outbox.depth() == 3 == second.outbox.depth()


def test_a_rollback_by_hand_leaves_the_totals_as_committed(tmp_path: Path) -> None:
    # Given an outbox of three ops
    store = open_store(tmp_path / "agent.db", device_id="dev", max_ops=4)
    ops = [put(store, key) for key in ("a", "b", "c")]
    # When an ack inside a transaction begun by hand is rolled back by hand
    store.conn.execute("BEGIN IMMEDIATE")
    assert store.outbox.ack([ops[0].op_id]) == 1
    store.conn.execute("ROLLBACK")
    # Then the outbox still counts three ops: one more fits, a fifth does not
    assert store.outbox.depth() == 3
    put(store, "d")
    with pytest.raises(OutboxFull):
        put(store, "e")
    # And emptying it for real leaves no op without its key row
    assert store.outbox.ack([op.op_id for op in ops]) == 3
    for key in ("d",):
        assert [op.key for op in placed(store.outbox).pending_for("items", key)] == [key]
    assert totals(store.conn) == counted(store.conn)


def test_an_outbox_on_a_plain_sqlite3_connection_records_and_empties(tmp_path: Path) -> None:
    # Given an outbox opened on a plain sqlite3 connection (no caches on it)
    path = tmp_path / "agent.db"
    open_database(path).close()
    conn = sqlite3.connect(str(path), isolation_level=None)
    outbox = Outbox(conn, AgentState(conn))
    ops = [outbox.record("items", key, OpKind.PUT, {"v": 1}) for key in ("a", "b")]
    # When every op is acked (which sweeps the key rows)
    assert outbox.ack([op.op_id for op in ops]) == 2
    # Then the outbox is empty and counted so
    assert outbox.depth() == 0
    assert totals(conn) == counted(conn)
    assert key_rows(conn) == []


def test_op_ids_do_not_repeat_when_the_application_seeds_random() -> None:
    import random

    # The ids' random part (the rest is the clock and a counter) ignores the global seed:
    # the same seed twice gives different bits, so ids made in one millisecond differ.
    random.seed(7)
    first = new_op_id()
    random.seed(7)
    second = new_op_id()
    assert first.split("-")[3:] != second.split("-")[3:]


def test_a_refused_write_caught_inside_an_outer_transaction_leaves_the_rest_to_commit(
    tmp_path: Path,
) -> None:
    # Given an outbox with room for two ops
    store = open_store(tmp_path / "agent.db", device_id="dev", max_ops=2)
    # When an outer transaction records two writes, then a batch that is refused and caught,
    # then commits
    with transaction(store.conn):
        put(store, "a")
        put(store, "a", more=1)  # merges into the first
        put(store, "b")
        with pytest.raises(OutboxFull):
            store.outbox.record_many([("items", "c", OpKind.PUT, {"v": 1})] * 2)
    # Then what was recorded before the refusal is there, counted, and nothing else
    assert sorted(p.op.key for p in store.outbox.claim()) == ["a", "b"]
    assert store.outbox.depth() == 2
    assert totals(store.conn) == counted(store.conn)
    assert key_rows(store.conn, "c") == []
