"""The server's clocks, both following the wall clock only.

`server_time` is the server's HLC. It does not merge the HLCs of the ops it accepts: a
device merges it (the HLC receive rule) and also takes its offset from it, so a device whose
clock runs minutes ahead (within the allowed skew) would otherwise pass its offset on to
every device that syncs after it, in every tenant, for as long as any of them writes. A
device stamps after the changes it has seen by merging the HLCs of the records it receives.
`stamp_change()` orders the changes feed: a device clock that is ahead must not drag feed
stamps into the future, or the settle horizon would hide those writes and a slower Lambda
could stamp below a cursor already handed out.
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


def stamp_change() -> str:
    """A unique, wall-clock ordered stamp for one record write (the feed's sort key)."""
    return f"{_feed_clock.send()}#{secrets.token_hex(3)}"


def now_ms() -> int:
    return wall_clock_ms()
