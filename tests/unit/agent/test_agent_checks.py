"""The agent's Python API refuses non-finite numbers and files that are not its database,
reads the device id from a cloud token, and takes `sync(timeout=None)` as no limit."""

from __future__ import annotations

import base64
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from device_agent import Agent
from device_agent.errors import ForeignDatabase, NotConfigured, NotInitialised, OutboxFull
from device_agent.init_checks import token_device_id
from device_agent.worker import Worker
from shared.contracts import ContractError
from shared.contracts.validation import encode_valid_op
from tests.support.protocol_server import ProtocolServer

pytestmark = pytest.mark.agent
TOKEN = "api-token"
OP_ID = "01a21010-83d7-7000-ad3c-5cfc803a88ad"
HLC = "1700000000000-00000-pi-7"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "device.db"
    Agent.init(path, endpoint="http://127.0.0.1:9", token=TOKEN, device_id="pi-7").close()
    return path


@pytest.fixture
def server() -> Iterator[ProtocolServer]:
    with ProtocolServer(token=TOKEN) as running:
        yield running


NON_FINITE: list[Any] = [
    {"a": math.nan},
    {"a": math.inf},
    {"a": {"b": [1, -math.inf]}},
]


@pytest.mark.parametrize("data", NON_FINITE)
def test_non_finite_numbers_are_refused_anywhere_in_data(db: Path, data: Any) -> None:
    with Agent.open(db) as agent:
        for write in (
            lambda: agent.put("prefs", "k", data),
            lambda: agent.patch("prefs", "k", data),
            lambda: agent.put_many([("prefs", "k1", {"ok": 1}), ("prefs", "k2", data)]),
        ):
            with pytest.raises(ContractError, match="NaN and Infinity are not valid JSON"):
                write()
        assert agent.outbox.depth() == 0  # put_many: all or nothing


def _fan_out_cycle() -> list[Any]:
    looped: list[Any] = []
    looped.extend([looped] * 8)  # a cycle that branches 8 ways at every level
    return looped


@pytest.mark.parametrize(
    ("collection", "data", "problem"),
    [
        ("prefs", {"a": "\ud800"}, "not JSON"),  # a lone surrogate cannot be UTF-8
        ("prefs", {1: "v"}, "field names must be strings"),
        ("prefs\n", {"a": 1}, "collection"),
        ("prefs", {"a": _fan_out_cycle()}, "nested more than"),
    ],
)
def test_bad_writes_are_refused_with_a_contract_error_naming_the_problem(
    db: Path, collection: str, data: Any, problem: str
) -> None:
    with Agent.open(db) as agent:
        with pytest.raises(ContractError, match=problem):
            agent.put(collection, "k", data)
        assert agent.outbox.depth() == 0


@pytest.mark.parametrize("data", NON_FINITE)
def test_the_encoding_fast_path_does_not_vouch_for_non_finite_numbers(data: Any) -> None:
    checked = encode_valid_op(
        OP_ID, HLC, collection="prefs", key="k", kind="put", data=data, priority=2
    )
    assert checked is None  # parse_op decides, and names the problem
    ok = encode_valid_op(
        OP_ID, HLC, collection="prefs", key="k", kind="put", data={"a": 1.5}, priority=2
    )
    assert ok == ('{"a":1.5}', 9)


def test_open_refuses_an_empty_file_and_leaves_it_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    with pytest.raises(NotInitialised, match="sync-agent init"):
        Agent.open(path)
    assert path.stat().st_size == 0


