"""template.yaml: it lints (as written and translated), and the code agrees with it."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from shared import config
from shared.dal.models import DeviceItem, RecordItem
from tests.support.aws import (
    EVENTS_DIR,
    REGION,
    ROOT,
    TEMPLATE_PATH,
    build_stack,
    handler_path,
    load_template,
    resources_of_type,
)

TEMPLATE = load_template()
FUNCTIONS = resources_of_type(TEMPLATE, "AWS::Serverless::Function")
MODELS = {"RecordsTable": RecordItem, "DevicesTable": DeviceItem}


LINT = "import sys; from cfnlint.runner import main; sys.exit(main())"


def cfn_lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", LINT, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class _NoManagedPolicies:
    def load(self) -> dict[str, str]:
        return {}


def translated_template(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What CloudFormation sees after the SAM transform (local paths as `sam package` would)."""
    from samtranslator.translator.transform import transform

    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    template = copy.deepcopy(TEMPLATE)
    for name, resource in template["Resources"].items():
        for key in ("CodeUri", "ContentUri"):
            if key in resource.get("Properties", {}):
                resource["Properties"][key] = f"s3://fieldsync-artifacts/{name}.zip"
    return transform(template, {}, _NoManagedPolicies())  # type: ignore[no-any-return]


def test_cfn_lint_passes_on_the_sam_template() -> None:
    result = cfn_lint(TEMPLATE_PATH)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cfn_lint_passes_on_the_translated_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    translated = translated_template(monkeypatch)
    path = tmp_path / "translated.json"
    path.write_text(json.dumps(translated))
    assert "AWS::Serverless::Function" not in path.read_text()
    result = cfn_lint(path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def moto_stack(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_SQS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        yield build_stack(TEMPLATE)


def keys(schema: list[dict[str, str]]) -> dict[str, str]:
    return {entry["AttributeName"]: entry["KeyType"] for entry in schema}


def test_tables_built_from_the_template_match_the_pynamodb_models(moto_stack: Any) -> None:
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    for logical, model in MODELS.items():
        described = dynamodb.describe_table(TableName=moto_stack.tables[logical])["Table"]
        schema = model._get_schema()
        # key schema and attribute types
        assert keys(described["KeySchema"]) == keys(schema["key_schema"])
        declared = {
            a["AttributeName"]: a["AttributeType"] for a in described["AttributeDefinitions"]
        }
        assert declared == {
            a["AttributeName"]: a["AttributeType"] for a in schema["attribute_definitions"]
        }
        # global secondary indexes: names, keys and projections
        template_gsis = {g["IndexName"]: g for g in described.get("GlobalSecondaryIndexes", [])}
        model_gsis = {g["index_name"]: g for g in schema["global_secondary_indexes"]}
        assert template_gsis.keys() == model_gsis.keys()
        for name, gsi in model_gsis.items():
            assert keys(template_gsis[name]["KeySchema"]) == keys(gsi["key_schema"])
            assert (
                template_gsis[name]["Projection"]["ProjectionType"]
                == (gsi["projection"]["ProjectionType"])
            )


def test_ttl_attribute_is_the_models_ttl_attribute(moto_stack: Any) -> None:
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    ttl = dynamodb.describe_time_to_live(TableName=moto_stack.tables["RecordsTable"])
    assert ttl["TimeToLiveDescription"]["AttributeName"] == RecordItem.expires_at.attr_name
    assert ttl["TimeToLiveDescription"]["TimeToLiveStatus"] == "ENABLED"


def test_every_table_is_on_demand_with_point_in_time_recovery() -> None:
    for table in resources_of_type(TEMPLATE, "AWS::DynamoDB::Table").values():
        props = table["Properties"]
        assert props["BillingMode"] == "PAY_PER_REQUEST"
        assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True


def test_retry_queue_redrives_to_a_14_day_dlq_after_5_receives(moto_stack: Any) -> None:
    sqs = boto3.client("sqs", region_name=REGION)
    queue = sqs.get_queue_attributes(
        QueueUrl=moto_stack.queues["RetryQueue"], AttributeNames=["All"]
    )["Attributes"]
    dlq = sqs.get_queue_attributes(
        QueueUrl=moto_stack.queues["RetryDeadLetterQueue"], AttributeNames=["All"]
    )["Attributes"]
    redrive = json.loads(queue["RedrivePolicy"])
    assert int(redrive["maxReceiveCount"]) == 5
    assert redrive["deadLetterTargetArn"] == dlq["QueueArn"]
    assert int(dlq["MessageRetentionPeriod"]) == 14 * 86_400
    worker_timeout = FUNCTIONS["RetryWorkerFunction"]["Properties"]["Timeout"]
    assert int(queue["VisibilityTimeout"]) >= 6 * worker_timeout
    assert queue["SqsManagedSseEnabled"] == "true" and dlq["SqsManagedSseEnabled"] == "true"


def test_worker_reports_batch_item_failures() -> None:
    events = FUNCTIONS["RetryWorkerFunction"]["Properties"]["Events"]
    sqs_events = [e for e in events.values() if e["Type"] == "SQS"]
    assert len(sqs_events) == 1
    assert sqs_events[0]["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_every_handler_path_exists_and_exports_its_handler() -> None:
    for logical in FUNCTIONS:
        path, function = handler_path(TEMPLATE, logical)
        assert path.is_file(), f"{logical}: {path} missing"
        assert f"def {function}(" in path.read_text()


# Names the code reads from the environment, per function (what config.py's readers need).
NEEDED_ENV = {
    "BatchesFunction": {config.ENV_RECORDS_TABLE, config.ENV_RETRY_QUEUE_URL},
    "ChangesFunction": {config.ENV_RECORDS_TABLE},
    "AuthorizerFunction": {config.ENV_DEVICES_TABLE},
    "RetryWorkerFunction": {config.ENV_RECORDS_TABLE},
    "HealthFunction": set(),
}


def test_each_function_gets_the_env_vars_its_code_reads(moto_stack: Any) -> None:
    assert NEEDED_ENV.keys() == FUNCTIONS.keys()
    for logical, needed in NEEDED_ENV.items():
        env = moto_stack.function_env[logical]
        assert needed <= env.keys(), f"{logical} lacks {needed - env.keys()}"
        assert all(env[name] for name in needed)


def test_every_env_var_in_the_template_is_one_the_code_knows() -> None:
    known = {value for name, value in vars(config).items() if name.startswith("ENV_")} | {
        "POWERTOOLS_SERVICE_NAME",
        "POWERTOOLS_METRICS_NAMESPACE",
        "POWERTOOLS_LOG_LEVEL",
        "POWERTOOLS_TRACER_CAPTURE_RESPONSE",
        "STAGE",
    }
    used: set[str] = set(TEMPLATE["Globals"]["Function"]["Environment"]["Variables"])
    for function in FUNCTIONS.values():
        used |= set(function["Properties"].get("Environment", {}).get("Variables", {}))
    assert used <= known, f"unknown env vars: {used - known}"


def test_policies_are_least_privilege() -> None:
    for logical, function in FUNCTIONS.items():
        for policy in function["Properties"].get("Policies", []):
            assert isinstance(policy, dict) and "Statement" in policy, logical
            for statement in policy["Statement"]:
                assert statement["Resource"] != "*", logical
                for action in statement["Action"]:
                    assert not action.endswith("*"), f"{logical}: {action}"
                    assert action not in {"dynamodb:Scan", "dynamodb:DeleteItem"}, logical


def test_every_function_has_errors_and_throttles_alarms() -> None:
    alarms = resources_of_type(TEMPLATE, "AWS::CloudWatch::Alarm").values()
    watched = {
        (a["Properties"].get("MetricName"), a["Properties"]["Dimensions"][0]["Value"]["Ref"])
        for a in alarms
        if a["Properties"].get("Namespace") == "AWS/Lambda"
    }
    for logical in FUNCTIONS:
        assert ("Errors", logical) in watched and ("Throttles", logical) in watched


def test_outputs_name_the_api_tables_and_queues() -> None:
    assert {
        "ApiUrl",
        "RecordsTableName",
        "DevicesTableName",
        "RetryQueueUrl",
        "DeadLetterQueueUrl",
    } <= TEMPLATE["Outputs"].keys()


def test_layer_requirements_pin_what_the_lock_pins() -> None:
    lock = {
        re.sub(r"[-_.]+", "-", line.split("==")[0]).lower(): line.split("==")[1].strip()
        for line in (ROOT / "requirements" / "dev.lock").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    for line in (ROOT / "layer" / "requirements.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            assert lock[re.sub(r"[-_.]+", "-", name).lower()] == version.strip(), name


def test_every_event_file_is_used_by_a_test() -> None:
    tests_text = "".join(
        path.read_text() for path in (ROOT / "tests").rglob("*.py") if path.name != "aws.py"
    )
    unused = [p.name for p in EVENTS_DIR.glob("*.json") if p.name not in tests_text]
    assert not unused, f"events no test uses: {unused}"
