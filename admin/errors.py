"""sync-admin's errors: one line each, saying what was wrong and what to do."""

from __future__ import annotations


class AdminError(Exception):
    """Reported as `sync-admin: <message>` with exit status 1."""


class UsageError(AdminError):
    """Reported with exit status 2, like an argparse error."""
