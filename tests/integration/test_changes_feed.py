"""GET /v1/changes: paging, tenant isolation, the settle horizon, tombstones, cursor errors."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from pathlib import Path
from typing import Optional

import pytest

from shared.config import DEFAULT_SETTLE_MS
from shared.contracts import is_hlc
from shared.dal import records_model
from shared.dal.models import WRITE_MAX_S
from shared.logic import changes as changes_module
from tests.integration.conftest import LAMBDA_RESPONSE_LIMIT, SETTLE_MS, Cloud, Device, settle
from tests.support.aws import dynamo_fault, dynamodb_client_of, load_event, slow_requests

# Reads the feed as another device than the writer (Device's default, pi-7): the fresh tail
# leaves out the caller's own writes.
READER = "pi-8"


def page_all(
    cloud: Cloud, after: Optional[str] = None, **kwargs: object
) -> tuple[list[dict], str, int]:
    changes: list[dict] = []
    cursor = after
    pages = 0
    while True:
        response = cloud.changes(after=cursor, **kwargs)  # type: ignore[arg-type]
        assert response.status == 200, response.body
        assert cloud.last_response_bytes < LAMBDA_RESPONSE_LIMIT
        pages += 1
        changes += response.body["changes"]
        cursor = response.body["cursor"]
        if not response.body["has_more"]:
            return changes, cursor, pages


def test_sample_changes_event_returns_a_page_with_cursor_and_horizon(cloud: Cloud) -> None:
    device = Device()
    cloud.post_batch([device.op("put", f"user-{i}", {"i": i}) for i in range(3)])
    settle()
    response = cloud.http("ChangesFunction", load_event("changes_page.json"))  # limit=2
    assert response.status == 200
    assert len(response.body["changes"]) == 2 and response.body["has_more"] is True
    assert isinstance(response.body["cursor"], str) and is_hlc(response.body["horizon"])
    first = response.body["changes"][0]
    assert set(first) >= {"collection", "key", "data", "deleted", "hlc", "device_id", "clock"}


def test_paging_with_the_cursor_returns_every_record_once(cloud: Cloud) -> None:
    device = Device()
    cloud.post_batch([device.op("put", f"k{i}", {"i": i}) for i in range(7)])
    settle()
    changes, _, pages = page_all(cloud, limit=3)
    assert sorted(c["key"] for c in changes) == [f"k{i}" for i in range(7)]
    assert pages == 3


def test_cursor_picks_up_only_later_changes(cloud: Cloud) -> None:
    device = Device()
    cloud.post_batch([device.op("put", "a", {"v": 1})])
    settle()
    _, cursor, _ = page_all(cloud)
    cloud.post_batch([device.op("patch", "b", {"v": 2}), device.op("patch", "a", {"v": 3})])
    settle()
    later = cloud.changes(after=cursor).body["changes"]
    assert sorted((c["key"], c["data"]["v"]) for c in later) == [("a", 3), ("b", 2)]


def test_a_write_inside_the_settle_window_is_sent_at_once_and_again_once_settled(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a one-second settle window, a drained feed and a write that just committed
    monkeypatch.setenv("CHANGES_SETTLE_MS", "1000")
    _, drained, _ = page_all(cloud, device=READER)
    device = Device()
    cloud.post_batch([device.op("put", "fresh", {"v": 1})])
    # When the feed is read at once, again at once, then after the settle window
    early = cloud.changes(after=drained, device=READER)
    again = cloud.changes(after=early.body["cursor"], device=READER)
    time.sleep(1.05)
    late = cloud.changes(after=again.body["cursor"], device=READER)
    after_late = cloud.changes(after=late.body["cursor"], device=READER)
    # Then it is delivered at once, but the cursor does not pass it until it has settled
    # (a write still in flight with an earlier stamp cannot be skipped): it comes again on
    # every read until then, once more when settled, and never after
    for page in (early, again):
        assert [c["key"] for c in page.body["changes"]] == ["fresh"]
        assert page.body["has_more"] is False
    assert [c["key"] for c in late.body["changes"]] == ["fresh"]
    assert after_late.body["changes"] == []


def test_a_devices_own_fresh_write_is_left_out_of_its_tail(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a one-second settle window and a write device pi-7 just made
    monkeypatch.setenv("CHANGES_SETTLE_MS", "1000")
    _, drained, _ = page_all(cloud)
    cloud.post_batch([Device("pi-7").op("put", "mine", {"v": 1})], device="pi-7")
    # When pi-7 and another device read the feed at once, and pi-7 again once it settled
    own = cloud.changes(after=drained, device="pi-7")
    other = cloud.changes(after=drained, device=READER)
    resync = cloud.changes(device="pi-7")  # a snapshot: every record, the reader's own too
    time.sleep(1.05)
    settled = cloud.changes(after=own.body["cursor"], device="pi-7")
    # Then only the other device gets it at once (pi-7 has it: no bytes spent sending it
    # back) unless pi-7 resyncs, and pi-7 gets it once, settled
    assert own.body["changes"] == []
    assert [c["key"] for c in other.body["changes"]] == ["mine"]
    assert "mine" in [c["key"] for c in resync.body["changes"]]
    assert [c["key"] for c in settled.body["changes"]] == ["mine"]


def test_a_snapshot_whose_settled_records_fill_its_last_page_still_sends_the_fresh_tail(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given two settled records of another device, then a fresh write of pi-7's own
    monkeypatch.setenv("CHANGES_SETTLE_MS", "1000")
    other = Device(READER)
    cloud.post_batch([other.op("put", f"k{n}", {"n": n}) for n in range(2)], device=READER)
    time.sleep(1.05)
    cloud.post_batch([Device("pi-7").op("put", "mine", {"v": 1})], device="pi-7")
    # When pi-7 resyncs (a snapshot) in pages of two, which the settled records fill exactly
    changes, _, pages = page_all(cloud, limit=2, device="pi-7")
    # Then the snapshot goes on to a page with the fresh tail: a resync keeps only what it
    # is sent, so leaving "mine" out would drop it from pi-7's local view
    assert sorted(c["key"] for c in changes) == ["k0", "k1", "mine"] and pages == 2


def test_a_full_page_of_settled_changes_leaves_the_fresh_ones_for_later(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a reader past a drained feed, two settled writes, then a fresh one inside a
    # one-second settle window
    monkeypatch.setenv("CHANGES_SETTLE_MS", "1000")
    _, drained, _ = page_all(cloud, device=READER)
    device = Device()
    cloud.post_batch([device.op("put", "old-1", {"v": 1}), device.op("put", "old-2", {"v": 1})])
    time.sleep(1.05)
    cloud.post_batch([device.op("put", "fresh", {"v": 1})])
    # When pages of two are read from its cursor (not a snapshot)
    first = cloud.changes(after=drained, limit=2, device=READER)
    second = cloud.changes(after=first.body["cursor"], limit=2, device=READER)
    # Then the settled ones fill the first page, which ends the settled feed (has_more is
    # false: only a fresh change is left), and the fresh one comes on the next read
    assert [c["key"] for c in first.body["changes"]] == ["old-1", "old-2"]
    assert first.body["has_more"] is False
    assert [c["key"] for c in second.body["changes"]] == ["fresh"]


def test_a_write_committed_seconds_after_its_stamp_is_not_skipped(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the default settle window, and a write whose PutItem reaches the table 4 s after
    # its stamp (as when the SDK resends it after a timeout)
    monkeypatch.delenv("CHANGES_SETTLE_MS", raising=False)
    device = Device()
    cloud.post_batch([device.op("put", "early", {"v": 1})])
    slow = slow_requests(
        dynamodb_client_of(records_model()), "PutItem", lambda: 4.0, when=lambda b: b"late" in b
    )
    with slow:
        writer = threading.Thread(target=cloud.post_batch, args=([device.op("put", "late", {})],))
        writer.start()
        # When a device pages the feed while the write is under way, then after it landed
        time.sleep(2.0)
        during = cloud.changes(device=READER)
        writer.join()
    after = cloud.changes(after=during.body["cursor"], device=READER)
    # Then the late write is delivered from the cursor handed out meanwhile (with "early"
    # again: it is still inside the settle window)
    assert [c["key"] for c in during.body["changes"]] == ["early"]
    assert "late" in [c["key"] for c in after.body["changes"]]


def test_the_settle_window_outlasts_the_slowest_record_write() -> None:
    # The SDK resends a write with its stamp: its attempts and backoff, plus GSI lag
    assert DEFAULT_SETTLE_MS >= WRITE_MAX_S * 1000 + 5_000
    template = (Path(__file__).parents[2] / "template.yaml").read_text(encoding="utf-8")
    assert re.search(rf"ChangesSettleMs:\n(?:\s+.*\n)*?\s+Default: {DEFAULT_SETTLE_MS}\n", template)


# 20 records of 340 KB (each a legal op) are more than a Lambda response can hold: as ASCII,
# and three times more as non-ASCII text (the response carries "é" as "\u00e9").
LARGE_BLOBS = {"ascii": "x" * 340_000, "non-ascii": "é" * 170_000}


def write_large_records(cloud: Cloud, blob: str, count: int = 20) -> list[str]:
    device = Device()
    keys = [f"doc-{i:02d}" for i in range(count)]
    for key in keys:
        assert cloud.post_batch([device.op("put", key, {"blob": blob})]).status == 200
    return keys


@pytest.mark.parametrize("blob", LARGE_BLOBS.values(), ids=LARGE_BLOBS.keys())
def test_pages_of_large_records_are_closed_by_bytes_and_deliver_every_record(
    cloud: Cloud, blob: str
) -> None:
    # Given 20 settled records of 340 KB
    keys = write_large_records(cloud, blob)
    settle()
    # When a device pages through the feed with the default limit (100)
    first = cloud.changes()
    changes, _, pages = page_all(cloud)  # asserts each page fits in a Lambda response
    # Then the first page stops short of the limit, under Lambda's response limit, with more
    # to come, and paging on delivers every record exactly once
    assert first.status == 200 and cloud.last_response_bytes < LAMBDA_RESPONSE_LIMIT
    assert 0 < len(first.body["changes"]) < len(keys) and first.body["has_more"] is True
    assert pages > 1
    assert sorted(c["key"] for c in changes) == keys
    assert all(c["data"] == {"blob": blob} for c in changes)


def test_a_page_closed_by_bytes_in_the_fresh_tail_leaves_the_rest_for_later(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given 20 records of 340 KB written inside a long settle window (all in the fresh tail)
    monkeypatch.setenv("CHANGES_SETTLE_MS", "60000")
    keys = write_large_records(cloud, LARGE_BLOBS["ascii"])
    # When the feed is read from the start
    first = cloud.changes(device=READER)
    # Then the page stops at its byte budget and, the settled feed being drained, says so
    assert first.status == 200 and cloud.last_response_bytes < LAMBDA_RESPONSE_LIMIT
    assert 0 < len(first.body["changes"]) < len(keys) and first.body["has_more"] is False
    # and once they have settled, paging on from its cursor delivers every one of them
    monkeypatch.setenv("CHANGES_SETTLE_MS", str(SETTLE_MS))
    settle()
    later, _, _ = page_all(cloud, after=first.body["cursor"], device=READER)
    assert sorted(c["key"] for c in later) == keys


def test_other_tenants_changes_are_invisible(cloud: Cloud) -> None:
    cloud.post_batch([Device("a-1").op("put", "k", {"t": "acme"})], tenant="acme", device="a-1")
    cloud.post_batch([Device("g-1").op("put", "k", {"t": "globex"})], tenant="globex", device="g-1")
    settle()
    acme, _, _ = page_all(cloud, tenant="acme", device="a-1")
    assert [c["data"] for c in acme] == [{"t": "acme"}]


def test_collection_filter(cloud: Cloud) -> None:
    device = Device()
    cloud.post_batch(
        [device.op("put", "x", {"a": 1}), device.op("put", "y", {"b": 1}, collection="notes")]
    )
    settle()
    notes, _, _ = page_all(cloud, collection="notes")
    assert [(c["collection"], c["key"]) for c in notes] == [("notes", "y")]


def test_delete_leaves_a_tombstone_with_a_ttl_in_the_feed(cloud: Cloud) -> None:
    device = Device()
    cloud.post_batch([device.op("put", "gone", {"a": 1}), device.op("delete", "gone")])
    settle()
    changes, _, _ = page_all(cloud)
    assert [(c["key"], c["deleted"], c["data"]) for c in changes] == [("gone", True, {})]
    item = records_model().get("acme#preferences#gone")
    retention_s = 30 * 86_400
    assert item.expires_at is not None
    assert abs(item.expires_at.timestamp() - (time.time() + retention_s)) < 60


def test_cursor_older_than_tombstone_retention_is_410(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a cursor the device got earlier
    cloud.post_batch([Device().op("put", "a", {"v": 1})])
    settle()
    _, cursor, _ = page_all(cloud)
    # When the retention window is shorter than the cursor's age
    monkeypatch.setenv("TOMBSTONE_RETENTION_DAYS", "0")
    time.sleep(0.01)
    response = cloud.changes(after=cursor)
    # Then the device is told to resync from the beginning
    assert response.status == 410
    assert response.body["error"]["code"] == "cursor_expired"


def test_a_snapshot_of_records_older_than_the_retention_pages_to_the_end(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given records last written 40 days ago (the retention is 30)
    device = Device()
    cloud.post_batch([device.op("put", f"k{i}", {"i": i}) for i in range(5)])
    settle()
    real = changes_module.now_ms
    monkeypatch.setattr(changes_module, "now_ms", lambda: real() + 40 * 86_400_000)
    # When a new device snapshots them a page at a time
    changes, cursor, pages = page_all(cloud, limit=2)
    # Then every page is served: the cursor counts from when the snapshot began
    assert sorted(c["key"] for c in changes) == [f"k{i}" for i in range(5)] and pages == 3
    # But the cursor of the last page is a plain position: 40 days later, it has expired
    monkeypatch.setattr(changes_module, "now_ms", lambda: real() + 80 * 86_400_000)
    assert cloud.changes(after=cursor).status == 410


def test_a_snapshot_left_unfinished_longer_than_the_retention_must_start_over(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    device = Device()
    cloud.post_batch([device.op("put", f"k{i}", {"i": i}) for i in range(3)])
    settle()
    first = cloud.changes(limit=1)
    assert first.status == 200 and first.body["has_more"]
    real = changes_module.now_ms
    monkeypatch.setattr(changes_module, "now_ms", lambda: real() + 31 * 86_400_000)

    response = cloud.changes(after=first.body["cursor"], limit=1)

    assert response.status == 410
    assert response.body["error"]["code"] == "cursor_expired"


@pytest.mark.parametrize("query", [{"after": "garbage!"}, {"limit": "0"}, {"limit": "x"}])
def test_bad_cursor_or_limit_is_400(cloud: Cloud, query: dict[str, str]) -> None:
    response = cloud.changes(**{k: v for k, v in query.items()})  # type: ignore[arg-type]
    assert response.status == 400
    assert response.body["error"]["code"] in ("invalid_cursor", "bad_request")


@pytest.mark.parametrize(
    "limit",
    ["\u00b2", "9" * 5000, "\u0661\u0660", "-1", "1.5"],
    ids=["superscript", "5000-nines", "arabic", "negative", "float"],
)
def test_a_limit_that_is_not_plain_digits_in_range_is_400(cloud: Cloud, limit: str) -> None:
    response = cloud.changes(limit=limit)
    assert response.status == 400
    assert response.body["error"]["code"] == "bad_request"
    assert "use an integer from 1 to" in response.body["error"]["message"]


def raw_cursor(text: str) -> str:
    """A cursor encoded as the server encodes its own (base64url JSON, unpadded)."""
    return base64.urlsafe_b64encode(text.encode("utf-8")).decode("ascii").rstrip("=")


@pytest.mark.parametrize(
    "text",
    [
        json.dumps({"v": 1, "after": "\u00b2\u00b2\u00b2"}),
        json.dumps({"v": 1, "after": "\u0661" * 13}),
        json.dumps({"v": 1, "after": f"{int(time.time() * 1000)}\ud800"}),
        "[" * 100_000 + "]" * 100_000,
    ],
    ids=["superscript", "arabic", "lone-surrogate", "nested"],
)
def test_a_forged_cursor_is_400_invalid_cursor(cloud: Cloud, text: str) -> None:
    response = cloud.changes(after=raw_cursor(text))
    assert response.status == 400
    assert response.body["error"]["code"] == "invalid_cursor"


def test_changes_without_authorizer_context_is_401(cloud: Cloud) -> None:
    event = load_event("changes_page.json")
    del event["requestContext"]["authorizer"]
    assert cloud.http("ChangesFunction", event).status == 401


def between_bounds_inverted(params: dict) -> bool:
    """DynamoDB rejects `BETWEEN lo AND hi` with lo > hi (moto does not check it)."""
    match = re.search(r"BETWEEN (:\w+) AND (:\w+)", params.get("KeyConditionExpression", ""))
    if match is None:
        return False
    values = params["ExpressionAttributeValues"]
    return bool(values[match.group(1)]["S"] > values[match.group(2)]["S"])


def test_polling_again_at_once_returns_an_empty_page_not_an_error(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a drained feed whose cursor sits at the horizon
    _, cursor, _ = page_all(cloud)
    # When the next poll is served by a Lambda whose horizon is earlier (longer settle time)
    monkeypatch.setenv("CHANGES_SETTLE_MS", "5000")
    with dynamo_fault(
        records_model(), "Query", "ValidationException", when=between_bounds_inverted
    ):
        response = cloud.changes(after=cursor)
    # Then it answers an empty page that keeps the cursor
    assert response.status == 200
    assert response.body["changes"] == [] and response.body["has_more"] is False
    assert response.body["cursor"] == cursor
