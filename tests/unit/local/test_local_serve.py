"""`sync-local serve` on a small fixture template: real HTTP, real moto server, subprocess."""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from tests.support.local_stack import ROOT, LocalStack

FIXTURE = Path(__file__).parent / "fixtures" / "template.yaml"
GOOD = {"Authorization": "Bearer good"}


@pytest.fixture(scope="module")
def stack() -> Iterator[LocalStack]:
    with LocalStack.start(template=FIXTURE, args=["--retry-visibility-timeout", "0"]) as running:
        yield running


def _aws(stack: LocalStack, service: str) -> Any:
    resources = stack.resources()
    return boto3.client(
        service,
        endpoint_url=resources["endpoint_url"],
        region_name=resources["region"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def test_serve_prints_the_endpoint_and_a_dev_token(stack: LocalStack) -> None:
    assert stack.endpoint.startswith("http://127.0.0.1:")
    assert stack.token.startswith("fs1.")


def test_the_local_resources_route_gives_the_template_outputs_resolved(stack: LocalStack) -> None:
    resources = stack.resources()

    assert resources["outputs"] == {
        "ApiUrl": stack.endpoint,
        "RecordsTableName": "fieldsync-local-RecordsTable",
        "DevicesTableName": "fieldsync-local-devices",
        "RetryQueueUrl": f"{resources['endpoint_url']}/123456789012/fieldsync-local-RetryQueue",
        "DeadLetterQueueUrl": f"{resources['endpoint_url']}/123456789012/fieldsync-local-dlq",
    }


def test_an_open_route_is_served_by_its_handler(stack: LocalStack) -> None:
    answer = requests.get(f"{stack.endpoint}/v1/health", timeout=5)

    assert answer.status_code == 200
    assert answer.json() == {"status": "ok", "function": "fieldsync-local-HealthFunction"}


def test_a_missing_token_is_401_with_the_templates_error_body(stack: LocalStack) -> None:
    answer = requests.post(f"{stack.endpoint}/v1/echo", json={}, timeout=5)

    assert answer.status_code == 401
    assert answer.json() == {"error": {"code": "unauthorized", "message": "Unauthorized"}}


def test_a_token_the_authorizer_rejects_is_401(stack: LocalStack) -> None:
    answer = requests.post(
        f"{stack.endpoint}/v1/echo", json={}, headers={"Authorization": "Bearer forged"}, timeout=5
    )
    assert answer.status_code == 401


def test_a_deny_policy_is_403_with_a_json_error(stack: LocalStack) -> None:
    answer = requests.post(
        f"{stack.endpoint}/v1/echo", json={}, headers={"Authorization": "Bearer deny"}, timeout=5
    )

    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "forbidden"


def test_the_handler_gets_the_proxy_event_with_the_authorizer_context(stack: LocalStack) -> None:
    answer = requests.get(f"{stack.endpoint}/v1/items/42?x=1&x=2", headers=GOOD, timeout=5)

    assert answer.status_code == 200
    event = answer.json()["event"]
    assert event["resource"] == "/v1/items/{item_id}"
    assert event["pathParameters"] == {"item_id": "42"}
    assert event["multiValueQueryStringParameters"] == {"x": ["1", "2"]}
    assert event["requestContext"]["authorizer"] == {
        "principalId": "acme/pi-7",
        "tenant_id": "acme",
        "device_id": "pi-7",
        "trusted": "true",
    }
    assert answer.headers["X-Echo"] == "a, b"


def test_the_handler_environment_is_resolved_from_the_template(stack: LocalStack) -> None:
    env = requests.post(f"{stack.endpoint}/v1/echo", json={}, headers=GOOD, timeout=5).json()["env"]

    assert env == {
        "DLQ_ARN": "arn:aws:sqs:us-east-1:123456789012:fieldsync-local-dlq",
        "RETRY_QUEUE_NAME": "fieldsync-local-RetryQueue",
        "STAGE_NAME": "fieldsync-local-test",
        "CONFLICT_STRATEGIES": "",
    }


def test_the_handler_writes_to_the_moto_table_the_template_declares(stack: LocalStack) -> None:
    requests.post(f"{stack.endpoint}/v1/echo", json={}, headers=GOOD, timeout=5)

    table = stack.resources()["outputs"]["RecordsTableName"]
    items = _aws(stack, "dynamodb").scan(TableName=table)["Items"]
    assert any(item["pk"]["S"] == "echo" for item in items)


def test_a_gzip_body_reaches_the_handler_inflated(stack: LocalStack) -> None:
    body = json.dumps({"ops": ["x"] * 10}).encode()
    answer = requests.post(
        f"{stack.endpoint}/v1/echo",
        data=gzip.compress(body),
        headers={**GOOD, "Content-Encoding": "gzip", "Content-Type": "application/json"},
        timeout=5,
    )

    event = answer.json()["event"]
    assert event["body"] == body.decode()
    assert "Content-Encoding" not in event["headers"]


def test_a_gzip_bomb_is_413_and_undecodable_gzip_is_415(stack: LocalStack) -> None:
    bomb = gzip.compress(b" " * (6 * 1024 * 1024))
    headers = {**GOOD, "Content-Encoding": "gzip"}

    too_big = requests.post(f"{stack.endpoint}/v1/echo", data=bomb, headers=headers, timeout=10)
    garbage = requests.post(f"{stack.endpoint}/v1/echo", data=b"zzzz", headers=headers, timeout=5)

    assert too_big.status_code == 413
    assert garbage.status_code == 415


def test_a_raising_or_malformed_handler_is_502(stack: LocalStack) -> None:
    raised = requests.get(f"{stack.endpoint}/v1/items/1?explode=1", headers=GOOD, timeout=5)
    malformed = requests.get(f"{stack.endpoint}/v1/items/1?malformed=1", headers=GOOD, timeout=5)

    assert raised.status_code == 502
    assert malformed.status_code == 502


def test_an_unknown_route_is_404(stack: LocalStack) -> None:
    assert requests.get(f"{stack.endpoint}/v2/nothing", timeout=5).status_code == 404


def test_sync_local_token_registers_a_device_and_prints_its_token(stack: LocalStack) -> None:
    token = stack.register("acme", "pi-9")

    assert token.startswith("fs1.") and token != stack.token


def test_the_retry_worker_settles_good_messages_and_poison_reaches_the_dlq(
    stack: LocalStack,
) -> None:
    sqs = _aws(stack, "sqs")
    outputs = stack.resources()["outputs"]
    sqs.send_message(QueueUrl=outputs["RetryQueueUrl"], MessageBody="fine")
    sqs.send_message(QueueUrl=outputs["RetryQueueUrl"], MessageBody="poison")

    deadline = time.monotonic() + 30
    dead: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not dead:
        dead = sqs.receive_message(QueueUrl=outputs["DeadLetterQueueUrl"], WaitTimeSeconds=1).get(
            "Messages", []
        )

    assert [message["Body"] for message in dead] == ["poison"]
    items = _aws(stack, "dynamodb").scan(TableName=outputs["RecordsTableName"])["Items"]
    assert [item["sk"]["S"] for item in items if item["pk"]["S"] == "retried"] == ["fine"]


def test_sigterm_stops_serve_with_exit_0_within_2_s() -> None:
    stack = LocalStack.start(template=FIXTURE)
    time.sleep(1.5)  # the retry poller is in a long poll

    started = time.monotonic()
    assert stack.stop() == 0
    assert time.monotonic() - started < 2.0


def test_a_port_in_use_is_a_one_line_error_and_exit_1() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "local.cli",
                "serve",
                "--port",
                str(port),
                "--template",
                str(FIXTURE),
            ],
            check=False,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and f"127.0.0.1:{port}" in done.stderr


def test_a_missing_template_is_a_one_line_error_and_exit_1(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "local.cli",
            "serve",
            "--port",
            "0",
            "--template",
            str(tmp_path / "t.yaml"),
        ],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 1
    assert done.stderr.startswith("sync-local: template not found") and done.stderr.count("\n") == 1


def test_token_without_a_running_sync_local_is_a_one_line_error(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "local.cli",
            "token",
            "--tenant",
            "t",
            "--device",
            "d",
            "--endpoint",
            f"http://127.0.0.1:{port}",
        ],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 1
    assert "cannot reach sync-local" in done.stderr and done.stderr.count("\n") == 1


@pytest.mark.parametrize("port", ["99999", "-1"])
def test_a_port_outside_0_65535_is_a_one_line_usage_error_exit_2(port: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "local.cli", "serve", "--port", port, "--template", str(FIXTURE)],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--port" in done.stderr and "0-65535" in done.stderr


def test_serve_does_not_cache_authorizer_decisions_unless_asked() -> None:
    from local.cli import build_parser

    assert build_parser().parse_args(["serve"]).authorizer_ttl == 0
    assert build_parser().parse_args(["serve", "--authorizer-ttl", "60"]).authorizer_ttl == 60


def test_the_stack_is_registered_in_cloudformation_with_the_resolved_outputs(
    stack: LocalStack,
) -> None:
    resources = stack.resources()

    (described,) = _aws(stack, "cloudformation").describe_stacks(StackName=resources["stack_name"])[
        "Stacks"
    ]

    outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
    assert outputs == resources["outputs"]
