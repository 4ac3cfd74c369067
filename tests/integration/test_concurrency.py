"""Concurrent writers against moto through the real logic: no lost update, no skipped change.

DynamoDB makes each conditional item write atomic; in-process moto does not across threads,
so `atomic_moto_requests` serializes the emulator's request handling (only the emulator).
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from shared.config import load_settings
from shared.conflict import apply_lww, replay
from shared.contracts import Op, parse_op
from shared.dal import Principal, records_model
from shared.dal.records import load
from shared.logic.apply import apply_op
from shared.logic.changes import read_changes
from tests.integration.conftest import Cloud, Device
from tests.support.aws import atomic_moto_requests, dynamodb_client_of, slow_requests

KEYS = ["alpha", "beta", "gamma"]


@pytest.fixture(autouse=True)
def patient_appliers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Far more contention than production sees: let an op retry until it wins (by default it
    is queued after 8 lost races, which is tested elsewhere)."""
    monkeypatch.setenv("APPLY_MAX_ATTEMPTS", "200")


def conflicting_ops(rng: random.Random, count: int) -> list[Op]:
    devices = [Device(f"dev-{i}") for i in range(4)]
    ops = []
    for _ in range(count):
        device = rng.choice(devices)
        kind = rng.choice(["put", "put", "patch", "patch", "delete"])
        data = None if kind == "delete" else {rng.choice("abcd"): rng.randint(0, 99)}
        if kind == "patch" and rng.random() < 0.2:
            data = {rng.choice("abcd"): None}
        ops.append(parse_op(device.op(kind, rng.choice(KEYS), data)))
    return ops


def test_concurrent_conflicting_ops_end_in_exactly_the_lww_state(cloud: Cloud) -> None:
    # Given 120 conflicting ops on 3 records from 4 devices, shuffled
    rng = random.Random(7)
    ops = conflicting_ops(rng, 120)
    rng.shuffle(ops)
    settings = load_settings()
    client = dynamodb_client_of(records_model())
    expected = {key: replay(apply_lww, [op for op in ops if op.key == key]) for key in KEYS}
    with atomic_moto_requests(client), ThreadPoolExecutor(max_workers=8) as pool:
        # When 8 threads apply them at once through the real apply path
        list(pool.map(lambda op: apply_op("acme", op, settings), ops))
        # Then every record is exactly what LWW gives for its ops (no update lost)
        assert {key: stored_record(key) for key in KEYS} == expected
        # And when every op is delivered again, concurrently, nothing changes
        rng.shuffle(ops)
        again = list(pool.map(lambda op: apply_op("acme", op, settings).status.value, ops))
    assert set(again) <= {"duplicate", "superseded"}
    assert {key: stored_record(key) for key in KEYS} == expected


def stored_record(key: str) -> Any:
    stored = load("acme", "preferences", key)
    return stored.record if stored is not None else None


def test_concurrent_patches_of_one_record_lose_no_update(cloud: Cloud) -> None:
    # Given 60 patches, each setting its own field, of the same record from 4 devices
    devices = [Device(f"dev-{i}") for i in range(4)]
    ops = [parse_op(devices[i % 4].op("patch", "shared", {f"f{i}": i})) for i in range(60)]
    settings = load_settings()
    # When 8 threads apply them at once (every write contends for the same version)
    with (
        atomic_moto_requests(dynamodb_client_of(records_model())),
        ThreadPoolExecutor(max_workers=8) as pool,
    ):
        statuses = list(pool.map(lambda op: apply_op("acme", op, settings).status.value, ops))
    # Then every patch took effect: the record holds all 60 fields
    assert statuses == ["applied"] * 60
    stored = load("acme", "preferences", "shared")
    assert stored is not None
    assert stored.record.data == {f"f{i}": i for i in range(60)}


