"""POST /v1/batches through the real handler: every per-op status from a real scenario."""

from __future__ import annotations

import json
from typing import Any

import pytest

from local.routing import lambda_response
from shared.contracts import OpStatus, is_hlc, parse_batch_response
from shared.contracts.hlc import wall_clock_ms
from tests.integration.conftest import LAMBDA_RESPONSE_LIMIT, Cloud, Device, batch_event, settle
from tests.support.aws import load_event


def statuses(response_body: dict) -> list[str]:
    return [result["status"] for result in response_body["results"]]


def test_valid_batch_event_applies_every_op_in_order(cloud: Cloud) -> None:
    # Given the sample batch (put, newer patch of the same record, delete of another)
    event = load_event("batch_valid.json")
    # When it is posted
    response = cloud.http("BatchesFunction", event)
    # Then each op is applied and answered in request order with the server's time
    assert response.status == 200
    assert statuses(response.body) == ["applied", "applied", "applied"]
    assert [r["op_id"] for r in response.body["results"]] == ["op-0001", "op-0002", "op-0003"]
    assert response.body["batch_id"] == "b-0001"
    assert is_hlc(response.body["server_time"])


def test_resending_a_batch_answers_duplicate_for_every_op(cloud: Cloud) -> None:
    # Given a batch that was applied
    event = load_event("batch_valid.json")
    cloud.http("BatchesFunction", event)
    # When the agent sends it again (its answer was lost)
    again = cloud.http("BatchesFunction", load_event("batch_valid.json"))
    # Then nothing is applied twice
    assert statuses(again.body) == ["duplicate", "duplicate", "duplicate"]


def test_older_put_is_superseded_and_carries_the_current_record(cloud: Cloud) -> None:
    # Given a record written at a newer HLC
    device = Device()
    older = device.op("put", "user-1", {"currency": "EUR"})
    newer = device.op("put", "user-1", {"currency": "BTC"})
    cloud.post_batch([newer])
    # When the older put arrives late
    response = cloud.post_batch([older])
    # Then it is superseded and the answer holds the record that won
    result = response.body["results"][0]
    assert result["status"] == "superseded"
    assert result["record"]["data"] == {"currency": "BTC"}
    assert result["record"]["clock"]["reset"] == newer["hlc"]


def test_stale_writes_to_a_large_record_get_an_answer_that_fits_in_a_lambda_response(
    cloud: Cloud,
) -> None:
    # Given a record of 340 KB
    device = Device()
    blob = "x" * 340_000
    assert cloud.post_batch([device.op("put", "doc", {"blob": blob})]).status == 200
    # When 20 patches stamped before it arrive in one batch (each one superseded)
    old = wall_clock_ms() - 60_000
    stale = [device.op("patch", "doc", {"f": i}, hlc=f"{old:013d}-{i:05d}-pi-7") for i in range(20)]
    response = cloud.post_batch(stale)
    # Then the answer fits in a Lambda response: every op is answered, in order; the first
    # ones carry the record, the ones past the budget leave it out
    assert response.status == 200
    assert cloud.last_response_bytes < LAMBDA_RESPONSE_LIMIT
    results = response.body["results"]
    assert [(r["op_id"], r["status"]) for r in results] == [
        (op["op_id"], "superseded") for op in stale
    ]
    carried = ["record" in r for r in results]
    assert carried[0] and not carried[-1] and carried == sorted(carried, reverse=True)
    assert all(r["record"]["data"] == {"blob": blob} for r in results if "record" in r)
    # and the agent's parser reads a result without record as complete
    parsed = parse_batch_response(response.body)
    assert parsed.results[-1].status is OpStatus.SUPERSEDED and parsed.results[-1].record is None