def test_a_foreign_database_is_refused_by_open_and_init(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 1")  # even one that sets a schema version
        conn.execute("CREATE TABLE kv (k TEXT)")
    with pytest.raises(ForeignDatabase, match="another application"):
        Agent.open(path)
    with pytest.raises(ForeignDatabase, match="another application"):
        Agent.init(path, endpoint="http://127.0.0.1:9", token=TOKEN)
    with sqlite3.connect(path) as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert names == {"kv"}


def test_a_failed_init_leaves_no_database_behind(tmp_path: Path) -> None:
    path = tmp_path / "device.db"
    with pytest.raises(ValueError, match="node id"):
        Agent.init(path, endpoint="http://127.0.0.1:9", token=TOKEN, device_id="bad id")
    assert not path.exists()


UNUSABLE_ENDPOINTS = [
    ("http://", "no host"),
    ("http://exa mple.com", "space"),
    ("http://example.com/\tprod", "control character"),
    ("ftp://example.com", "http:// or https://"),
    ("http://example.com:99999", "not a valid URL"),
    ("http://example.com:port", "not a valid URL"),
    ("http://[::1", "not a valid URL"),
    ("http://exa<mple>.com", "invalid host name"),
    ("https://example.com/prod?stage=1", "query"),
]


@pytest.mark.parametrize(("endpoint", "problem"), UNUSABLE_ENDPOINTS)
def test_init_refuses_an_endpoint_requests_could_not_be_sent_to(
    tmp_path: Path, endpoint: str, problem: str
) -> None:
    # Given an endpoint that is not a usable http(s) base URL
    path = tmp_path / "device.db"
    # When a device is initialised with it, Then a ValueError names the endpoint and the problem
    with pytest.raises(ValueError, match="endpoint") as raised:
        Agent.init(path, endpoint=endpoint, token=TOKEN)
    assert problem in str(raised.value) and repr(endpoint) in str(raised.value)
    # And no database was created
    assert not path.exists()


@pytest.mark.parametrize(
    "endpoint", ["https://abc.execute-api.eu-west-1.amazonaws.com/prod", "http://[::1]:8787"]
)
def test_init_takes_a_usable_endpoint_as_given(tmp_path: Path, endpoint: str) -> None:
    with Agent.init(tmp_path / "device.db", endpoint=endpoint, token=TOKEN) as agent:
        assert agent.status()["endpoint"] == endpoint


def test_the_worker_refuses_a_database_without_settings(tmp_path: Path) -> None:
    from device_agent.db import open_database

    path = tmp_path / "device.db"
    open_database(path).close()
    with pytest.raises(NotConfigured, match="configuration is missing"):
        Worker(path).run()


def token_for(device_id: str) -> str:
    encoded = base64.urlsafe_b64encode(device_id.encode()).decode().rstrip("=")
    return f"fs1.{encoded}.{'x' * 43}"


@pytest.mark.parametrize(
    ("token", "device_id"),
    [
        (token_for("pi-42"), "pi-42"),
        (token_for("a.b:c_d-1"), "a.b:c_d-1"),
        ("plain-token", None),
        ("fs1.cGktNDI.short", None),  # secret too short
        ("fs2." + token_for("pi-42")[4:], None),
        ("fs1.!!!." + "x" * 43, None),
        (token_for("has space"), None),  # not a node id
    ],
)
def test_token_device_id(token: str, device_id: Any) -> None:
    assert token_device_id(token) == device_id


def test_init_uses_the_token_device_unless_told_otherwise(tmp_path: Path) -> None:
    path = tmp_path / "device.db"
    with Agent.init(path, endpoint="http://127.0.0.1:9", token=token_for("pi-42")) as agent:
        assert agent.state.device_id == "pi-42"
    with Agent.init(
        path, endpoint="http://127.0.0.1:9", token=token_for("pi-42"), device_id="pi-7"
    ) as agent:
        assert agent.state.device_id == "pi-7"


def test_sync_timeout_none_means_no_limit(db: Path, server: ProtocolServer) -> None:
    with Agent.init(db, endpoint=server.url, token=TOKEN) as agent:
        agent.put("prefs", "k", {"a": 1})
        summary = agent.sync(timeout=None)
        assert summary.synced and summary.remaining == 0
        with pytest.raises(ValueError, match="NaN"):
            agent.sync(timeout=math.nan)


def test_last_error_is_dated_and_a_later_success_is_after_it(
    db: Path, server: ProtocolServer
) -> None:
    with Agent.init(db, endpoint=server.url, token="wrong") as agent:
        assert agent.sync(timeout=10).stopped_by == "auth"
        failed = agent.status()
        assert failed["last_error"] and failed["last_error_at"] is not None
    with Agent.init(db, endpoint=server.url, token=TOKEN) as agent:
        assert agent.sync(timeout=10).synced
        status = agent.status()
    assert status["last_error"] == failed["last_error"]  # history kept
    assert status["last_error_at"] == failed["last_error_at"] < status["last_success_at"]


def test_data_nested_too_deep_is_refused_at_record_time(db: Path) -> None:
    from shared.contracts import limits

    deep: Any = 1
    for _ in range(limits.MAX_NESTING_DEPTH + 1):
        deep = {"d": deep}
    with Agent.open(db) as agent:
        with pytest.raises(ContractError, match="nested more than"):
            agent.put("prefs", "k", {"a": deep})
        assert agent.outbox.depth() == 0


def test_outbox_bounds_set_at_init_hold_for_every_process_opening_the_database(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bounded.db"
    with Agent.init(path, endpoint="http://127.0.0.1:9", token=TOKEN, max_ops=2) as agent:
        agent.put("prefs", "a", {"n": 1})
        agent.put("prefs", "b", {"n": 2})
        with pytest.raises(OutboxFull):
            agent.put("prefs", "c", {"n": 3})
    # Opened again (another process would do the same), and after an init that names no bound
    Agent.init(path, endpoint="http://127.0.0.1:9", token=TOKEN).close()
    with Agent.open(path) as reopened:
        with pytest.raises(OutboxFull):
            reopened.put("prefs", "c", {"n": 3})
        assert reopened.status()["max_ops"] == 2
        assert reopened.status()["pending"] == 2


@pytest.mark.parametrize("bound", [{"max_ops": 0}, {"max_bytes": -1}, {"max_ops": 1.5}])
def test_an_outbox_bound_that_is_not_a_whole_number_above_0_is_refused(
    tmp_path: Path, bound: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match="whole number above 0"):
        Agent.init(tmp_path / "x.db", endpoint="http://127.0.0.1:9", token=TOKEN, **bound)
