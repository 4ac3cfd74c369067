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


def test_a_pipe_gets_the_final_state_once_when_it_was_just_written() -> None:
    # Given a pipe whose last progress line already shows the final state
    pipe = io.StringIO()
    progress = Progress(pipe, total=2)
    progress(ProcessingSummary(applied=2))
    # When the sync finishes in that same state
    progress.finish(ProcessingSummary(applied=2))
    # Then the line is not written a second time
    assert pipe.getvalue().splitlines() == ["progress 2/2 ops sent, 0 records pulled"]


def test_a_pipe_gets_the_final_state_when_nothing_was_written_yet() -> None:
    pipe = io.StringIO()
    Progress(pipe, total=0).finish(ProcessingSummary(pulled=3))
    assert pipe.getvalue().splitlines() == ["progress 0/0 ops sent, 3 records pulled"]


def test_a_terminal_still_ends_on_the_final_bar_when_it_was_just_drawn() -> None:
    screen = Terminal()
    progress = Progress(screen, total=1)
    progress(ProcessingSummary(applied=1))
    progress.finish(ProcessingSummary(applied=1))
    text = screen.getvalue()
    assert text.endswith("[##############################] 1/1 ops sent, 0 records pulled\n")
