"""The `sync` progress display: a bar on a terminal, plain lines in a pipe."""

from __future__ import annotations

import io

import pytest

from device_agent.progress import Progress
from device_agent.summary import ProcessingSummary

pytestmark = pytest.mark.agent


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_redrawn_bar_ending_in_a_newline() -> None:
    screen = Terminal()
    progress = Progress(screen, total=4)
    progress(ProcessingSummary(applied=2))
    progress.finish(ProcessingSummary(applied=4, pulled=3))
    text = screen.getvalue()
    assert text.startswith("\r[") and text.endswith("\n")
    assert "[###############---------------] 2/4" in text
    assert "[##############################] 4/4 ops sent, 3 records pulled" in text


def test_a_pipe_gets_plain_lines_without_carriage_returns() -> None:
    pipe = io.StringIO()
    progress = Progress(pipe, total=2)
    progress(ProcessingSummary(applied=1))
    progress.finish(ProcessingSummary(applied=2))
    lines = pipe.getvalue().splitlines()
    assert lines == [
        "progress 1/2 ops sent, 0 records pulled",
        "progress 2/2 ops sent, 0 records pulled",
    ]
    assert "\r" not in pipe.getvalue()
