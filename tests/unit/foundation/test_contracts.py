"""Wire contracts: round trips, and a precise message for every rule of PROTOCOL.md."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.conflict import apply_lww
from shared.contracts import (
    BatchTooLarge,
    ContractError,
    ErrorCode,
    Op,
    OpKind,
    OpStatus,
    Priority,
    RejectedOp,
    limits,
    parse_batch,
    parse_batch_response,
    parse_changes_page,
    parse_op,
    parse_record,
    response_size,
)

pytestmark = pytest.mark.agent

HLC = "1764000000000-00000-dev-7f3a"


def valid_op(**overrides: Any) -> dict[str, Any]:
    op: dict[str, Any] = {
        "op_id": "0b0f7b0e-3a5e-4c4f-9a51-1d8d0f4a2b11",
        "collection": "preferences",
        "key": "user-42",
        "kind": "put",
        "data": {"currency": "BTC"},
        "hlc": HLC,
        "priority": 0,
    }
    op.update(overrides)
    return {k: v for k, v in op.items() if v is not DROP}


DROP = object()


def nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def test_nesting_up_to_the_store_limit_is_accepted() -> None:
    assert parse_op(valid_op(data={"a": nested(30)})).data == {"a": nested(30)}


def test_an_op_round_trips_through_its_wire_form() -> None:
    op = parse_op(valid_op())
    assert op == Op(
        "0b0f7b0e-3a5e-4c4f-9a51-1d8d0f4a2b11",
        "preferences",
        "user-42",
        OpKind.PUT,
        HLC,
        {"currency": "BTC"},
        Priority.CRITICAL,
    )
    assert parse_op(json.loads(json.dumps(op.to_wire()))) == op


def test_priority_defaults_to_normal_and_delete_has_no_data() -> None:
    op = parse_op(valid_op(kind="delete", data=DROP, priority=DROP))
    assert op.priority is Priority.NORMAL
    assert "data" not in op.to_wire()


INVALID_OPS = [
    ("op_id", valid_op(op_id=""), "ops[0].op_id: must be 1-64 characters"),
    ("op_id", valid_op(op_id="a" * 65), "ops[0].op_id: must be 1-64 characters"),
    ("collection", valid_op(collection="Prefs"), "ops[0].collection: must be 1-64 characters"),
    ("collection", valid_op(collection="a" * 65), "ops[0].collection: must be 1-64"),
    ("collection", valid_op(collection=7), "ops[0].collection: must be a string, got a number"),
    ("key", valid_op(key=""), "ops[0].key: must not be empty"),
    ("key", valid_op(key="k" * 257), "ops[0].key: longer than 256 characters"),
    ("key", valid_op(key="a\nb"), "ops[0].key: must not contain control characters"),
    ("kind", valid_op(kind="upsert"), "ops[0].kind: must be one of put, patch, delete"),
    ("kind", valid_op(kind=["put"]), "ops[0].kind: must be one of put, patch, delete"),
    ("kind", valid_op(kind={}), "ops[0].kind: must be one of put, patch, delete"),
    ("hlc", valid_op(hlc="yesterday"), "ops[0].hlc: expected an HLC"),
    ("hlc", valid_op(hlc="\u0662" + HLC[1:]), "ops[0].hlc: expected an HLC"),
    ("priority", valid_op(priority=5), "ops[0].priority: must be an integer from 0 to 4"),
    ("priority", valid_op(priority=True), "ops[0].priority: must be an integer from 0 to 4"),
    ("priority", valid_op(priority=2.0), "ops[0].priority: must be an integer from 0 to 4"),
    ("priority", valid_op(priority={}), "ops[0].priority: must be an integer from 0 to 4"),
    ("priority", valid_op(priority=[2]), "ops[0].priority: must be an integer from 0 to 4"),
    ("data", valid_op(data=DROP), "ops[0].data: required for a put"),
    ("data", valid_op(data=[1, 2]), "ops[0].data: must be a JSON object, got an array"),
    ("data", valid_op(data={"": 1}), "field names must be 1-128 characters"),
    ("data", valid_op(data={"f" * 129: 1}), "field names must be 1-128 characters"),
    ("data", valid_op(data={"a": None}), "null is only allowed in a patch"),
    ("data", valid_op(kind="patch", data={}), "a patch must set at least one field"),
    ("data", valid_op(kind="delete", data={"a": 1}), "a delete carries no data"),
    ("unknown", valid_op(extra=1), "ops[0]: unknown fields: extra"),
    ("unknown", valid_op(**{"\ud800": 1}), "ops[0]: unknown fields: '\\ud800'"),
    ("data", valid_op(data={"\ud800": None}), "ops[0].data.'\\ud800': null is only allowed"),
    ("nan", valid_op(data={"a": float("nan")}), "NaN and Infinity are not valid JSON"),
    ("infinity", valid_op(data={"a": [float("inf")]}), "NaN and Infinity are not valid JSON"),
    ("not-json", valid_op(data={"a": object()}), "ops[0].data: is not JSON"),
    ("nesting", valid_op(data={"a": nested(31)}), "ops[0].data.a: nested more than 30 levels"),
]


@pytest.mark.parametrize(
    ("rule", "raw", "message"), INVALID_OPS, ids=[f"{r[0]}-{i}" for i, r in enumerate(INVALID_OPS)]
)
def test_each_invalid_field_is_rejected_alone_with_its_path(
    rule: str, raw: dict[str, Any], message: str
) -> None:
    batch = parse_batch({"batch_id": "b-1", "ops": [raw, valid_op(op_id="good")]})
    rejected, good = batch.items
    assert isinstance(rejected, RejectedOp)
    assert rejected.code is ErrorCode.INVALID_OP
    assert message in rejected.message
    assert isinstance(good, Op) and good.op_id == "good"
    assert rejected.to_result().status is OpStatus.REJECTED


def test_a_rejection_message_is_always_encodable_as_utf8() -> None:
    # Given ops whose field names hold a lone surrogate (valid in JSON text, not in UTF-8)
    ops = [valid_op(**{"\ud800": 1}), valid_op(data={"\udfff": None}, op_id="second")]
    # When the batch is parsed, each is rejected with a message a response can carry
    for item in parse_batch({"batch_id": "b", "ops": ops}).items:
        assert isinstance(item, RejectedOp)
        assert item.message.encode("utf-8")


def test_every_problem_of_an_op_is_reported_not_just_the_first() -> None:
    with pytest.raises(ContractError) as caught:
        parse_op(valid_op(collection="Bad", key="", hlc="x"), "ops[3]")
    paths = [problem.path for problem in caught.value.problems]
    assert paths == ["ops[3].collection", "ops[3].key", "ops[3].hlc"]


def test_an_op_over_the_size_limit_is_rejected_as_too_large() -> None:
    big = valid_op(data={"blob": "x" * limits.MAX_OP_BYTES})
    (rejected,) = parse_batch({"batch_id": "b", "ops": [big]}).items
    assert isinstance(rejected, RejectedOp)
    assert rejected.code is ErrorCode.TOO_LARGE
    assert f"exceeds {limits.MAX_OP_BYTES} bytes" in rejected.message


def test_response_size_counts_a_value_as_escaped_in_a_lambda_response() -> None:
    # The body's JSON is escaped again, to ASCII: a quote takes 2 bytes, "é" takes 6
    assert response_size({"k": 'é"'}) == len(r"{\"k\":\"\u00e9\\\"\"}") == 22


def test_an_op_that_is_not_an_object_is_rejected_without_an_id() -> None:
    (rejected,) = parse_batch({"batch_id": "b", "ops": ["nope"]}).items
    assert isinstance(rejected, RejectedOp)
    assert rejected.op_id is None and "must be a JSON object, got a string" in rejected.message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "body: must be a JSON object, got an array"),
        ({"ops": [valid_op()]}, "batch_id: must be 1-64 characters"),
        ({"batch_id": "b"}, "ops: must be an array of ops, got null"),
        ({"batch_id": "b", "ops": []}, "ops: must contain at least one op"),
        ({"batch_id": "b", "ops": [valid_op()], "x": 1}, "body: unknown fields: x"),
    ],
)
def test_a_malformed_envelope_fails_the_whole_request(body: Any, message: str) -> None:
    with pytest.raises(ContractError, match=message.replace("[", r"\[")):
        parse_batch(body)


def test_too_many_ops_is_a_batch_too_large_error_naming_the_limit() -> None:
    ops = [valid_op(op_id=f"o{i}") for i in range(4)]
    with pytest.raises(BatchTooLarge, match="at most 3"):
        parse_batch({"batch_id": "b", "ops": ops}, max_ops=3)


def test_records_and_responses_round_trip() -> None:
    resolution = apply_lww(None, parse_op(valid_op()))
    wire = resolution.record.to_wire()
    assert parse_record(json.loads(json.dumps(wire))) == resolution.record
    response = parse_batch_response(
        {
            "batch_id": "b",
            "server_time": HLC,
            "results": [
                {"op_id": "o1", "status": "superseded", "record": wire},
                {
                    "op_id": "o2",
                    "status": "rejected",
                    "error": {"code": "clock_ahead", "message": "m"},
                },
            ],
        }
    )
    assert response.results[0].record == resolution.record
    assert response.results[1].error is not None
    assert response.results[1].error.code is ErrorCode.CLOCK_AHEAD
    page = parse_changes_page({"changes": [wire], "cursor": "c1", "has_more": False})
    assert page.changes == [resolution.record]
    assert page.to_wire()["changes"][0] == wire


def test_a_response_with_an_unknown_status_is_a_contract_error() -> None:
    with pytest.raises(ContractError, match=r"results\[0\].status"):
        parse_batch_response(
            {"batch_id": "b", "server_time": HLC, "results": [{"op_id": "o", "status": "ok"}]}
        )


@pytest.mark.parametrize(("text", "expected"), [("critical", 0), ("LOW", 3), (4, 4), ("2", None)])
def test_priority_parses_names_and_numbers(text: Any, expected: Any) -> None:
    if expected is None:
        with pytest.raises(ValueError, match="use one of critical"):
            Priority.parse(text)
    else:
        assert Priority.parse(text) == expected