def test_put_older_than_a_field_patch_is_merged(cloud: Cloud) -> None:
    # Given a put at h1 and a patch of one field at h3
    device = Device()
    first = device.op("put", "user-2", {"currency": "EUR", "theme": "dark"})
    middle = device.op("put", "user-2", {"currency": "USD", "theme": "light"})
    patch = device.op("patch", "user-2", {"theme": "blue"})
    cloud.post_batch([first, patch])
    # When a put stamped between them (h2) arrives
    response = cloud.post_batch([middle])
    # Then it applies where it is newer (currency) and not where the patch is (theme)
    result = response.body["results"][0]
    assert result["status"] == "merged"
    assert result["record"]["data"] == {"currency": "USD", "theme": "blue"}


def test_one_invalid_op_is_rejected_alone(cloud: Cloud) -> None:
    # Given the sample batch whose second op breaks the schema
    response = cloud.http("BatchesFunction", load_event("batch_one_invalid_op.json"))
    # Then that op is rejected with the reasons, and the others are applied
    assert response.status == 200
    assert statuses(response.body) == ["applied", "rejected", "applied"]
    error = response.body["results"][1]["error"]
    assert error["code"] == "invalid_op"
    assert "ops[1].collection" in error["message"] and "ops[1].hlc" in error["message"]


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": ["put"]},
        {"kind": {}},
        {"priority": {}},
        {"priority": [0]},
        {"priority": 2.0},
        {"priority": True},
    ],
    ids=repr,
)
def test_an_op_whose_kind_or_priority_has_the_wrong_type_is_rejected_alone(
    cloud: Cloud, bad: dict[str, Any]
) -> None:
    # Given a batch whose middle op has a kind or priority that is not a name or an integer
    device = Device()
    ops = [device.op("put", f"user-{n}", {"n": n}) for n in range(3)]
    ops[1].update(bad)
    # When it is posted
    response = cloud.post_batch(ops)
    # Then that op alone is rejected invalid_op, naming the field, and the others applied
    assert response.status == 200
    assert statuses(response.body) == ["applied", "rejected", "applied"]
    error = response.body["results"][1]["error"]
    assert error["code"] == "invalid_op"
    assert f"ops[1].{next(iter(bad))}: must be" in error["message"]


@pytest.mark.parametrize(
    "bad",
    [{"\ud800": 1}, {"data": {"\udfff": None}}, {"op_id": "\ud800"}],
    ids=["unknown-field", "data-field", "op-id"],
)
def test_an_op_echoing_a_lone_surrogate_is_rejected_in_a_utf8_answer(
    cloud: Cloud, bad: dict[str, Any]
) -> None:
    # Given a batch whose first op holds a lone surrogate that a rejection repeats
    device = Device()
    ops = [device.op("put", "user-1", {"a": 1}), device.op("put", "user-2", {"b": 2})]
    ops[0].update(bad)
    event = batch_event(json.dumps({"batch_id": "b-1", "ops": ops}), "acme", "pi-7")
    # When the answer goes through the gateway, which sends the body as UTF-8
    http = lambda_response(cloud.invoke("BatchesFunction", event))
    # Then it is a 200 in valid UTF-8: that op rejected invalid_op, the other applied
    assert http.status == 200
    body = json.loads(http.body.decode("utf-8"))
    assert statuses(body) == ["rejected", "applied"]
    assert body["results"][0]["error"]["code"] == "invalid_op"


def test_op_stamped_too_far_ahead_is_rejected_with_the_server_time(cloud: Cloud) -> None:
    # Given a device whose clock is ten minutes ahead
    ahead = f"{wall_clock_ms() + 600_000:013d}-00000-pi-7"
    device = Device()
    ok = device.op("put", "user-3", {"a": 1})
    future = device.op("put", "user-4", {"a": 2}, hlc=ahead)
    # When it uploads
    response = cloud.post_batch([ok, future])
    # Then the future op is rejected clock_ahead with the server's time; the other applies
    assert statuses(response.body) == ["applied", "rejected"]
    error = response.body["results"][1]["error"]
    assert error["code"] == "clock_ahead"
    assert is_hlc(error["details"]["server_time"])
    assert error["details"]["server_time"] < ahead


