"""The replica: the cloud's records as last pulled, with their clocks, and the local view.

Records fold in with `merge_records`, which is commutative, associative and idempotent, so
pages delivered twice or out of order leave the same replica. Tombstones are kept: a deleted
record's clock is what stops an older write from bringing it back.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Optional

from device_agent.db import transaction
from shared.conflict import apply_lww, merge_records
from shared.contracts import JsonObject, Op, Record, RecordClock


class Replica:
    """The synced records of one device database."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def apply(self, record: Record) -> Record:
        """Fold a record from the cloud into the replica; returns the stored result."""
        with transaction(self._conn):
            return self._apply(record)

    def apply_many(self, records: Iterable[Record]) -> int:
        """Fold several records in one transaction (a pulled page); returns how many."""
        count = 0
        with transaction(self._conn):
            for record in records:
                self._apply(record)
                count += 1
        return count

    def apply_op(self, op: Op) -> Record:
        """Fold one of this device's ops that the cloud took responsibility for.

        The op leaves the outbox in the same transaction, so the local view keeps showing
        it without waiting for the change to come back through a pull.
        """
        with transaction(self._conn):
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
        clock = json.loads(row[1])
        return Record(
            collection,
            key,
            json.loads(row[0]),
            RecordClock(clock.get("reset", ""), dict(clock.get("fields", {}))),
        )

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

    def clear(self) -> None:
        """Forget every record, for a full resync (e.g. after `cursor_expired`)."""
        with transaction(self._conn):
            self._conn.execute("DELETE FROM replica")

    def _apply(self, record: Record) -> Record:
        merged = merge_records(self.get_record(record.collection, record.key), record)
        assert merged is not None  # merging with a record never yields None
        return self._store(merged)

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
