"""The agent's persisted state: settings, the hybrid logical clock, the pull cursor, sync stats.

Everything lives in the device database so that several processes (an app recording writes,
`sync-agent run` syncing) share one truth, and a reboot - even with the wall clock set back -
never makes the clock issue a smaller timestamp. Each read-modify-write runs under SQLite's
write lock (`transaction()`), so concurrent processes never interleave one.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import uuid
from dataclasses import replace
from typing import Any, Callable, Optional

from device_agent.db import DeviceConnection, caches_usable, data_version, transaction
from device_agent.errors import DamagedDatabase
from device_agent.state_values import (
    DAMAGED,
    DAMAGED_ADVICE,
    REIDENTIFY,
    REINIT,
    STATS_FIELDS,
    Connectivity,
    Settings,
    SyncStats,
    json_type,
    settings_problem,
    shown,
    sound_settings,
    sound_stat,
)
from shared.contracts import HybridLogicalClock, limits, parse_hlc
from shared.contracts.hlc import (
    MAX_LOGICAL,
    NODE_PATTERN,
    format_hlc,
    validate_node_id,
    wall_clock_ms,
)

log = logging.getLogger("device_agent.state")

# Below this a measured offset is network delay, not a wrong clock: do not correct for it.
CLOCK_CORRECTION_THRESHOLD_MS = 2_000
# kv row: {"taken": the greatest stamp of ours the cloud took, "unsettled": the greatest
# stamp of each batch sent whose answer has not come} (AgentState.note_sent / note_settled).
STAMPS_OUT = "stamps_out"
_UNSETTLED_KEPT = 64
_NODE_RE = re.compile(rf"^{NODE_PATTERN}\Z")

# What each kv row holds, and what to do when it is damaged (DamagedDatabase messages).
_ROWS = {
    "settings": ("settings", REINIT),
    "device_id": ("device id", REIDENTIFY),
    "clock": ("clock", DAMAGED_ADVICE),
    STAMPS_OUT: ("record of stamps sent", DAMAGED_ADVICE),
}


class AgentState:
    """Settings, clock, cursor and statistics of one device database.

    `now_ms` is the local wall clock (injectable so tests can move it back a year).
    """

    def __init__(
        self, conn: sqlite3.Connection, *, now_ms: Callable[[], int] = wall_clock_ms
    ) -> None:
        self._conn = conn
        self._now_ms = now_ms
        self._node_hint: Optional[str] = None
        self._warned = False  # about damaged statistics, once

    @property
    def conn(self) -> sqlite3.Connection:
        return self._conn

    # --- settings ----------------------------------------------------------------------

    def settings(self) -> Settings:
        """The stored settings; `device_id` is created (and stored) on first use.

        Settings that are not what the agent wrote (not a JSON object, an endpoint that is not
        a string, ...) raise DamagedDatabase saying to run `sync-agent init` again.
        """
        raw = self._get("settings") or {}
        problem = settings_problem(raw)
        if problem:
            raise self._damaged(f"its settings are damaged: {problem}", REINIT)
        return Settings(
            raw.get("endpoint"),
            raw.get("token"),
            self.device_id,
            raw.get("max_ops"),
            raw.get("max_bytes"),
        )

    def update_settings(
        self,
        *,
        endpoint: Optional[str] = None,
        token: Optional[str] = None,
        device_id: Optional[str] = None,
        max_ops: Optional[int] = None,
        max_bytes: Optional[int] = None,
    ) -> Settings:
        """Change the given settings (None leaves one as it is) and return them all."""
        if device_id is not None:
            validate_node_id(device_id)
        for name, bound in (("max_ops", max_ops), ("max_bytes", max_bytes)):
            if bound is not None and (type(bound) is not int or bound < 1):
                raise ValueError(f"{name} must be a whole number above 0, got {bound!r}")
        changes = {"endpoint": endpoint, "token": token, "max_ops": max_ops, "max_bytes": max_bytes}
        with transaction(self._conn):
            # A damaged row is replaced (this is how `init` repairs it), keeping what is sound.
            raw = sound_settings(self._get_or_none("settings"))
            if device_id is None:
                self._ensure_device_id()  # before the settings row: it is proof of an id
            for name, value in changes.items():
                if value is not None:
                    raw[name] = value
            self._put("settings", raw)
            if device_id is not None:
                self._put("device_id", device_id)
                clock = self._object("clock")
                latest = self.last_hlc()
                if latest:
                    # The clock's state carries the node id that stamps use: keep it in step.
                    when = parse_hlc(latest)
                    last = format_hlc(when.physical_ms, when.logical, device_id)
                    self._save_clock(last, int(clock.get("correction_ms", 0)))
                    self._forget_recorded()
        self._node_hint = None
        return self.settings()

    @property
    def node_hint(self) -> str:
        """The device id as last seen by this object (no database read; for sizing only)."""
        if self._node_hint is None:
            self._node_hint = self.device_id
        return self._node_hint

    @property
    def device_id(self) -> str:
        """This device's id; a random `dev-<hex>` is chosen and stored the first time.

        The id is in every stamp the device issued, so it is never replaced behind the
        caller's back: a stored id that is not a valid id, or one missing from a database
        that has been used, raises DamagedDatabase (`init --device-id` sets it again).
        """
        stored = self._get("device_id")
        if isinstance(stored, str) and _NODE_RE.match(stored):
            return stored
        with transaction(self._conn):
            return self._ensure_device_id()

    def _ensure_device_id(self) -> str:
        """The stored device id, or a new one for a database that never had one; inside the
        caller's transaction."""
        stored = self._get("device_id")
        if isinstance(stored, str) and _NODE_RE.match(stored):
            return stored
        if stored is not None:
            problem = f"its device id is {shown(stored)}, not a valid device id"
        elif self._text("settings") is not None or self.last_hlc():
            problem = "its device id is missing, although the database has been set up"
        else:
            stored = f"dev-{uuid.uuid4().hex[:12]}"
            self._put("device_id", stored)
            return stored
        last = self.last_hlc()
        if last:
            problem += f" (the last stamp it issued names device {last.split('-', 2)[2]!r})"
        raise self._damaged(problem, REIDENTIFY)

    # --- clock ---------------------------------------------------------------------------

    def stamp(self) -> str:
        """A new HLC, greater than every one this database issued or merged, persisted.

        Called inside the caller's transaction (the op's insert), it commits or rolls back
        with it; the write lock makes it monotonic across processes.
        """
        return self.stamp_many(1)[0]

    def stamp_unsaved(self) -> str:
        """One new HLC for the outbox, inside the transaction that stores it with the op:
        `stamp_many(1, persist=False)` without the list (it runs once per recorded write)."""
        if not self._conn.in_transaction:
            raise RuntimeError("stamp_unsaved() runs inside the transaction that saves it")
        cached = self._cached_clock()
        stamp = cached[1].send()
        self._keep_clock(cached)
        return stamp

    def stamp_many(self, count: int, *, persist: bool = True) -> list[str]:
        """`count` increasing HLCs in one read-modify-write of the persisted clock.

        `persist=False` is for the outbox, which stores the last stamp in
        outbox_totals.last_hlc in the same transaction (see `_load_clock`).
        """
        if not self._conn.in_transaction:
            with transaction(self._conn):
                return self.stamp_many(count, persist=persist)
        version, clock, correction = self._cached_clock()
        first = clock.send()
        stamps = [first]
        if count > 1:
            # The rest as if the wall clock stood still meanwhile (a valid reading): each
            # stamp ticks the logical counter, rolling into the next ms when it is full.
            physical, logical, node = first.split("-", 2)
            ms, tick = int(physical), int(logical)
            for _ in range(count - 1):
                if tick >= MAX_LOGICAL:
                    ms, tick = ms + 1, 0
                else:
                    tick += 1
                stamps.append(f"{ms:013d}-{tick:05d}-{node}")
            clock.receive(stamps[-1])
        if persist:
            self._save_clock(stamps[-1], correction)
        self._keep_clock((version, clock, correction))
        return stamps

    def _keep_clock(self, cached: tuple[int, HybridLogicalClock, int]) -> None:
        """Keep the clock on the connection for the next stamp, where caches are usable."""
        if isinstance(self._conn, DeviceConnection):
            self._conn.clock = cached if caches_usable(self._conn) else None

    def _cached_clock(self) -> tuple[int, HybridLogicalClock, int]:
        """The persisted clock, read again only when another connection has committed since
        this one last used it (a stamp per write would otherwise re-read and re-parse it)."""
        version = data_version(self._conn)
        cached = getattr(self._conn, "clock", None) if caches_usable(self._conn) else None
        if cached is not None and cached[0] == version:
            return cached  # type: ignore[no-any-return]
        clock, correction = self._load_clock()
        return version, clock, correction

    def last_hlc(self) -> str:
        """The greatest HLC issued or merged so far ("" on a fresh database)."""
        raw = self._object("clock")
        last = raw.get("last", "")
        return max(last if isinstance(last, str) else "", self._last_recorded())

    def _last_recorded(self) -> str:
        """The greatest HLC the outbox stamped since the clock was last set (or ""): kept in
        outbox_totals, and in the intake's rows until they are placed (Outbox.record)."""
        row = self._conn.execute(
            "SELECT MAX(COALESCE((SELECT MAX(last_hlc) FROM outbox_totals), ''), "
            "COALESCE((SELECT MAX(hlc) FROM outbox_intake), ''))"
        ).fetchone()
        return str(row[0] or "")

    def _forget_recorded(self) -> None:
        """After the clock's state was saved whole in kv (or set back): see _last_recorded.
        The intake must be empty then (Outbox.place_intake in the same transaction): its
        stamps would still count, and placed later they would count again."""
        if self._conn.execute("SELECT EXISTS (SELECT 1 FROM outbox_intake)").fetchone()[0]:
            raise RuntimeError(
                "the clock is set while recorded writes wait in the intake: call "
                "Outbox.place_intake() first, in the same transaction"
            )
        self._conn.execute("UPDATE outbox_totals SET last_hlc = ''")

    def merge_server_time(self, hlc: str) -> None:
        """Fold a `server_time` into the clock (HLC receive rule) and measure the offset.

        The offset estimate (server physical ms minus local wall ms) is stored in the stats;
        when it exceeds CLOCK_CORRECTION_THRESHOLD_MS it also corrects later stamps, so a
        device whose wall clock is wrong stamps near the server's time.
        """
        server_ms = parse_hlc(hlc).physical_ms
        with transaction(self._conn):
            offset = server_ms - self._now_ms()
            correction = offset if abs(offset) > CLOCK_CORRECTION_THRESHOLD_MS else 0
            clock, _ = self._load_clock(correction)
            clock.receive(hlc)
            self._save_clock(clock.last, correction)
            self._update_stats({"clock_offset_ms": offset})

    def merge_seen(self, hlc: str) -> None:
        """Fold the greatest HLC of records received from the cloud into the clock (the HLC
        receive rule; part of the caller's transaction), so that a write made after seeing a
        change is stamped after it, whatever this device's wall clock says. The offset
        estimate is left alone: a record's stamp is another device's clock, not the server's."""
        if not hlc:
            return
        out = self._object(STAMPS_OUT)
        seen = out.get("seen")
        if not isinstance(seen, str) or hlc > seen:
            self._put(STAMPS_OUT, {**out, "seen": hlc})  # a floor of restamp_clock
        clock, correction = self._load_clock()
        if hlc <= clock.last:
            return  # the usual case: nothing to write
        clock.receive(hlc)
        self._save_clock(clock.last, correction)

    def restamp_clock(self, server_time: str, skew_s: float = limits.MAX_CLOCK_SKEW_S) -> None:
        """Set the clock back to the server's time after a `clock_ahead` rejection.

        The only time the clock goes back: the server refused stamps from our future, so the
        persisted clock restarts at `server_time` and follows the corrected wall clock from
        there. Re-stamp the pending ops afterwards (Outbox.restamp) so their order holds.
        It never restarts below a stamp of ours the cloud took, or may have taken (sent, the
        answer not come yet), nor below the greatest stamp of the records received
        (`merge_seen`): a newer write of ours stamped below one would lose to it. The cloud
        takes no stamp more than `skew_s` ahead of its clock, which only moves on, so a sent
        or seen one counts up to `server_time` + `skew_s` at most.
        """
        server = parse_hlc(server_time)
        with transaction(self._conn):
            offset = server.physical_ms - self._now_ms()
            restart = format_hlc(server.physical_ms, server.logical, self.device_id)
            out = self._object(STAMPS_OUT)
            floors = []
            if out.get("taken"):
                taken = parse_hlc(out["taken"])
                floors.append((taken.physical_ms, taken.logical))
            cap = (server.physical_ms + int(skew_s * 1000), 0)
            for capped in (max(out.get("unsettled") or [""]), out.get("seen")):
                if isinstance(capped, str) and capped:
                    stamp = parse_hlc(capped)
                    floors.append(min((stamp.physical_ms, stamp.logical), cap))
            for physical_ms, logical in floors:
                restart = max(restart, format_hlc(physical_ms, logical, self.device_id))
            self._save_clock(restart, offset)
            self._forget_recorded()
            self._update_stats({"clock_offset_ms": offset})

    def note_sent(self, hlc: str) -> None:
        """Before sending a batch whose greatest stamp is `hlc`: until its answer comes, the
        cloud may have taken it (a floor of `restamp_clock`)."""
        with transaction(self._conn, durable=False):
            out = self._object(STAMPS_OUT)
            # Answers lost for good (a crash, a re-stamp) leave entries: keep the greatest.
            unsettled = sorted([*out.get("unsettled", []), hlc])[-_UNSETTLED_KEPT:]
            self._put(STAMPS_OUT, {**out, "unsettled": unsettled})

    def note_settled(self, sent: str, taken: str) -> None:
        """The answer to a batch whose greatest stamp was `sent` came ("": it left some ops
        unanswered, so it stays unsettled); `taken` is the greatest stamp it took ("" for
        none). Part of the caller's transaction."""
        out = self._object(STAMPS_OUT)
        taken = max(out.get("taken") or "", taken)
        unsettled = list(out.get("unsettled", []))
        if sent in unsettled:
            unsettled.remove(sent)
        # A batch whose stamps are all below one the cloud took no longer raises the floor.
        unsettled = [stamp for stamp in unsettled if stamp > taken]
        self._put(STAMPS_OUT, {**out, "taken": taken, "unsettled": unsettled})

    def _load_clock(self, correction: Optional[int] = None) -> tuple[HybridLogicalClock, int]:
        raw = self._object("clock")
        if correction is None:
            correction = int(raw.get("correction_ms", 0))
        shift = correction
        last = max(raw.get("last") or "", self._last_recorded()) or None
        # The persisted last stamp names the node (kept in step by update_settings): one read.
        node = last.split("-", 2)[2] if last else self.device_id
        clock = HybridLogicalClock(node, last=last, now_ms=lambda: self._now_ms() + shift)
        return clock, correction

    def _save_clock(self, last: str, correction: int) -> None:
        if isinstance(self._conn, DeviceConnection):
            self._conn.clock = None  # stamp_many caches again what it saved
        self._put("clock", {"last": last, "correction_ms": correction})

    # --- pull cursor ---------------------------------------------------------------------

    def cursor(self) -> Optional[str]:
        """Where the last pull stopped (None: pull from the beginning, also for a damaged
        value: pulling everything again is always safe)."""
        value = self._get_or_none("cursor")
        return value if isinstance(value, str) else None

    def set_cursor(self, cursor: Optional[str]) -> None:
        """Store the pull cursor (None forgets it, for a full resync)."""
        with transaction(self._conn):
            self._put("cursor", cursor)

    # --- statistics ----------------------------------------------------------------------

    def stats(self) -> SyncStats:
        """The stored statistics. They only inform, so a damaged value (edited by hand, a
        failing disk) reads as its default instead of failing `status` or a sync, with a
        warning; the next update writes them whole again."""
        raw = self._get_or_none("stats")
        if raw is None:
            return SyncStats()
        known: dict[str, Any] = {}
        damaged = [] if isinstance(raw, dict) else ["the whole row"]
        for name, value in raw.items() if isinstance(raw, dict) else ():
            if name not in STATS_FIELDS:
                continue  # (a newer agent's statistic)
            sound = sound_stat(name, value)
            if sound is DAMAGED:
                damaged.append(name)
            else:
                known[name] = sound
        if damaged and not self._warned:
            self._warned = True
            log.warning(
                "damaged sync statistics read as defaults database=%s fields=%s",
                self._location(),
                ",".join(damaged),
            )
        return SyncStats(**known)

    def update_stats(self, **changes: Any) -> SyncStats:
        """Change the named SyncStats fields (others stay) and return the result."""
        unknown = sorted(set(changes) - STATS_FIELDS)
        if unknown:
            raise TypeError(f"unknown sync statistics {unknown}: known are {sorted(STATS_FIELDS)}")
        # Statistics are informational: not worth an fsync per update.
        with transaction(self._conn, durable=False):
            return self._update_stats(changes)

    def _update_stats(self, changes: dict[str, Any]) -> SyncStats:
        updated = replace(self.stats(), **changes)
        if "connectivity" in changes:
            updated = replace(updated, connectivity=Connectivity(changes["connectivity"]))
        self._put("stats", updated.to_dict())
        return updated

    # --- storage -------------------------------------------------------------------------

    def _text(self, name: str) -> Optional[str]:
        row = self._conn.execute(
            "SELECT value FROM kv WHERE name = :name", {"name": name}
        ).fetchone()
        return None if row is None else str(row[0])

    def _get(self, name: str) -> Any:
        """The stored value (None if there is none); DamagedDatabase if it is not JSON."""
        text = self._text(name)
        if text is None:
            return None
        try:
            return json.loads(text)
        except ValueError as exc:
            raise self._row_damaged(name, f"is not valid JSON ({exc})") from exc

    def _get_or_none(self, name: str) -> Any:
        """The stored value, None if there is none or it is not JSON (a value the caller can
        do without: the statistics, the pull cursor)."""
        try:
            return self._get(name)
        except DamagedDatabase:
            log.warning("damaged value ignored database=%s name=%s", self._location(), name)
            return None

    def _object(self, name: str) -> dict[str, Any]:
        """The stored JSON object ({} if there is none); DamagedDatabase if it is not one."""
        value = self._get(name)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self._row_damaged(name, f"is a JSON {json_type(value)}, not an object")
        return value

    def _row_damaged(self, name: str, problem: str) -> DamagedDatabase:
        what, advice = _ROWS.get(name, (name, DAMAGED_ADVICE))
        return self._damaged(f"the kv row {name!r} ({what}) {problem}", advice)

    def _location(self) -> str:
        """The database file's path, for messages."""
        for _, schema, path in self._conn.execute("PRAGMA database_list"):
            if schema == "main":
                return str(path) or ":memory:"
        return "?"

    def _damaged(self, problem: str, advice: str) -> DamagedDatabase:
        location = self._location()
        return DamagedDatabase(f"agent database {location}: {problem}; {advice}", path=location)

    def _put(self, name: str, value: Any) -> None:
        self._conn.execute(
            "INSERT INTO kv (name, value) VALUES (:name, :value) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            {"name": name, "value": json.dumps(value)},
        )
