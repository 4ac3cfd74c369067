"""The records repository: consistent reads, version-conditioned writes, the changes feed.

Every SDK error is translated here: a lost race becomes `WriteConflict`, an oversized item
`RecordTooLarge`, throttling/5xx/network `TransientStoreError`, anything else `StoreError`.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Optional

from shared.contracts import Record, RecordClock
from shared.dal.aws import error_code, is_transient
from shared.dal.models import CHANGES_INDEX, records_model
from shared.errors import RecordTooLarge, StoreError, TransientStoreError, WriteConflict

if TYPE_CHECKING:
    from pynamodb.exceptions import PynamoDBException

    from shared.dal.schema import RecordItem

# pynamodb is imported by records_model() on first use; each function below imports the
# exception classes it catches after that call (a dictionary look-up by then).


@dataclass(frozen=True)
class StoredRecord:
    """A record as read, with the version its conditional write-back must match."""

    record: Record
    version: int
    changed_at: str


def record_pk(tenant_id: str, collection: str, key: str) -> str:
    return f"{tenant_id}#{collection}#{key}"


def _translate(exc: PynamoDBException, action: str) -> StoreError:
    code = error_code(exc)
    if code == "ConditionalCheckFailedException":
        return WriteConflict(f"{action}: another writer changed the record first", aws_code=code)
    message = f"{action} failed with {code}"
    if code == "ValidationException" and "size" in str(exc).lower():
        return RecordTooLarge(
            f"{action}: the record would exceed DynamoDB's 400 KB item limit; "
            "split the document or remove fields",
            aws_code=code,
        )
    if is_transient(exc):
        return TransientStoreError(f"{message}; it will be retried", aws_code=code)
    return StoreError(f"{message}; check the table and the function's permissions", aws_code=code)


def to_record(item: RecordItem) -> Record:
    clock = json.loads(item.clock)
    return Record(
        collection=item.collection,
        key=item.record_key,
        data=json.loads(item.data),
        clock=RecordClock(clock.get("reset", ""), dict(clock.get("fields", {}))),
    )


def load(tenant_id: str, collection: str, key: str) -> Optional[StoredRecord]:
    """The current record, strongly consistent (the base of an optimistic write)."""
    model = records_model()
    from pynamodb.exceptions import DoesNotExist, PynamoDBException

    try:
        item = model.get(record_pk(tenant_id, collection, key), consistent_read=True)
    except DoesNotExist:
        return None
    except PynamoDBException as exc:
        raise _translate(exc, "reading the record") from exc
    return StoredRecord(to_record(item), int(item.version or 0), item.changed_at)


BATCH_GET_LIMIT = 100  # DynamoDB's BatchGetItem maximum
UNPROCESSED_ATTEMPTS = 6
UNPROCESSED_BACKOFF_BASE_S = 0.02
UNPROCESSED_BACKOFF_CAP_S = 0.5


def load_many(
    tenant_id: str, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], Optional[StoredRecord]]:
    """The current records of `(collection, key)` pairs, strongly consistent, in few calls.

    One BatchGetItem (ConsistentRead) per 100 keys instead of one GetItem per op: the base of
    the batch endpoint's optimistic writes. Keys DynamoDB leaves unprocessed (throttling) are
    asked again with jittered backoff; still unprocessed after a few tries is a
    TransientStoreError, like a throttled GetItem. Absent records map to None.
    """
    model = records_model()
    from pynamodb.exceptions import PynamoDBException

    wanted = {record_pk(tenant_id, c, k): (c, k) for c, k in keys}
    found: dict[tuple[str, str], Optional[StoredRecord]] = dict.fromkeys(wanted.values())
    pks = list(wanted)
    for start in range(0, len(pks), BATCH_GET_LIMIT):
        pending: list[Any] = [{"pk": pk} for pk in pks[start : start + BATCH_GET_LIMIT]]
        for attempt in range(UNPROCESSED_ATTEMPTS):
            if attempt:
                ceiling = UNPROCESSED_BACKOFF_BASE_S * 2**attempt
                time.sleep(random.uniform(0, min(UNPROCESSED_BACKOFF_CAP_S, ceiling)))
            try:
                data = model._get_connection().batch_get_item(pending, consistent_read=True)
            except PynamoDBException as exc:
                raise _translate(exc, "reading the records") from exc
            table = model.Meta.table_name
            for raw in data.get("Responses", {}).get(table, []):
                item = model.from_raw_data(raw)
                found[wanted[item.pk]] = StoredRecord(
                    to_record(item), int(item.version or 0), item.changed_at
                )
            unprocessed = data.get("UnprocessedKeys", {}).get(table, {}).get("Keys", [])
            pending = list(unprocessed)  # DynamoDB JSON keys, sent back as they are
            if not pending:
                break
        if pending:
            raise TransientStoreError(
                f"reading the records: DynamoDB left {len(pending)} keys unprocessed "
                f"{UNPROCESSED_ATTEMPTS} times (throttled); they will be retried",
                aws_code="ProvisionedThroughputExceededException",
            )
    return found


def save(
    tenant_id: str,
    record: Record,
    *,
    expected_version: int,
    changed_at: str,
    tombstone_ttl_s: int,
) -> int:
    """Write `record` only if its stored version is still `expected_version` (0: absent).

    Returns the new version. Raises WriteConflict when another writer got there first.
    """
    model = records_model()
    from pynamodb.exceptions import PynamoDBException

    item = model(
        record_pk(tenant_id, record.collection, record.key),
        tenant_id=tenant_id,
        collection=record.collection,
        record_key=record.key,
        data=json.dumps(record.data, separators=(",", ":"), ensure_ascii=False),
        clock=json.dumps(record.clock.to_wire(), separators=(",", ":")),
        hlc=record.hlc,
        device_id=record.device_id,
        deleted=1 if record.deleted else 0,
        changed_at=changed_at,
    )
    if expected_version:
        item.version = expected_version
    if record.deleted:
        # Tombstones expire after the retention window (DynamoDB TTL deletes them).
        item.expires_at = timedelta(seconds=tombstone_ttl_s)  # type: ignore[assignment]
    try:
        # VersionAttribute adds the condition: version = expected (or attribute_not_exists),
        # so two Lambdas resolving from the same read can never both win.
        item.save()
    except PynamoDBException as exc:
        raise _translate(exc, "writing the record") from exc
    return int(item.version or 0)


@dataclass(frozen=True)
class FeedEntry:
    record: Record
    changed_at: str


def feed(
    tenant_id: str,
    *,
    after: str,
    before: str,
    collection: Optional[str] = None,
    page_size: int = 200,
) -> Iterator[FeedEntry]:
    """The tenant's records with `after` < changed_at < `before`, in `changed_at` order.

    `after` "" means from the start. Reads the GSI (eventually consistent): the caller passes
    its settle horizon as `before`.
    """
    model = records_model()
    from pynamodb.exceptions import PynamoDBException

    # BETWEEN is inclusive; the entry equal to `after` (already delivered) is skipped below.
    condition: Any = model.changed_at.between(after, before) if after else model.changed_at < before
    filter_condition: Any = model.collection == collection if collection else None
    try:
        for item in model.query(
            tenant_id,
            range_key_condition=condition,
            filter_condition=filter_condition,
            index_name=CHANGES_INDEX,
            scan_index_forward=True,
            page_size=page_size,
        ):
            if item.changed_at == after or item.changed_at >= before:
                continue
            yield FeedEntry(to_record(item), item.changed_at)
    except PynamoDBException as exc:
        raise _translate(exc, "reading the changes feed") from exc
