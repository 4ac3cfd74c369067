"""PynamoDB models of the two tables (keys documented in docs/architecture.md).

The classes here describe the schema only. `records_model()` / `devices_model()` return a
subclass bound to the table name and endpoint in the environment *at call time* (cached per
name/endpoint/region), so one process can serve tests, the local cloud and Lambda alike.
The template's table definitions are checked against these models by tests/infra.
"""

from __future__ import annotations

import functools
from typing import Optional, TypeVar, cast

from pynamodb.attributes import (
    NumberAttribute,
    TTLAttribute,
    UnicodeAttribute,
    VersionAttribute,
)
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex
from pynamodb.models import Model

from shared.config import aws_region, devices_table_name, dynamodb_endpoint, records_table_name

CHANGES_INDEX = "changes-by-tenant"
DEVICES_BY_TENANT_INDEX = "devices-by-tenant"

# Short timeouts and few SDK retries: a slow or throttled write should fall through to the
# retry queue quickly instead of holding up the batch (and the changes feed's settle window).
CONNECT_TIMEOUT_S = 2
READ_TIMEOUT_S = 3
MAX_SDK_RETRIES = 2


class ChangesIndex(GlobalSecondaryIndex["RecordItem"]):  # type: ignore[no-untyped-call]
    """Tenant-partitioned feed ordered by the server stamp of each write."""

    class Meta:
        index_name = CHANGES_INDEX
        projection = AllProjection()

    tenant_id = UnicodeAttribute(hash_key=True)
    changed_at = UnicodeAttribute(range_key=True)


class RecordItem(Model):
    """One record. pk = "<tenant>#<collection>#<key>" (tenant and collection contain no '#')."""

    class Meta:
        table_name = "records-unbound"

    pk = UnicodeAttribute(hash_key=True)
    tenant_id = UnicodeAttribute()
    collection = UnicodeAttribute()
    record_key = UnicodeAttribute()
    data = UnicodeAttribute()  # the live fields, as compact JSON (keeps numbers exact)
    clock = UnicodeAttribute()  # {"reset": HLC, "fields": {name: HLC}} as JSON
    hlc = UnicodeAttribute()  # greatest HLC in the record
    device_id = UnicodeAttribute()
    deleted = NumberAttribute()  # 1 for a tombstone
    changed_at = UnicodeAttribute()  # server stamp "<server HLC>#<random>": the feed's order
    version = VersionAttribute()  # optimistic concurrency: every write is conditional on it
    expires_at = TTLAttribute(null=True)  # set on tombstones only
    changes_index = ChangesIndex()


class DevicesByTenantIndex(GlobalSecondaryIndex["DeviceItem"]):  # type: ignore[no-untyped-call]
    class Meta:
        index_name = DEVICES_BY_TENANT_INDEX
        projection = AllProjection()

    tenant_id = UnicodeAttribute(hash_key=True)
    device_id = UnicodeAttribute(range_key=True)


class DeviceItem(Model):
    """One registered device. Device ids are unique across tenants."""

    class Meta:
        table_name = "devices-unbound"

    device_id = UnicodeAttribute(hash_key=True)
    tenant_id = UnicodeAttribute()
    token_hash = UnicodeAttribute()  # sha256 of the token; the token itself is never stored
    created_at = UnicodeAttribute()
    revoked_at = UnicodeAttribute(null=True)
    by_tenant = DevicesByTenantIndex()


_M = TypeVar("_M", bound=Model)


@functools.lru_cache(maxsize=32)
def _bind(base: type[Model], table: str, host: Optional[str], region: str) -> type[Model]:
    meta = type(
        "Meta",
        (),
        {
            "table_name": table,
            "host": host,
            "region": region,
            "connect_timeout_seconds": CONNECT_TIMEOUT_S,
            "read_timeout_seconds": READ_TIMEOUT_S,
            "max_retry_attempts": MAX_SDK_RETRIES,
        },
    )
    return type(f"{base.__name__}Bound", (base,), {"Meta": meta})


def _bound(base: type[_M], table: str) -> type[_M]:
    return cast("type[_M]", _bind(base, table, dynamodb_endpoint(), aws_region()))


def records_model() -> type[RecordItem]:
    """RecordItem bound to $RECORDS_TABLE at the current endpoint."""
    return _bound(RecordItem, records_table_name())


def devices_model() -> type[DeviceItem]:
    """DeviceItem bound to $DEVICES_TABLE at the current endpoint."""
    return _bound(DeviceItem, devices_table_name())


def reset_models() -> None:
    """Forget bound models and their connections (tests that restart moto)."""
    _bind.cache_clear()
