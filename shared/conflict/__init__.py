"""Conflict resolution: pure functions shared by the Lambdas and the device's local view."""

from shared.conflict.lww import apply_lww, empty_record, merge_records
from shared.conflict.registry import (
    ConflictRegistry,
    UnknownResolver,
    check_convergence,
    parse_assignments,
    replay,
)
from shared.conflict.resolution import Resolution, Resolver

__all__ = [
    "ConflictRegistry",
    "Resolution",
    "Resolver",
    "UnknownResolver",
    "apply_lww",
    "check_convergence",
    "empty_record",
    "merge_records",
    "parse_assignments",
    "replay",
]
