"""The agent's Python API (CLI.md): what an app on the device embeds.

    from device_agent import Agent, Priority

    with Agent.open("device.db") as agent:
        agent.put("preferences", "user-42", {"currency": "BTC"}, priority=Priority.CRITICAL)
        summary = agent.sync(timeout=30)   # never raises because the cloud is unreachable

Writes go to the durable outbox first and work offline; `sync` pushes and pulls when it can.
An Agent owns one SQLite connection and belongs to the thread that opened it.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Optional, TypeVar, Union, cast

from device_agent.backoff import ExponentialBackoff, RetryPolicy
from device_agent.db import database_error, is_unusable, open_database, transaction
from device_agent.errors import DamagedDatabase, DatabaseError, NotConfigured
from device_agent.init_checks import check_endpoint, token_device_id
from device_agent.network import NetworkMonitor
from device_agent.outbox import Outbox
from device_agent.outcomes import Failure
from device_agent.replica import Replica
from device_agent.state import AgentState
from device_agent.state_values import DAMAGED_ADVICE, Settings
from device_agent.summary import ProcessingSummary
from device_agent.sync import SyncConfig, SyncEngine
from device_agent.sync_failures import retry_may_help
from device_agent.transport import HttpTransport, Transport
from shared.contracts import ContractError, JsonObject, OpKind, Priority
from shared.contracts.hlc import validate_node_id
from shared.contracts.validation import check_collection, check_key

PathLike = Union[str, "os.PathLike[str]"]
TransportFactory = Callable[[str, str], Transport]
"""(endpoint, token) -> Transport. Tests pass one that wraps HttpTransport in a FaultTransport."""

_SETTLED = ("auth", "timeout", "stopped")
_Method = TypeVar("_Method", bound=Callable[..., Any])


def _naming_the_file(method: _Method) -> _Method:
    """A database found unusable after opening (corrupt pages, locked, disk full) raises
    DatabaseError naming the file and what to do, as opening it would; so does a stored value
    that is not JSON (only values read from the file are decoded under these methods)."""

    @functools.wraps(method)
    def checked(self: Agent, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            if not is_unusable(exc):
                raise
            raise database_error(exc, self.path) from exc
        except json.JSONDecodeError as exc:
            raise self._damaged("a stored value is not valid JSON", exc) from exc

    return cast(_Method, checked)


def default_sync_policy() -> RetryPolicy:
    """Retries within one `sync()` call: short, jittered, and few."""
    return RetryPolicy(ExponentialBackoff(base=0.5, cap=5.0))


class Agent:
    """One device database: record writes, read the local view, sync, report status."""

    def __init__(
        self,
        path: PathLike,
        conn: sqlite3.Connection,
        *,
        transport_factory: Optional[TransportFactory] = None,
        sync_config: Optional[SyncConfig] = None,
        retry_policy: Optional[RetryPolicy] = None,
        max_attempts: int = 3,
        monitor: Optional[NetworkMonitor] = None,
    ) -> None:
        self.path = os.fspath(path)
        self.conn = conn
        self.state = AgentState(conn)
        self.outbox = Outbox(conn, self.state)
        self._apply_bounds()
        self.replica = Replica(conn)
        self.monitor = monitor or NetworkMonitor()
        self.sync_config = sync_config or SyncConfig()
        self.retry_policy = retry_policy or default_sync_policy()
        self.max_attempts = max(1, max_attempts)
        self._transport_factory: TransportFactory = transport_factory or HttpTransport
        self._transport: Optional[Transport] = None
        self._transport_key: Optional[tuple[str, str]] = None
        self._engine: Optional[SyncEngine] = None
        # The whole-request failure behind the last sync's `stopped_by` (None when it synced,
        # or stopped on its own timeout before any failure): `retry_may_help` tells apart a
        # cloud that is down or busy from one that answers wrongly (the CLI's exit 75 or 1).
        self.last_failure: Optional[Failure] = None

    def _apply_bounds(self) -> None:
        """Bound the outbox as the settings say (`init`), where they say."""
        settings = self.state.settings()
        if settings.max_ops is not None:
            self.outbox.max_ops = settings.max_ops
        if settings.max_bytes is not None:
            self.outbox.max_bytes = settings.max_bytes

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        path: PathLike,
        *,
        endpoint: str,
        token: str,
        device_id: Optional[str] = None,
        max_ops: Optional[int] = None,
        max_bytes: Optional[int] = None,
        **options: Any,
    ) -> Agent:
        """Create (or update) the device database with its settings, and open it.

        Without `device_id`, a cloud-issued token (`fs1.<base64url(device id)>.<secret>`)
        names the device; otherwise the stored id is kept (a random one for a new file).
        `max_ops` and `max_bytes` bound the outbox for every process opening the database
        (a write past either is refused with OutboxFull); None keeps the stored bound, or the
        default (100,000 ops, 256 MiB). Another application's SQLite database is refused
        (ForeignDatabase). An endpoint that is not a usable http(s) URL, or an empty token, is
        a ValueError, raised before the file is touched.
        """
        check_endpoint(endpoint)
        if not token:
            raise ValueError("token must not be empty: get one with `sync-admin device register`")
        if device_id is None:
            device_id = token_device_id(token)  # None: keep the stored (or a random) id
        else:
            validate_node_id(device_id)  # before the file is touched
        conn = open_database(path)
        try:
            # Before the Agent reads them: this is also how damaged settings are repaired.
            # A new device id resets the clock's node, which the intake's stamps must not
            # outweigh (AgentState._forget_recorded): placed in the same transaction.
            with transaction(conn):
                state = AgentState(conn)
                Outbox(conn, state, recover=False).place_intake()
                state.update_settings(
                    endpoint=endpoint,
                    token=token,
                    device_id=device_id,
                    max_ops=max_ops,
                    max_bytes=max_bytes,
                )
            agent = cls(path, conn, **options)
        except BaseException:
            conn.close()
            raise
        agent.monitor.clear_auth()
        return agent

    @classmethod
    def open(cls, path: PathLike, **options: Any) -> Agent:
        """Open an existing device database (created by `Agent.init` / `sync-agent init`).

        An empty file, or anything that is not a FieldSync database, is refused
        (NotInitialised / ForeignDatabase, both DatabaseError): only `init` creates one.
        """
        location = os.fspath(path)
        if not Path(location).is_file():
            raise DatabaseError(
                f"no agent database at {location}: run `sync-agent init --endpoint URL "
                "--token TOKEN` first, or pass --db (or set SYNC_AGENT_DB)",
                path=location,
            )
        return cls(location, open_database(location, create=False), **options)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self.conn.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()

    # -- writes and reads ----------------------------------------------------------------

    @_naming_the_file
    def put(
        self,
        collection: str,
        key: str,
        data: JsonObject,
        *,
        priority: Union[Priority, int, str] = Priority.NORMAL,
    ) -> str:
        """Record a whole-document write (works offline); returns the op id."""
        return self.outbox.record(collection, key, OpKind.PUT, data, Priority.parse(priority)).op_id

    @_naming_the_file
    def patch(
        self,
        collection: str,
        key: str,
        data: JsonObject,
        *,
        priority: Union[Priority, int, str] = Priority.NORMAL,
    ) -> str:
        """Record a field update: the given fields are set, a field set to None is removed."""
        return self.outbox.record(
            collection, key, OpKind.PATCH, data, Priority.parse(priority)
        ).op_id

    @_naming_the_file
    def delete(
        self, collection: str, key: str, *, priority: Union[Priority, int, str] = Priority.NORMAL
    ) -> str:
        """Record a delete (a tombstone that an older write cannot undo)."""
        return self.outbox.record(
            collection, key, OpKind.DELETE, None, Priority.parse(priority)
        ).op_id

    @_naming_the_file
    def put_many(
        self,
        items: Iterable[Sequence[Any]],
        *,
        priority: Union[Priority, int, str] = Priority.NORMAL,
    ) -> list[str]:
        """Record several whole-document writes `(collection, key, data)` in one transaction."""
        level = Priority.parse(priority)
        ops = self.outbox.record_many(
            [(collection, key, OpKind.PUT, data, level) for collection, key, data in items]
        )
        return [op.op_id for op in ops]

    @_naming_the_file
    def get(self, collection: str, key: str) -> Optional[JsonObject]:
        """The local view: the synced replica with pending local ops applied (None if absent
        or deleted). A collection or key no write could have (`Op` rules) is a ContractError."""
        problems = check_collection(collection, "collection") + check_key(key, "key")
        if problems:
            raise ContractError(problems)
        try:
            pending = self.outbox.pending_for(collection, key)
            if any(op.data is not None and not isinstance(op.data, dict) for op in pending):
                raise ValueError("its data is not a JSON object")
        except (ValueError, KeyError) as exc:  # undecodable data, an unknown kind or priority
            raise self._damaged(f"a pending op on {collection}/{key} is damaged", exc) from exc
        try:
            return self.replica.view(collection, key, pending)
        except ValueError as exc:  # undecodable, of the wrong shape, or a stamp that is not one
            raise self._damaged(f"the synced copy of {collection}/{key} is damaged", exc) from exc

    def _damaged(self, what: str, exc: Exception) -> DamagedDatabase:
        """DamagedDatabase naming the file, what is damaged (`what`, `exc`) and what to do."""
        return DamagedDatabase(
            f"agent database {self.path}: {what} ({type(exc).__name__}: {exc}); {DAMAGED_ADVICE}",
            path=self.path,
        )

    # -- sync ----------------------------------------------------------------------------

    @_naming_the_file
    def require_configured(self) -> Settings:
        """The settings, or NotConfigured if there is no endpoint or token yet."""
        settings = self.state.settings()
        if not settings.endpoint or not settings.token:
            raise NotConfigured(
                f"{self.path} has no endpoint or token (configuration is missing): run "
                "`sync-agent init --endpoint URL --token TOKEN`"
            )
        return settings

    def engine(self) -> SyncEngine:
        """The sync engine, with a transport for the current settings (rebuilt if they change)."""
        settings = self.require_configured()
        assert settings.endpoint is not None and settings.token is not None
        key = (settings.endpoint, settings.token)
        if self._engine is None or key != self._transport_key:
            if self._transport is not None:
                self._transport.close()
            if self._transport_key is not None and key[1] != self._transport_key[1]:
                self.monitor.clear_auth()  # a new token deserves a new try
            self._transport = self._transport_factory(*key)
            self._transport_key = key
            self._engine = SyncEngine(
                self.outbox,
                self.state,
                self.replica,
                self._transport,
                monitor=self.monitor,
                config=self.sync_config,
            )
        return self._engine

    @_naming_the_file
    def sync(
        self,
        timeout: Optional[float] = 30.0,
        *,
        progress: Optional[Callable[[ProcessingSummary], None]] = None,
    ) -> ProcessingSummary:
        """Push until the outbox is empty and pull until up to date, within `timeout` seconds.

        Never raises for an unreachable or failing cloud: the summary says what happened
        (`synced`, `reached_cloud`, `stopped_by`, `errors`) and nothing is lost; `last_failure`
        keeps the failure itself. Failures that may pass (`retry_may_help`) are retried a few
        times with jittered backoff while time allows; others end the sync at once. `progress`
        is called with the running summary after every batch and page. `timeout=None` means
        no time limit (the retries above still end it); a NaN timeout is a ValueError.
        """
        if timeout is not None and math.isnan(timeout):
            raise ValueError("timeout must be a number of seconds or None (no limit), not NaN")
        engine = self.engine()
        engine.on_progress = progress
        summary = ProcessingSummary()
        self.last_failure = None
        deadline = math.inf if timeout is None else time.monotonic() + max(0.0, timeout)
        attempt = 0
        while True:
            summary.stopped_by, summary.retry_after = None, None
            engine.round(summary, deadline=deadline)
            failure = engine.stopped_on
            # A round that ran out of time keeps the failure before it, if any, as the reason.
            if summary.stopped_by not in ("timeout", "stopped"):
                self.last_failure = failure
            if summary.synced or summary.stopped_by in _SETTLED:
                break
            if failure is not None and not retry_may_help(failure):
                break  # the same answer again: retrying within this call cannot help
            if summary.stopped_by is None and not summary.pushed_all:
                continue  # the push used its share of the round, then pulled: push on now
            attempt += 1
            if attempt >= self.max_attempts:
                break
            delay = self.retry_policy.next_delay(attempt, summary.retry_after)
            if time.monotonic() + delay >= deadline:
                break
            self.state.update_stats(current_backoff_s=round(delay, 3))
            time.sleep(delay)
        engine.on_progress = None
        if summary.synced:
            self.retry_policy.reset()
        return summary

    # -- status and quarantine -----------------------------------------------------------

    @_naming_the_file
    def status(self) -> dict[str, Any]:
        """What `sync-agent status --json` prints (never the token)."""
        settings = self.state.settings()
        box = self.outbox.stats()
        stats = self.state.stats()
        return {
            "database": self.path,
            "device_id": settings.device_id,
            "endpoint": settings.endpoint,
            "configured": bool(settings.endpoint and settings.token),
            "pending": box.total_ops,
            "depth": dict(box.depth),
            "bytes": box.total_bytes,
            "max_ops": box.max_ops,
            "max_bytes": box.max_bytes,
            "oldest_pending_age_s": box.oldest_pending_age_s,
            "in_flight": box.in_flight,
            "quarantined": box.quarantined,
            "last_success_at": stats.last_success_at,
            "last_attempt_at": stats.last_attempt_at,
            "last_error": stats.last_error,
            "last_error_at": stats.last_error_at,
            "consecutive_failures": stats.consecutive_failures,
            "current_backoff_s": stats.current_backoff_s,
            "connectivity": stats.connectivity.value,
            "clock_offset_ms": stats.clock_offset_ms,
        }

    @_naming_the_file
    def quarantined(self) -> list[dict[str, Any]]:
        """Ops the cloud rejected permanently, with the reason it gave."""
        return [
            {
                "op_id": item.op.op_id,
                "collection": item.op.collection,
                "key": item.op.key,
                "kind": item.op.kind.value,
                "priority": Priority(item.op.priority).name.lower(),
                "code": item.code,
                "message": item.message,
                "attempts": item.attempts,
                "quarantined_at": item.quarantined_at,
            }
            for item in self.outbox.quarantined()
        ]

    @_naming_the_file
    def retry_quarantined(self, op_id: str) -> str:
        """Send a quarantined op again (after fixing what the cloud objected to)."""
        return self.outbox.retry_quarantined(op_id).op_id

    @_naming_the_file
    def drop_quarantined(self, op_id: str) -> None:
        """Give up on a quarantined op for good."""
        self.outbox.drop_quarantined(op_id)
