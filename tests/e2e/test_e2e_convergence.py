"""Several devices write to the same keys through a faulty network and still converge.

Given three devices, each behind its own fault proxy, writing puts, patches and deletes to
four shared keys over five rounds, while the proxies cut responses after the server applied
the request, reset connections, black-hole traffic, add latency, and flap between them;
when the network heals and every device syncs;
then every outbox is empty, nothing is quarantined, the server holds for each key exactly
what last-writer-wins over all the ops gives, and every device's local view equals it.

A response lost after the server applied the request is also shown on its own: the resend is
answered `duplicate` (applied once, not lost).
"""

from __future__ import annotations

import random
import threading
from typing import Any, Optional

from local.demo import Device
from shared.contracts import Op
from tests.e2e.conftest import DeviceFactory
from tests.e2e.server_view import (
    expected_view,
    pending_ops,
    server_records,
    sync_until_drained,
)
from tests.support.fault_proxy import Fault, FaultProxy
from tests.support.local_stack import LocalStack

TENANT = "convergence"
KEYS = [("shared", f"k{i}") for i in range(4)]
WRITES_PER_ROUND = 3
ROUND_FAULTS: list[Optional[Fault]] = [
    Fault.CUT_AFTER_REQUEST,
    Fault.RESET,
    Fault.BLACKHOLE,
    Fault.LATENCY,
    None,  # flapping through every fault
]
FLAP = [
    (Fault.NONE, 0.4),
    (Fault.CUT_AFTER_REQUEST, 0.4),
    (Fault.LATENCY, 0.3),
    (Fault.RESET, 0.3),
    (Fault.BLACKHOLE, 0.5),
]


def _write(device: Device, rng: random.Random) -> None:
    for _ in range(WRITES_PER_ROUND):
        collection, key = rng.choice(KEYS)
        roll = rng.random()
        fields = {name: rng.randint(0, 99) for name in rng.sample("abcd", rng.randint(1, 3))}
        if roll < 0.45:
            device.write("put", collection, key, fields)
        elif roll < 0.85:
            if rng.random() < 0.3:
                fields[rng.choice("abcd")] = None  # a patch may remove a field
            device.write("patch", collection, key, fields)
        else:
            device.write("delete", collection, key)


def _in_parallel(devices: list[Device], action: Any) -> list[Any]:
    results: list[Any] = [None] * len(devices)
    errors: list[BaseException] = []

    def run(index: int, device: Device) -> None:
        try:
            results[index] = action(index, device)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=pair) for pair in enumerate(devices)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    if errors:
        raise errors[0]
    return results


def test_devices_writing_the_same_keys_through_every_fault_converge_to_lww(
    cloud: LocalStack, new_device: DeviceFactory
) -> None:
    proxies = [
        FaultProxy(("127.0.0.1", cloud.port), latency_s=0.2, blackhole_hold_s=1.5).start()
        for _ in range(3)
    ]
    try:
        devices = [
            new_device(TENANT, name, proxy.url)
            for name, proxy in zip(["laptop", "pi", "tablet"], proxies)
        ]
        seen: dict[tuple[str, str], Op] = {}
        for round_no, fault in enumerate(ROUND_FAULTS):
            _in_parallel(
                devices,
                lambda i, d: _write(d, random.Random(f"{round_no}-{i}")),  # noqa: B023
            )
            for device in devices:
                for op in pending_ops(device, KEYS):
                    seen[(op.op_id, op.hlc)] = op
            for proxy in proxies:
                if fault is None:
                    proxy.flap(FLAP)
                else:
                    proxy.set_fault(fault)
            _in_parallel(devices, lambda i, d: d.sync(timeout_s=3))

        for proxy in proxies:
            proxy.set_fault(Fault.NONE)
        sync_until_drained(devices)

        injected = {fault for proxy in proxies for fault, n in proxy.injected.items() if n}
        assert injected == {
            Fault.CUT_AFTER_REQUEST,
            Fault.RESET,
            Fault.BLACKHOLE,
            Fault.LATENCY,
        }
        for device in devices:
            status = device.status()
            assert (status["pending"], status["quarantined"]) == (0, 0), device.name

        expected = expected_view(seen.values())
        # Read as a device of its own: the feed's fresh tail leaves out a reader's own writes
        server = server_records(cloud.endpoint, cloud.register(TENANT, f"{TENANT}-observer"))
        for key, view in expected.items():
            record = server.get(key)
            assert (record["data"] if record and not record["deleted"] else None) == view, key
        replicas = _in_parallel(devices, lambda i, d: {key: d.get(*key) for key in expected})
        for device, replica in zip(devices, replicas):
            assert replica == expected, device.name
    finally:
        for proxy in proxies:
            proxy.stop()


def test_a_response_lost_after_the_server_applied_is_answered_duplicate_on_resend(
    cloud: LocalStack, new_device: DeviceFactory
) -> None:
    with FaultProxy(("127.0.0.1", cloud.port)) as proxy:
        device = new_device("lost-response", "pi", proxy.url)
        device.write("put", "notes", "n1", {"text": "once"})
        proxy.set_fault(Fault.CUT_AFTER_REQUEST)

        cut = device.sync(timeout_s=3)

        assert cut["exit"] == "75"
        assert device.status()["pending"] == 1
        assert proxy.injected[Fault.CUT_AFTER_REQUEST] > 0

        proxy.set_fault(Fault.NONE)
        resent = device.sync()

    assert resent["exit"] == "0"
    assert resent.get("duplicate") == "1"
    assert device.status()["pending"] == 0


def test_a_device_that_syncs_right_after_another_sees_its_write(
    new_device: DeviceFactory,
) -> None:
    # Given device A recorded a write and synced it
    a, b = new_device("at-once", "a"), new_device("at-once", "b")
    a.write("put", "notes", "handover", {"shift": "night", "pump": "off"})
    assert a.sync()["exit"] == "0"
    # When device B syncs at once, inside the cloud's settle window
    synced = b.sync()
    # Then B's local view already has A's write
    assert synced["exit"] == "0"
    assert b.get("notes", "handover") == {"shift": "night", "pump": "off"}
