"""The outbox: every local write, durable on disk until the cloud has taken responsibility.

Ops are recorded in one `BEGIN IMMEDIATE` transaction each (or one per `record_many`), leased
in batches by `claim`, and leave only through `ack` (the cloud answered for them) or
`quarantine` (the cloud rejected them permanently; kept for an operator). A crashed sender's
leases are recovered, so an op is sent again rather than lost; sending twice is harmless
because every op is idempotent by its HLC.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import Any, Callable, NoReturn, Optional, Union

from device_agent.db import (
    DeviceConnection,
    caches_usable,
    data_version,
    database_path,
    snapshot,
    transaction,
)
from device_agent.errors import DamagedDatabase, NotFound, OutboxFull
from device_agent.outbox_draft import Draft, draft_write, prepare_write
from device_agent.outbox_model import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_OPS,
    OutboxStats,
    PendingOp,
    QuarantinedOp,
    WriteItem,
    op_from_row,
    pending_from_row,
    pending_from_rows,
)
from device_agent.outbox_sql import (
    BY_KEY,
    BY_SEQ,
    CANDIDATES,
    CHUNK,
    FORGET_ALL_KEYS,
    FORGET_ALL_REPLACED,
    FORGET_REPLACED_BY,
    FORGET_STALE_KEYS,
    FORGET_STALE_REPLACED,
    GROW,
    INTAKE,
    INTAKE_BRIEF,
    INTAKE_BY_ID,
    INTAKE_BY_PRIORITY,
    INTAKE_MEETS_PENDING,
    INTAKE_OLDEST,
    INTAKE_ROWS,
    KEPT_TO_RESTAMP,
    LEASE,
    MARK_HANDED_OUT,
    NO_STALE_KEYS,
    OLDEST,
    PLACE_ALL_FROM_INTAKE,
    PLACE_FROM_INTAKE,
    RELEASE,
    RELEASE_UNATTEMPTED,
    REMOVE,
    REMOVE_HANDED_OUT,
    REMOVE_RETURNING,
    REMOVE_SCANNED,
    REPLACED_BY,
    REPLACED_COLUMNS,
    SEQS_HANDED_OUT,
    SEQS_SCANNED,
    TO_REMOVE,
    TO_RESTAMP,
    TOTALS,
)
from device_agent.outbox_write import (
    INSERT,
    Growth,
    new_op_id,
    new_op_ids,
    op_row,
    store_ops,
)
from device_agent.state import DAMAGED_ADVICE, AgentState
from shared.contracts import ErrorCode, JsonObject, Op, OpKind, Priority

# DELETE ... RETURNING (SQLite 3.35) removes ops and reports their totals in one statement.
HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)
# Recorded writes wait in the intake (schema.MIGRATIONS, version 7) until the outbox's next write
# transaction places them, or until this many wait: readers of a key's ops scan it.
INTAKE_PLACED_AT = 100
# Stale outbox_keys rows are swept once there are more than this many (and more than live
# ops): see Outbox._remove.
SWEEP_STALE_KEYS_ABOVE = 1_000

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_OPS",
    "Outbox",
    "OutboxStats",
    "PendingOp",
    "QuarantinedOp",
    "WriteItem",
]


class Outbox:
    """The durable queue of local ops, shared safely by every process using the database.

    Bounded by `max_ops` and `max_bytes` (approximate wire size): a write that would pass
    either bound is refused with OutboxFull, never dropped. `now` is the wall clock in epoch
    seconds (injectable for tests). Leases left by a crashed process are recovered on open.

    Durability: `record`, `record_many`, `restamp` and the quarantine moves are fsynced before
    they return (an accepted write survives a power cut). Claims, acks and releases are not:
    losing one only makes an op be sent again, which is harmless (see `db.transaction`).
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        state: AgentState,
        *,
        max_ops: int = DEFAULT_MAX_OPS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        now: Callable[[], float] = time.time,
        recover: bool = True,
    ) -> None:
        if max_ops < 1 or max_bytes < 1:
            raise ValueError("max_ops and max_bytes must be positive")
        self._conn = conn
        self._state = state
        self.max_ops = max_ops
        self.max_bytes = max_bytes
        self._now = now
        self._owner = f"pid:{os.getpid()}"
        if recover:
            self.recover_leases()

    # --- recording -------------------------------------------------------------------------

    def record(
        self,
        collection: str,
        key: str,
        kind: Union[OpKind, str],
        data: Optional[JsonObject] = None,
        priority: Union[Priority, int, str] = Priority.NORMAL,
    ) -> Op:
        """Durably record one write and return the op as recorded.

        Validated first (ContractError, nothing stored), then stamped and appended to the
        intake in one transaction: one row, as a bare queue writes. The outbox's next write
        transaction places it (`place_intake`), coalescing it with the ops on its key as
        `record_many` would. Near a bound, or with INTAKE_PLACED_AT writes waiting, the
        intake is placed and the write stored at once (the op returned is then as stored,
        coalesced if it was), so OutboxFull is raised exactly when storing it would pass
        the bound.
        """
        draft = draft_write(
            collection, key, kind, data, priority, placeholder_hlc=self._placeholder_hlc()
        )
        now = self._now()
        with transaction(self._conn):
            totals = self._totals()
            if (
                totals.intake_ops >= INTAKE_PLACED_AT
                or totals.ops + totals.intake_ops >= self.max_ops
                or totals.size + totals.intake_size + draft.size > self.max_bytes
            ):
                # Placed now, after the intake: coalescing may keep it within the bounds.
                self._place_intake()
                return self._store([draft], [self._state.stamp_unsaved()], now)[0]
            # The intake row persists the stamp too (AgentState._last_recorded).
            op = draft.op(new_op_id(), self._state.stamp_unsaved())
            self._conn.execute(INTAKE, op_row(op, None, (draft.text, draft.size), now))
            totals.intake_ops += 1
            totals.intake_size += draft.size
            self._track([])  # (drops the connection's copy where it cannot follow)
        return op

    def place_intake(self) -> None:
        """Place the recorded writes waiting in the intake in the outbox, in the order they
        were recorded, coalesced as `record_many` would (one transaction; durable already,
        they need no fsync to move). Not checked against the bounds: `record` did that."""
        with transaction(self._conn, durable=False):
            self._place_intake()

    def _place_intake(self) -> None:
        """`place_intake` inside the open write transaction (every write of the outbox
        begins with it)."""
        # Read, not taken from the connection's copy of the counts: a savepoint rolled
        # back by the caller's hand would leave that copy wrong.
        brief = self._conn.execute(INTAKE_BRIEF).fetchall()
        totals = self._totals()
        totals.intake_ops = totals.intake_size = 0
        if not brief:
            return
        if (
            len({(row[1], row[2]) for row in brief}) == len(brief)
            and not (self._conn.execute(INTAKE_MEETS_PENDING).fetchone()[0])
        ):
            growth = self._copy_intake(brief, dict(totals.next_seqs))
        else:  # writes to coalesce: as record_many would store them
            rows = self._conn.execute(INTAKE_ROWS).fetchall()
            _, growth = store_ops(
                self._conn,
                [op_from_row(row[:7]) for row in rows],
                self._now(),
                dict(totals.next_seqs),
                [(row[5], row[7]) for row in rows],
                recorded_at=[row[8] for row in rows],
            )
        self._conn.execute("DELETE FROM outbox_intake")
        self._apply(growth, max(row[5] for row in brief))

    def _copy_intake(self, brief: list[Any], next_seqs: dict[int, int]) -> Growth:
        """Place intake rows on keys with no pending op, none twice (nothing to coalesce):
        copied row by row in SQL at the next seqs of their priorities, never decoded."""
        growth = Growth()
        for _, _, _, priority, size, _ in brief:
            growth.add(priority, 1, size, 1)
        first = brief[0][0]
        if len(growth) == 1 and brief[-1][0] - first == len(brief) - 1:
            # One priority, rows numbered without gaps (the usual case): one statement.
            [priority] = growth
            shift = next_seqs[priority] - first
            self._conn.execute(PLACE_ALL_FROM_INTAKE, {"shift": shift})
            return growth
        moves = []
        for n, _, _, priority, _, _ in brief:
            moves.append({"seq": next_seqs[priority], "n": n})
            next_seqs[priority] += 1
        self._conn.executemany(PLACE_FROM_INTAKE, moves)  # (a trigger adds the key rows)
        return growth

    def record_many(self, items: Iterable[WriteItem]) -> list[Op]:
        """Record several writes in one transaction: all of them are stored, or none.

        Equivalent to calling `record` for each in order (coalescing included), but durable
        with one commit.
        """
        writes = list(items)
        if not writes:
            return []
        # Validate before taking the write lock; each op's data is encoded once, for the size
        # limit and for storage.
        placeholder = self._placeholder_hlc()
        drafts = [prepare_write(item, placeholder) for item in writes]
        now = self._now()
        with transaction(self._conn):
            self._place_intake()  # (recorded before these: placed before them)
            # The last stamp is persisted with the totals (_apply), not as a write of its own.
            stamps = self._state.stamp_many(len(drafts), persist=False)
            return self._store(drafts, stamps, now)

    def _placeholder_hlc(self) -> str:
        """An HLC of the length this device's stamps have (for sizing before stamping)."""
        return f"{0:013d}-00000-{self._state.node_hint}"

    def _store(
        self,
        drafts: list[Draft],
        stamps: list[str],
        now: float,
    ) -> list[Op]:
        """Store stamped drafts in the open transaction (outbox_write.store_ops)."""
        ops = [d.op(op_id, hlc) for d, op_id, hlc in zip(drafts, new_op_ids(len(drafts)), stamps)]
        totals = self._totals()
        stored, growth = store_ops(
            self._conn,
            ops,
            now,
            dict(totals.next_seqs),
            [(d.text, d.size) for d in drafts],
        )
        self._check_bounds(totals, growth)
        self._apply(growth, stamps[-1])
        return stored

    def _totals(self) -> _Totals:
        """outbox_totals summed, and the intake counted. A DeviceConnection keeps them between
        transactions, valid while no other connection has committed (data_version) and
        updated by this connection's own changes."""
        conn = self._conn
        version = data_version(conn) if caches_usable(conn) else None
        cached = getattr(conn, "totals", None)
        if cached is not None and version is not None and cached[0] == version:
            return cached[1]  # type: ignore[no-any-return]
        ops = size = stale = 0
        next_seqs = {}
        intake = (0, 0)
        for row in conn.execute(TOTALS):
            priority, count, bytes_, next_seq, stale_keys = _counts(conn, row)
            if priority < 0:  # the intake
                intake = (count, bytes_)
                continue
            ops += count
            size += bytes_
            stale += stale_keys
            next_seqs[priority] = next_seq
        totals = _Totals(ops, size, next_seqs, stale)
        totals.intake_ops, totals.intake_size = intake
        if version is not None:
            conn.totals = (version, totals)  # type: ignore[attr-defined]
        return totals

    def _check_bounds(self, totals: _Totals, growth: Growth) -> None:
        """Refuse growth past a bound; a write that does not grow the outbox always passes."""
        added, grown = growth.ops(), growth.size()
        if (added > 0 and totals.ops + added > self.max_ops) or (
            grown > 0 and totals.size + grown > self.max_bytes
        ):
            self._refuse(totals)

    def _refuse(self, totals: _Totals) -> NoReturn:
        raise OutboxFull(
            f"outbox full: {totals.ops} ops / {totals.size} bytes stored, limits are "
            f"{self.max_ops} ops / {self.max_bytes} bytes; the write was not recorded - "
            "sync to drain the outbox (sync-agent sync), or raise the limits",
            max_ops=self.max_ops,
            max_bytes=self.max_bytes,
        )

    def _apply(self, growth: Growth, stamp: str = "") -> None:
        """Add per-priority changes to outbox_totals, with the greatest HLC just stamped.

        The next seq stored is never below the one this connection's copy counts to: should
        that copy be ahead of the table (a savepoint rolled back by the caller's hand, which
        the copy cannot see), seqs it handed out are then never handed out again."""
        next_seqs = self._totals().next_seqs  # (before `_track` counts this growth in)
        rows = [
            {
                "ops": ops,
                "bytes": size,
                "seqs": seqs,
                "next": next_seqs[priority] + seqs,
                "stale": stale,
                "hlc": stamp,
                "priority": priority,
            }
            for priority, (ops, size, seqs, stale) in growth.items()
        ]
        if len(rows) == 1:
            self._conn.execute(GROW, rows[0])
        else:
            self._conn.executemany(GROW, rows)
        self._track(growth.items())

    def _track(self, changes: Iterable[tuple[int, list[int]]]) -> None:
        """Follow this connection's changes to outbox_totals in the copy it keeps, or drop
        the copy in a transaction begun by hand (a rollback by hand would not reach it)."""
        cached = getattr(self._conn, "totals", None)
        if cached is None:
            return
        if not caches_usable(self._conn):
            self._conn.totals = None  # type: ignore[attr-defined]
            return
        for priority, entry in changes:
            cached[1].grow(priority, entry)

    # --- delivery --------------------------------------------------------------------------

    def claim(
        self,
        *,
        limit: int = 100,
        max_bytes: int = 1_000_000,
        lease_s: float = 60.0,
        now: Optional[float] = None,
    ) -> list[PendingOp]:
        """Lease the next ops to send: ready ones, most urgent priority first, FIFO within one.

        Ready means its next attempt time has come and it is not leased (or its lease
        expired). At most `limit` ops and `max_bytes` (at least one op); the lease lasts
        `lease_s`. Every claimed op must later be acked, released or quarantined.
        """
        if limit < 1:
            return []
        at = self._now() if now is None else now
        with transaction(self._conn, durable=False):
            self._place_intake()
            candidates = self._conn.execute(CANDIDATES, {"now": at, "limit": limit}).fetchall()
            rows: list[Any] = []
            total = 0
            for row in candidates:
                if rows and total + row[-1] > max_bytes:
                    break
                rows.append(row)
                total += row[-1]
            if not rows:
                return []
            params = {
                "seqs": json.dumps([row[0] for row in rows]),
                "now": at,
                "until": at + lease_s,
                "owner": self._owner,
            }
            self._conn.execute(LEASE, params)
        return pending_from_rows(rows)

    def ack(self, op_ids: Iterable[str]) -> int:
        """Remove ops the cloud has taken responsibility for; returns how many were removed.

        Like claims and releases, acks are committed without an fsync of their own: a power
        cut may bring the last acked ops back, to be sent once more and answered `duplicate`.
        """
        ids = list(dict.fromkeys(op_ids))
        removed = 0
        with transaction(self._conn, durable=False):
            self._place_intake()  # (a direct caller may ack an op never claimed)
            for start in range(0, len(ids), CHUNK):
                removed += self._remove_ids(ids[start : start + CHUNK])
        return removed

    def _remove_ids(self, op_ids: list[str]) -> int:
        """`_remove` by op id (at most CHUNK ids): ops handed out (all the sync engine acks)
        in one statement through delivery's op_id index, any others by a scan."""
        if not HAS_RETURNING:
            return self._remove(list(self._seqs(op_ids).values()))
        rows = self._by_ids(REMOVE_HANDED_OUT, REMOVE_SCANNED, op_ids)
        return self._count_removed([(priority, size) for _, priority, size in rows])

    def _seqs(self, op_ids: list[str]) -> dict[str, int]:
        """The seqs of the named ops still in the outbox, by op id (at most CHUNK ids)."""
        return dict(self._by_ids(SEQS_HANDED_OUT, SEQS_SCANNED, op_ids))

    def _by_ids(self, handed_out: str, scanned: str, op_ids: list[str]) -> list[Any]:
        """Rows (op id first) of a statement on the named ops: `handed_out` finds them
        through delivery's op_id index, `scanned` the ids it missed by scanning the outbox,
        which has no op_id index (never-claimed ops: only direct callers name those)."""
        rows: list[Any] = self._conn.execute(handed_out, {"ids": json.dumps(op_ids)}).fetchall()
        if len(rows) < len(op_ids):
            found = {row[0] for row in rows}
            rest = json.dumps([op_id for op_id in op_ids if op_id not in found])
            rows += self._conn.execute(scanned, {"ids": rest}).fetchall()
        return rows

    def _seq(self, op_id: str, missing: str) -> int:
        """The seq of one op in the outbox; NotFound with `missing` as the message if none."""
        seq = self._seqs([op_id]).get(op_id)
        if seq is None:
            raise NotFound(missing)
        return seq

    def _remove(self, seqs: list[int]) -> int:
        """Delete the ops at these seqs (their delivery rows go with them); update the totals.

        Their outbox_keys rows are left stale rather than deleted: the acked ops' keys are
        spread over the whole table, so deleting them would touch a page per op on a large
        backlog, and a stale row costs nothing but space (readers skip it). They all go when
        the outbox empties, and in one sweep once the removals counted since the last sweep
        (`stale_keys`, an upper bound: a write on a key also deletes its stale rows)
        outnumber the live ops and SWEEP_STALE_KEYS_ABOVE. That keeps the table within about
        twice the backlog and costs each removal a bounded share of a sweep.
        """
        if not seqs:
            return 0
        params = {"seqs": json.dumps(seqs)}
        if HAS_RETURNING:
            rows = self._conn.execute(REMOVE_RETURNING, params).fetchall()
        else:
            rows = self._conn.execute(TO_REMOVE, params).fetchall()
            self._conn.execute(REMOVE, params)
        return self._count_removed(rows)

    def _count_removed(self, rows: list[tuple[int, int]]) -> int:
        """Take removed ops, as (priority, size), out of the totals; sweep stale key rows."""
        if not rows:
            return 0
        totals = self._totals()
        growth = Growth()
        for priority, size in rows:
            growth.add(priority, -1, -size, 0, 1)
        left = totals.ops - len(rows)
        stale = totals.stale + len(rows)
        self._apply(growth)  # (may update `totals` in place: it can be the connection's copy)
        if left == 0 or stale > max(SWEEP_STALE_KEYS_ABOVE, left):
            # (what acked ops had replaced goes with their keys)
            self._conn.execute(FORGET_ALL_KEYS if left == 0 else FORGET_STALE_KEYS)
            self._conn.execute(FORGET_ALL_REPLACED if left == 0 else FORGET_STALE_REPLACED)
            self._conn.execute(NO_STALE_KEYS)
            if isinstance(self._conn, DeviceConnection):
                self._conn.totals = None
        return len(rows)

    def release(self, op_ids: Iterable[str], *, error: str, retry_at: float) -> int:
        """Return leased ops after a failed attempt: counted, with the error and retry time."""
        return self._each_chunk(op_ids, RELEASE, {"error": error, "retry_at": retry_at})

    def release_unattempted(self, op_ids: Iterable[str]) -> int:
        """Return leased ops that were not sent (e.g. shutdown); no attempt is counted."""
        return self._each_chunk(op_ids, RELEASE_UNATTEMPTED, {})

    def _each_chunk(self, op_ids: Iterable[str], sql: str, extra: dict[str, Any]) -> int:
        ids = list(dict.fromkeys(op_ids))
        changed = 0
        with transaction(self._conn, durable=False):
            for start in range(0, len(ids), CHUNK):
                params = {"ids": json.dumps(ids[start : start + CHUNK]), **extra}
                changed += max(self._conn.execute(sql, params).rowcount, 0)
        return changed

    def recover_leases(self) -> int:
        """Make ops leased by a dead process (or with an expired lease) pending again.

        A lease is also void when it was taken "in the future" (the wall clock went back since),
        so a clock jump cannot pin an op for the lease length plus the jump.
        """
        now = self._now()
        recovered = 0
        with transaction(self._conn, durable=False):
            owners = [
                row[0]
                for row in self._conn.execute(
                    "SELECT DISTINCT lease_owner FROM delivery WHERE lease_until IS NOT NULL"
                )
            ]
            for owner in owners:
                dead = not _owner_alive(owner)
                cursor = self._conn.execute(
                    "UPDATE delivery SET leased_at = NULL, lease_until = NULL, lease_owner = NULL "
                    "WHERE lease_until IS NOT NULL AND lease_owner IS :owner AND "
                    "(:dead OR lease_until <= :now OR leased_at > :now)",
                    {"owner": owner, "dead": dead, "now": now},
                )
                recovered += max(cursor.rowcount, 0)
        return recovered

    def restamp(self, op_ids: Iterable[str]) -> list[Op]:
        """Give the named ops fresh HLCs from the (corrected) clock, keeping the order of all.

        For `clock_ahead` rejections, after `AgentState.restamp_clock`. Every outbox op
        stamped at or after the earliest named one, or ahead of the clock, is re-stamped too,
        in HLC order, so no op overtakes an older one; so are the ops they keep as replaced
        (`outbox_replaced`), which may come back. Returns the re-stamped outbox ops in HLC
        order; unknown ids are ignored (they may have been acked meanwhile).
        """
        ids = list(dict.fromkeys(op_ids))
        with transaction(self._conn):
            self._place_intake()
            seqs = [
                seq
                for start in range(0, len(ids), CHUNK)
                for seq in self._seqs(ids[start : start + CHUNK]).values()
            ]
            earliest = self._conn.execute(
                "SELECT MIN(hlc) FROM outbox WHERE seq IN (SELECT value FROM json_each(:seqs))",
                {"seqs": json.dumps(seqs)},
            ).fetchone()[0]
            bounds = {"clock": self._state.last_hlc(), "earliest": earliest}
            rows = self._conn.execute(TO_RESTAMP, bounds).fetchall()
            ops = [pending_from_row(row).op for row in rows]
            if not ops:
                return []
            kept = self._conn.execute(KEPT_TO_RESTAMP, bounds).fetchall()
            # One HLC order over the outbox ops (source 0) and the kept ones (source 1).
            order = sorted(
                [(op.hlc, 0, index) for index, op in enumerate(ops)]
                + [(hlc, 1, index) for index, (_, _, hlc) in enumerate(kept)]
            )
            new_stamps: tuple[dict[int, str], dict[int, str]] = ({}, {})
            for (_, source, index), stamp in zip(order, self._state.stamp_many(len(order))):
                new_stamps[source][index] = stamp
            renewed = [replace(op, hlc=new_stamps[0][index]) for index, op in enumerate(ops)]
            self._conn.executemany(
                "UPDATE outbox SET hlc = :hlc WHERE seq = :seq",
                [{"hlc": op.hlc, "seq": row[0]} for op, row in zip(renewed, rows)],
            )
            self._conn.executemany(
                "UPDATE outbox_replaced SET hlc = :hlc WHERE by_seq = :by_seq AND op_id = :op_id",
                [
                    {"hlc": new_stamps[1][index], "by_seq": by_seq, "op_id": op_id}
                    for index, (by_seq, op_id, _) in enumerate(kept)
                ],
            )
        return renewed

    # --- quarantine ------------------------------------------------------------------------

    def quarantine(self, op_id: str, code: Union[ErrorCode, str], message: str) -> None:
        """Move an op the cloud rejected permanently out of the queue, keeping the reason."""
        reason = code.value if isinstance(code, ErrorCode) else str(code)
        with transaction(self._conn):
            self._place_intake()  # (an op never claimed may still wait there)
            seq = self._seq(
                op_id, f"op {op_id} is not in the outbox (already acked or quarantined?)"
            )
            self._conn.execute(
                "INSERT INTO quarantine (op_id, collection, key, kind, hlc, data, priority, size, "
                "enqueued_at, attempts, code, message, quarantined_at) "
                "SELECT o.op_id, o.collection, o.key, o.kind, o.hlc, o.data, o.priority, o.size, "
                "o.enqueued_at, COALESCE(d.attempts, 0), :code, :message, :now "
                "FROM outbox AS o LEFT JOIN delivery AS d ON d.seq = o.seq WHERE o.seq = :seq",
                {"seq": seq, "code": reason, "message": message, "now": self._now()},
            )
            replaced = self._conn.execute(REPLACED_BY, {"seq": seq}).fetchall()
            self._remove([seq])
            if replaced:
                self._restore(replaced)
                self._conn.execute(FORGET_REPLACED_BY, {"seq": seq})

    def _restore(self, rows: list[Any]) -> None:
        """Put back the ops a quarantined op had replaced (`REPLACED_BY` rows), at the end of
        their priorities, as if handed out once: newer writes on their keys may have been
        sent, so none may be coalesced into. Not checked against the bounds: the user wrote
        them, and the cloud has answered for none of them."""
        totals = self._totals()
        next_seqs = dict(totals.next_seqs)
        growth = Growth()
        restored = []
        for row in rows:
            kept = dict(zip(REPLACED_COLUMNS, row))
            priority = kept["priority"]
            kept["seq"] = next_seqs[priority]
            next_seqs[priority] += 1
            growth.add(priority, 1, kept["size"], 1)
            restored.append(kept)
        self._conn.executemany(INSERT, restored)
        self._conn.executemany(MARK_HANDED_OUT, restored)
        self._apply(growth)

    def quarantined(self) -> list[QuarantinedOp]:
        """Every quarantined op, oldest quarantine first."""
        rows = self._conn.execute(
            "SELECT op_id, collection, key, kind, hlc, data, priority, code, message, attempts, "
            "enqueued_at, quarantined_at FROM quarantine ORDER BY quarantined_at, hlc"
        ).fetchall()
        return [
            QuarantinedOp(
                op=op_from_row(row[:7]),
                code=row[7],
                message=row[8],
                attempts=row[9],
                enqueued_at=row[10],
                quarantined_at=row[11],
            )
            for row in rows
        ]

    def retry_quarantined(self, op_id: str) -> Op:
        """Put a quarantined op back in the queue (as the newest op of its priority).

        It keeps its op id and HLC (a retry must stay idempotent) and is never a target for
        coalescing, since newer writes on its key may already have been sent.
        """
        with transaction(self._conn):
            self._place_intake()  # (recorded before it is put back: placed before it)
            row = self._conn.execute(
                "SELECT priority, size FROM quarantine WHERE op_id = :op_id",
                {"op_id": op_id},
            ).fetchone()
            if row is None:
                raise NotFound(f"op {op_id} is not quarantined; see `sync-agent quarantine list`")
            priority, size = row
            totals = self._totals()
            growth = Growth()
            growth.add(priority, 1, size, 1)
            self._check_bounds(totals, growth)
            seq = totals.next_seqs[priority]
            self._conn.execute(
                "INSERT INTO outbox (seq, op_id, collection, key, kind, hlc, data, priority, "
                "size, enqueued_at) SELECT :seq, op_id, collection, key, kind, hlc, data, "
                "priority, size, :now FROM quarantine WHERE op_id = :op_id",
                {"seq": seq, "op_id": op_id, "now": self._now()},
            )
            # Marked as handed out: newer writes on its key may have been sent already.
            self._conn.execute(MARK_HANDED_OUT, {"seq": seq, "op_id": op_id})
            self._conn.execute("DELETE FROM quarantine WHERE op_id = :op_id", {"op_id": op_id})
            self._apply(growth)
            return self._pending_at(seq).op

    def drop_quarantined(self, op_id: str) -> None:
        """Delete a quarantined op for good (an operator's decision)."""
        with transaction(self._conn):
            cursor = self._conn.execute(
                "DELETE FROM quarantine WHERE op_id = :op_id", {"op_id": op_id}
            )
            if cursor.rowcount != 1:
                raise NotFound(f"op {op_id} is not quarantined; see `sync-agent quarantine list`")

    # --- reading ---------------------------------------------------------------------------

    def pending_for(self, collection: str, key: str) -> list[Op]:
        """Every op on the key still in the outbox (pending, in flight or in the intake), in
        HLC order."""
        rows = self._conn.execute(BY_KEY, {"collection": collection, "key": key}).fetchall()
        return [pending_from_row(row).op for row in rows]

    def get(self, op_id: str) -> PendingOp:
        """The op with this id; NotFound if it is not in the outbox.

        Finding an op never handed out scans the outbox (it has no op_id index): fine for
        tools and tests, not for a loop over a large backlog.
        """
        with snapshot(self._conn):
            seq = self._seqs([op_id]).get(op_id)
            if seq is not None:
                return self._pending_at(seq)
            row = self._conn.execute(INTAKE_BY_ID, {"op_id": op_id}).fetchone()
        if row is None:
            raise NotFound(f"op {op_id} is not in the outbox (acked, coalesced or quarantined)")
        return pending_from_row(row)

    def _pending_at(self, seq: int) -> PendingOp:
        return pending_from_row(self._conn.execute(BY_SEQ, {"seq": seq}).fetchone())

    def depth(self) -> int:
        """How many ops are in the outbox (pending, in flight and in the intake: a write
        there that will be coalesced still counts)."""
        totals = self._totals()
        return totals.ops + totals.intake_ops

    def stats(self) -> OutboxStats:
        """Depth per priority name, bytes, oldest pending age, in flight and quarantined (the
        intake counted in, as `depth`)."""
        now = self._now()
        depth = {priority.name.lower(): 0 for priority in Priority}
        total_bytes = 0
        with snapshot(self._conn):
            for query in ("SELECT priority, ops, bytes FROM outbox_totals", INTAKE_BY_PRIORITY):
                for row in self._conn.execute(query):
                    priority, ops, size = _counts(self._conn, row)
                    depth[Priority(priority).name.lower()] += ops
                    total_bytes += size
            times = [self._conn.execute(query).fetchone()[0] for query in (OLDEST, INTAKE_OLDEST)]
            oldest = min((when for when in times if when is not None), default=None)
            in_flight = self._conn.execute(
                "SELECT COUNT(*) FROM delivery WHERE lease_until IS NOT NULL"
            ).fetchone()[0]
            quarantined = self._conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
        return OutboxStats(
            depth=depth,
            total_ops=sum(depth.values()),
            total_bytes=total_bytes,
            oldest_pending_age_s=None if oldest is None else max(0.0, now - oldest),
            in_flight=in_flight,
            quarantined=quarantined,
            max_ops=self.max_ops,
            max_bytes=self.max_bytes,
        )


