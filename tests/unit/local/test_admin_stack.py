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
