"""Create the template's DynamoDB tables and SQS queues in moto, and name everything else.

Physical names follow CloudFormation's rule when a template gives none
(`<stack>-<LogicalId>`), so `Ref`/`Fn::GetAtt` resolve to what the handlers will look up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from local.errors import StartupError, TemplateError
from local.events import ACCOUNT_ID
from local.intrinsics import Context, Physical, UnresolvableIntrinsic, resolve
from local.template import StackTemplate

_TABLE_KEYS = (
    "AttributeDefinitions",
    "KeySchema",
    "BillingMode",
    "ProvisionedThroughput",
    "GlobalSecondaryIndexes",
    "LocalSecondaryIndexes",
    "StreamSpecification",
    "Tags",
)
_QUEUE_ATTRIBUTES = (
    "DelaySeconds",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "ReceiveMessageWaitTimeSeconds",
    "VisibilityTimeout",
    "FifoQueue",
    "ContentBasedDeduplication",
    "RedrivePolicy",
    "RedriveAllowPolicy",
)


@dataclass(frozen=True)
class Queue:
    logical_id: str
    name: str
    url: str
    arn: str
    visibility_timeout_s: int
    dead_letter_arn: str  # "" when the queue has no redrive policy


@dataclass(frozen=True)
class Stack:
    """The running stack's physical resources and the context to resolve intrinsics."""

    name: str
    region: str
    context: Context
    tables: dict[str, str]  # logical id -> table name
    queues: dict[str, Queue]

    def resolve(self, value: Any, where: str) -> Any:
        try:
            return resolve(value, self.context)
        except (UnresolvableIntrinsic, KeyError, ValueError, IndexError) as exc:
            raise TemplateError(f"{where}: {exc}") from exc

    def dead_letter_queues(self) -> list[Queue]:
        arns = {queue.dead_letter_arn for queue in self.queues.values()}
        return [queue for queue in self.queues.values() if queue.arn in arns]


def plan_names(template: StackTemplate, stack_name: str, region: str) -> Context:
    """A Context with every resource's Ref and attributes that do not need AWS to exist."""
    parameters = {
        **template.parameters,
        "AWS::StackName": stack_name,
        "AWS::Region": region,
        "AWS::AccountId": ACCOUNT_ID,
        "AWS::Partition": "aws",
        "AWS::URLSuffix": "amazonaws.com",
        "AWS::StackId": f"arn:aws:cloudformation:{region}:{ACCOUNT_ID}:stack/{stack_name}/local",
    }
    context = Context(parameters, {}, template.conditions)
    prefix = f"arn:aws:{{service}}:{region}:{ACCOUNT_ID}:"
    for logical_id, resource in template.resources.items():
        kind = resource["Type"]
        properties = resource.get("Properties") or {}
        default = f"{stack_name}-{logical_id}"
        if kind == "AWS::DynamoDB::Table":
            name = str(resolve(properties.get("TableName", default), context))
            arn = prefix.format(service="dynamodb") + f"table/{name}"
            context.resources[logical_id] = Physical(name, {"Arn": arn, "StreamArn": arn})
        elif kind == "AWS::SQS::Queue":
            name = str(resolve(properties.get("QueueName", default), context))
            arn = prefix.format(service="sqs") + name
            context.resources[logical_id] = Physical("", {"Arn": arn, "QueueName": name})
        elif kind == "AWS::Lambda::Function":
            name = str(resolve(properties.get("FunctionName", default), context))
            arn = prefix.format(service="lambda") + f"function:{name}"
            context.resources[logical_id] = Physical(name, {"Arn": arn})
        elif kind == "AWS::ApiGateway::RestApi":
            context.resources[logical_id] = Physical("local", {"RootResourceId": "root"})
        else:
            context.resources[logical_id] = Physical(logical_id, {"Arn": f"local:{logical_id}"})
    return context


def create_stack(template: StackTemplate, stack_name: str, region: str, session: Any) -> Stack:
    """Create the tables and queues of `template` through `session` (a boto3 Session on moto)."""
    context = plan_names(template, stack_name, region)
    try:
        queues = _create_queues(template, context, session.client("sqs"))
        tables = _create_tables(template, context, session.client("dynamodb"))
    except UnresolvableIntrinsic as exc:
        raise TemplateError(str(exc)) from exc
    except Exception as exc:
        raise StartupError(f"could not create the stack's resources in moto: {exc}") from exc
    return Stack(stack_name, region, context, tables, queues)


def _create_queues(template: StackTemplate, context: Context, sqs: Any) -> dict[str, Queue]:
    declared = template.of_type("AWS::SQS::Queue")
    # Dead-letter queues first: a redrive policy must name a queue that exists.
    order = sorted(
        declared, key=lambda name: "RedrivePolicy" in (declared[name].get("Properties") or {})
    )
    queues: dict[str, Queue] = {}
    for logical_id in order:
        properties = resolve(declared[logical_id].get("Properties") or {}, context)
        physical = context.resources[logical_id]
        name = physical.attributes["QueueName"]
        attributes = {
            key: _attribute(properties[key]) for key in _QUEUE_ATTRIBUTES if key in properties
        }
        url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        physical.ref = url
        physical.attributes["QueueUrl"] = url
        redrive = properties.get("RedrivePolicy") or {}
        if isinstance(redrive, str):
            redrive = json.loads(redrive)
        queues[logical_id] = Queue(
            logical_id=logical_id,
            name=name,
            url=url,
            arn=physical.attributes["Arn"],
            visibility_timeout_s=int(properties.get("VisibilityTimeout", 30)),
            dead_letter_arn=str(redrive.get("deadLetterTargetArn", "")),
        )
    return queues


def _attribute(value: Any) -> str:
    """A CloudFormation queue property as the SQS API's string attribute."""
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _create_tables(template: StackTemplate, context: Context, dynamodb: Any) -> dict[str, str]:
    tables: dict[str, str] = {}
    for logical_id, resource in template.of_type("AWS::DynamoDB::Table").items():
        properties = resolve(resource.get("Properties") or {}, context)
        name = context.resources[logical_id].ref
        request = {key: properties[key] for key in _TABLE_KEYS if key in properties}
        billing = "PROVISIONED" if "ProvisionedThroughput" in request else "PAY_PER_REQUEST"
        request.setdefault("BillingMode", billing)
        if "StreamSpecification" in request:
            request["StreamSpecification"] = {
                "StreamEnabled": True,
                **request["StreamSpecification"],
            }
        dynamodb.create_table(TableName=name, **request)
        ttl = properties.get("TimeToLiveSpecification")
        if ttl:
            dynamodb.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={
                    "AttributeName": ttl["AttributeName"],
                    "Enabled": bool(ttl.get("Enabled", True)),
                },
            )
        tables[logical_id] = name
    return tables
