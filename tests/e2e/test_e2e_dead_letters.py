"""A poison op reaches the dead-letter queue through the retry queue, and is replayed.

Given a local cloud whose CONFLICT_STRATEGIES assigns the collection `poison` to a resolver
nobody registered, when a device syncs a write to it, then the server answers `queued`, the
retry worker fails it until the redrive policy moves it to the DLQ, and `sync-admin dlq list`
shows it with its op id; when the configuration is fixed and `sync-admin dlq redrive` replays
it, then the write is applied and reaches the device through the changes feed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from local.demo import Device
from tests.e2e.conftest import LOCAL_ARGS
from tests.support.local_stack import ROOT, LocalStack


@pytest.fixture(scope="module")
def broken_cloud() -> Iterator[LocalStack]:
    args = [*LOCAL_ARGS, "--parameter-overrides", "ConflictStrategies=poison=no_such_resolver"]
    with LocalStack.start(args=args) as stack:
        yield stack


def _admin(cloud: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "admin.cli", "--local", cloud.endpoint, *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def _dead_letters(cloud: LocalStack) -> list[dict[str, Any]]:
    listing = _admin(cloud, "dlq", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    return list(json.loads(listing.stdout)["messages"])


def _wait_for(condition: Any, timeout_s: float = 40) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError("condition not met in time")


def test_a_poison_op_lands_in_the_dlq_and_is_replayed_after_the_fix(
    broken_cloud: LocalStack, tmp_path: Path
) -> None:
    device = Device(
        "pi", "pi-poison", tmp_path / "pi.db", broken_cloud.register("dlq", "pi-poison")
    )
    device.init(broken_cloud.endpoint)
    op_id = device.agent("put", "poison", "p1", '{"level": 7}').stdout.strip()

    summary = device.sync()
    assert summary["queued"] == "1"

    (letter,) = _wait_for(lambda: _dead_letters(broken_cloud))
    assert (letter["op_id"], letter["tenant_id"], letter["reason"]) == (
        op_id,
        "dlq",
        "unknown_resolver",
    )

    fixed = requests.post(
        f"{broken_cloud.endpoint}/_local/environment", json={"CONFLICT_STRATEGIES": ""}, timeout=10
    )
    assert fixed.status_code == 200
    redrive = _admin(broken_cloud, "dlq", "redrive", letter["message_id"])
    assert redrive.returncode == 0, redrive.stderr

    def replayed() -> bool:
        device.sync()
        return device.get("poison", "p1") == {"level": 7}

    _wait_for(replayed)
    assert _dead_letters(broken_cloud) == []
