"""The real `sync-agent` CLI in a subprocess, on one device database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def sync_agent(db: Path, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `sync-agent --db DB ARGS...` as a user would; its exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "device_agent", "--db", str(db), *args],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=timeout_s,
    )