def test_every_op_counts_once_even_when_two_appliers_race_on_it(cloud: Cloud) -> None:
    # Given one op delivered to 6 appliers at the same time (a batch retry and the worker)
    op = parse_op(Device().op("patch", "race", {"n": 1}))
    settings = load_settings()
    barrier = threading.Barrier(6)

    def apply() -> str:
        barrier.wait()
        return apply_op("acme", op, settings).status.value

    with atomic_moto_requests(dynamodb_client_of(records_model())), ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(lambda _: apply(), range(6)))
    # Then exactly one applied it and the others saw a duplicate
    assert sorted(statuses) == ["applied"] + ["duplicate"] * 5
    stored = load("acme", "preferences", "race")
    assert stored is not None and stored.version == 1


def _write_while_delayed(
    settings: Any, slow: Op, fast: Op, delay_s: float
) -> tuple[set[str], set[str]]:
    """Write `slow` (stamped first, committed late) and `fast`; read the feed in between.

    Returns the keys seen by the read in between and by the reads after both committed.
    """
    principal = Principal("acme", "pi-7")
    client = dynamodb_client_of(records_model())
    with (
        atomic_moto_requests(client),
        slow_requests(client, "PutItem", lambda: delay_s, when=lambda body: b"#slow" in body),
    ):
        writer = threading.Thread(target=apply_op, args=("acme", slow, settings))
        writer.start()
        time.sleep(delay_s / 5)  # `slow` is stamped and on its way
        apply_op("acme", fast, settings)
        first = read_changes(principal, after=None, limit=100, collection=None, settings=settings)
        writer.join()
    time.sleep(settings.changes_settle_ms / 1000 + 0.05)
    second = read_changes(
        principal, after=first.page.cursor, limit=100, collection=None, settings=settings
    )
    return {r.key for r in first.page.changes}, {r.key for r in second.page.changes}


@pytest.mark.parametrize(("settle_ms", "skips"), [(1200, False), (0, True)])
def test_settle_horizon_keeps_a_slow_commit_from_being_skipped(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch, settle_ms: int, skips: bool
) -> None:
    # Given a write stamped first but committed 600 ms late, and a later write committed at once
    monkeypatch.setenv("CHANGES_SETTLE_MS", str(settle_ms))
    device = Device()
    slow = parse_op(device.op("put", "slow", {"v": 1}))
    fast = parse_op(device.op("put", "fast", {"v": 2}))
    # When the feed is read between the two commits and again afterwards
    seen_first, seen_after = _write_while_delayed(load_settings(), slow, fast, 0.6)
    seen = seen_first | seen_after
    # Then with the settle horizon nothing is skipped; without it the slow write is lost
    assert "fast" in seen
    assert ("slow" not in seen) is skips


def test_feed_read_concurrently_with_writers_skips_nothing(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given writes that take 0-40 ms on the wire (so stamp order != commit order)
    monkeypatch.setenv("CHANGES_SETTLE_MS", "500")
    settings = load_settings()
    principal = Principal("acme", "pi-7")
    rng = random.Random(11)
    devices = [Device(f"w-{i}") for i in range(4)]
    ops = [parse_op(devices[i % 4].op("put", f"key-{i % 20}", {"n": i})) for i in range(60)]
    seen: dict[str, str] = {}
    done = threading.Event()

    def reader() -> None:
        cursor = None
        while True:
            finished = done.is_set()
            page = read_changes(
                principal, after=cursor, limit=7, collection=None, settings=settings
            ).page
            for record in page.changes:
                seen[record.key] = max(seen.get(record.key, ""), record.hlc)
            cursor = page.cursor
            if finished and not page.has_more:
                return
            if not page.has_more:
                time.sleep(0.01)

    client = dynamodb_client_of(records_model())
    # When 4 writers and a reader run at once
    with (
        atomic_moto_requests(client),
        slow_requests(client, "PutItem", lambda: rng.uniform(0, 0.04)),
    ):
        reading = threading.Thread(target=reader)
        reading.start()
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda op: apply_op("acme", op, settings), ops))
        time.sleep(settings.changes_settle_ms / 1000 + 0.05)
        done.set()
        reading.join(timeout=30)
    # Then the reader saw the final version of every record
    final = {
        key: stored.record.hlc
        for key in {op.key for op in ops}
        if (stored := load("acme", "preferences", key)) is not None
    }
    assert len(final) == 20
    assert seen == final
