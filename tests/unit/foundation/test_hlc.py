"""HLC timestamps: format, ordering, monotonicity across restarts and merges."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.contracts.hlc import (
    MAX_LOGICAL,
    HybridLogicalClock,
    InvalidTimestamp,
    Timestamp,
    format_hlc,
    parse_hlc,
)

pytestmark = pytest.mark.agent

ONE_YEAR_MS = 365 * 24 * 3600 * 1000
physical = st.integers(min_value=0, max_value=10**13 - 1)
logical = st.integers(min_value=0, max_value=MAX_LOGICAL)
nodes = st.from_regex(r"[A-Za-z0-9_.:-]{1,12}", fullmatch=True)


class FakeWallClock:
    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


def test_format_matches_the_protocol_example() -> None:
    assert format_hlc(1764000000000, 3, "dev-7f3a") == "1764000000000-00003-dev-7f3a"
    assert parse_hlc("1764000000000-00003-dev-7f3a") == Timestamp(1764000000000, 3, "dev-7f3a")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "1764000000000-3-dev",
        "176400000000-00003-dev",
        "1764000000000-00003-",
        "x-00003-dev",
        # Digits of other scripts: int() reads them, but they sort after every ASCII HLC.
        "\u0661\u0667\u0666\u0664" + "\u0660" * 9 + "-00003-dev",
        "1764000000000-\uff10\uff10\uff10\uff10\uff13-dev",
    ],
)
def test_malformed_timestamps_are_refused_with_the_expected_format(bad: str) -> None:
    with pytest.raises(InvalidTimestamp, match="expected <13-digit ms>"):
        parse_hlc(bad)


@given(physical, logical, physical, logical, nodes)
def test_string_order_equals_tuple_order(p1: int, l1: int, p2: int, l2: int, node: str) -> None:
    a, b = format_hlc(p1, l1, node), format_hlc(p2, l2, node)
    assert (a < b) == ((p1, l1) < (p2, l2))
    assert parse_hlc(a) == Timestamp(p1, l1, node)


def test_send_is_strictly_increasing_when_the_wall_clock_stands_still() -> None:
    clock = HybridLogicalClock("dev-1", now_ms=FakeWallClock(1_764_000_000_000))
    stamps = [clock.send() for _ in range(1000)]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == len(stamps)


def test_restart_with_wall_clock_a_year_behind_never_issues_a_smaller_timestamp() -> None:
    wall = FakeWallClock(1_764_000_000_000)
    before = HybridLogicalClock("pi-7", now_ms=wall)
    issued = [before.send() for _ in range(10)]

    # Given the Pi reboots without an RTC: its wall clock starts a year in the past
    wall.now_ms -= ONE_YEAR_MS
    after = HybridLogicalClock("pi-7", last=before.last, now_ms=wall)

    # Then every new timestamp is still above everything issued before the reboot
    later = [after.send() for _ in range(10)]
    assert min(later) > max(issued)
    assert later == sorted(later)


def test_receive_of_a_remote_time_ahead_moves_the_clock_forward() -> None:
    clock = HybridLogicalClock("dev-1", now_ms=FakeWallClock(1_000_000_000_000))
    remote = format_hlc(1_000_000_060_000, 7, "server")
    merged = clock.receive(remote)
    assert merged > remote
    assert clock.send() > merged


def test_receive_of_a_remote_time_behind_keeps_local_time() -> None:
    clock = HybridLogicalClock("dev-1", now_ms=FakeWallClock(2_000_000_000_000))
    local = clock.send()
    assert clock.receive(format_hlc(1_000_000_000_000, 0, "server")) > local


def test_counter_overflow_rolls_into_the_next_millisecond_instead_of_wrapping() -> None:
    wall = FakeWallClock(1_764_000_000_000)
    last = format_hlc(wall.now_ms, MAX_LOGICAL - 1, "dev-1")
    clock = HybridLogicalClock("dev-1", last=last, now_ms=wall)
    first, second = clock.send(), clock.send()
    assert parse_hlc(first) == Timestamp(wall.now_ms, MAX_LOGICAL, "dev-1")
    assert parse_hlc(second) == Timestamp(wall.now_ms + 1, 0, "dev-1")
    assert second > first


def test_node_ids_that_would_break_the_format_are_refused() -> None:
    with pytest.raises(ValueError, match="node id"):
        HybridLogicalClock("has space")
