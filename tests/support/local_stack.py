"""Start `sync-local serve` as a subprocess for a test, and stop it afterwards.

The local cloud sets AWS_ENDPOINT_URL and fake credentials in its own process only, so the
test runner (where other tests use in-process `mock_aws`) is never affected.

    with LocalStack.start() as stack:
        stack.endpoint, stack.token, stack.register("acme", "pi-7"), stack.resources()
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 60.0


def _clean_env() -> dict[str, str]:
    """The test runner's environment without anything that could point at real AWS."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class LocalStack:
    process: subprocess.Popen[str]
    endpoint: str
    token: str
    log_path: Path
    _lines: list[str] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        *,
        template: Optional[Path] = None,
        args: Sequence[str] = (),
        timeout_s: float = STARTUP_TIMEOUT_S,
    ) -> LocalStack:
        command = [sys.executable, "-m", "local.cli", "serve", "--port", "0", *args]
        if template is not None:
            command += ["--template", str(template)]
        handle, name = tempfile.mkstemp(prefix="sync-local-", suffix=".log")
        log = Path(name)
        with os.fdopen(handle, "w") as stderr:  # the child keeps its own copy of the file
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=_clean_env(),
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        lines: list[str] = []
        reader = threading.Thread(target=_read_lines, args=(process, lines), daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout_s
        values: dict[str, str] = {}
        while time.monotonic() < deadline and len(values) < 2:
            for line in list(lines):
                name, _, value = line.partition(": ")
                if name in ("endpoint", "token"):
                    values[name] = value.strip()
            if process.poll() is not None and len(values) < 2:
                break
            time.sleep(0.05)
        if len(values) < 2:
            _terminate(process)
            raise RuntimeError(
                f"sync-local did not start (exit {process.poll()}): {log.read_text()[-2000:]}"
            )
        return cls(process, values["endpoint"], values["token"], log, lines)

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    def register(self, tenant: str, device: str) -> str:
        """A token for a new device, through `sync-local token` (the real command)."""
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "local.cli",
                "token",
                "--tenant",
                tenant,
                "--device",
                device,
                "--endpoint",
                self.endpoint,
            ],
            cwd=ROOT,
            env=_clean_env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return done.stdout.strip()

    def resources(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.endpoint}/_local/resources", timeout=10) as answer:
            return dict(json.loads(answer.read()))

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        """SIGTERM, wait, and return the exit status."""
        code = _terminate(self.process)
        return code

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.stop()
        self.log_path.unlink(missing_ok=True)


def _read_lines(process: subprocess.Popen[str], lines: list[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line.rstrip("\n"))


def _terminate(process: subprocess.Popen[str]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    return int(process.returncode)
