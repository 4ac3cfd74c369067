"""The device agent's errors: one hierarchy, each message says what happened and what to do.

Storage errors (database, outbox, state, replica) come first; the sync side's errors follow.
"""

from __future__ import annotations


class AgentError(Exception):
    """Base of every error the device agent raises on purpose."""


# --- storage -------------------------------------------------------------------------------


class DatabaseError(AgentError):
    """The device database cannot be used: corrupt, locked too long, unwritable or too new.

    `path` names the file; the message says what to do about it.
    """

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class SchemaTooNew(DatabaseError):
    """The database was written by a newer agent whose schema this version does not know."""


class NotInitialised(DatabaseError):
    """The file exists but holds no FieldSync database: `sync-agent init` has not been run."""


class ForeignDatabase(DatabaseError):
    """The file is another application's SQLite database: the agent never adopts it."""


class DamagedDatabase(DatabaseError):
    """The file opens, but a value in it is not one the agent wrote (settings that are not a
    JSON object, a device id that is not a string, an op whose data is not JSON): changed by
    hand or by a tool, or a failing disk. The message names the value and what to do."""


class OutboxFull(AgentError):
    """A write was refused because the outbox reached its bound; nothing was stored.

    Never a silent drop: the caller decides (retry after a sync, raise the limit, alert).
    """

    def __init__(self, message: str, *, max_ops: int, max_bytes: int) -> None:
        super().__init__(message)
        self.max_ops = max_ops
        self.max_bytes = max_bytes


class NotFound(AgentError, LookupError):
    """The named op (or other stored item) does not exist."""


# --- sync (added by the sync side below this line) ---------------------------------------


class NotConfigured(AgentError):
    """The database has no endpoint or token yet: `sync-agent init` has not been run."""


class InvalidInput(AgentError, ValueError):
    """A command-line or API argument is not usable (bad JSON, unknown priority, ...)."""
