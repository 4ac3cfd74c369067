"""`python -m local.demo` (what `make demo` runs) tells its story and converges."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

from tests.support.local_stack import ROOT


def test_the_demo_converges_shows_a_merge_and_a_superseded_write_and_cleans_up() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "local.demo"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "CONVERGED" in done.stdout
    laptop = next(
        line for line in done.stdout.splitlines() if line.strip().startswith("field-laptop  yes")
    )
    applied, merged, superseded = laptop.split()[2:5]
    assert (merged, superseded) == ("1", "1") and int(applied) > 0
    port = int(re.search(r"local cloud: http://127.0.0.1:(\d+)", done.stdout).group(1))  # type: ignore[union-attr]
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # its sync-local was stopped
