"""The outbox side by side with persist-queue, litequeue and a raw sqlite3 baseline.

    python -m bench.outbox            # full run (20,000 ops; a 1,000,000-op backlog), minutes
    python -m bench.outbox --quick    # smoke run with small sizes (not for quoting)

Every subject runs in its own child process (so its peak RSS is its own) on a fresh file in
one temporary directory, with WAL and synchronous=FULL. Each uses its natural API: the outbox
records one write per transaction or a batch per transaction and drains with claim(100) +
ack (two transactions per 100 ops); persist-queue's SQLiteAckQueue commits every put, get
and ack (it refuses auto_commit=False); litequeue commits every put (or a batch inside its
transaction()), and every pop and done. The raw baseline is one INSERT per transaction (the
fsync limit), executemany for batches, and DELETE ... RETURNING of 100 rows per transaction.
The outbox's drain rate is also measured against backlog size (1,000, 10,000, 100,000 and
1,000,000 pending ops; quick: 1,000, 10,000 and 50,000), draining the same sample from each.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Optional

PAYLOAD = {"currency": "BTC", "theme": "dark", "note": "x" * 48}
BATCH = 1_000
DRAIN_BATCH = 100
SUBJECTS = ("raw sqlite3", "fieldsync outbox", "persist-queue", "litequeue")


def sizes(quick: bool) -> dict[str, int]:
    if quick:
        return {"single": 300, "batch": 2_000, "drain": 2_000, "peer_drain": 300, "backlog": 50_000}
    return {
        "single": 20_000,
        "batch": 20_000,
        "drain": 20_000,
        "peer_drain": 2_000,
        "backlog": 1_000_000,
    }


# --- the subjects (each runs in a child process) ---------------------------------------------


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def _timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _raw(folder: Path, size: dict[str, int]) -> dict[str, float]:
    def connect(name: str) -> sqlite3.Connection:
        conn = sqlite3.connect(folder / name, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE q (seq INTEGER PRIMARY KEY, data TEXT NOT NULL)")
        return conn

    text = json.dumps(PAYLOAD)
    batched = connect("batch.db")

    def in_batches() -> None:
        for _ in range(0, size["batch"], BATCH):
            batched.execute("BEGIN IMMEDIATE")
            batched.executemany("INSERT INTO q (data) VALUES (:d)", [{"d": text}] * BATCH)
            batched.execute("COMMIT")

    def drain() -> None:
        while True:
            batched.execute("BEGIN IMMEDIATE")
            rows = batched.execute(
                "DELETE FROM q WHERE seq IN (SELECT seq FROM q ORDER BY seq LIMIT :n) "
                "RETURNING seq, data",
                {"n": DRAIN_BATCH},
            ).fetchall()
            batched.execute("COMMIT")
            if not rows:
                return

    return {
        "batch_ops_s": _rate(size["batch"], _timed(in_batches)),
        "drain_ops_s": _rate(size["batch"], _timed(drain)),
    }


def _open_outbox(path: Path) -> tuple[Any, sqlite3.Connection]:
    """A fresh outbox as the agent opens it (WAL, synchronous=FULL), unbounded; its conn."""
    from device_agent.db import open_database
    from device_agent.outbox import Outbox
    from device_agent.state import AgentState

    conn = open_database(path, synchronous="FULL")
    return Outbox(conn, AgentState(conn), max_ops=10_000_000, max_bytes=2**40), conn


def _fieldsync(folder: Path, size: dict[str, int]) -> dict[str, float]:
    batched, _ = _open_outbox(folder / "batch.db")

    def in_batches() -> None:
        for start in range(0, size["batch"], BATCH):
            batched.record_many(
                [("bench", f"k{i}", "put", PAYLOAD) for i in range(start, start + BATCH)]
            )

    return {
        "batch_ops_s": _rate(size["batch"], _timed(in_batches)),
        "drain_ops_s": _rate(size["batch"], _timed(lambda: _drain_outbox(batched))),
    }


def _drain_outbox(outbox: Any, limit: int = 0) -> int:
    drained = 0
    while not limit or drained < limit:
        batch = outbox.claim(limit=DRAIN_BATCH)
        if not batch:
            break
        outbox.ack([pending.op.op_id for pending in batch])
        drained += len(batch)
    return drained


def _persist_queue(folder: Path, size: dict[str, int]) -> dict[str, float]:
    from persistqueue import SQLiteAckQueue
    from persistqueue.serializers import json as json_serializer

    def fresh(name: str) -> Any:
        queue = SQLiteAckQueue(str(folder / name), serializer=json_serializer)
        queue._conn.execute("PRAGMA synchronous = FULL")
        return queue

    queue = fresh("drain")
    for _ in range(size["peer_drain"]):
        queue.put(PAYLOAD)

    def drain() -> None:
        for _ in range(size["peer_drain"]):
            queue.ack(queue.get(block=False))

    # No batch API: every put commits, so it has no batched figure.
    return {"drain_ops_s": _rate(size["peer_drain"], _timed(drain))}


def _litequeue(folder: Path, size: dict[str, int]) -> dict[str, float]:
    from litequeue import LiteQueue

    def fresh(name: str) -> Any:
        queue = LiteQueue(folder / name)
        queue.conn.execute("PRAGMA synchronous = FULL")
        return queue

    text = json.dumps(PAYLOAD)
    batched = fresh("batch.db")

    def in_batches() -> None:
        for _ in range(0, size["batch"], BATCH):
            with batched.transaction(mode="IMMEDIATE"):
                for _ in range(BATCH):
                    batched.put(text)

    def drain() -> None:
        for _ in range(size["peer_drain"]):
            message = batched.pop()
            batched.done(message.message_id, claim_id=message.claim_id)

    return {
        "batch_ops_s": _rate(size["batch"], _timed(in_batches)),
        "drain_ops_s": _rate(size["peer_drain"], _timed(drain)),
    }


def _single(folder: Path, size: dict[str, int]) -> dict[str, float]:
    """Durable single enqueues, all subjects interleaved in rounds so that they share the
    disk's mood (fsync latency drifts with other load); ops/s per subject."""
    from litequeue import LiteQueue
    from persistqueue import SQLiteAckQueue
    from persistqueue.serializers import json as json_serializer

    text = json.dumps(PAYLOAD)
    raw = sqlite3.connect(folder / "raw.db", isolation_level=None)
    raw.execute("PRAGMA journal_mode = WAL")
    raw.execute("PRAGMA synchronous = FULL")
    raw.execute("CREATE TABLE q (seq INTEGER PRIMARY KEY, data TEXT NOT NULL)")
    outbox, _ = _open_outbox(folder / "outbox.db")
    pq = SQLiteAckQueue(str(folder / "pq"), serializer=json_serializer)
    pq._conn.execute("PRAGMA synchronous = FULL")
    lq = LiteQueue(folder / "lq.db")
    lq.conn.execute("PRAGMA synchronous = FULL")
    counter = iter(range(10**9))
    alone = _statements_alone(folder / "alone.db")
    python_on_raw = _python_on_raw(folder / "python_on_raw.db")

    def raw_put() -> None:
        raw.execute("BEGIN IMMEDIATE")
        raw.execute("INSERT INTO q (data) VALUES (:d)", {"d": text})
        raw.execute("COMMIT")

    puts: dict[str, Callable[[], Any]] = {
        "raw sqlite3": raw_put,
        "fieldsync outbox": lambda: outbox.record("bench", f"k{next(counter)}", "put", PAYLOAD),
        "persist-queue": lambda: pq.put(PAYLOAD),
        "litequeue": lambda: lq.put(text),
        STATEMENTS_ALONE: alone,
        PYTHON_ON_RAW: python_on_raw,
    }
    rounds = 10
    per_round = max(1, size["single"] // rounds)
    spent = dict.fromkeys(puts, 0.0)
    first = {}
    names = list(puts)
    for round_no in range(rounds):
        for name in names[round_no % len(names) :] + names[: round_no % len(names)]:
            put = puts[name]
            began = time.perf_counter()
            for _ in range(per_round):
                put()
            spent[name] += time.perf_counter() - began
        if round_no == 0:
            first = {f"first round: {name}": _rate(per_round, spent[name]) for name in names}
    rates = {name: _rate(per_round * rounds, seconds) for name, seconds in spent.items()}
    return {**rates, **first}


# The outbox's statements for a write, run with precomputed values and next to no Python: what
# `Outbox.record` would cost if its Python (validation, stamp, op id, bounds) were free. It
# bounds what any Python on top of this layout can reach.
STATEMENTS_ALONE = "outbox statements alone"


def _statements_alone(path: Path) -> Callable[[], None]:
    from device_agent.outbox_sql import INTAKE

    _, conn = _open_outbox(path)
    conn.execute("PRAGMA synchronous = FULL")  # (opening it ran a relaxed transaction)
    text = json.dumps(PAYLOAD, separators=(",", ":"))
    counter = iter(range(1, 10**9))

    def put() -> None:
        n = next(counter)
        row = {
            "op_id": f"op-{n}",
            "collection": "bench",
            "key": f"k{n}",
            "kind": "put",
            "hlc": f"{1_700_000_000_000 + n:013d}-00000-dev-alone",
            "data": text,
            "priority": 2,
            "size": 300,
            "enqueued_at": 0.0,
        }
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("PRAGMA data_version").fetchone()  # (the caches' check)
        conn.execute(INTAKE, row)
        conn.execute("COMMIT")

    return put


# The raw baseline's write with the Python the outbox runs before its statement (validation
# and encoding, the HLC stamp, the op id, the Op): what the outbox would cost if its storage
# were as cheap as the baseline's. It bounds what any layout under that Python can reach.
PYTHON_ON_RAW = "raw sqlite3 + the outbox's Python"


def _python_on_raw(path: Path) -> Callable[[], None]:
    from device_agent.op_ids import new_op_id
    from device_agent.outbox_draft import draft_write
    from shared.contracts.hlc import HybridLogicalClock

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE q (seq INTEGER PRIMARY KEY, data TEXT NOT NULL)")
    clock = HybridLogicalClock("dev-0123456789ab")
    placeholder = f"{0:013d}-00000-{clock.node}"
    counter = iter(range(1, 10**9))

    def put() -> None:
        draft = draft_write(
            "bench", f"k{next(counter)}", "put", PAYLOAD, placeholder_hlc=placeholder
        )
        draft.op(new_op_id(), clock.send())
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO q (data) VALUES (:d)", {"d": draft.text})
        conn.execute("COMMIT")

    return put


def backlog_sizes(top: int) -> tuple[int, ...]:
    """The backlog sizes the drain rate is measured at: 1,000, 10,000, ... below `top`, then
    `top` (the big backlog)."""
    steps: list[int] = []
    size = 1_000
    while size < top:
        steps.append(size)
        size *= 10
    return (*steps, top)


def _fill(outbox: Any, count: int, first_key: int = 0) -> float:
    """Record `count` ops (5 priorities) with record_many, 5,000 per transaction; seconds."""
    chunk = 5_000
    end = first_key + count
    started = time.perf_counter()
    for start in range(first_key, end, chunk):
        outbox.record_many(
            [
                ("bench", f"k{i}", "put", PAYLOAD, i % 5)
                for i in range(start, min(start + chunk, end))
            ]
        )
    return time.perf_counter() - started


def _timed_drain(outbox: Any, limit: int) -> tuple[int, float]:
    """(ops drained, seconds) draining up to `limit` ops (whole claims of 100)."""
    started = time.perf_counter()
    drained = _drain_outbox(outbox, limit)
    return drained, time.perf_counter() - started


# The drain sample is taken from every backlog size a slice at a time, the sizes in turn, so
# that all sizes see the same minutes of a shared machine (drawn one size after another, the
# drift between minutes showed up as a difference between sizes).
DRAIN_SLICE = 1_000


def _drains_in_turn(
    backlogs: dict[int, tuple[Any, sqlite3.Connection]], sample: int
) -> dict[int, tuple[int, float]]:
    """{backlog size: (ops drained, ops/s)} draining `sample` ops from each outbox, a slice
    of each in turn. An outbox that empties (a backlog smaller than the sample) is filled
    again to its size before its next slice; only the drains are timed."""
    drained = dict.fromkeys(backlogs, 0)
    spent = dict.fromkeys(backlogs, 0.0)
    turn = 0
    while any(done < sample for done in drained.values()):
        order = list(backlogs)
        for backlog in order[turn % len(order) :] + order[: turn % len(order)]:
            if drained[backlog] >= sample:
                continue
            outbox, _ = backlogs[backlog]
            if outbox.depth() == 0:
                _fill(outbox, backlog, first_key=drained[backlog])
            count, seconds = _timed_drain(outbox, min(DRAIN_SLICE, sample - drained[backlog]))
            drained[backlog] += count
            spent[backlog] += seconds
        turn += 1
    return {n: (drained[n], _rate(drained[n], spent[n])) for n in backlogs}


def _backlog(folder: Path, size: dict[str, int]) -> dict[str, Any]:
    """The outbox with a large backlog: build rate and claim latency."""
    top = size["backlog"]
    outbox, conn = _open_outbox(folder / "backlog.db")
    build_s = _fill(outbox, top)
    claims: list[float] = []
    for _ in range(200):
        began = time.perf_counter()
        batch = outbox.claim(limit=DRAIN_BATCH)
        claims.append(time.perf_counter() - began)
        outbox.release_unattempted([pending.op.op_id for pending in batch])
    query = _claim_query_ms(conn)
    conn.close()
    claims.sort()
    return {
        "backlog_ops": top,
        "backlog_build_ops_s": _rate(top, build_s),
        "claim_ms_median": 1000 * statistics.median(claims),
        "claim_ms_p99": 1000 * claims[int(len(claims) * 0.99) - 1],
        "claim_query_ms_median": query,
    }


def _drain_sizes(folder: Path, size: dict[str, int]) -> dict[str, Any]:
    """Drain rate against backlog size: an outbox of each size, all open, drained in turn.

    A process of its own: holding four outboxes open is this measurement's need, not the
    agent's, so its peak RSS is not the outbox's."""
    sizes_ = backlog_sizes(size["backlog"])
    backlogs = {n: _open_outbox(folder / f"backlog-{n}.db") for n in sizes_}
    try:
        drains = _drains_in_turn(backlogs, size["drain"])
    finally:
        for _, conn in backlogs.values():
            conn.close()
    return {
        # JSON keys are strings: backlog size -> ops/s, and -> ops drained for that figure.
        "drain_by_backlog": {str(n): drains[n][1] for n in sorted(drains)},
        "drained_by_backlog": {str(n): drains[n][0] for n in sorted(drains)},
        "drain_1m_ops_s": drains[sizes_[-1]][1],
        "drain_1k_ops_s": drains[1_000][1],
    }


def _claim_query_ms(conn: sqlite3.Connection) -> Optional[float]:
    """The claim's candidate query alone (no write, no commit), median of 200; None when the
    outbox no longer has that query as it is (it is internal: outbox_sql.CANDIDATES)."""
    try:
        from device_agent.outbox_sql import CANDIDATES
    except ImportError:
        return None
    times = []
    try:
        for _ in range(200):
            began = time.perf_counter()
            conn.execute(CANDIDATES, {"now": time.time(), "limit": DRAIN_BATCH}).fetchall()
            times.append(time.perf_counter() - began)
    except sqlite3.Error:
        return None
    return 1000 * statistics.median(times)


CHILDREN: dict[str, Callable[[Path, dict[str, int]], dict[str, Any]]] = {
    "raw sqlite3": _raw,
    "fieldsync outbox": _fieldsync,
    "persist-queue": _persist_queue,
    "litequeue": _litequeue,
    "backlog": _backlog,
    "drain_sizes": _drain_sizes,
    "single": _single,
}


# The batch, drain and backlog figures are the median of this many runs, each in a child
# process on fresh files. The runs go round the subjects in turn (raw, outbox, peers,
# backlog, then again), so that a slow minute on a shared machine slows one run of each
# rather than all runs of one.
REPEATS = 3


def _child(subject: str, quick: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-outbox-") as folder:
        result = CHILDREN[subject](Path(folder), sizes(quick))
    # ru_maxrss is KiB on Linux, bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result["peak_rss_mib"] = peak / (1024 * 1024 if sys.platform == "darwin" else 1024)
    print(json.dumps(result))


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over runs of one subject (nested tables figure by figure; peak
    RSS is the largest)."""
    merged: dict[str, Any] = {}
    for name, first in runs[0].items():
        values = [run[name] for run in runs]
        if isinstance(first, dict):
            merged[name] = median_of(values)
        elif name == "peak_rss_mib":
            merged[name] = max(values)  # a memory ceiling: the worst run counts
        elif isinstance(first, (int, float)) and not isinstance(first, bool):
            merged[name] = statistics.median(values)
        else:
            merged[name] = first
    return merged


# --- the parent ------------------------------------------------------------------------------


def _measure(subject: str, quick: bool) -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    args = [sys.executable, "-m", "bench.outbox", "--child", subject]
    if quick:
        args.append("--quick")
    done = subprocess.run(
        args,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{subject} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def run(quick: bool) -> dict[str, Any]:
    """Measure every subject and the outbox backlog; JSON-serialisable results."""
    started = time.perf_counter()
    single = _measure("single", quick)
    runs: dict[str, list[dict[str, Any]]] = {
        name: [] for name in (*SUBJECTS, "backlog", "drain_sizes")
    }
    for _ in range(REPEATS):
        for name, done in runs.items():
            done.append(_measure(name, quick))
    subjects = {name: median_of(runs[name]) for name in SUBJECTS}
    for name in SUBJECTS:
        subjects[name]["single_ops_s"] = single[name]
    single.pop("peak_rss_mib", None)
    backlog = median_of(runs["backlog"])
    by_size = median_of(runs["drain_sizes"])
    backlog["drain_sizes_peak_rss_mib"] = by_size.pop("peak_rss_mib")
    backlog.update(by_size)
    return {
        "quick": quick,
        "sizes": sizes(quick),
        "sqlite": sqlite3.sqlite_version,
        "python": sys.version.split()[0],
        "versions": {
            "persist-queue": _version("persist-queue"),
            "litequeue": _version("litequeue"),
        },
        "subjects": subjects,
        "single": single,
        "backlog": backlog,
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the raw results to this file")
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.quick)
        return
    results = run(args.quick)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    from bench.outbox_report import render_text

    print(render_text(results, " ".join(["python -m bench.outbox", *sys.argv[1:]])))


if __name__ == "__main__":
    main()
