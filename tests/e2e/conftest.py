"""End-to-end fixtures: the real local cloud (`sync-local serve` on template.yaml) and devices
driven through the real `sync-agent` command line, each with its own database.

Tests share one local cloud per session and keep apart by tenant. `slow` tests (the full
10,000-op backlog) run only when selected with `-m slow` or FIELDSYNC_E2E_SLOW=1.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

from local.demo import Device
from tests.support.local_stack import LocalStack

# A local speed-up only (documented in docs/operations.md): a failed retry message is retried
# at once, so the DLQ is reached in seconds, not minutes. A revocation is seen at once by
# sync-local's default (no authorizer caching), which test_e2e_revoked relies on.
LOCAL_ARGS = ("--retry-visibility-timeout", "0")

_serial = itertools.count()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "slow" in (config.getoption("markexpr") or "") or os.environ.get("FIELDSYNC_E2E_SLOW"):
        return
    skip = pytest.mark.skip(reason="slow: select with -m slow or FIELDSYNC_E2E_SLOW=1")
    here = Path(__file__).parent
    for item in items:  # the hook sees the whole session: touch only this directory's tests
        if "slow" in item.keywords and here in item.path.parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def cloud() -> Iterator[LocalStack]:
    with LocalStack.start(args=LOCAL_ARGS) as stack:
        yield stack


DeviceFactory = Callable[..., Device]


@pytest.fixture
def new_device(cloud: LocalStack, tmp_path: Path) -> DeviceFactory:
    """A registered, initialised device of `tenant`, talking to `endpoint` (the cloud's)."""

    def make(tenant: str, name: str, endpoint: str = "") -> Device:
        device_id = f"{name}-{next(_serial)}"
        device = Device(
            name, device_id, tmp_path / f"{device_id}.db", cloud.register(tenant, device_id)
        )
        device.init(endpoint or cloud.endpoint)
        return device

    return make
