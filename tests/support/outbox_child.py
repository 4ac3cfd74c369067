"""A child process for the outbox's multi-process and kill tests.

    python -m tests.support.outbox_child enqueue DB COUNT TAG
        records COUNT puts on unique keys; prints each op id once record() has returned
    python -m tests.support.outbox_child sync DB SERVER_DB
        claims batches forever and "sends" them to SERVER_DB (a stand-in for the cloud):
        records each sent op id, acks it in the outbox, then records the ack
    python -m tests.support.outbox_child claim DB
        claims everything, prints the op ids and waits for stdin to close (a live lease holder)

Each mode prints `ready` first, so a test can kill it while it is working, not starting up.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from device_agent.db import open_database, transaction
from device_agent.outbox import Outbox
from device_agent.state import AgentState

ROOT = Path(__file__).resolve().parents[2]


def spawn(*args: str, stdin: bool = False) -> subprocess.Popen[str]:
    """Start this script as a child process (the parent side of the tests)."""
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.outbox_child", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )


def wait_ready(child: subprocess.Popen[str]) -> None:
    assert child.stdout is not None
    line = child.stdout.readline()
    if line.strip() != "ready":
        child.kill()
        raise RuntimeError(f"child did not start: {line!r}")


def read_until(child: subprocess.Popen[str], marker: str) -> list[str]:
    """Lines the child prints before `marker` (blocking until it prints it)."""
    assert child.stdout is not None
    lines = []
    for line in child.stdout:
        if line.strip() == marker:
            return lines
        lines.append(line.strip())
    raise RuntimeError(f"child ended before printing {marker!r}")


def complete_lines(child: subprocess.Popen[str]) -> list[str]:
    """The lines the (finished or killed) child printed in full; a torn last line is dropped."""
    assert child.stdout is not None
    text = child.stdout.read()
    child.wait()
    return [line for line in text.split("\n")[:-1] if line]


# A child whose test died (pytest killed, a timeout) must not loop forever: it stops when
# orphaned, and after this many seconds in any case.
MAX_LIFETIME_S = 120.0


def abandoned(parent: int, started: float) -> bool:
    return os.getppid() != parent or time.monotonic() - started > MAX_LIFETIME_S


def main(argv: list[str]) -> int:
    mode, path = argv[0], argv[1]
    conn = open_database(path, busy_timeout_s=30)
    outbox = Outbox(conn, AgentState(conn))
    if mode == "enqueue":
        return enqueue(outbox, int(argv[2]), argv[3])
    if mode == "sync":
        return sync(outbox, argv[2])
    if mode == "claim":
        return hold(outbox)
    raise SystemExit(f"unknown mode {mode}")


def enqueue(outbox: Outbox, count: int, tag: str) -> int:
    parent, started = os.getppid(), time.monotonic()
    print("ready", flush=True)
    for index in range(count):
        if index % 100 == 0 and abandoned(parent, started):
            return 1
        op = outbox.record("items", f"{tag}-{index}", "put", {"n": index, "tag": tag})
        print(op.op_id, flush=True)
    return 0


def sync(outbox: Outbox, server_path: str) -> int:
    server = sqlite3.connect(server_path, timeout=30, isolation_level=None)
    server.execute("CREATE TABLE IF NOT EXISTS sent (op_id TEXT NOT NULL)")
    server.execute("CREATE TABLE IF NOT EXISTS acked (op_id TEXT NOT NULL)")
    parent, started = os.getppid(), time.monotonic()
    print("ready", flush=True)
    rng = random.Random()
    while not abandoned(parent, started):
        batch = outbox.claim(limit=rng.randint(1, 20), lease_s=60)
        if not batch:
            time.sleep(0.005)
            continue
        ids = [{"op_id": pending.op.op_id} for pending in batch]
        with transaction(server):
            server.executemany("INSERT INTO sent (op_id) VALUES (:op_id)", ids)
        outbox.ack(item["op_id"] for item in ids)
        with transaction(server):
            server.executemany("INSERT INTO acked (op_id) VALUES (:op_id)", ids)
    return 1


def hold(outbox: Outbox) -> int:
    claimed = outbox.claim(limit=1000, lease_s=3600)
    print("ready", flush=True)
    for pending in claimed:
        print(pending.op.op_id, flush=True)
    print("done", flush=True)
    sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
