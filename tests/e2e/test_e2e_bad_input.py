"""Bad input over real HTTP to the local cloud: a clear 4xx or a rejected op, never a 5xx.

The requests are those an audit found answered 500/502: an op's kind or priority of the wrong
JSON type, a field name that is a lone surrogate, a `limit` or cursor of non-ASCII digits.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import requests

from tests.support.local_stack import LocalStack

HLC_NODE = "pi-bad"


def post_batch(cloud: LocalStack, token: str, ops: list[dict[str, Any]]) -> requests.Response:
    # json.dumps escapes a lone surrogate as \ud800: valid JSON text, as a client would send
    return requests.post(
        f"{cloud.endpoint}/v1/batches",
        data=json.dumps({"batch_id": "b-bad", "ops": ops}).encode("ascii"),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=30,
    )


def op(n: int, **overrides: Any) -> dict[str, Any]:
    stamp = f"{int(time.time() * 1000):013d}-{n:05d}-{HLC_NODE}"
    base = {"op_id": f"op-{n}", "collection": "prefs", "key": f"k-{n}", "kind": "put"}
    return {**base, "data": {"n": n}, "hlc": stamp, "priority": 2, **overrides}


def test_each_bad_op_is_rejected_alone_in_a_utf8_answer(cloud: LocalStack) -> None:
    token = cloud.register("bad-input", "pi-bad-1")
    # Given a batch of good ops between ops whose kind, priority or a field name is bad
    ops = [
        op(0),
        op(1, kind=["put"]),
        op(2, priority={}),
        op(3, priority=2.0),
        op(4, **{"\ud800": 1}),
        op(5),
    ]
    # When it is posted
    answer = post_batch(cloud, token, ops)
    # Then it is a 200 in valid UTF-8: every bad op rejected invalid_op, the others applied
    assert answer.status_code == 200, answer.text
    body = json.loads(answer.content.decode("utf-8"))
    results = body["results"]
    assert [r["status"] for r in results] == ["applied"] + ["rejected"] * 4 + ["applied"]
    assert {r["error"]["code"] for r in results[1:5]} == {"invalid_op"}


def cursor_of(value: dict[str, Any]) -> str:
    raw = json.dumps(value, separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def test_a_limit_or_cursor_of_non_ascii_digits_is_400(cloud: LocalStack) -> None:
    token = cloud.register("bad-input", "pi-bad-2")
    headers = {"Authorization": f"Bearer {token}"}
    cases = [
        ({"limit": "\u00b2"}, "bad_request"),
        ({"limit": "9" * 5000}, "bad_request"),
        ({"after": cursor_of({"v": 1, "after": "\u00b2\u00b2\u00b2"})}, "invalid_cursor"),
    ]
    for params, code in cases:
        answer = requests.get(
            f"{cloud.endpoint}/v1/changes", params=params, headers=headers, timeout=30
        )
        assert answer.status_code == 400, (params, answer.text)
        assert answer.json()["error"]["code"] == code
