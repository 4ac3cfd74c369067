"""The device database: one SQLite file holding the outbox, the replica and the agent's state.

Several processes share it (an app calling `put` while `sync-agent run` syncs), so every write
runs in an explicit `BEGIN IMMEDIATE` transaction (`transaction()`), which takes SQLite's write
lock up front: read-modify-write sequences never interleave across processes, and a busy
database waits up to the busy timeout instead of failing half-way. One connection belongs to
one thread; open one per thread.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional, Union

from device_agent.errors import DatabaseError, ForeignDatabase, NotInitialised, SchemaTooNew

StrPath = Union[str, "os.PathLike[str]"]

DEFAULT_BUSY_TIMEOUT_S = 10.0
# UPSERT (3.24) and the JSON functions (json_each) are used throughout.
MIN_SQLITE = (3, 24, 0)
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")


class DeviceConnection(sqlite3.Connection):
    """A connection that carries what the agent caches about its database.

    `clock` is AgentState's copy of the persisted clock, with the `PRAGMA data_version` it
    was valid for: it is kept on the connection (not on one AgentState) so that every user
    of the connection sees the same copy, and `data_version` tells when another connection
    has committed since.
    """

    clock: Any = None
    # Outbox._totals: the outbox_totals rows summed, with the data_version they were read at;
    # kept up to date by this connection's own changes (Outbox._apply), dropped on rollback.
    totals: Any = None
    # Whether the open transaction was begun by transaction() (which also ends it, and clears
    # the caches when it rolls back), and its PRAGMA data_version once read (data_version()).
    own_transaction: bool = False
    version_in_transaction: Optional[int] = None
    # The PRAGMA synchronous level open_database set (durable transactions commit at it), and
    # the level in force now (see _Transaction._set_level).
    synchronous_level: Optional[int] = None
    synchronous_now: Optional[int] = None


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
        # (Outbox._remove).
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


def open_database(
    path: StrPath,
    *,
    synchronous: str = "FULL",
    busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
    create: bool = True,
) -> sqlite3.Connection:
    """Open (creating or migrating) the device database at `path`.

    The connection is in autocommit mode (`isolation_level=None`): writes go through
    `transaction()`. Raises DatabaseError naming the file and the remedy when the file is not
    a database, stays locked beyond `busy_timeout_s`, or cannot be created. Another
    application's SQLite database is never adopted (ForeignDatabase). With `create=False` an
    empty file is refused too (NotInitialised): only `sync-agent init` creates the schema.
    """
    mode = synchronous.upper()
    if mode not in SYNCHRONOUS_MODES:
        raise ValueError(f"synchronous={synchronous!r}: use one of {', '.join(SYNCHRONOUS_MODES)}")
    location = os.fspath(path)
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise DatabaseError(
            f"SQLite {sqlite3.sqlite_version} is too old for the agent database {location}: "
            f"it needs {'.'.join(map(str, MIN_SQLITE))} or newer with JSON support; use a "
            "newer Python build",
            path=location,
        )
    directory = Path(location).resolve().parent
    if not directory.is_dir():
        raise DatabaseError(
            f"cannot open the agent database {location}: directory {directory} does not exist; "
            "create it or pass another --db path",
            path=location,
        )
    try:
        conn = sqlite3.connect(
            location, timeout=busy_timeout_s, isolation_level=None, factory=DeviceConnection
        )
    except sqlite3.Error as exc:
        raise database_error(exc, location) from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        _check_ownership(conn, location, create=create)  # before anything writes to it
        _set_wal(conn)
        # An op is "accepted" when record() returns, so its commit must survive a power cut.
        # In WAL mode synchronous=NORMAL fsyncs only at checkpoints: a commit is durable
        # against a process crash but the last transactions can vanish on power loss. FULL
        # fsyncs the WAL at every commit, which is the promise the outbox makes. Soft state
        # (leases, acks) relaxes this per transaction: see transaction(durable=False).
        conn.execute(f"PRAGMA synchronous = {mode}")
        conn.synchronous_level = conn.synchronous_now = SYNCHRONOUS_MODES.index(mode)
        conn.execute("PRAGMA foreign_keys = ON")
        _migrate(conn, location)
    except sqlite3.Error as exc:
        conn.close()
        raise database_error(exc, location) from exc
    except DatabaseError:
        conn.close()
        raise
    return conn


def _check_ownership(conn: sqlite3.Connection, location: str, *, create: bool) -> None:
    """Refuse a file that is not ours: another application's database, or (unless `create`)
    an empty one."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    names = {
        str(row[0])
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
        )
    }
    if version == 0 and not names:
        if create:
            return
        raise NotInitialised(
            f"{location} is not an initialised FieldSync database (it is empty): run "
            "`sync-agent init --endpoint URL --token TOKEN` first, or pass another --db",
            path=location,
        )
    if version > 0 and names >= OWN_TABLES:
        return
    shown = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
    raise ForeignDatabase(
        f"{location} is another application's SQLite database (tables: {shown or 'none'}), "
        "not a FieldSync database: the agent only initialises an empty or new file; pass "
        "another --db path",
        path=location,
    )


