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

from device_agent.db import snapshot, transaction
from device_agent.errors import NotFound, OutboxFull
from device_agent.op_ids import new_op_id, new_op_ids
from device_agent.outbox_draft import Draft, draft_write, prepare_write
from device_agent.outbox_intake import INTAKE_PLACED_AT, place_intake
from device_agent.outbox_leases import recover_leases
from device_agent.outbox_model import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_OPS,
    OutboxStats,
    PendingOp,
    QuarantinedOp,
    WriteItem,
    pending_from_row,
    pending_from_rows,
)
from device_agent.outbox_quarantine import (
    drop_quarantined,
    list_quarantined,
    quarantine_seq,
    return_quarantined,
)
from device_agent.outbox_removal import remove_ids, seq_of, seqs_of
from device_agent.outbox_sql import (
    BY_KEY,
    BY_SEQ,
    CANDIDATES,
    CHUNK,
    INTAKE,
    INTAKE_BY_ID,
    INTAKE_BY_PRIORITY,
    INTAKE_OLDEST,
    KEPT_TO_RESTAMP,
    LEASE,
    OLDEST,
    RELEASE,
    RELEASE_UNATTEMPTED,
    TO_RESTAMP,
)
from device_agent.outbox_totals import Totals, add_growth, checked_counts, read_totals, track_growth
from device_agent.outbox_write import Growth, op_row, store_ops
from device_agent.state import AgentState
from shared.contracts import ErrorCode, JsonObject, Op, OpKind, Priority

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
            totals = read_totals(self._conn)
            if (
                totals.intake_ops >= INTAKE_PLACED_AT
                or totals.ops + totals.intake_ops >= self.max_ops
                or totals.size + totals.intake_size + draft.size > self.max_bytes
            ):
                # Placed now, after the intake: coalescing may keep it within the bounds.
                place_intake(self._conn, self._now)
                return self._store([draft], [self._state.stamp_unsaved()], now)[0]
            # The intake row persists the stamp too (AgentState._last_recorded).
            op = draft.op(new_op_id(), self._state.stamp_unsaved())
            self._conn.execute(INTAKE, op_row(op, None, (draft.text, draft.size), now))
            totals.intake_ops += 1
            totals.intake_size += draft.size
            track_growth(self._conn, [])  # (drops the connection's copy where it cannot follow)
        return op

    def place_intake(self) -> None:
        """Place the recorded writes waiting in the intake in the outbox, in the order they
        were recorded, coalesced as `record_many` would (one transaction; durable already,
        they need no fsync to move). Not checked against the bounds: `record` did that."""
        with transaction(self._conn, durable=False):
            place_intake(self._conn, self._now)

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
            place_intake(self._conn, self._now)  # (recorded before these: placed before them)
            # The last stamp is persisted with the totals (add_growth), not as a write of its
            # own.
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
        totals = read_totals(self._conn)
        stored, growth = store_ops(
            self._conn,
            ops,
            now,
            dict(totals.next_seqs),
            [(d.text, d.size) for d in drafts],
        )
        self._check_bounds(totals, growth)
        add_growth(self._conn, growth, stamps[-1])
        return stored

    def _check_bounds(self, totals: Totals, growth: Growth) -> None:
        """Refuse growth past a bound; a write that does not grow the outbox always passes."""
        added, grown = growth.ops(), growth.size()
        if (added > 0 and totals.ops + added > self.max_ops) or (
            grown > 0 and totals.size + grown > self.max_bytes
        ):
            self._refuse(totals)

    def _refuse(self, totals: Totals) -> NoReturn:
        raise OutboxFull(
            f"outbox full: {totals.ops} ops / {totals.size} bytes stored, limits are "
            f"{self.max_ops} ops / {self.max_bytes} bytes; the write was not recorded - "
            "sync to drain the outbox (sync-agent sync), or raise the limits",
            max_ops=self.max_ops,
            max_bytes=self.max_bytes,
        )

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
            place_intake(self._conn, self._now)
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
            place_intake(self._conn, self._now)  # (a direct caller may ack an op never claimed)
            for start in range(0, len(ids), CHUNK):
                removed += remove_ids(self._conn, ids[start : start + CHUNK])
        return removed

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
        """Make ops leased by a dead process (or with an expired lease) pending again
        (outbox_leases)."""
        now = self._now()
        with transaction(self._conn, durable=False):
            return recover_leases(self._conn, now)

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
            place_intake(self._conn, self._now)
            seqs = [
                seq
                for start in range(0, len(ids), CHUNK)
                for seq in seqs_of(self._conn, ids[start : start + CHUNK]).values()
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
        """Move an op the cloud rejected permanently out of the queue, keeping the reason;
        what it had replaced comes back (outbox_quarantine)."""
        reason = code.value if isinstance(code, ErrorCode) else str(code)
        with transaction(self._conn):
            place_intake(self._conn, self._now)  # (an op never claimed may still wait there)
            missing = f"op {op_id} is not in the outbox (already acked or quarantined?)"
            seq = seq_of(self._conn, op_id, missing)
            quarantine_seq(self._conn, seq, reason, message, self._now())

    def quarantined(self) -> list[QuarantinedOp]:
        """Every quarantined op, oldest quarantine first."""
        return list_quarantined(self._conn)

    def retry_quarantined(self, op_id: str) -> Op:
        """Put a quarantined op back in the queue (as the newest op of its priority).

        It keeps its op id and HLC (a retry must stay idempotent) and is never a target for
        coalescing, since newer writes on its key may already have been sent.
        """
        with transaction(self._conn):
            place_intake(
                self._conn, self._now
            )  # (recorded before it is put back: placed before it)
            seq = return_quarantined(self._conn, op_id, self._now(), self._check_bounds)
            return self._pending_at(seq).op

    def drop_quarantined(self, op_id: str) -> None:
        """Delete a quarantined op for good (an operator's decision)."""
        with transaction(self._conn):
            drop_quarantined(self._conn, op_id)

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
            seq = seqs_of(self._conn, [op_id]).get(op_id)
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
        totals = read_totals(self._conn)
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
                    priority, ops, size = checked_counts(self._conn, row)
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