class _Totals:
    """outbox_totals summed, with the next free seq of each priority, and the ops waiting in
    the intake (not in `ops` and `size` yet). Mutable: the copy a connection keeps
    (Outbox._totals) follows the connection's own changes in place."""

    __slots__ = ("intake_ops", "intake_size", "next_seqs", "ops", "size", "stale")

    def __init__(self, ops: int, size: int, next_seqs: dict[int, int], stale: int) -> None:
        self.ops = ops
        self.size = size
        self.next_seqs = next_seqs
        self.stale = stale  # outbox_keys rows whose op is gone (Outbox._remove)
        self.intake_ops = 0
        self.intake_size = 0

    def grow(self, priority: int, entry: list[int]) -> None:
        """Add one priority's Growth entry [ops, bytes, seqs used, stale keys]."""
        self.ops += entry[0]
        self.size += entry[1]
        self.next_seqs[priority] += entry[2]
        self.stale += entry[3]


def _counts(conn: sqlite3.Connection, row: Any) -> Any:
    """A row of counts (outbox_totals), checked: DamagedDatabase, naming the file and what to
    do, if a value is not a whole number (the file edited by hand, a failing disk)."""
    if any(type(value) is not int for value in row):
        location = database_path(conn)
        raise DamagedDatabase(
            f"agent database {location}: its outbox totals are damaged ({tuple(row)!r} holds "
            f"a value that is not a whole number); {DAMAGED_ADVICE}",
            path=location,
        )
    return row


def _owner_alive(owner: Optional[str]) -> bool:
    """Whether the process that took a lease still runs (unknown counts as alive)."""
    if owner is None or not owner.startswith("pid:") or os.name != "posix":
        # Elsewhere signal 0 is not a probe (on Windows it would interrupt the process).
        return True
    try:
        pid = int(owner[4:])
    except ValueError:
        return True
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
