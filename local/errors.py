"""The local cloud's errors: each message says what is wrong and what to do."""

from __future__ import annotations


class LocalCloudError(Exception):
    """Base of the errors `sync-local` reports as one line and exit status 1."""


class TemplateError(LocalCloudError):
    """template.yaml is missing, invalid, or uses something the local cloud cannot run."""


class StartupError(LocalCloudError):
    """The local cloud could not start (port in use, moto failed, a handler failed to import)."""