def test_a_fast_device_does_not_move_the_server_time_others_take_their_offset_from(
    cloud: Cloud,
) -> None:
    # Given a device whose clock is four minutes ahead (within the allowed skew) wrote
    ahead = f"{wall_clock_ms() + 240_000:013d}-00000-fast-1"
    fast = Device("fast-1").op("put", "user-5", {"a": 1}, hlc=ahead)
    assert statuses(cloud.post_batch([fast], device="fast-1").body) == ["applied"]
    # When another device, in another tenant, sends a batch and the health probe answers
    other = cloud.post_batch([Device("slow-1").op("put", "k", {"a": 1})], tenant="globex",
                             device="slow-1")  # fmt: skip
    health = cloud.http("HealthFunction", load_event("health.json"))
    # Then both server_times follow the server's wall clock, not the fast device's
    for server_time in (other.body["server_time"], health.body["server_time"]):
        assert abs(int(server_time[:13]) - wall_clock_ms()) < 5_000, server_time


def test_write_to_a_reserved_collection_is_forbidden(cloud: Cloud) -> None:
    device = Device()
    response = cloud.post_batch([device.op("put", "k", {"a": 1}, collection="_system")])
    result = response.body["results"][0]
    assert result["status"] == "rejected"
    assert result["error"]["code"] == "forbidden"


def test_oversized_op_is_rejected_too_large(cloud: Cloud) -> None:
    # Given an op over the 350 KiB op limit next to a normal one
    device = Device()
    big = device.op("put", "big", {"blob": "x" * (351 * 1024)})
    small = device.op("put", "small", {"a": 1})
    response = cloud.post_batch([big, small])
    assert statuses(response.body) == ["rejected", "applied"]
    assert response.body["results"][0]["error"]["code"] == "too_large"


def test_gzip_base64_body_is_accepted(cloud: Cloud) -> None:
    # Given the sample gzip body that API Gateway delivered base64-encoded
    response = cloud.http("BatchesFunction", load_event("batch_gzip_base64.json"))
    assert response.status == 200
    assert statuses(response.body) == ["applied"]


def test_tenant_in_the_body_is_ignored_and_writes_stay_in_the_token_tenant(cloud: Cloud) -> None:
    # Given tenant "acme" owns preferences/user-9
    device = Device()
    cloud.post_batch([device.op("put", "user-9", {"owner": "acme"})], tenant="acme")
    # When a device of tenant "evil" writes the same collection/key (even naming acme in the body)
    intruder = Device("evil-1")
    body = {
        "batch_id": "b-x",
        "tenant_id": "acme",
        "ops": [intruder.op("put", "user-9", {"owner": "evil"})],
    }
    event = batch_event(json.dumps(body), "evil", "evil-1")
    rejected = cloud.http("BatchesFunction", event)
    response = cloud.post_batch([intruder.op("put", "user-9", {"owner": "evil"})], tenant="evil")
    # Then a body naming a tenant is refused and the write lands in the caller's own tenant
    assert rejected.status == 400
    assert statuses(response.body) == ["applied"]
    settle()
    acme = cloud.changes(tenant="acme", device="pi-7")
    evil = cloud.changes(tenant="evil", device="evil-1")
    assert [c["data"] for c in acme.body["changes"]] == [{"owner": "acme"}]
    assert [c["data"] for c in evil.body["changes"]] == [{"owner": "evil"}]


def test_patch_that_would_grow_the_record_past_the_item_limit_is_rejected(cloud: Cloud) -> None:
    # Given a record holding a 300 KB field
    device = Device()
    first = device.op("put", "growing", {"a": "x" * 300_000})
    assert statuses(cloud.post_batch([first]).body) == ["applied"]
    # When a patch adds another 300 KB field (each op is under the op limit)
    response = cloud.post_batch([device.op("patch", "growing", {"b": "y" * 300_000})])
    # Then that op is rejected too_large, and the record keeps its first state
    result = response.body["results"][0]
    assert result["status"] == "rejected"
    assert result["error"]["code"] == "too_large"
    assert statuses(cloud.post_batch([first]).body) == ["duplicate"]
