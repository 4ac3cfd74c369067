"""GET /v1/changes: the tenant's records in commit-stamp order, paged by an opaque cursor.

Why nothing is skipped: every write stamps `changed_at` (wall-clock server HLC) just before
its conditional write, and a read only returns items stamped before the *settle horizon*
`now - CHANGES_SETTLE_MS`. A write still in flight, or committed but not yet visible in the
eventually consistent GSI, carries a stamp the reader has not passed yet, so the cursor
(the last stamp returned, or the horizon once the feed is drained) never moves beyond it.
The horizon must exceed write latency + GSI lag + clock skew between Lambdas; see
docs/architecture.md.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Optional

from shared.config import Settings
from shared.contracts import ChangesPage, Record, format_hlc, limits, response_size
from shared.contracts.validation import check_collection
from shared.dal import Principal
from shared.dal.records import feed
from shared.errors import BadRequest, CursorExpired, InvalidCursor
from shared.logic.clock import SERVER_NODE, now_ms

CURSOR_VERSION = 1
_STAMP_DIGITS = 13
# Above every stamp (they start with digits): the feed read to its end.
_END = "~"
_MAX_LIMIT_CHARS = 16  # room for leading zeros; a longer `limit` is refused unread


@dataclass(frozen=True)
class ChangesResult:
    page: ChangesPage
    horizon: str  # HLC: every change committed before it has been delivered once has_more=False


def encode_cursor(position: str, snapshot_since: Optional[int] = None) -> str:
    """A cursor for `position`; `snapshot_since` (ms) marks a page of a snapshot (a chain of
    pages begun without `after`) that has more pages, and when the snapshot began."""
    value: dict[str, object] = {"v": CURSOR_VERSION, "after": position}
    if snapshot_since is not None:
        value["since"] = snapshot_since
    raw = json.dumps(value, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode("utf-8")).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, Optional[int]]:
    """The feed position a cursor stands for, and when its snapshot began (None: not in a
    snapshot). Raises InvalidCursor."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError, RecursionError) as exc:  # incl. UnicodeDecodeError
        raise InvalidCursor(
            "the cursor is not one this server issued: pass the cursor of the last page "
            "unchanged, or omit `after` to start over"
        ) from exc
    if not isinstance(value, dict):
        raise InvalidCursor("the cursor is damaged: omit `after` to start over")
    position = value.get("after")
    if value.get("v") != CURSOR_VERSION or not isinstance(position, str):
        raise InvalidCursor("the cursor is from another version: omit `after` to start over")
    since = value.get("since")
    # Every position this server issues is ASCII and starts with the digits of a time.
    if (
        not position.isascii()
        or (position and not position[:_STAMP_DIGITS].isdigit())
        or not (since is None or (type(since) is int and since >= 0))
    ):
        raise InvalidCursor("the cursor is damaged: omit `after` to start over")
    return position, since


def _expired(position: str, snapshot_since: Optional[int], oldest_ms: int) -> bool:
    """Whether deletes a cursor's holder must see may be forgotten already (their tombstones
    are kept `retention` after the delete; `oldest_ms` is now minus that).

    A cursor in the middle of a snapshot counts from when the snapshot began, not from its
    position: a snapshot's reader had no record it could miss the delete of, except those
    on its own pages, and their deletes come after the snapshot began. Anywhere else, a
    delete after the position may be older than the retention, and gone.
    """
    if snapshot_since is not None:
        return snapshot_since < oldest_ms
    return bool(position) and int(position[:_STAMP_DIGITS]) < oldest_ms


def parse_limit(text: Optional[str]) -> int:
    if text is None or text == "":
        return limits.DEFAULT_CHANGES_LIMIT
    # ASCII: str.isdigit() also accepts "²", which int() refuses. The length bound comes
    # before int(), which refuses more than 4300 digits.
    if (
        len(text) > _MAX_LIMIT_CHARS
        or not (text.isascii() and text.isdigit())
        or not 1 <= int(text) <= limits.MAX_CHANGES_LIMIT
    ):
        raise BadRequest(
            f"limit={text[:_MAX_LIMIT_CHARS]!r} is invalid: use an integer from 1 to "
            f"{limits.MAX_CHANGES_LIMIT}"
        )
    return int(text)


def _written_only_by(record: Record, device_id: str) -> bool:
    """Whether every write the record holds was stamped by `device_id` (HLC node)."""
    stamps = [record.clock.reset, *record.clock.fields.values()]
    return all(stamp.split("-", 2)[2] == device_id for stamp in stamps if stamp)


def read_changes(
    principal: Principal,
    *,
    after: Optional[str],
    limit: int,
    collection: Optional[str],
    settings: Settings,
) -> ChangesResult:
    """One page of the caller's tenant's changes after `after` (None: from the beginning).

    A page holds at most `limit` records and, past its first record, at most
    `limits.MAX_RESPONSE_RECORD_BYTES` of them, so that it always fits in a Lambda response
    and paging always moves on.
    """
    if collection is not None:
        problems = check_collection(collection, "collection")
        if problems:
            raise BadRequest(f"collection={collection!r} is invalid: {problems[0].message}")
    now = now_ms()
    position, since = decode_cursor(after) if after else ("", now)  # no `after`: a snapshot
    if _expired(position, since, now - settings.tombstone_retention_ms):
        raise CursorExpired(
            f"the cursor is older than the {settings.tombstone_retention_days}-day tombstone "
            "retention, so deletes may have been forgotten: resync from the beginning "
            "(omit `after`)",
            details={"retention_days": settings.tombstone_retention_days},
        )
    # A snapshot (a resync) sends every record, the reader's own too: the device keeps only
    # what it is sent (Replica.finish_resync).
    snapshot = since is not None
    horizon_ms = now - settings.changes_settle_ms
    # A stamp sorts below this key exactly when its physical part is before the horizon.
    horizon_key = f"{horizon_ms:0{_STAMP_DIGITS}d}"
    changes: list[Record] = []
    size = 0  # response_size of the records in `changes`
    last = position
    has_more = False
    for entry in feed(principal.tenant_id, after=position, before=_END, collection=collection):
        fresh = entry.changed_at >= horizon_key
        if fresh and not snapshot and _written_only_by(entry.record, principal.device_id):
            continue  # only the caller's own writes: it has them (they come once settled)
        if len(changes) < limit:
            cost = response_size(entry.record.to_wire())
            # The first record always goes in (one is never near the budget): pages move on.
            if not changes or size + cost <= limits.MAX_RESPONSE_RECORD_BYTES:
                changes.append(entry.record)
                size += cost
                if not fresh:
                    last = entry.changed_at
                continue
        # The page is full, by count or by bytes. More follow if this record is settled; if
        # it is in the fresh tail, the settled feed is drained and the cursor goes to the
        # horizon, which this record is not before: a later sync delivers it. A snapshot
        # (a resync, which keeps only what it is sent) goes on to a page for the fresh tail,
        # if this page moved the cursor: so paging always moves on.
        has_more = not fresh or (snapshot and last != position)
        break
    if not has_more:
        # Drained up to the horizon: later writes all stamp at or after it. The changes
        # stamped since (the page's tail, when it has room) are delivered now AND again
        # once settled, since the cursor does not pass them: a device that syncs right
        # after another sees its writes at once, and nothing is skipped.
        last = max(last, horizon_key)
    # Mid-snapshot, the next cursor carries when the snapshot began (see _expired).
    page = ChangesPage(changes, encode_cursor(last, since if has_more else None), has_more)
    return ChangesResult(page, format_hlc(max(horizon_ms, 0), 0, SERVER_NODE))
