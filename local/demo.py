"""`python -m local.demo` (`make demo`): two field devices, one offline, converging.

Starts `sync-local serve`, registers a field laptop and a Raspberry Pi, and drives the real
`sync-agent` command line for each, in its own database in a temporary directory:

1. the laptop records an inspection report and both devices sync;
2. the laptop loses its uplink (its endpoint points at a closed port) and keeps working:
   critical report edits, background telemetry, a valve setting;
3. the Pi, online, edits the same report and the same valve;
4. the laptop reconnects and syncs: its report edit is *merged* field by field with the Pi's,
   its older valve setting is *superseded* by the Pi's newer one;
5. both devices converge to the same documents, which the demo checks before exiting 0.

Every process it starts is stopped on the way out, also on failure or Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent


class DemoFailed(Exception):
    """The story could not be told; the message says which step failed."""


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join("    " + line for line in lines)


def _say(text: str) -> None:
    print(text, flush=True)


class LocalCloudProcess:
    """`sync-local serve` as a child process."""

    def __init__(self, log_path: Path) -> None:
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "local.cli", "serve", "--port", "0"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.endpoint, self.token = self._read_banner(log_path)

    def _read_banner(self, log_path: Path) -> tuple[str, str]:
        values: dict[str, str] = {}

        def read() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                name, _, value = line.strip().partition(": ")
                values[name] = value
                if "endpoint" in values and "token" in values:
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout=40)
        if "endpoint" not in values or "token" not in values:
            self.stop()
            raise DemoFailed(f"sync-local did not start; its log: {log_path.read_text()[-500:]}")
        return values["endpoint"], values["token"]

    def register(self, tenant: str, device: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "local.cli", "token", "--tenant", tenant, "--device", device,
             "--endpoint", self.endpoint],
            cwd=ROOT, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise DemoFailed(f"registering {device} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self._log.close()


class Device:
    """One device: the real `sync-agent` CLI on its own database."""

    def __init__(self, name: str, device_id: str, db: Path, token: str) -> None:
        self.name, self.device_id, self.db, self.token = name, device_id, db, token

    def agent(
        self, *args: str, ok: tuple[int, ...] = (0,), timeout_s: float = 60
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "SYNC_AGENT_DB": str(self.db)}
        done = subprocess.run(
            [sys.executable, "-m", "device_agent", *args],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s, check=False,
        )  # fmt: skip
        if done.returncode not in ok:
            raise DemoFailed(
                f"{self.name}: sync-agent {args[0]} exited {done.returncode}: "
                f"{(done.stderr or done.stdout).strip()[-300:]}"
            )
        return done

    def init(self, endpoint: str) -> None:
        """Create the database, or point it at another endpoint (the outbox stays)."""
        self.agent(
            "init", "--endpoint", endpoint, "--token", self.token, "--device-id", self.device_id
        )

    def write(self, kind: str, collection: str, key: str, data: Optional[dict[str, Any]] = None,
              priority: str = "normal") -> None:  # fmt: skip
        payload = [json.dumps(data)] if data is not None else []
        self.agent(kind, collection, key, *payload, "--priority", priority)

    def sync(self, timeout_s: float = 15) -> dict[str, str]:
        """Sync once; returns the summary's key=value pairs (exit 75 means offline)."""
        done = self.agent("sync", "--timeout", str(timeout_s), ok=(0, 75), timeout_s=timeout_s + 60)
        summary = next(
            (line for line in done.stdout.splitlines()[::-1] if line.startswith("synced=")), ""
        )
        pairs = dict(item.partition("=")[::2] for item in summary.split())
        pairs["exit"] = str(done.returncode)
        return pairs

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.agent("status", "--json").stdout))

    def get(self, collection: str, key: str) -> Optional[dict[str, Any]]:
        done = self.agent("get", collection, key, ok=(0, 1))
        return json.loads(done.stdout) if done.returncode == 0 else None


DOCUMENTS = [("reports", "pump-station-4"), ("equipment", "valve-9")]


def _status_table(devices: list[Device]) -> str:
    rows = []
    for device in devices:
        status = device.status()
        depth = status.get("depth", {})
        rows.append([
            device.name, status.get("connectivity"), status.get("pending"),
            depth.get("critical", 0), depth.get("background", 0), status.get("quarantined"),
            _current_error(status)[:40],
        ])  # fmt: skip
    headers = ["device", "state", "pending", "critical", "background", "quarantined", "last error"]
    return _table(headers, rows)


def _current_error(status: dict[str, Any]) -> str:
    """The last error, unless a sync has succeeded since (then it is history: "-")."""
    error, at, success = (status.get(k) for k in ("last_error", "last_error_at", "last_success_at"))
    if not error or (
        isinstance(at, (int, float)) and isinstance(success, (int, float)) and success > at
    ):
        return "-"
    return str(error)


