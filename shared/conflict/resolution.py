"""What a resolver returns: the protocol status of the op and the record after it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from shared.contracts import Op, OpStatus, Record


@dataclass(frozen=True)
class Resolution:
    status: OpStatus
    record: Record

    @property
    def changed(self) -> bool:
        """True when the record must be written back (the op took some effect)."""
        return self.status in (OpStatus.APPLIED, OpStatus.MERGED)


Resolver = Callable[[Optional[Record], Op], Resolution]
"""A pure, deterministic function `(current record or None, op) -> Resolution`.

It must converge: applying any set of ops in any order, with any duplicates, yields the
same record. `shared.conflict.check_convergence` tests a resolver for that property.
"""
