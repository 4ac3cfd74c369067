"""Progress for `sync-agent sync`: a bar on a terminal, plain lines otherwise (logs, pipes)."""

from __future__ import annotations

import time
from typing import TextIO

from device_agent.summary import ProcessingSummary

_WIDTH = 30


class Progress:
    """Renders a running ProcessingSummary against the outbox depth at the start."""

    def __init__(self, stream: TextIO, total: int, *, interval_s: float = 1.0) -> None:
        self.stream = stream
        self.total = total
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.interval_s = 0.05 if self.tty else interval_s
        self._last = 0.0
        self._drawn = False
        self._shown = ""  # the last state written: a plain line is never written twice

    def __call__(self, summary: ProcessingSummary) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            return
        self._last = now
        self._draw(summary)

    def _draw(self, summary: ProcessingSummary) -> None:
        done = summary.acked + summary.quarantined
        total = max(self.total, done)
        text = f"{done}/{total} ops sent, {summary.pulled} records pulled"
        if text == self._shown and not self.tty:
            return  # a log or a pipe gets each state once
        self._shown = text
        if self.tty:
            filled = int(_WIDTH * done / total) if total else _WIDTH
            bar = "#" * filled + "-" * (_WIDTH - filled)
            self.stream.write(f"\r[{bar}] {text}")
            self._drawn = True
        else:
            self.stream.write(f"progress {text}\n")
        self.stream.flush()

    def finish(self, summary: ProcessingSummary) -> None:
        """Draw the final state (unless it is the line just written) and end the bar's line."""
        self._draw(summary)
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
