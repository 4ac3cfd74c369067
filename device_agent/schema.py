"""The device database's schema: the migrations that build it, version by version.

A file's `PRAGMA user_version` is the number of migrations applied to it; `db.open_database`
applies the missing ones in one transaction. Each migration's comment says why its tables
look the way they do (the outbox's layout is mostly about what a durable write, a claim and
an ack each cost).
"""

from __future__ import annotations

# Each entry migrates the schema from version N to N + 1 (PRAGMA user_version holds N). Never
# edit a released entry: append a new one.
MIGRATIONS: list[list[str]] = [
    [
        # Settings, clock, cursor and statistics: small JSON values by name.
        """CREATE TABLE kv (
             name  TEXT PRIMARY KEY,
             value TEXT NOT NULL
           ) WITHOUT ROWID""",
        # Ops waiting for the cloud, written once and then only read until acked: `seq`
        # orders FIFO within a priority. Delivery state lives in `delivery`, so claiming and
        # releasing rewrite a few small rows instead of the op rows and their indexes.
        """CREATE TABLE outbox (
             seq         INTEGER PRIMARY KEY,
             op_id       TEXT NOT NULL UNIQUE,
             collection  TEXT NOT NULL,
             key         TEXT NOT NULL,
             kind        TEXT NOT NULL,
             hlc         TEXT NOT NULL,
             data        TEXT,
             priority    INTEGER NOT NULL,
             size        INTEGER NOT NULL,
             enqueued_at REAL NOT NULL
           )""",
        # The claim query walks this index in (priority, seq) order and stops after `limit`
        # ready rows. Measured: putting delivery state first in an index, or any column the
        # ORDER BY does not start with, makes SQLite sort the whole backlog instead.
        "CREATE INDEX outbox_claim ON outbox (priority, seq, size)",
        "CREATE INDEX outbox_key ON outbox (collection, key, hlc)",
        # One row per op ever handed to a sender (so also: "never coalesce into this op"). A row
        # is in flight while `lease_until` is set. Deleting the op deletes its row.
        """CREATE TABLE delivery (
             seq             INTEGER PRIMARY KEY REFERENCES outbox (seq) ON DELETE CASCADE,
             leased_at       REAL,
             lease_until     REAL,
             lease_owner     TEXT,
             attempts        INTEGER NOT NULL DEFAULT 0,
             next_attempt_at REAL NOT NULL DEFAULT 0,
             last_error      TEXT
           )""",
        # Depth and bytes per priority, kept by triggers so bounds and stats cost O(1).
        """CREATE TABLE outbox_totals (
             priority INTEGER PRIMARY KEY,
             ops      INTEGER NOT NULL,
             bytes    INTEGER NOT NULL
           )""",
        """INSERT INTO outbox_totals (priority, ops, bytes)
             VALUES (0, 0, 0), (1, 0, 0), (2, 0, 0), (3, 0, 0), (4, 0, 0)""",
        """CREATE TRIGGER outbox_totals_insert AFTER INSERT ON outbox BEGIN
             UPDATE outbox_totals SET ops = ops + 1, bytes = bytes + NEW.size
              WHERE priority = NEW.priority;
           END""",
        """CREATE TRIGGER outbox_totals_delete AFTER DELETE ON outbox BEGIN
             UPDATE outbox_totals SET ops = ops - 1, bytes = bytes - OLD.size
              WHERE priority = OLD.priority;
           END""",
        """CREATE TRIGGER outbox_totals_update AFTER UPDATE OF priority, size ON outbox BEGIN
             UPDATE outbox_totals SET ops = ops - 1, bytes = bytes - OLD.size
              WHERE priority = OLD.priority;
             UPDATE outbox_totals SET ops = ops + 1, bytes = bytes + NEW.size
              WHERE priority = NEW.priority;
           END""",
        # Ops the cloud rejected permanently, kept with the reason until an operator acts.
        """CREATE TABLE quarantine (
             op_id          TEXT PRIMARY KEY,
             collection     TEXT NOT NULL,
             key            TEXT NOT NULL,
             kind           TEXT NOT NULL,
             hlc            TEXT NOT NULL,
             data           TEXT,
             priority       INTEGER NOT NULL,
             size           INTEGER NOT NULL,
             enqueued_at    REAL NOT NULL,
             attempts       INTEGER NOT NULL,
             code           TEXT NOT NULL,
             message        TEXT NOT NULL,
             quarantined_at REAL NOT NULL
           )""",
        # Records pulled from the cloud, with their clocks (tombstones included).
        """CREATE TABLE replica (
             collection TEXT NOT NULL,
             key        TEXT NOT NULL,
             data       TEXT NOT NULL,
             clock      TEXT NOT NULL,
             PRIMARY KEY (collection, key)
           )""",
    ],
    [
        # Version 2: the claim order is the table's own order, and fewer pages change per op.
        # `seq` is now (priority << 48) + a counter per priority kept in outbox_totals, so
        # walking the table by rowid visits the ops in claim order (most urgent first, FIFO
        # within a priority) with no index to keep, and a claimed batch is a run of
        # neighbouring rows. A counter never goes back, so a seq is never reused.
        # The CHECK keeps seq and priority in step, and refuses the writes of an agent of
        # version 1 still running after the migration (its inserts let SQLite pick the seq).
        """CREATE TABLE outbox_v2 (
             seq         INTEGER PRIMARY KEY,
             op_id       TEXT NOT NULL UNIQUE,
             collection  TEXT NOT NULL,
             key         TEXT NOT NULL,
             kind        TEXT NOT NULL,
             hlc         TEXT NOT NULL,
             data        TEXT,
             priority    INTEGER NOT NULL,
             size        INTEGER NOT NULL,
             enqueued_at REAL NOT NULL,
             CHECK (seq >> 48 = priority)
           )""",
        """INSERT INTO outbox_v2 (seq, op_id, collection, key, kind, hlc, data, priority, size,
                                  enqueued_at)
           SELECT (priority << 48) + seq, op_id, collection, key, kind, hlc, data, priority,
                  size, enqueued_at FROM outbox""",
        """CREATE TABLE delivery_v2 AS
           SELECT (o.priority << 48) + d.seq AS seq, d.leased_at, d.lease_until, d.lease_owner,
                  d.attempts, d.next_attempt_at, d.last_error
             FROM delivery AS d JOIN outbox AS o ON o.seq = d.seq""",
        # Dropping the outbox drops its triggers and indexes (the old claim and key indexes).
        "DROP TABLE delivery",
        "DROP TABLE outbox",
        "ALTER TABLE outbox_v2 RENAME TO outbox",
        """CREATE TABLE delivery (
             seq             INTEGER PRIMARY KEY REFERENCES outbox (seq) ON DELETE CASCADE,
             leased_at       REAL,
             lease_until     REAL,
             lease_owner     TEXT,
             attempts        INTEGER NOT NULL DEFAULT 0,
             next_attempt_at REAL NOT NULL DEFAULT 0,
             last_error      TEXT
           )""",
        "INSERT INTO delivery SELECT * FROM delivery_v2",
        "DROP TABLE delivery_v2",
        # Totals are now kept by the outbox code once per statement, not by per-row triggers;
        # next_seq is the seq the next op of that priority gets. last_hlc is the greatest HLC
        # stamped on an op recorded since the clock was last set back: the clock's persisted
        # state is the greater of it and kv's "clock" (see AgentState), so recording an op
        # updates one row instead of two.
        "ALTER TABLE outbox_totals ADD COLUMN next_seq INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE outbox_totals ADD COLUMN last_hlc TEXT NOT NULL DEFAULT ''",
        # outbox_keys rows left behind by removed ops of that priority (see below).
        "ALTER TABLE outbox_totals ADD COLUMN stale_keys INTEGER NOT NULL DEFAULT 0",
        """UPDATE outbox_totals SET next_seq = 1 + COALESCE(
             (SELECT MAX(seq) FROM outbox
               WHERE seq >= (outbox_totals.priority << 48)
                 AND seq < ((outbox_totals.priority + 1) << 48)),
             outbox_totals.priority << 48)""",
        # Ops by key (coalescing, the local view) are found through a table of their own
        # rather than an index on the outbox, so that an ack need not delete from it: the
        # acked ops' keys are scattered over the whole index, and deleting them touched a
        # page per op on a large backlog. A row whose op is gone is stale: readers join it to
        # the outbox and skip it. Stale rows go when their key is written again, all at once
        # when the outbox empties, and in a sweep when they outnumber the live ops
        # (outbox_removal.remove_seqs).
        """CREATE TABLE outbox_keys (
             collection TEXT NOT NULL,
             key        TEXT NOT NULL,
             seq        INTEGER NOT NULL,
             PRIMARY KEY (collection, key, seq)
           ) WITHOUT ROWID""",
        "INSERT INTO outbox_keys (collection, key, seq) SELECT collection, key, seq FROM outbox",
    ],
    [
        # Version 3: one index fewer to write per recorded op. The outbox loses its op_id
        # index (an autoindex of the UNIQUE constraint, hence the rebuild): ops are looked up
        # by id only once handed out (acks, releases, quarantine, re-stamps), so delivery
        # carries the op id, indexed, and other lookups scan. outbox_keys rows are added by a
        # trigger, one statement fewer per recorded op.
        """CREATE TABLE outbox_v3 (
             seq         INTEGER PRIMARY KEY,
             op_id       TEXT NOT NULL,
             collection  TEXT NOT NULL,
             key         TEXT NOT NULL,
             kind        TEXT NOT NULL,
             hlc         TEXT NOT NULL,
             data        TEXT,
             priority    INTEGER NOT NULL,
             size        INTEGER NOT NULL,
             enqueued_at REAL NOT NULL,
             CHECK (seq >> 48 = priority)
           )""",
        """INSERT INTO outbox_v3 (seq, op_id, collection, key, kind, hlc, data, priority, size,
                                  enqueued_at)
           SELECT seq, op_id, collection, key, kind, hlc, data, priority, size, enqueued_at
             FROM outbox ORDER BY seq""",
        """CREATE TABLE delivery_v3 AS
           SELECT d.seq, o.op_id, d.leased_at, d.lease_until, d.lease_owner, d.attempts,
                  d.next_attempt_at, d.last_error
             FROM delivery AS d JOIN outbox AS o ON o.seq = d.seq""",
        "DROP TABLE delivery",
        "DROP TABLE outbox",
        "ALTER TABLE outbox_v3 RENAME TO outbox",
        """CREATE TABLE delivery (
             seq             INTEGER PRIMARY KEY REFERENCES outbox (seq) ON DELETE CASCADE,
             op_id           TEXT NOT NULL,
             leased_at       REAL,
             lease_until     REAL,
             lease_owner     TEXT,
             attempts        INTEGER NOT NULL DEFAULT 0,
             next_attempt_at REAL NOT NULL DEFAULT 0,
             last_error      TEXT
           )""",
        "CREATE INDEX delivery_op_id ON delivery (op_id)",
        "INSERT INTO delivery SELECT * FROM delivery_v3",
        "DROP TABLE delivery_v3",
        """CREATE TRIGGER outbox_keys_add AFTER INSERT ON outbox BEGIN
             INSERT INTO outbox_keys (collection, key, seq)
               VALUES (NEW.collection, NEW.key, NEW.seq);
           END""",
    ],
    [
        # Version 4: a full resync (cursor_expired) refreshes the replica in place instead of
        # emptying it first, so the local view keeps every record while it runs, however
        # long and however often interrupted. The keys the cloud has sent since the resync
        # began are listed here (local_hlc NULL), and the keys only this device's acked ops
        # have touched since (local_hlc: the oldest of their stamps); the others are dropped
        # when it completes (Replica).
        """CREATE TABLE resync_seen (
             collection TEXT NOT NULL,
             key        TEXT NOT NULL,
             local_hlc  TEXT,
             PRIMARY KEY (collection, key)
           ) WITHOUT ROWID""",
    ],
    [
        # Version 5: a write on a key with no pending op is one autocommit statement, an
        # INSERT into this view, instead of six in a transaction. The writer checks the
        # bounds and stamps the HLC from the copies its connection keeps (the totals and the
        # clock, valid at one PRAGMA data_version). The trigger refuses the write if another
        # connection has committed since (the copies may be stale) or if the key has
        # outbox_keys rows (the write may coalesce): the writer then takes the general path
        # (Outbox.record). Otherwise it stores the op at the next seq of its priority
        # (outbox_keys_add adds the key row) and counts it in outbox_totals as GROW would.
        """CREATE VIEW outbox_new_key AS
             SELECT op_id, collection, key, kind, hlc, data, priority, size, enqueued_at,
                    0 AS data_version
               FROM outbox WHERE false""",
        """CREATE TRIGGER outbox_new_key_insert INSTEAD OF INSERT ON outbox_new_key BEGIN
             SELECT RAISE(ABORT, 'fieldsync: not a lone write on a new key')
              WHERE NEW.data_version IS NOT (SELECT data_version FROM pragma_data_version)
                 OR EXISTS (SELECT 1 FROM outbox_keys
                             WHERE collection = NEW.collection AND key = NEW.key);
             INSERT INTO outbox (seq, op_id, collection, key, kind, hlc, data, priority, size,
                                 enqueued_at)
               VALUES ((SELECT next_seq FROM outbox_totals WHERE priority = NEW.priority),
                       NEW.op_id, NEW.collection, NEW.key, NEW.kind, NEW.hlc,
                       NEW.data, NEW.priority, NEW.size, NEW.enqueued_at);
             UPDATE outbox_totals SET ops = ops + 1, bytes = bytes + NEW.size,
                    next_seq = next_seq + 1, last_hlc = max(last_hlc, NEW.hlc)
              WHERE priority = NEW.priority;
           END""",
    ],
    [
        # Version 6: the ops a pending op replaced or made dead when it was recorded
        # (coalescing), kept under its seq until the cloud answers for it. Acked, they are
        # garbage (their op's seq is never used again) and are swept with the stale
        # outbox_keys rows; rejected, they return to the outbox (Outbox.quarantine), so an
        # op the cloud refuses does not take older accepted writes down with it. One level:
        # an op that is replaced in turn passes on only itself, not what it had replaced.
        """CREATE TABLE outbox_replaced (
             by_seq      INTEGER NOT NULL,
             op_id       TEXT NOT NULL,
             collection  TEXT NOT NULL,
             key         TEXT NOT NULL,
             kind        TEXT NOT NULL,
             hlc         TEXT NOT NULL,
             data        TEXT,
             priority    INTEGER NOT NULL,
             size        INTEGER NOT NULL,
             enqueued_at REAL NOT NULL,
             PRIMARY KEY (by_seq, op_id)
           ) WITHOUT ROWID""",
    ],
    [
        # Version 7: a write is recorded by appending it to the intake, one row in a table
        # of its own (one page per commit, as a bare queue writes), instead of placing it at
        # once (outbox row, key row, totals row: three pages, and the statements to find
        # them). Intake rows are placed in order, coalesced as `record_many` would, at the
        # start of the outbox's next write transaction (a claim, a batch, an ack) or once the
        # intake holds INTAKE_PLACED_AT of them: recorded durably already, they need no
        # fsync of their own to be placed. Readers of pending ops read the intake too. The
        # version 5 statement this replaces goes.
        "DROP TRIGGER outbox_new_key_insert",
        "DROP VIEW outbox_new_key",
        """CREATE TABLE outbox_intake (
             n           INTEGER PRIMARY KEY,
             op_id       TEXT NOT NULL,
             collection  TEXT NOT NULL,
             key         TEXT NOT NULL,
             kind        TEXT NOT NULL,
             hlc         TEXT NOT NULL,
             data        TEXT,
             priority    INTEGER NOT NULL,
             size        INTEGER NOT NULL,
             enqueued_at REAL NOT NULL
           )""",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)
# Tables every version of the schema has: a file with user_version > 0 but without them
# belongs to another application that happens to set user_version too.
OWN_TABLES = frozenset({"kv", "outbox", "delivery", "quarantine", "replica"})
