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

from device_agent import schema
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
    # The outbox_totals rows summed (outbox_totals.read_totals), with the data_version they
    # were read at; kept up to date by this connection's own changes (add_growth), dropped on
    # rollback.
    totals: Any = None
    # Whether the open transaction was begun by transaction() (which also ends it, and clears
    # the caches when it rolls back), and its PRAGMA data_version once read (data_version()).
    own_transaction: bool = False
    version_in_transaction: Optional[int] = None
    # The PRAGMA synchronous level open_database set (durable transactions commit at it), and
    # the level in force now (see _Transaction._set_level).
    synchronous_level: Optional[int] = None
    synchronous_now: Optional[int] = None


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
    if version > 0 and names >= schema.OWN_TABLES:
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
    latest = schema.SCHEMA_VERSION
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == latest:
        return
    if version > latest:
        raise SchemaTooNew(
            f"the agent database {location} has schema version {version}, newer than this "
            f"agent's {latest}: upgrade the agent, or point --db at another file",
            path=location,
        )
    with transaction(conn):
        # Read again under the write lock: another process may have migrated meanwhile.
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for number in range(version, latest):
            for statement in schema.MIGRATIONS[number]:
                conn.execute(statement)
        # PRAGMA takes no parameters; the value is our own integer constant.
        conn.execute(f"PRAGMA user_version = {latest}")


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
