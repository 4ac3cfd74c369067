"""The values the agent's state holds (settings, sync statistics, connectivity), and how a
stored value is checked: a value the agent did not write (the file edited by hand, a failing
disk) is named in a one-line DamagedDatabase, or read as its default where it only informs."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from enum import Enum
from typing import Any, Optional

# What to do about a damaged value, by kv row (DamagedDatabase messages).
REINIT = "run `sync-agent init --endpoint URL --token TOKEN` to store them again"
REIDENTIFY = (
    "run `sync-agent init --endpoint URL --token TOKEN --device-id ID` with this device's id "
    "(a new id would make the device another one to the cloud)"
)
DAMAGED_ADVICE = (
    "the file was changed outside the agent or the disk is failing: restore it from a backup, "
    "or move it aside and run `sync-agent init` again (ops not yet synced stay in the moved file)"
)


class Connectivity(str, Enum):
    """What the agent last learnt about reaching the cloud."""

    UNKNOWN = "unknown"
    ONLINE = "online"
    OFFLINE = "offline"
    AUTH = "auth"  # the cloud refused the token: retrying will not help until it is fixed


@dataclass(frozen=True)
class Settings:
    """Where and as whom the agent syncs. `device_id` is also the node id of its HLCs."""

    endpoint: Optional[str] = None
    token: Optional[str] = None
    device_id: str = ""
    # The outbox's bounds for every process using the database (None: Outbox's defaults).
    max_ops: Optional[int] = None
    max_bytes: Optional[int] = None


@dataclass(frozen=True)
class SyncStats:
    """What `sync-agent status` reports about syncing (times are epoch seconds)."""

    last_success_at: Optional[float] = None
    last_attempt_at: Optional[float] = None
    last_error: Optional[str] = None
    # When `last_error` happened: an error older than `last_success_at` is history, not the
    # current state (kept for the operator, not cleared by a later success).
    last_error_at: Optional[float] = None
    consecutive_failures: int = 0
    current_backoff_s: float = 0.0
    connectivity: Connectivity = Connectivity.UNKNOWN
    clock_offset_ms: Optional[int] = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the connectivity as its string value)."""
        out = asdict(self)
        out["connectivity"] = self.connectivity.value
        return out


STATS_FIELDS = frozenset(f.name for f in fields(SyncStats))


# --- checking stored values -------------------------------------------------------------


def json_type(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    names = {dict: "object", list: "array", str: "string", int: "number", float: "number"}
    return names.get(type(value), type(value).__name__)


def shown(value: Any) -> str:
    """A stored value for a message: short, and as JSON would write it."""
    text = json.dumps(value)
    return text if len(text) <= 40 else f"a JSON {json_type(value)}"


def _whole(value: Any) -> bool:
    return type(value) is int


def _setting_problem(name: str, value: Any) -> str:
    """What is wrong with one stored setting, or ""."""
    if value is None:
        return ""
    if name == "endpoint" and not isinstance(value, str):
        return f"the endpoint is {shown(value)}, not a URL"
    if name == "token" and not isinstance(value, str):
        return f"the token is a JSON {json_type(value)}, not a string"  # never shown
    if name in ("max_ops", "max_bytes") and not (_whole(value) and value >= 1):
        return f"{name} is {shown(value)}, not a whole number above 0"
    return ""


def settings_problem(raw: Any) -> str:
    if not isinstance(raw, dict):
        return f"a JSON {json_type(raw)} instead of an object"
    for name, value in raw.items():
        problem = _setting_problem(name, value)
        if problem:
            return problem
    return ""


def sound_settings(raw: Any) -> dict[str, Any]:
    """The stored settings without their damaged parts (all of them if it is no object)."""
    if not isinstance(raw, dict):
        return {}
    return {name: value for name, value in raw.items() if not _setting_problem(name, value)}


DAMAGED = object()


def sound_stat(name: str, value: Any) -> Any:
    """`value` as the statistic `name` holds it, or DAMAGED."""
    if name == "connectivity":
        known = {state.value: state for state in Connectivity}
        return known.get(value, DAMAGED) if isinstance(value, str) else DAMAGED
    if name == "last_error":
        return value if value is None or isinstance(value, str) else DAMAGED
    if value is None and name not in ("consecutive_failures", "current_backoff_s"):
        return None
    if name in ("consecutive_failures", "clock_offset_ms"):
        ok = _whole(value) and (name == "clock_offset_ms" or value >= 0)
        return value if ok else DAMAGED
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if number and math.isfinite(value) and value >= 0 else DAMAGED
