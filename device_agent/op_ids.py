"""Op ids: UUIDs of version 7, made by the device for every write it records."""

from __future__ import annotations

import os
import random
import time

# new_op_ids: 8-4-4-4-12 hex digits.
OP_ID_CHARS = 36


def new_op_ids(count: int) -> list[str]:
    """`count` new op ids: UUIDs of version 7 (time-ordered), as strings.

    48 bits of Unix milliseconds, then a 12-bit sequence (4096 ids per ms keep their order),
    then 62 bits drawn at random once per call and counted up for each id of the call, so
    ids sort in the order they were made (delivery's op_id index stays local). Ids are
    unique, not secret: the bits come from a generator seeded by the OS, not a system call
    per write.
    """
    millis = time.time_ns() // 1_000_000
    drawn = _random_bits(64)
    # The variant (binary 10), 14 random bits, then 48 counted up from a random start that
    # leaves room for `count` ids.
    middle = f"-{0x8000 | (drawn >> 50):04x}-"
    low = (drawn & _LOW_48) % (_LOW_48 + 1 - count)
    ids = []
    prefix = ""
    for index in range(count):
        if not index & 0x0FFF:
            stamp = f"{millis + (index >> 12):012x}"
            prefix = f"{stamp[:8]}-{stamp[8:]}-7"  # then version 7
        ids.append(f"{prefix}{index & 0x0FFF:03x}{middle}{low + index:012x}")
    return ids


_LOW_48 = (1 << 48) - 1
# Op id bits: a generator of the agent's own, seeded by the OS (an application seeding the
# `random` module must not make ids repeat), and seeded again in a forked child.
_ids_random = random.Random()
if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_ids_random.seed)
_random_bits = _ids_random.getrandbits


def new_op_id() -> str:
    """`new_op_ids(1)[0]` without the loop, for the one op of `Outbox.record`."""
    stamp = f"{time.time_ns() // 1_000_000:012x}"
    drawn = _random_bits(64)
    return f"{stamp[:8]}-{stamp[8:]}-7000-{0x8000 | (drawn >> 50):04x}-{drawn & _LOW_48:012x}"
