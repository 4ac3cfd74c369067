"""Applying one op to DynamoDB: read, resolve, conditional write, retry on contention.

The same function serves the batch endpoint and the retry worker, so an op has the same
effect whichever path applies it, however many times.

Exactly-once effect: the write is conditional on the version read, so of two concurrent
appliers only one writes; the loser re-reads and resolves again. With LWW a repeat is
recognised (`duplicate`) because the record carries the op's HLC, and applying an op twice
yields the same record anyway (the resolver is idempotent), so a retry arriving a month late
has no second effect. A custom resolver is held to the same property by the registry's
contract (check_convergence).
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Iterable, Sequence
from typing import Optional, Union

from shared.config import Settings
from shared.conflict import (
    ConflictRegistry,
    Resolution,
    Resolver,
    UnknownResolver,
    parse_assignments,
)
from shared.contracts import Op, Record
from shared.dal import records
from shared.dal.records import StoredRecord
from shared.errors import (
    ApplyFailed,
    ConfigurationError,
    RecordTooLarge,
    StoreError,
    WriteConflict,
)
from shared.logic.clock import stamp_change

BACKOFF_BASE_S = 0.01
BACKOFF_CAP_S = 0.2
THROTTLE_CODES = frozenset({"ProvisionedThroughputExceededException", "RequestLimitExceeded"})


_custom_resolvers: dict[str, Resolver] = {}


def register_resolver(name: str, resolver: Resolver) -> None:
    """Make a custom resolver available to CONFLICT_STRATEGIES under `name`.

    It must be pure and convergent (see shared.conflict.check_convergence).
    """
    _custom_resolvers[name] = resolver
    registry_for.cache_clear()


def unregister_resolver(name: str) -> None:
    _custom_resolvers.pop(name, None)
    registry_for.cache_clear()


@functools.lru_cache(maxsize=8)
def registry_for(strategies: str) -> ConflictRegistry:
    """The conflict registry configured by CONFLICT_STRATEGIES ("collection=resolver,...")."""
    registry = ConflictRegistry()
    for name, resolver in _custom_resolvers.items():
        registry.register(name, resolver)
    try:
        registry.configure(parse_assignments(strategies))
    except ValueError as exc:
        raise ConfigurationError(f"CONFLICT_STRATEGIES is malformed: {exc}") from exc
    return registry


def _resolve(registry_text: str, current: Optional[Record], op: Op) -> Resolution:
    try:
        resolution = registry_for(registry_text).apply(current, op)
    except UnknownResolver as exc:
        raise ApplyFailed(str(exc), reason="unknown_resolver") from exc
    except ConfigurationError as exc:
        raise ApplyFailed(str(exc), reason="unknown_resolver") from exc
    except Exception as exc:  # a custom resolver is third-party code: contain its failure
        raise ApplyFailed(
            f"the resolver for collection {op.collection!r} raised {type(exc).__name__}; "
            "fix it, then redrive the dead-letter queue",
            reason="resolver_failed",
        ) from exc
    if (resolution.record.collection, resolution.record.key) != (op.collection, op.key):
        raise ApplyFailed(
            f"the resolver for collection {op.collection!r} returned another record",
            reason="resolver_failed",
        )
    return resolution


def _reason(exc: StoreError) -> str:
    if "Throttl" in exc.aws_code or exc.aws_code in THROTTLE_CODES:
        return "throttled"
    return "store_unavailable"


def _backoff(attempt: int) -> None:
    # Full jitter: concurrent losers spread out instead of colliding again.
    time.sleep(random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt)))


def apply_op(tenant_id: str, op: Op, settings: Settings) -> Resolution:
    """Apply `op` to the tenant's record and return the resolution that was committed.

    Raises ApplyFailed (queue it) for throttling, store faults, exhausted contention and
    resolver failures; RecordTooLarge (reject it) when the result cannot be stored.
    """
    for attempt in range(settings.apply_max_attempts):
        try:
            stored = records.load(tenant_id, op.collection, op.key)
        except StoreError as exc:
            raise ApplyFailed(str(exc), reason=_reason(exc)) from exc
        resolution = _resolve(settings.conflict_strategies, stored.record if stored else None, op)
        if not resolution.changed:
            return resolution
        try:
            records.save(
                tenant_id,
                resolution.record,
                expected_version=stored.version if stored else 0,
                changed_at=stamp_change(),
                tombstone_ttl_s=settings.tombstone_retention_days * 86_400,
            )
        except WriteConflict:
            _backoff(attempt)
            continue
        except RecordTooLarge:
            raise
        except StoreError as exc:
            raise ApplyFailed(str(exc), reason=_reason(exc)) from exc
        return resolution
    raise ApplyFailed(
        f"the record was changed by other writers {settings.apply_max_attempts} times in a row",
        reason="contention",
    )


RecordKey = tuple[str, str]  # (collection, key)
Outcome = Union[Resolution, ApplyFailed, RecordTooLarge]
"""What became of one op: committed (or a no-op), to be queued, or to be rejected."""


def load_current(
    tenant_id: str, keys: Iterable[RecordKey]
) -> dict[RecordKey, Optional[StoredRecord]]:
    """The current records of a batch's keys, strongly consistent, in as few calls as possible.

    One key is one GetItem; more are one BatchGetItem per 100 keys. Raises ApplyFailed
    (queue the ops) when the store cannot be read.
    """
    wanted = list(dict.fromkeys(keys))
    try:
        if len(wanted) == 1:
            collection, key = wanted[0]
            return {wanted[0]: records.load(tenant_id, collection, key)}
        return records.load_many(tenant_id, wanted)
    except StoreError as exc:
        raise ApplyFailed(str(exc), reason=_reason(exc)) from exc


def _apply_each(tenant_id: str, ops: Sequence[Op], settings: Settings) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for op in ops:
        try:
            outcomes.append(apply_op(tenant_id, op, settings))
        except (ApplyFailed, RecordTooLarge) as exc:
            outcomes.append(exc)
    return outcomes


def apply_ops(
    tenant_id: str, ops: Sequence[Op], stored: Optional[StoredRecord], settings: Settings
) -> list[Outcome]:
    """Apply ops on one record, in request order, from its prefetched state: one write in all.

    Each op is resolved against the state its predecessors left, exactly as if they had been
    written one by one, so each gets the status it would have had; the final state is written
    once, conditioned on the prefetched version. If another writer got there first (or the
    combined record is too large to store) the ops from the first one that changed something
    are applied again one by one with `apply_op` (re-read, resolve, write), which also decides
    which op a size limit rejects. If the write is throttled or fails, every op resolved
    against the unwritten state is answered with the failure (to be queued); the ops before
    it were decided against the committed record and keep their answers.
    """
    outcomes: list[Outcome] = []
    current = stored.record if stored else None
    first_change: Optional[int] = None
    for index, op in enumerate(ops):
        try:
            resolution = _resolve(settings.conflict_strategies, current, op)
        except ApplyFailed as exc:
            outcomes.append(exc)
            continue
        if resolution.changed:
            current = resolution.record
            first_change = index if first_change is None else first_change
        outcomes.append(resolution)
    if first_change is None or current is None:
        return outcomes
    try:
        records.save(
            tenant_id,
            current,
            expected_version=stored.version if stored else 0,
            changed_at=stamp_change(),
            tombstone_ttl_s=settings.tombstone_retention_days * 86_400,
        )
    except (WriteConflict, RecordTooLarge):
        return outcomes[:first_change] + _apply_each(tenant_id, ops[first_change:], settings)
    except StoreError as exc:
        failure = ApplyFailed(str(exc), reason=_reason(exc))
        return outcomes[:first_change] + [
            outcome if isinstance(outcome, ApplyFailed) else failure
            for outcome in outcomes[first_change:]
        ]
    return outcomes
