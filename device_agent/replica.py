"""The replica: the cloud's records as last pulled, with their clocks, and the local view.

Records fold in with `merge_records`, which is commutative, associative and idempotent, so
pages delivered twice or out of order leave the same replica. Tombstones are kept: a deleted
record's clock is what stops an older write from bringing it back.

A full resync (the pull cursor expired) refreshes the replica in place: the first time the
cloud sends a key after `begin_resync`, its record replaces the stored one (whose expired
tombstones the cloud no longer has), and `finish_resync` drops the keys the cloud never sent
(records deleted long ago). Until then every record stays visible. What this device's acked
ops wrote meanwhile survives both: a key they touched keeps the fields they wrote when the
cloud's record replaces it, and is not dropped.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Optional

from device_agent.db import transaction
from shared.conflict import apply_lww, merge_records
from shared.contracts import JsonObject, Op, Record, RecordClock, is_hlc

# kv row present while a full resync is under way.
_RESYNC = "resync"


class Replica:
    """The synced records of one device database."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def apply(self, record: Record) -> bool:
        """Fold a record from the cloud into the replica; whether that changed it."""
        with transaction(self._conn):
            return self._apply(record, self.resyncing())

    def apply_many(self, records: Iterable[Record]) -> int:
        """Fold several records in one transaction (a pulled page); returns how many changed
        the replica (a change delivered again changes nothing, and is not written again)."""
        count = 0
        with transaction(self._conn):
            resyncing = self.resyncing()
            for record in records:
                count += self._apply(record, resyncing)
        return count

    def apply_op(self, op: Op) -> Record:
        """Fold one of this device's ops that the cloud took responsibility for.

        The op leaves the outbox in the same transaction, so the local view keeps showing
        it without waiting for the change to come back through a pull.
        """
        with transaction(self._conn):
            if self.resyncing():
                # The cloud has the op now, but the resync's pages may all predate it: what
                # the op wrote survives the replacement and the sweep (_apply, finish_resync).
                self._conn.execute(
                    "INSERT INTO resync_seen (collection, key, local_hlc) "
                    "VALUES (:collection, :key, :hlc) ON CONFLICT (collection, key) DO UPDATE "
                    "SET local_hlc = min(local_hlc, excluded.local_hlc) "
                    "WHERE local_hlc IS NOT NULL",
                    {"collection": op.collection, "key": op.key, "hlc": op.hlc},
                )
            current = self.get_record(op.collection, op.key)
            return self._store(apply_lww(current, op).record)

    def get_record(self, collection: str, key: str) -> Optional[Record]:
        """The stored record, tombstones included (None if the cloud never sent one)."""
        row = self._conn.execute(
            "SELECT data, clock FROM replica WHERE collection = :collection AND key = :key",
            {"collection": collection, "key": key},
        ).fetchone()
        if row is None:
            return None
        data, clock = json.loads(row[0]), json.loads(row[1])  # (ValueError if damaged)
        reset = clock.get("reset", "") if isinstance(clock, dict) else None
        fields = clock.get("fields", {}) if isinstance(clock, dict) else None
        if not (
            isinstance(data, dict)
            and isinstance(reset, str)
            and (not reset or is_hlc(reset))
            and isinstance(fields, dict)
            and all(is_hlc(stamp) for stamp in fields.values())
        ):
            raise ValueError("its data or clock is not of the shape this agent stores")
        return Record(collection, key, data, RecordClock(reset, dict(fields)))

    def view(self, collection: str, key: str, pending: Sequence[Op]) -> Optional[JsonObject]:
        """The local view: the replica with the pending local ops applied, as the server would.

        None when the record is absent or deleted. `pending` is typically
        `Outbox.pending_for(collection, key)`; ops on other keys are ignored.
        """
        record = self.get_record(collection, key)
        mine = sorted(
            (op for op in pending if op.collection == collection and op.key == key),
            key=lambda op: op.hlc,
        )
        for op in mine:
            record = apply_lww(record, op).record
        if record is None or record.deleted:
            return None
        return dict(record.data)

    def count(self) -> int:
        """How many records (tombstones included) the replica holds."""
        row = self._conn.execute("SELECT COUNT(*) FROM replica").fetchone()
        return int(row[0])

    def begin_resync(self) -> None:
        """Start a full resync: the cloud is about to send every record from the beginning.
        What an earlier pass saw is forgotten (its cursor expired too: records it saw may be
        gone since); the keys this device's ops touched stay marked."""
        with transaction(self._conn):
            self._conn.execute(
                "INSERT INTO kv (name, value) VALUES (:name, 'true') ON CONFLICT (name) DO NOTHING",
                {"name": _RESYNC},
            )
            self._conn.execute("DELETE FROM resync_seen WHERE local_hlc IS NULL")

    def finish_resync(self) -> int:
        """After the last page of a full resync: drop the records the cloud did not send.
        Returns how many; nothing happens when no resync is under way."""
        with transaction(self._conn):
            if not self.resyncing():
                return 0
            dropped = self._conn.execute(
                "DELETE FROM replica WHERE NOT EXISTS (SELECT 1 FROM resync_seen AS s "
                "WHERE s.collection = replica.collection AND s.key = replica.key)"
            ).rowcount
            self._conn.execute("DELETE FROM resync_seen")
            self._conn.execute("DELETE FROM kv WHERE name = :name", {"name": _RESYNC})
        return int(dropped)

    def resyncing(self) -> bool:
        """Whether a full resync is under way (begun, not finished)."""
        row = self._conn.execute("SELECT 1 FROM kv WHERE name = :name", {"name": _RESYNC})
        return row.fetchone() is not None

    def _first_sent(self, collection: str, key: str) -> tuple[bool, Optional[str]]:
        """List the key as sent by the cloud since the resync began. Returns whether it was
        not yet, and the oldest stamp of this device's ops on it meanwhile (None if none)."""
        params = {"collection": collection, "key": key}
        row = self._conn.execute(
            "SELECT local_hlc FROM resync_seen WHERE collection = :collection AND key = :key",
            params,
        ).fetchone()
        if row is not None and row[0] is None:
            return False, None
        self._conn.execute(
            "INSERT INTO resync_seen (collection, key, local_hlc) VALUES (:collection, :key, "
            "NULL) ON CONFLICT (collection, key) DO UPDATE SET local_hlc = NULL",
            params,
        )
        return True, None if row is None else row[0]

    def _apply(self, record: Record, resyncing: bool) -> bool:
        """Fold `record` in; whether that changed the replica."""
        stored = current = self.get_record(record.collection, record.key)
        if resyncing:
            first, since = self._first_sent(record.collection, record.key)
            if first and current is not None:
                # The cloud's full record replaces what an older feed left here, but not
                # what this device's ops wrote since the resync began.
                current = None if since is None else _written_since(current, since)
        merged = merge_records(current, record)
        assert merged is not None  # merging with a record never yields None
        if merged == stored:
            return False
        self._store(merged)
        return True

    def _store(self, merged: Record) -> Record:
        self._conn.execute(
            "INSERT INTO replica (collection, key, data, clock) "
            "VALUES (:collection, :key, :data, :clock) "
            "ON CONFLICT (collection, key) DO UPDATE "
            "SET data = excluded.data, clock = excluded.clock",
            {
                "collection": merged.collection,
                "key": merged.key,
                "data": json.dumps(merged.data, separators=(",", ":"), ensure_ascii=False),
                "clock": json.dumps(merged.clock.to_wire(), separators=(",", ":")),
            },
        )
        return merged


def _written_since(record: Record, hlc: str) -> Record:
    """What `record` holds from writes stamped `hlc` or later (older fields left out)."""
    fields = {name: stamp for name, stamp in record.clock.fields.items() if stamp >= hlc}
    data = {name: value for name, value in record.data.items() if name in fields}
    reset = record.clock.reset if record.clock.reset >= hlc else ""
    return Record(record.collection, record.key, data, RecordClock(reset, fields))
