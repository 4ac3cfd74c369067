"""Find a FieldSync stack's tables and queues, and point this process's AWS clients at them.

Three ways, combinable (explicit flags win):
- `--stack-name S`: the CloudFormation stack's Outputs (RecordsTableName, DevicesTableName,
  RetryQueueUrl, DeadLetterQueueUrl - the names template.yaml declares);
- `--local URL`: a running `sync-local serve`, whose local-only route `GET /_local/resources`
  answers the moto endpoint, region and the same Outputs resolved locally;
- `--table`, `--devices-table`, `--queue-url`, `--dlq-url` (with `--endpoint-url`/`--region`).

With only the flags CLI.md names (`--table`, `--queue-url`), what a command needs besides is
derived (`StackResources.complete`): the dead-letter queue from the retry queue's
RedrivePolicy, the devices table from the account's tables (the one with the devices table's
key schema, preferring the name that shares the records table's prefix).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from typing import Any, Optional

from admin.errors import AdminError

OUTPUT_KEYS = {
    "table": "RecordsTableName",
    "devices_table": "DevicesTableName",
    "queue_url": "RetryQueueUrl",
    "dlq_url": "DeadLetterQueueUrl",
}
# The devices table's key, as template.yaml (DevicesTable) and shared/dal declare it.
DEVICES_KEY_SCHEMA = [{"AttributeName": "device_id", "KeyType": "HASH"}]
DEFAULT_EMULATOR_REGION = "us-east-1"  # sync-local's region, for --endpoint-url without one
FLAG_OF = {
    "table": "--table",
    "devices_table": "--devices-table",
    "queue_url": "--queue-url",
    "dlq_url": "--dlq-url",
}


@dataclass(frozen=True)
class StackResources:
    region: str
    endpoint_url: Optional[str]
    table: str = ""
    devices_table: str = ""
    queue_url: str = ""
    dlq_url: str = ""

    def require(self, *names: str) -> None:
        """Raise AdminError naming how to provide each missing resource."""
        missing = [name for name in names if not getattr(self, name)]
        if missing:
            flags = ", ".join(FLAG_OF[name] for name in missing)
            raise AdminError(
                f"no {', '.join(missing)} known: pass --stack-name, --local URL, or {flags}"
            )

    def complete(self, *names: str, strict: bool = True) -> StackResources:
        """These resources with `names` derived when missing (dlq_url, devices_table).

        Raises AdminError (one line, naming the flag to pass) when a derivation fails, unless
        not `strict`, where the resource simply stays unknown.
        """
        found = self
        try:
            if "dlq_url" in names and not found.dlq_url and found.queue_url:
                found = replace(found, dlq_url=self._dead_letter_queue_url())
            if "devices_table" in names and not found.devices_table:
                found = replace(found, devices_table=self._devices_table())
        except AdminError:
            if strict:
                raise
        return found

    def _dead_letter_queue_url(self) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        sqs = self.client("sqs")
        try:
            attributes = sqs.get_queue_attributes(
                QueueUrl=self.queue_url, AttributeNames=["RedrivePolicy"]
            ).get("Attributes", {})
            policy = json.loads(attributes.get("RedrivePolicy") or "{}")
            target = str(policy.get("deadLetterTargetArn") or "")
            if not target:
                raise AdminError(
                    f"the retry queue {self.queue_url} has no RedrivePolicy naming a "
                    "dead-letter queue: pass --dlq-url"
                )
            _, _, _, _, account, name = target.split(":", 5)
            found = sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)
            return str(found["QueueUrl"])
        except (ClientError, BotoCoreError, ValueError) as exc:
            raise AdminError(
                f"cannot find the dead-letter queue of {self.queue_url} "
                f"({_reason(exc)}): pass --dlq-url"
            ) from exc

    def _devices_table(self) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        dynamodb = self.client("dynamodb")
        try:
            names = [
                name
                for page in dynamodb.get_paginator("list_tables").paginate()
                for name in page.get("TableNames", [])
                if name != self.table
            ]
            candidates = [
                name
                for name in names
                if dynamodb.describe_table(TableName=name)["Table"].get("KeySchema")
                == DEVICES_KEY_SCHEMA
            ]
        except (ClientError, BotoCoreError) as exc:
            raise AdminError(
                f"cannot look for the devices table ({_reason(exc)}): pass --devices-table"
            ) from exc
        if not candidates:
            raise AdminError(
                f"no table with the devices table's key (device_id) in {self.region}: "
                "pass --devices-table"
            )
        if len(candidates) > 1 and self.table:
            best = max(_common_prefix(name, self.table) for name in candidates)
            candidates = [n for n in candidates if _common_prefix(n, self.table) == best]
        if len(candidates) > 1:
            raise AdminError(
                f"several tables could be the devices table ({', '.join(sorted(candidates))}): "
                "pass --devices-table"
            )
        return candidates[0]

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, region_name=self.region, endpoint_url=self.endpoint_url)

    def export(self) -> None:
        """Put the names and endpoint where shared.dal reads them (this process only)."""
        from shared import config

        os.environ["AWS_REGION"] = self.region
        os.environ["AWS_DEFAULT_REGION"] = self.region
        if self.endpoint_url:
            os.environ["AWS_ENDPOINT_URL"] = self.endpoint_url
            for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                os.environ.setdefault(name, "testing")  # an emulator accepts any credentials
        for env_name, value in (
            (config.ENV_RECORDS_TABLE, self.table),
            (config.ENV_DEVICES_TABLE, self.devices_table),
            (config.ENV_RETRY_QUEUE_URL, self.queue_url),
        ):
            if value:
                os.environ[env_name] = value


def _common_prefix(a: str, b: str) -> int:
    """How many leading characters `a` and `b` share."""
    shared = 0
    for x, y in zip(a, b):
        if x != y:
            break
        shared += 1
    return shared


def _reason(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code") or type(exc).__name__)
    return f"{type(exc).__name__}: {exc}"


def _from_local(url: str) -> tuple[dict[str, str], Optional[str], Optional[str]]:
    if not url.startswith(("http://", "https://")):
        raise AdminError(f"--local {url!r} is not an http(s) URL of a running sync-local")
    try:
        with urllib.request.urlopen(  # noqa: S310 - the scheme is checked above
            url.rstrip("/") + "/_local/resources", timeout=10
        ) as answer:
            payload = json.loads(answer.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise AdminError(
            f"cannot reach sync-local at {url}: start `sync-local serve` or fix --local"
        ) from exc
    return dict(payload.get("outputs") or {}), payload.get("endpoint_url"), payload.get("region")


def _from_cloudformation(
    stack_name: str, region: str, endpoint_url: Optional[str]
) -> dict[str, str]:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    client = boto3.client("cloudformation", region_name=region, endpoint_url=endpoint_url)
    try:
        stacks = client.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as exc:
        raise AdminError(
            f"stack {stack_name!r} not found in {region}: check --stack-name and --region"
        ) from exc
    except NoCredentialsError as exc:
        raise AdminError("no AWS credentials: configure a profile or AWS_ACCESS_KEY_ID") from exc
    except BotoCoreError as exc:
        raise AdminError(f"cannot reach CloudFormation in {region}: {exc}") from exc
    return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}


def discover(
    *,
    region: Optional[str],
    endpoint_url: Optional[str],
    stack_name: Optional[str],
    local: Optional[str],
    explicit: dict[str, Optional[str]],
) -> StackResources:
    """The stack's resources from the sources the user named; explicit flags win."""
    outputs: dict[str, str] = {}
    if local:
        outputs, local_endpoint, local_region = _from_local(local)
        endpoint_url = endpoint_url or local_endpoint
        region = region or local_region
    region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if endpoint_url:
        region = region or DEFAULT_EMULATOR_REGION
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            os.environ.setdefault(name, "testing")  # an emulator accepts any credentials
    if not region:
        raise AdminError("no AWS region: pass --region or set AWS_REGION")
    if stack_name:
        outputs.update(_from_cloudformation(stack_name, region, endpoint_url))
    values = {name: explicit.get(name) or outputs.get(key, "") for name, key in OUTPUT_KEYS.items()}
    return StackResources(region=region, endpoint_url=endpoint_url, **values)
