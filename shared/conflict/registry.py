"""Per-collection choice of resolver, with LWW as the default."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Optional

from shared.conflict.lww import apply_lww
from shared.conflict.resolution import Resolution, Resolver
from shared.contracts import Op, Record


class UnknownResolver(LookupError):
    """A collection is configured with a resolver name nobody registered."""


class ConflictRegistry:
    """Maps collections to resolvers; collections not named use the default (LWW).

    Resolvers are registered by name so configuration (an env var such as
    `CONFLICT_STRATEGIES="inventory=max_count"`) can refer to them.
    """

    def __init__(self, default: Resolver = apply_lww) -> None:
        self._default = default
        self._named: dict[str, Resolver] = {"lww": apply_lww}
        self._by_collection: dict[str, str] = {}

    def register(self, name: str, resolver: Resolver) -> None:
        self._named[name] = resolver

    def assign(self, collection: str, name: str) -> None:
        self._by_collection[collection] = name

    def configure(self, assignments: Mapping[str, str]) -> None:
        for collection, name in assignments.items():
            self.assign(collection, name)

    def resolver_for(self, collection: str) -> Resolver:
        name = self._by_collection.get(collection)
        if name is None:
            return self._default
        try:
            return self._named[name]
        except KeyError as exc:
            raise UnknownResolver(
                f"collection {collection!r} is set to resolver {name!r}, which is not "
                f"registered; register it or fix the configuration"
            ) from exc

    def apply(self, current: Optional[Record], op: Op) -> Resolution:
        return self.resolver_for(op.collection)(current, op)


def parse_assignments(text: str) -> dict[str, str]:
    """Parse `collection=resolver,collection=resolver` (the env var form)."""
    pairs: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        collection, sep, name = item.partition("=")
        if not sep or not collection.strip() or not name.strip():
            raise ValueError(f"bad resolver assignment {item!r}: expected collection=resolver")
        pairs[collection.strip()] = name.strip()
    return pairs


def replay(resolver: Resolver, ops: Iterable[Op]) -> Optional[Record]:
    record: Optional[Record] = None
    for op in ops:
        record = resolver(record, op).record
    return record


def check_convergence(
    resolver: Resolver, ops: Sequence[Op], *, orders: int = 20, seed: int = 0
) -> None:
    """Raise AssertionError if replaying `ops` in shuffled orders, with duplicates, diverges.

    A cheap guard for custom resolvers, which the protocol holds to the same property as LWW.
    """
    rng = random.Random(seed)
    expected = replay(resolver, ops)
    for _ in range(orders):
        shuffled = list(itertools.chain(ops, rng.sample(list(ops), k=len(ops) // 2)))
        rng.shuffle(shuffled)
        got = replay(resolver, shuffled)
        if got != expected:
            raise AssertionError(f"resolver diverged: {got!r} != {expected!r}")
