"""`sync-admin` against a running local cloud: devices, stats, and its error contract."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

from tests.e2e.conftest import DeviceFactory
from tests.support.local_stack import ROOT, LocalStack


def _admin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "admin.cli", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_register_list_and_revoke_a_device(cloud: LocalStack) -> None:
    local = ("--local", cloud.endpoint)

    token = _admin(*local, "device", "register", "--tenant", "admin-t", "--device", "adm-1")
    listed = _admin(*local, "device", "list", "--tenant", "admin-t", "--json")
    revoked = _admin(*local, "device", "revoke", "--device", "adm-1")
    after = _admin("device", "list", "--json", *local)  # stack options also after the command

    assert token.returncode == 0 and token.stdout.startswith("fs1.")
    assert [d["device_id"] for d in json.loads(listed.stdout)["devices"]] == ["adm-1"]
    assert revoked.returncode == 0 and "revoked adm-1" in revoked.stdout
    (device,) = [d for d in json.loads(after.stdout)["devices"] if d["device_id"] == "adm-1"]
    assert device["revoked"] is True


def test_stats_counts_records_and_tombstones_per_tenant(
    cloud: LocalStack, new_device: DeviceFactory
) -> None:
    device = new_device("stats-t", "pi")
    device.write("put", "notes", "a", {"x": 1})
    device.write("put", "notes", "b", {"x": 2})
    device.sync()
    device.write("delete", "notes", "b")
    device.sync()

    stats = _admin("--local", cloud.endpoint, "stats", "--json")

    assert stats.returncode == 0, stats.stderr
    row = json.loads(stats.stdout)["tenants"]["stats-t"]
    assert row == {"records": 2, "live": 1, "tombstones": 1, "dlq": 0}


def test_an_unreachable_stack_is_a_one_line_error_with_exit_1() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    done = _admin("--local", f"http://127.0.0.1:{port}", "stats")

    assert done.returncode == 1
    assert (
        done.stderr.startswith("sync-admin: cannot reach sync-local")
        and done.stderr.count("\n") == 1
    )


def test_a_missing_table_is_a_one_line_error_with_exit_1(cloud: LocalStack) -> None:
    done = _admin("--local", cloud.endpoint, "--devices-table", "no-such-table", "device", "list")

    assert done.returncode == 1
    assert (
        "no-such-table" in done.stderr
        or "not found" in done.stderr
        or "ResourceNotFound" in done.stderr
    )
    assert done.stderr.count("\n") == 1


def test_purge_without_yes_is_a_usage_error(cloud: LocalStack) -> None:
    done = _admin("--local", cloud.endpoint, "dlq", "purge")

    assert done.returncode == 2
    assert "--yes" in done.stderr


def test_redriving_an_unknown_message_is_an_error_naming_the_list_command(
    cloud: LocalStack,
) -> None:
    done = _admin("--local", cloud.endpoint, "dlq", "redrive", "no-such-id")

    assert done.returncode == 1
    assert "sync-admin dlq list" in done.stderr


def test_the_cli_md_flags_alone_reach_the_devices_and_the_dlq(cloud: LocalStack) -> None:
    """Only --endpoint-url, --table and --queue-url: the DLQ and devices table are derived."""
    resources = cloud.resources()
    outputs = resources["outputs"]
    names = (
        "--endpoint-url", resources["endpoint_url"],
        "--table", outputs["RecordsTableName"], "--queue-url", outputs["RetryQueueUrl"],
    )  # fmt: skip

    dlq = _admin(*names, "dlq", "list", "--json")
    token = _admin(*names, "device", "register", "--tenant", "flags-t", "--device", "flags-1")
    listed = _admin(*names, "device", "list", "--tenant", "flags-t", "--json")

    assert dlq.returncode == 0, dlq.stderr
    assert "count" in json.loads(dlq.stdout)
    assert token.returncode == 0 and token.stdout.startswith("fs1."), token.stderr
    assert [d["device_id"] for d in json.loads(listed.stdout)["devices"]] == ["flags-1"]


def test_the_local_stack_is_a_cloudformation_stack_for_stack_name(cloud: LocalStack) -> None:
    resources = cloud.resources()

    stats = _admin(
        "--endpoint-url", resources["endpoint_url"], "--stack-name", resources["stack_name"],
        "stats", "--json",
    )  # fmt: skip

    assert stats.returncode == 0, stats.stderr
    assert set(json.loads(stats.stdout)) == {"tenants", "retry_queue", "dlq"}
