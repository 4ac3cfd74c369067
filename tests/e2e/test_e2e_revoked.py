"""A revoked device: its next sync fails with an auth error and its outbox stays intact."""

from __future__ import annotations

import subprocess
import sys

from tests.e2e.conftest import DeviceFactory
from tests.support.local_stack import ROOT, LocalStack


def test_a_revoked_device_reports_auth_and_keeps_its_outbox(
    cloud: LocalStack, new_device: DeviceFactory
) -> None:
    device = new_device("revocation", "pi")
    device.write("put", "notes", "before", {"text": "synced"})
    assert device.sync()["exit"] == "0"

    subprocess.run(
        [sys.executable, "-m", "admin.cli", "--local", cloud.endpoint,
         "device", "revoke", "--device", device.device_id],
        cwd=ROOT, check=True, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    device.write("put", "notes", "after", {"text": "written after the revocation"})
    attempt = device.agent("sync", "--timeout", "5", ok=(0, 1, 75))

    status = device.status()
    assert attempt.returncode != 0
    assert status["connectivity"] == "auth"
    assert status["pending"] == 1
    assert device.get("notes", "after") == {"text": "written after the revocation"}