def _set_wal(conn: sqlite3.Connection) -> None:
    row = conn.execute("PRAGMA journal_mode").fetchone()
    if row is None or str(row[0]).lower() != "wal":
        # WAL lets readers (status, get) run while a writer commits, and costs one fsync per
        # commit instead of two.
        conn.execute("PRAGMA journal_mode = WAL")


def _migrate(conn: sqlite3.Connection, location: str) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"the agent database {location} has schema version {version}, newer than this "
            f"agent's {SCHEMA_VERSION}: upgrade the agent, or point --db at another file",
            path=location,
        )
    with transaction(conn):
        # Read again under the write lock: another process may have migrated meanwhile.
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[number]:
                conn.execute(statement)
        # PRAGMA takes no parameters; the value is our own integer constant.
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def transaction(conn: sqlite3.Connection, *, durable: bool = True) -> _Transaction:
    """Run the block in one `BEGIN IMMEDIATE` transaction: all of it commits, or none.

    `durable=False` is for soft state whose loss on a power cut only means work is redone
    (leases, acks, retry times, statistics): see `_Transaction._set_level`. Inside a
    transaction already, the block runs in a savepoint of it and the outer transaction
    decides durability; a block that raises is undone back to its savepoint, so the outer
    block may catch the error (an OutboxFull, say) and still commit the rest. SQLite errors
    that mean the database is unusable (locked, corrupt, disk full) become DatabaseError; the
    transaction is rolled back on any exception.
    """
    return _Transaction(conn, durable)


