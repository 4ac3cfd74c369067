"""What the cloud holds, read over the public API, and what it should hold (the LWW model)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Optional

import requests

from device_agent import Agent
from local.demo import Device
from shared.conflict import apply_lww, replay
from shared.contracts import Op


def server_records(endpoint: str, token: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Every record of the token's tenant, by paging /v1/changes to the end. Use the token
    of a device that wrote none of them: the feed's fresh tail leaves out a reader's own
    writes until they have settled."""
    records: dict[tuple[str, str], dict[str, Any]] = {}
    cursor: Optional[str] = None
    for _ in range(1000):
        params = {"limit": "1000", **({"after": cursor} if cursor else {})}
        answer = requests.get(
            f"{endpoint}/v1/changes",
            params=params,
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        answer.raise_for_status()
        page = answer.json()
        for change in page["changes"]:
            records[(change["collection"], change["key"])] = change
        cursor = page["cursor"]
        if not page["has_more"]:
            return records
    raise AssertionError("the changes feed never ended")


def pending_ops(device: Device, keys: Iterable[tuple[str, str]]) -> list[Op]:
    """The ops in a device's outbox, read through the agent's own API."""
    with Agent.open(device.db) as agent:
        return [op for collection, key in keys for op in agent.outbox.pending_for(collection, key)]


def expected_view(ops: Iterable[Op]) -> dict[tuple[str, str], Optional[dict[str, Any]]]:
    """The document each key must show: LWW over every op, in any order (None if deleted)."""
    by_key: dict[tuple[str, str], list[Op]] = {}
    for op in ops:
        by_key.setdefault((op.collection, op.key), []).append(op)
    views: dict[tuple[str, str], Optional[dict[str, Any]]] = {}
    for key, key_ops in by_key.items():
        record = replay(apply_lww, key_ops)
        views[key] = dict(record.data) if record is not None and record.data else None
    return views


def sync_until_drained(devices: list[Device], *, timeout_s: float = 120) -> None:
    """Sync every device until all outboxes are empty, then once more (the feed's fresh tail
    brings each device the others' last writes at once)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        results = [device.sync() for device in devices]
        if all(r["exit"] == "0" for r in results) and all(
            device.status()["pending"] == 0 for device in devices
        ):
            for device in devices:
                device.sync()
            return
        time.sleep(0.5)
    raise AssertionError(f"outboxes not drained in {timeout_s} s")
