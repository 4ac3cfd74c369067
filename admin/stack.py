"""Find a FieldSync stack's tables and queues, and point this process's AWS clients at them.

Three ways, combinable (explicit flags win):
- `--stack-name S`: the CloudFormation stack's Outputs (RecordsTableName, DevicesTableName,
  RetryQueueUrl, DeadLetterQueueUrl - the names template.yaml declares);
- `--local URL`: a running `sync-local serve`, whose local-only route `GET /_local/resources`
  answers the moto endpoint, region and the same Outputs resolved locally;
- `--table`, `--devices-table`, `--queue-url`, `--dlq-url` (with `--endpoint-url`/`--region`).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Optional

from admin.errors import AdminError

OUTPUT_KEYS = {
    "table": "RecordsTableName",
    "devices_table": "DevicesTableName",
    "queue_url": "RetryQueueUrl",
    "dlq_url": "DeadLetterQueueUrl",
}
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
    if not region:
        raise AdminError("no AWS region: pass --region or set AWS_REGION")
    if stack_name:
        outputs.update(_from_cloudformation(stack_name, region, endpoint_url))
    values = {name: explicit.get(name) or outputs.get(key, "") for name, key in OUTPUT_KEYS.items()}
    return StackResources(region=region, endpoint_url=endpoint_url, **values)