class _Transaction:
    """The context manager behind `transaction()` (a class: it runs on every write)."""

    __slots__ = ("_conn", "_durable", "_joined", "_restore")

    def __init__(self, conn: sqlite3.Connection, durable: bool) -> None:
        self._conn = conn
        self._durable = durable
        self._joined = False
        self._restore: Optional[int] = None

    def __enter__(self) -> sqlite3.Connection:
        conn = self._conn
        if conn.in_transaction:
            self._joined = True
            conn.execute("SAVEPOINT fieldsync_block")
            return conn
        self._set_level()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._restore_level()
            raise database_error(exc, database_path(conn)) from exc
        if isinstance(conn, DeviceConnection):
            conn.own_transaction = True
            conn.version_in_transaction = None
        return conn

    def __exit__(self, kind: Optional[type], error: Optional[BaseException], tb: Any) -> None:
        if self._joined:
            self._leave_savepoint(error)
            return
        conn = self._conn
        try:
            if error is not None:
                self._roll_back()
                if isinstance(error, sqlite3.Error) and is_unusable(error):
                    raise database_error(error, database_path(conn)) from error
                return
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._roll_back()
                raise database_error(exc, database_path(conn)) from exc
        finally:
            if isinstance(conn, DeviceConnection):
                conn.own_transaction = False
            self._restore_level()

    def _leave_savepoint(self, error: Optional[BaseException]) -> None:
        """End a joined block: keep its work, or undo it back to its savepoint."""
        conn = self._conn
        if not conn.in_transaction:  # SQLite rolled the whole transaction back already
            self._forget_caches()
            return
        if error is not None:
            conn.execute("ROLLBACK TO fieldsync_block")
            self._forget_caches()
        conn.execute("RELEASE fieldsync_block")

    def _forget_caches(self) -> None:
        if isinstance(self._conn, DeviceConnection):
            # The copies may hold state of undone statements (a clock set back, stamps or
            # totals never committed), and data_version does not change for our own undo.
            self._conn.clock = self._conn.totals = None

    def _roll_back(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")
        self._forget_caches()

    def _set_level(self) -> None:
        """Commit this transaction at the connection's level, or without fsync (NORMAL) if
        it is not durable and the connection is above that.

        In WAL mode a NORMAL commit survives a process crash and never corrupts the
        database; a power cut may only lose the most recent such commits, as a suffix: any
        later FULL commit (every recorded write) fsyncs them too. Losing a lease, an ack or a
        retry time makes the agent send an op again, which the protocol makes harmless (ops
        are idempotent by HLC); losing a recorded write would not be, so `record` never
        relaxes. A DeviceConnection stays at the level its last transaction needed, so a
        run of relaxed transactions switches only once.
        """
        conn = self._conn
        configured = getattr(conn, "synchronous_level", None)
        if configured is None:  # a plain connection: relax for this transaction only
            if not self._durable:
                level = int(conn.execute("PRAGMA synchronous").fetchone()[0])
                if level > 1:
                    conn.execute("PRAGMA synchronous = NORMAL")
                    self._restore = level
            return
        wanted = configured if self._durable else min(configured, 1)
        if conn.synchronous_now != wanted:  # type: ignore[attr-defined]
            # PRAGMA takes no parameters; the level is one of our own integers.
            conn.execute(f"PRAGMA synchronous = {int(wanted)}")
            conn.synchronous_now = wanted  # type: ignore[attr-defined]

    def _restore_level(self) -> None:
        if self._restore is not None:
            # PRAGMA takes no parameters; the level is an integer read back from SQLite.
            self._conn.execute(f"PRAGMA synchronous = {self._restore}")
            self._restore = None


@contextmanager
def snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """Run the block's reads on one snapshot of the database (a read transaction, unless a
    transaction is open already), so that a commit by another connection between two of
    them (an op moving from the intake to the outbox, say) cannot be half seen. For reads
    only: a write inside would take the write lock late, and outside `transaction()`."""
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN DEFERRED")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


def caches_usable(conn: sqlite3.Connection) -> bool:
    """Whether the connection's caches (clock, outbox totals) may be used and updated now:
    outside a transaction, or inside one begun by `transaction()`. A transaction its caller
    began by hand may be rolled back by hand, which the caches would not see."""
    return isinstance(conn, DeviceConnection) and (conn.own_transaction or not conn.in_transaction)


def data_version(conn: sqlite3.Connection) -> int:
    """`PRAGMA data_version`: it changes when another connection commits to the database.

    In a transaction begun by `transaction()` on a DeviceConnection it is read once: no other
    connection can commit while this one holds the write lock.
    """
    if isinstance(conn, DeviceConnection) and conn.own_transaction and conn.in_transaction:
        if conn.version_in_transaction is None:
            conn.version_in_transaction = int(conn.execute("PRAGMA data_version").fetchone()[0])
        return conn.version_in_transaction
    return int(conn.execute("PRAGMA data_version").fetchone()[0])


def database_path(conn: sqlite3.Connection) -> str:
    """The file behind `conn` (for messages)."""
    try:
        for row in conn.execute("PRAGMA database_list"):
            if row[1] == "main":
                return str(row[2])
    except sqlite3.Error:
        pass
    return "<unknown>"


# SQLite's primary result codes that mean the file cannot be used as it is: BUSY, LOCKED,
# NOMEM, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, PROTOCOL, NOTADB.
_UNUSABLE_CODES = frozenset({5, 6, 7, 8, 10, 11, 13, 14, 15, 26})
# The same, from the message (Python before 3.11 does not expose the code).
_UNUSABLE_WORDS = (
    "locked",
    "busy",
    "malformed",
    "not a database",
    "disk",
    "full",
    "unable to open",
    "readonly",
    "read-only",
    "i/o error",
    "out of memory",
)


def is_unusable(exc: sqlite3.Error) -> bool:
    """Whether `exc` says the database cannot be used (locked, corrupt, unreadable, disk
    full) rather than that a statement is wrong (a bug: left as it is)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in _UNUSABLE_CODES
    if not (isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError):
        return False
    text = str(exc).lower()
    return any(word in text for word in _UNUSABLE_WORDS)


def database_error(exc: sqlite3.Error, location: str) -> DatabaseError:
    """`exc` as a DatabaseError naming the file and what to do about it."""
    text = str(exc)
    lowered = text.lower()
    if "locked" in lowered or "busy" in lowered:
        advice = (
            "another process held it longer than the busy timeout; retry, and check that no "
            "process is stuck holding a transaction"
        )
    elif "not a database" in lowered or "malformed" in lowered or "corrupt" in lowered:
        advice = (
            "the file is damaged or is not an agent database; move it aside and run "
            "`sync-agent init` again (unsynced ops in it are lost unless recovered with the "
            "sqlite3 `.recover` command)"
        )
    elif "unable to open" in lowered or "readonly" in lowered or "read-only" in lowered:
        advice = "check that the directory exists and is writable by this user"
    elif "disk" in lowered or "full" in lowered:
        advice = "free disk space, then retry; nothing was written by the failed operation"
    else:
        advice = "check the file and the disk, then retry"
    return DatabaseError(f"agent database {location}: {text}; {advice}", path=location)
