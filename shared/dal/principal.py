"""Who is calling: the tenant and device the authorizer vouched for (no SDK imports)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    """Who is calling: what the authorizer puts in the request context."""

    tenant_id: str
    device_id: str
