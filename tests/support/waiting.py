"""Waiting in tests for something another thread or process does."""

from __future__ import annotations

import time
from typing import Callable

import pytest


def wait_for(condition: Callable[[], bool], timeout: float, step: float = 0.01) -> float:
    """Seconds until `condition()` held; fails the test after `timeout`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(step)
    return time.monotonic() - started
