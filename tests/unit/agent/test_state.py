"""Agent state: settings, the persisted hybrid logical clock, the pull cursor, sync stats."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_agent.db import open_database, transaction
from device_agent.state import AgentState
from device_agent.state_values import Connectivity, SyncStats
from shared.contracts import parse_hlc
from shared.contracts.hlc import format_hlc
from tests.support.agent_store import open_store

pytestmark = pytest.mark.agent

NOW_MS = 1_764_000_000_000
YEAR_MS = 365 * 24 * 3600 * 1000


def test_a_device_id_is_chosen_once_and_kept(tmp_path):
    first = open_store(tmp_path / "a.db").state.settings().device_id
    again = open_store(tmp_path / "a.db").state.settings().device_id

    assert first.startswith("dev-")
    assert again == first


def test_settings_update_only_what_is_given(tmp_path):
    state = open_store(tmp_path / "a.db").state
    state.update_settings(endpoint="http://127.0.0.1:8787", token="t1", device_id="pi-7")

    state.update_settings(token="t2")

    assert state.settings().endpoint == "http://127.0.0.1:8787"
    assert state.settings().token == "t2"
    assert state.settings().device_id == "pi-7"


def test_stamps_follow_a_changed_device_id_in_every_process(tmp_path):
    writer = open_store(tmp_path / "a.db", now_ms=lambda: NOW_MS).state
    before = writer.stamp()

    open_store(tmp_path / "a.db").state.update_settings(device_id="pi-8")
    after = writer.stamp()

    assert parse_hlc(after).node == "pi-8"
    assert (parse_hlc(after).physical_ms, parse_hlc(after).logical) > (
        parse_hlc(before).physical_ms,
        parse_hlc(before).logical,
    )


def test_an_invalid_device_id_is_refused(tmp_path):
    with pytest.raises(ValueError, match="node id"):
        open_store(tmp_path / "a.db").state.update_settings(device_id="has space")


def test_stamps_carry_the_device_id_and_strictly_increase(tmp_path):
    state = open_store(tmp_path / "a.db", device_id="pi-7", now_ms=lambda: NOW_MS).state

    stamps = [state.stamp() for _ in range(5)] + state.stamp_many(5)

    assert stamps == sorted(stamps) and len(set(stamps)) == 10
    assert all(parse_hlc(s).node == "pi-7" for s in stamps)


def test_the_clock_stays_monotonic_across_reopen_with_the_wall_clock_a_year_back(tmp_path):
    # Given stamps issued at the right time
    before = open_store(tmp_path / "a.db", now_ms=lambda: NOW_MS).state.stamp()
    # When the device reboots with its wall clock a year in the past (a Pi without RTC)
    state = open_store(tmp_path / "a.db", now_ms=lambda: NOW_MS - YEAR_MS).state
    after = [state.stamp() for _ in range(3)]
    # Then no stamp is smaller than one issued before
    assert before < after[0] < after[1] < after[2]
    assert parse_hlc(after[0]).physical_ms == NOW_MS


def test_merging_a_server_time_moves_the_clock_forward_and_measures_the_offset(tmp_path):
    state = open_store(tmp_path / "a.db", now_ms=lambda: NOW_MS).state
    server_time = format_hlc(NOW_MS + 60_000, 7, "server")

    state.merge_server_time(server_time)

    assert state.stamp() > server_time
    assert state.stats().clock_offset_ms == 60_000


def test_a_clock_ahead_of_the_server_is_set_back_by_restamp_clock(tmp_path):
    # Given a device whose wall clock runs a year ahead and has stamped with it
    state = open_store(tmp_path / "a.db", now_ms=lambda: NOW_MS + YEAR_MS).state
    ahead = state.stamp()
    server_time = format_hlc(NOW_MS, 3, "server")
    # When the server rejects it as clock_ahead and the agent restamps its clock
    state.restamp_clock(server_time)
    fresh = state.stamp()
    # Then new stamps follow the server's time, not the wrong wall clock
    assert server_time < fresh < ahead
    assert parse_hlc(fresh).physical_ms - NOW_MS < 1_000
    assert state.stats().clock_offset_ms == -YEAR_MS


def test_the_clock_correction_survives_a_restart(tmp_path):
    open_store(tmp_path / "a.db", now_ms=lambda: NOW_MS + YEAR_MS).state.restamp_clock(
        format_hlc(NOW_MS, 0, "server")
    )

    stamp = open_store(tmp_path / "a.db", now_ms=lambda: NOW_MS + YEAR_MS + 5).state.stamp()

    assert parse_hlc(stamp).physical_ms == NOW_MS + 5


def test_the_pull_cursor_is_kept_and_can_be_forgotten(tmp_path):
    state = open_store(tmp_path / "a.db").state
    assert state.cursor() is None

    state.set_cursor("abc")
    assert open_store(tmp_path / "a.db").state.cursor() == "abc"

    state.set_cursor(None)
    assert state.cursor() is None


def test_sync_stats_start_empty_and_update_field_by_field(tmp_path):
    state = open_store(tmp_path / "a.db").state
    assert state.stats() == SyncStats()

    state.update_stats(consecutive_failures=3, last_error="timeout", connectivity="offline")
    state.update_stats(current_backoff_s=4.5)

    stats = open_store(tmp_path / "a.db").state.stats()
    assert stats.consecutive_failures == 3
    assert stats.last_error == "timeout"
    assert stats.connectivity is Connectivity.OFFLINE
    assert stats.current_backoff_s == 4.5
    assert stats.to_dict()["connectivity"] == "offline"


def test_an_unknown_statistic_is_refused(tmp_path):
    with pytest.raises(TypeError, match="unknown sync statistics"):
        open_store(tmp_path / "a.db").state.update_stats(speed=1)


def test_a_rolled_back_clock_change_does_not_outlive_its_transaction(tmp_path: Path) -> None:
    # Given a clock that has stamped at its wall time
    conn = open_database(tmp_path / "agent.db")
    state = AgentState(conn, now_ms=lambda: 1_700_000_000_000)
    first = state.stamp()
    # When a transaction sets the clock back a long way, stamps from it, then fails
    with pytest.raises(RuntimeError), transaction(conn):
        state.restamp_clock(format_hlc(1_600_000_000_000, 0, "server"))
        state.stamp()
        raise RuntimeError("disk gone")
    # Then the next stamp follows the committed clock, not the rolled-back one
    assert state.stamp() > first
