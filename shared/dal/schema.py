"""The pynamodb schema of the two tables (keys documented in docs/architecture.md).

Imported on first use by `shared.dal.models` (importing pynamodb pulls in botocore: a cost a
function that never touches a table should not pay at cold start). The template's table
definitions are checked against these classes by tests/infra.
"""

from __future__ import annotations

from pynamodb.attributes import (
    NumberAttribute,
    TTLAttribute,
    UnicodeAttribute,
    VersionAttribute,
)
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex
from pynamodb.models import Model

from shared.dal.models import CHANGES_INDEX, DEVICES_BY_TENANT_INDEX


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
