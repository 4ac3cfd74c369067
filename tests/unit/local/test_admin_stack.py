"""Where sync-admin finds a stack's resources: CloudFormation outputs, overridden by flags."""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from admin.errors import AdminError
from admin.stack import discover

OUTPUTS = {
    "RecordsTableName": "fs-records",
    "DevicesTableName": "fs-devices",
    "RetryQueueUrl": "https://sqs/retry",
    "DeadLetterQueueUrl": "https://sqs/dlq",
}
NO_FLAGS: dict[str, str | None] = {
    "table": None, "devices_table": None, "queue_url": None, "dlq_url": None,
}  # fmt: skip


@pytest.fixture
def stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        template = {
            "Resources": {"Q": {"Type": "AWS::SQS::Queue"}},
            "Outputs": {name: {"Value": value} for name, value in OUTPUTS.items()},
        }
        boto3.client("cloudformation", region_name="eu-west-1").create_stack(
            StackName="fs", TemplateBody=json.dumps(template)
        )
        yield


def test_a_stack_name_finds_the_resources_in_its_outputs(stack: None) -> None:
    found = discover(
        region="eu-west-1", endpoint_url=None, stack_name="fs", local=None, explicit=NO_FLAGS
    )

    assert (found.table, found.devices_table, found.queue_url, found.dlq_url) == (
        "fs-records", "fs-devices", "https://sqs/retry", "https://sqs/dlq",
    )  # fmt: skip


def test_explicit_flags_win_over_the_outputs(stack: None) -> None:
    found = discover(
        region="eu-west-1", endpoint_url=None, stack_name="fs", local=None,
        explicit={**NO_FLAGS, "table": "other-records"},
    )  # fmt: skip

    assert (found.table, found.devices_table) == ("other-records", "fs-devices")


def test_an_unknown_stack_is_an_error_naming_the_flags_to_check(stack: None) -> None:
    with pytest.raises(AdminError, match="--stack-name and --region"):
        discover(
            region="eu-west-1", endpoint_url=None, stack_name="nope", local=None, explicit=NO_FLAGS
        )


def test_a_command_needing_a_resource_nobody_named_says_how_to_name_it() -> None:
    found = discover(
        region="eu-west-1", endpoint_url=None, stack_name=None, local=None, explicit=NO_FLAGS
    )

    with pytest.raises(AdminError, match="--dlq-url"):
        found.require("dlq_url")


def _account(tables: dict[str, str], redrive: bool = True) -> tuple[str, str]:
    """Tables by name -> "records" or "devices" key schema; a retry queue and its DLQ."""
    dynamodb = boto3.client("dynamodb", region_name="eu-west-1")
    for name, kind in tables.items():
        key = "pk" if kind == "records" else "device_id"
        dynamodb.create_table(
            TableName=name,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": key, "AttributeType": "S"}],
            KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
        )
    sqs = boto3.client("sqs", region_name="eu-west-1")
    dlq = sqs.create_queue(QueueName="fs-dlq")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]
    policy = {"deadLetterTargetArn": arn["QueueArn"], "maxReceiveCount": 5}
    attributes = {"RedrivePolicy": json.dumps(policy)} if redrive else {}
    retry = sqs.create_queue(QueueName="fs-retry", Attributes=attributes)["QueueUrl"]
    return retry, dlq


def _flags(table: str, queue_url: str) -> dict[str, str | None]:
    return {**NO_FLAGS, "table": table, "queue_url": queue_url}


def test_the_dlq_and_devices_table_are_derived_from_table_and_queue_url(stack: None) -> None:
    retry, dlq = _account(
        {"fs-RecordsTable": "records", "fs-DevicesTable": "devices", "zz-DevicesTable": "devices"}
    )
    found = discover(
        region="eu-west-1", endpoint_url=None, stack_name=None, local=None,
        explicit=_flags("fs-RecordsTable", retry),
    )  # fmt: skip

    complete = found.complete("dlq_url", "devices_table")

    assert (complete.dlq_url, complete.devices_table) == (dlq, "fs-DevicesTable")


def test_explicit_dlq_and_devices_table_are_not_derived(stack: None) -> None:
    retry, _ = _account({"fs-RecordsTable": "records", "fs-DevicesTable": "devices"})
    found = discover(
        region="eu-west-1", endpoint_url=None, stack_name=None, local=None,
        explicit={**_flags("fs-RecordsTable", retry), "dlq_url": "D", "devices_table": "T"},
    )  # fmt: skip

    complete = found.complete("dlq_url", "devices_table")

    assert (complete.dlq_url, complete.devices_table) == ("D", "T")


def test_a_retry_queue_without_redrive_policy_says_to_pass_dlq_url(stack: None) -> None:
    retry, _ = _account({"fs-RecordsTable": "records"}, redrive=False)
    found = discover(
        region="eu-west-1", endpoint_url=None, stack_name=None, local=None,
        explicit=_flags("fs-RecordsTable", retry),
    )  # fmt: skip

    with pytest.raises(AdminError, match=r"RedrivePolicy.*pass --dlq-url"):
        found.complete("dlq_url")
    with pytest.raises(AdminError, match=r"no table with the devices table's key.*--devices-table"):
        found.complete("devices_table")


def test_devices_tables_that_cannot_be_told_apart_say_to_pass_devices_table(stack: None) -> None:
    retry, _ = _account({"a-devices": "devices", "b-devices": "devices"})
    found = discover(
        region="eu-west-1", endpoint_url=None, stack_name=None, local=None,
        explicit=_flags("", retry),
    )  # fmt: skip

    with pytest.raises(AdminError, match=r"a-devices, b-devices.*--devices-table"):
        found.complete("devices_table")


def test_the_derived_devices_key_is_the_templates() -> None:
    from pathlib import Path

    from admin.stack import DEVICES_KEY_SCHEMA
    from local.template import load_template

    root = Path(__file__).resolve().parents[3]
    template = load_template(root / "template.yaml", region="us-east-1", overrides={})
    declared = template.resources["DevicesTable"]["Properties"]["KeySchema"]

    assert declared == DEVICES_KEY_SCHEMA
