"""Hybrid logical clock timestamps, as fixed-width strings whose string order is clock order.

Format: ``<physical ms, 13 digits>-<logical counter, 5 digits>-<node id>``, for example
``1764000000000-00003-dev-7f3a``. Plain string comparison orders them, in Python and in a
DynamoDB ``ConditionExpression`` alike.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Callable

PHYSICAL_DIGITS = 13
LOGICAL_DIGITS = 5
MAX_PHYSICAL_MS = 10**PHYSICAL_DIGITS - 1
MAX_LOGICAL = 10**LOGICAL_DIGITS - 1
NODE_PATTERN = r"[A-Za-z0-9_.:-]{1,64}"

# \Z, not $: "$" also matches before a trailing newline. [0-9], not \d: \d also matches
# other scripts' digits, which int() reads but which sort after every ASCII HLC.
_HLC_RE = re.compile(
    rf"^([0-9]{{{PHYSICAL_DIGITS}}})-([0-9]{{{LOGICAL_DIGITS}}})-({NODE_PATTERN})\Z"
)
_NODE_RE = re.compile(rf"^{NODE_PATTERN}\Z")


class InvalidTimestamp(ValueError):
    """A string that is not an HLC timestamp of the protocol's format."""


@dataclass(frozen=True, order=True)
class Timestamp:
    """A parsed HLC. Tuple order equals the order of the formatted strings."""

    physical_ms: int
    logical: int
    node: str

    def __str__(self) -> str:
        return format_hlc(self.physical_ms, self.logical, self.node)


def validate_node_id(node: str) -> str:
    """Return `node` if it can stand in an HLC, else raise ValueError saying what is allowed."""
    if not _NODE_RE.match(node):
        raise ValueError(
            f"node id {node!r} is invalid: use 1-64 letters, digits or '_', '.', ':', '-'"
        )
    return node


def format_hlc(physical_ms: int, logical: int, node: str) -> str:
    return _format(physical_ms, logical, validate_node_id(node))


def _format(physical_ms: int, logical: int, node: str) -> str:
    """format_hlc for a node id already validated."""
    if not 0 <= physical_ms <= MAX_PHYSICAL_MS:
        raise InvalidTimestamp(f"physical time {physical_ms} does not fit in 13 digits")
    if not 0 <= logical <= MAX_LOGICAL:
        raise InvalidTimestamp(f"logical counter {logical} does not fit in 5 digits")
    return f"{physical_ms:013d}-{logical:05d}-{node}"


def parse_hlc(value: str) -> Timestamp:
    """Parse an HLC string, raising InvalidTimestamp with the expected format on failure."""
    match = _HLC_RE.match(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidTimestamp(
            f"{value!r} is not an HLC timestamp: expected <13-digit ms>-<5-digit counter>-<node id>"
        )
    return Timestamp(int(match.group(1)), int(match.group(2)), match.group(3))


def is_hlc(value: object) -> bool:
    return isinstance(value, str) and _HLC_RE.match(value) is not None


def physical_ms_of(value: str) -> int:
    return parse_hlc(value).physical_ms


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class HybridLogicalClock:
    """A thread-safe HLC for one node.

    `send()` stamps a local event; `receive(remote)` merges a timestamp seen from elsewhere.
    `last` is the state to persist: restoring it guarantees a restarted node never issues a
    smaller timestamp, even when its wall clock came back wrong (a Pi without an RTC).
    """

    def __init__(
        self,
        node: str,
        *,
        last: str | None = None,
        now_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self._node = validate_node_id(node)
        self._now_ms = now_ms
        self._lock = threading.Lock()
        self._physical = 0
        self._logical = 0
        if last is not None:
            restored = parse_hlc(last)
            self._physical, self._logical = restored.physical_ms, restored.logical

    @property
    def node(self) -> str:
        return self._node

    @property
    def last(self) -> str:
        """The greatest timestamp issued or merged so far (persist this)."""
        with self._lock:
            return _format(self._physical, self._logical, self._node)

    def send(self) -> str:
        """A new timestamp, greater than every one issued or received before."""
        with self._lock:
            wall = self._now_ms()
            if wall > self._physical:
                self._physical, self._logical = wall, 0
            else:
                self._tick()
            return _format(self._physical, self._logical, self._node)

    def receive(self, remote: str) -> str:
        """Merge a remote timestamp (the HLC receive rule) and return the new local time."""
        other = parse_hlc(remote)
        with self._lock:
            wall = self._now_ms()
            top = max(wall, self._physical, other.physical_ms)
            if top == self._physical == other.physical_ms:
                self._logical = max(self._logical, other.logical)
                self._tick()
            elif top == self._physical:
                self._tick()
            elif top == other.physical_ms:
                self._physical, self._logical = other.physical_ms, other.logical
                self._tick()
            else:
                self._physical, self._logical = wall, 0
            return _format(self._physical, self._logical, self._node)

    def _tick(self) -> None:
        # The counter never wraps: when it is full the clock rolls into the next millisecond.
        if self._logical >= MAX_LOGICAL:
            self._physical += 1
            self._logical = 0
        else:
            self._logical += 1
