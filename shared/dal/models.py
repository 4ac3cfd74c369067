"""PynamoDB models of the two tables, bound to the environment at call time.

The classes (shared.dal.schema) describe the schema only. `records_model()` /
`devices_model()` return a subclass bound to the table name and endpoint in the environment
*at call time* (cached per name/endpoint/region), so one process can serve tests, the local
cloud and Lambda alike. pynamodb (and botocore under it) is imported by the first of these
calls, not when this module is imported, so a handler's cold start does not pay for it.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Optional, TypeVar, cast

from shared.config import aws_region, devices_table_name, dynamodb_endpoint, records_table_name

if TYPE_CHECKING:
    from pynamodb.models import Model

    from shared.dal.schema import (
        DeviceItem,
        RecordItem,
    )

CHANGES_INDEX = "changes-by-tenant"
DEVICES_BY_TENANT_INDEX = "devices-by-tenant"

# Short timeouts and few SDK retries: a slow or throttled write should fall through to the
# retry queue quickly instead of holding up the batch. A record write carries the feed stamp
# taken just before it, and the SDK resends it with that stamp: the changes feed's settle
# window (CHANGES_SETTLE_MS) must exceed the longest a write can take, WRITE_MAX_S (the
# attempts' timeouts and the standard retry mode's backoff, at most 1 s then 2 s), plus GSI
# lag; test_changes_feed.py holds the default to it.
CONNECT_TIMEOUT_S = 1
READ_TIMEOUT_S = 2
MAX_SDK_RETRIES = 2
WRITE_MAX_S = (MAX_SDK_RETRIES + 1) * (CONNECT_TIMEOUT_S + READ_TIMEOUT_S) + 1 + 2

_SCHEMA_NAMES = ("ChangesIndex", "DeviceItem", "DevicesByTenantIndex", "RecordItem")


def __getattr__(name: str) -> Any:
    """`from shared.dal.models import RecordItem` still works (it imports the schema)."""
    if name in _SCHEMA_NAMES:
        from shared.dal import schema

        return getattr(schema, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_M = TypeVar("_M", bound="Model")


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
    from shared.dal.schema import RecordItem

    return _bound(RecordItem, records_table_name())


def devices_model() -> type[DeviceItem]:
    """DeviceItem bound to $DEVICES_TABLE at the current endpoint."""
    from shared.dal.schema import DeviceItem

    return _bound(DeviceItem, devices_table_name())


def reset_models() -> None:
    """Forget bound models and their connections (tests that restart moto)."""
    _bind.cache_clear()