def _documents_table(devices: list[Device]) -> tuple[str, bool]:
    rows, converged = [], True
    for collection, key in DOCUMENTS:
        views = [device.get(collection, key) for device in devices]
        same = all(view == views[0] for view in views)
        converged = converged and same
        for device, view in zip(devices, views):
            rows.append([f"{collection}/{key}", device.name, json.dumps(view, sort_keys=True)])
        rows.append(["", "", "same on both devices" if same else "DIFFERENT"])
    return _table(["document", "device", "local view"], rows), converged


def _sync_row(device: Device, summary: dict[str, str]) -> list[str]:
    counts = ["applied", "merged", "superseded", "duplicate", "rejected", "queued", "pulled"]
    shown = [summary.get(name, "0") for name in counts]
    return [device.name, "yes" if summary.get("synced") == "True" else "no", *shown]


def _sync_table(rows: list[list[str]]) -> str:
    return _table(
        ["device", "synced", "applied", "merged", "superseded", "dup", "rejected", "queued",
         "pulled"],
        rows,
    )  # fmt: skip


def _converge(devices: list[Device]) -> bool:
    """Sync both until their views agree (the changes feed settles within seconds)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for device in devices:
            device.sync()
        views = [[d.get(c, k) for c, k in DOCUMENTS] for d in devices]
        if all(view == views[0] for view in views) and views[0][0] is not None:
            return True
        time.sleep(0.5)
    return False


def story(workdir: Path) -> bool:
    started = time.monotonic()
    _say("== FieldSync demo: a field laptop and a Raspberry Pi ==")
    cloud = LocalCloudProcess(workdir / "sync-local.log")
    try:
        _say(f"local cloud: {cloud.endpoint} (moto + the template's tables, queues, handlers)")
        laptop = Device("field-laptop", "dev-device", workdir / "laptop.db", cloud.token)
        pi = Device(
            "raspberry-pi", "field-pi", workdir / "pi.db", cloud.register("dev", "field-pi")
        )
        laptop.init(cloud.endpoint)
        pi.init(cloud.endpoint)
        devices = [laptop, pi]

        _say("\n1. The laptop files an inspection report; both devices sync.")
        report = {"site": "Pump station 4", "status": "draft", "notes": "", "pressure_bar": 0}
        laptop.write("put", "reports", "pump-station-4", report, "critical")
        laptop.write("put", "equipment", "valve-9", {"state": "open", "set_by": "laptop"})
        if not _converge(devices):
            raise DemoFailed("the devices did not converge while both were online")
        _say("   both devices hold the report and the valve setting")

        _say("\n2. The laptop loses its uplink and keeps working offline.")
        laptop.init(f"http://127.0.0.1:{_closed_port()}")
        laptop.write("patch", "reports", "pump-station-4",
                     {"status": "inspected", "pressure_bar": 4.2, "notes": "laptop: seal worn"},
                     "critical")  # fmt: skip
        laptop.write("put", "equipment", "valve-9", {"state": "half-open", "set_by": "laptop"})
        for minute in range(5):
            laptop.write("put", "telemetry", f"flow-{minute}", {"l_per_s": 12 + minute},
                         "background")  # fmt: skip
        offline = laptop.sync()
        _say(f"   laptop sync: exit {offline['exit']} (75: cloud unreachable, nothing lost)")
        _say(_status_table(devices))

        _say("\n3. Meanwhile the Pi, online, edits the same report and sets the same valve.")
        time.sleep(0.01)  # the Pi's writes are later than the laptop's (HLC order)
        pi.write("patch", "reports", "pump-station-4",
                 {"notes": "pi: valve replaced", "technician": "ana"}, "high")  # fmt: skip
        pi.write("put", "equipment", "valve-9", {"state": "closed", "set_by": "pi"}, "high")
        pi_sync = pi.sync()

        _say("\n4. The laptop reconnects and syncs.")
        laptop.init(cloud.endpoint)
        laptop_sync = laptop.sync()
        _say(_sync_table([_sync_row(pi, pi_sync), _sync_row(laptop, laptop_sync)]))
        _say("   merged: the laptop's report patch kept status and pressure; its older notes")
        _say("           lost to the Pi's newer notes (field-level last-writer-wins).")
        _say("   superseded: the laptop's older valve setting lost to the Pi's newer one.")

        _say("\n5. Both devices converge.")
        converged = _converge(devices)
        table, same = _documents_table(devices)
        _say(table)
        _say(_status_table(devices))
        ok = converged and same
        took = time.monotonic() - started
        verdict = "CONVERGED: both devices hold the same documents" if ok else "NOT CONVERGED"
        _say(f"\n{verdict} ({took:.1f} s)")
        return ok
    finally:
        cloud.stop()


def main() -> int:
    def interrupted(signum: int, frame: Optional[FrameType]) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    with tempfile.TemporaryDirectory(prefix="fieldsync-demo-") as workdir:
        try:
            return 0 if story(Path(workdir)) else 1
        except DemoFailed as exc:
            print(f"demo: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("demo: interrupted; every process it started was stopped", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
