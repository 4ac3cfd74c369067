"""The server's clocks.

`server_clock` answers `server_time` and merges the HLCs of accepted ops (the HLC receive
rule), so a device that merges `server_time` never issues a smaller timestamp than one the
server has seen. `stamp_change()` is different on purpose: it orders the changes feed, so it
must follow the wall clock only. A device clock that is ahead (within the allowed skew) must
not drag feed stamps into the future, or the settle horizon would hide those writes and a
slower Lambda could stamp below a cursor already handed out.
"""

from __future__ import annotations

import secrets

from shared.contracts import HybridLogicalClock
from shared.contracts.hlc import wall_clock_ms

SERVER_NODE = "server"

server_clock = HybridLogicalClock(SERVER_NODE)
# One feed clock per process; the random node id keeps stamps of concurrent Lambdas distinct.
_feed_clock = HybridLogicalClock(f"s-{secrets.token_hex(4)}")


def server_time() -> str:
    return server_clock.send()


def observe(hlc: str) -> None:
    """Merge an accepted op's HLC into the server clock."""
    server_clock.receive(hlc)


def stamp_change() -> str:
    """A unique, wall-clock ordered stamp for one record write (the feed's sort key)."""
    return f"{_feed_clock.send()}#{secrets.token_hex(3)}"


def now_ms() -> int:
    return wall_clock_ms()
