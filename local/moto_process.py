"""moto in server mode, in a child process of its own.

The handlers and the gateway run in the `sync-local` process; moto answering their AWS calls
in the same process would share its interpreter lock with them. In a child process it gets
the other core, which roughly halves the time a batch takes. The child runs
`moto.server.ThreadedMotoServer` on 127.0.0.1 and a free port, reports the port on stdout,
and exits when its stdin closes, so it never outlives `sync-local` (even on SIGKILL).
"""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Optional

from local.errors import StartupError

_CHILD = """
import os
import signal
import sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group: the parent stops us
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print("port:", server.get_host_and_port()[1], flush=True)
sys.stdin.read()  # until the parent closes the pipe or dies
# Everything moto holds is in memory and dropped with it: no graceful server shutdown (it
# waits out werkzeug's poll interval and its request threads), just go.
os._exit(0)
"""


class MotoProcess:
    def __init__(self, *, verbose: bool = False, startup_timeout_s: float = 30.0) -> None:
        self._verbose = verbose
        self._timeout = startup_timeout_s
        self._process: Optional[subprocess.Popen[str]] = None
        self.endpoint = ""

    def start(self) -> str:
        """Start moto and return its endpoint URL."""
        self._process = subprocess.Popen(
            [sys.executable, "-c", _CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None if self._verbose else subprocess.DEVNULL,
            text=True,
        )
        port: list[str] = []

        def read() -> None:
            assert self._process is not None and self._process.stdout is not None
            line = self._process.stdout.readline()
            if line.startswith("port:"):
                port.append(line.split(":", 1)[1].strip())

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(self._timeout)
        if not port:
            self.stop()
            raise StartupError("the moto server did not start: run with --verbose to see why")
        self.endpoint = f"http://127.0.0.1:{port[0]}"
        return self.endpoint

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
