"""Build the cloud side's AWS resources from template.yaml itself (never a second copy by hand).

Used by the integration tests (in-process moto) and the local cloud (moto server mode):

    template = load_template()
    stack = build_stack(template, prefix="test")   # tables + queues, in whatever boto3 targets
    os.environ.update(stack.env)                    # the env vars the template gives functions
    handler = load_handler(template, "BatchesFunction")

Only `AWS::DynamoDB::Table` and `AWS::SQS::Queue` are created; their properties are read from
the template (keys, GSIs, TTL, PITR, SSE, redrive policy) and translated to API calls. The
functions' environment (`Globals` + per function) is resolved against the created resources.

Faults are injected at the SDK boundary with botocore event hooks on the very clients pynamodb
and boto3 use (`dynamo_fault`, `sqs_fault`), never by mocking our own code.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Optional

import boto3
import yaml
from botocore.exceptions import ClientError

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE_PATH = ROOT / "template.yaml"
EVENTS_DIR = ROOT / "events"
REGION = "us-east-1"
ACCOUNT = "123456789012"


# --- template loading -----------------------------------------------------------------------


class _CfnLoader(yaml.SafeLoader):
    """A YAML loader that turns CloudFormation short tags (!Ref, !Sub, ...) into long form."""


def _construct_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = str(value).split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


_CfnLoader.add_multi_constructor("!", _construct_tag)


def load_template(path: Path = TEMPLATE_PATH) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        loaded = yaml.load(handle, Loader=_CfnLoader)  # a SafeLoader subclass
    assert isinstance(loaded, dict)
    return loaded


def resources_of_type(template: Mapping[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {
        name: resource
        for name, resource in template["Resources"].items()
        if resource.get("Type") == kind
    }


# --- intrinsic functions (the small subset the resources and env vars use) ------------------


@dataclass
class _Resolver:
    template: Mapping[str, Any]
    physical: dict[str, dict[str, str]] = field(default_factory=dict)  # logical -> attrs
    stack_name: str = "fieldsync"
    parameters: dict[str, str] = field(default_factory=dict)
    region: str = REGION

    def parameter(self, name: str) -> str:
        pseudo = {
            "AWS::Region": self.region,
            "AWS::AccountId": ACCOUNT,
            "AWS::StackName": self.stack_name,
        }
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        return str(self.template["Parameters"][name].get("Default", ""))

    def condition(self, name: str) -> bool:
        return bool(self.resolve(self.template["Conditions"][name]))

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.resolve(item) for item in value]
        if not isinstance(value, dict):
            return value
        if len(value) != 1:
            return {key: self.resolve(item) for key, item in value.items()}
        ((name, arg),) = value.items()
        if name == "Ref":
            if arg in self.physical:
                return self.physical[arg]["Ref"]
            return self.parameter(arg)
        if name == "Fn::GetAtt":
            logical, attribute = arg
            return self.physical[logical][attribute]
        if name == "Fn::If":
            chosen = arg[1] if self.condition(arg[0]) else arg[2]
            return self.resolve(chosen)
        if name == "Fn::Equals":
            left, right = self.resolve(arg[0]), self.resolve(arg[1])
            return str(left) == str(right)
        if name == "Fn::Not":
            return not self.resolve(arg[0])
        if name == "Fn::Sub":
            text = arg if isinstance(arg, str) else arg[0]
            for ref in _sub_refs(text):
                target = ref.split(".", 1)
                value_ = (
                    self.physical[target[0]][target[1]]
                    if len(target) == 2
                    else self.resolve({"Ref": ref})
                )
                text = text.replace("${" + ref + "}", str(value_))
            return text
        return {name: self.resolve(arg)}


def _sub_refs(text: str) -> list[str]:
    refs, start = [], text.find("${")
    while start != -1:
        end = text.index("}", start)
        refs.append(text[start + 2 : end])
        start = text.find("${", end)
    return refs


# --- resource creation ----------------------------------------------------------------------


def _create_table(client: Any, name: str, props: Mapping[str, Any]) -> None:
    kwargs: dict[str, Any] = {
        "TableName": name,
        "KeySchema": props["KeySchema"],
        "AttributeDefinitions": props["AttributeDefinitions"],
        "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
    }
    if props.get("GlobalSecondaryIndexes"):
        kwargs["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
    if props.get("SSESpecification", {}).get("SSEEnabled"):
        kwargs["SSESpecification"] = {"Enabled": True}
    client.create_table(**kwargs)
    client.get_waiter("table_exists").wait(TableName=name)
    ttl = props.get("TimeToLiveSpecification")
    if ttl and ttl.get("Enabled"):
        client.update_time_to_live(
            TableName=name,
            TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl["AttributeName"]},
        )
    pitr = props.get("PointInTimeRecoverySpecification", {})
    if pitr.get("PointInTimeRecoveryEnabled"):
        client.update_continuous_backups(
            TableName=name,
            PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": True},
        )


def _queue_attributes(props: Mapping[str, Any]) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for key in ("VisibilityTimeout", "MessageRetentionPeriod", "DelaySeconds"):
        if key in props:
            attributes[key] = str(props[key])
    if props.get("SqsManagedSseEnabled"):
        attributes["SqsManagedSseEnabled"] = "true"
    if "RedrivePolicy" in props:
        attributes["RedrivePolicy"] = json.dumps(props["RedrivePolicy"])
    return attributes


@dataclass
class Stack:
    """What build_stack created: physical names and the functions' resolved environments."""

    tables: dict[str, str]  # logical id -> table name
    queues: dict[str, str]  # logical id -> queue URL
    env: dict[str, str]  # union of every function's environment (same names, same values)
    function_env: dict[str, dict[str, str]]  # logical id -> that function's environment


def build_stack(
    template: Optional[Mapping[str, Any]] = None,
    *,
    prefix: str = "fieldsync-test",
    parameters: Optional[Mapping[str, str]] = None,
    region: str = REGION,
) -> Stack:
    """Create the template's tables and queues in the account boto3 currently targets.

    `parameters` override the template's parameter defaults (e.g. {"Stage": "prod"}).
    """
    template = template if template is not None else load_template()
    resolver = _Resolver(template, stack_name=prefix, parameters=dict(parameters or {}))
    resolver.region = region
    dynamodb = boto3.client("dynamodb", region_name=region)
    sqs = boto3.client("sqs", region_name=region)
    tables: dict[str, str] = {}
    for logical, resource in resources_of_type(template, "AWS::DynamoDB::Table").items():
        name = f"{prefix}-{logical}"
        _create_table(dynamodb, name, resolver.resolve(resource["Properties"]))
        tables[logical] = name
        arn = dynamodb.describe_table(TableName=name)["Table"]["TableArn"]
        resolver.physical[logical] = {"Ref": name, "Arn": arn}
    queues: dict[str, str] = {}
    pending = dict(resources_of_type(template, "AWS::SQS::Queue"))
    for _ in range(len(pending) + 1):  # queues referring to others (a DLQ) are created after them
        for logical, resource in list(pending.items()):
            try:
                props = resolver.resolve(resource.get("Properties", {}))
            except KeyError:
                continue
            name = f"{prefix}-{logical}"
            url = sqs.create_queue(QueueName=name, Attributes=_queue_attributes(props))["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
                "QueueArn"
            ]
            resolver.physical[logical] = {"Ref": url, "Arn": arn, "QueueName": name}
            queues[logical] = url
            del pending[logical]
    assert not pending, f"queues with unresolvable properties: {sorted(pending)}"
    function_env = {
        logical: _function_env(template, resolver, logical)
        for logical in resources_of_type(template, "AWS::Serverless::Function")
    }
    env: dict[str, str] = {}
    for values in function_env.values():
        env.update(values)
    return Stack(tables, queues, env, function_env)


def _function_env(template: Mapping[str, Any], resolver: _Resolver, logical: str) -> dict[str, str]:
    globals_env = (
        template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
    )
    own = template["Resources"][logical]["Properties"].get("Environment", {}).get("Variables", {})
    merged = {**globals_env, **own}
    return {name: str(resolver.resolve(value)) for name, value in merged.items()}


# --- handlers and events --------------------------------------------------------------------


def handler_path(template: Mapping[str, Any], logical: str) -> tuple[Path, str]:
    """(file, function name) of a function's handler, from CodeUri and Handler."""
    props = template["Resources"][logical]["Properties"]
    handler = props.get("Handler") or template["Globals"]["Function"]["Handler"]
    module, function = handler.rsplit(".", 1)
    return ROOT / props["CodeUri"] / f"{module.replace('.', '/')}.py", function


_loaded: dict[str, ModuleType] = {}


def load_handler(template: Mapping[str, Any], logical: str) -> Callable[..., Any]:
    """Import a function's handler module from its file (each is named handler.py)."""
    path, function = handler_path(template, logical)
    module = _loaded.get(logical)
    if module is None:
        spec = importlib.util.spec_from_file_location(f"fieldsync_fn_{logical}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        _loaded[logical] = module
    handler = getattr(module, function)
    assert callable(handler)
    return handler  # type: ignore[no-any-return]


def load_event(name: str) -> dict[str, Any]:
    """A sample event from events/ (the same files `sam local invoke -e` uses)."""
    with (EVENTS_DIR / name).open(encoding="utf-8") as handle:
        event = json.load(handle)
    assert isinstance(event, dict)
    return event


@dataclass
class LambdaContext:
    """The attributes powertools reads from a Lambda context."""

    function_name: str = "fieldsync-test"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:fieldsync-test"
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


# --- faults at the SDK boundary -------------------------------------------------------------


class _Fault:
    """Raise an AWS error from a client's `before-parameter-build` hook while active."""

    _ids = itertools.count()

    def __init__(
        self,
        client: Any,
        service: str,
        operation: str,
        code: str,
        *,
        when: Callable[[dict[str, Any]], bool] = lambda params: True,
        status: int = 400,
    ) -> None:
        self._client, self._operation, self._code = client, operation, code
        self._event = f"before-parameter-build.{service}.{operation}"
        self._when, self._status = when, status
        self._unique_id = f"fieldsync-fault-{next(self._ids)}"
        self.hits = 0

    def _hook(self, params: dict[str, Any], **_: Any) -> None:
        if self._when(params):
            self.hits += 1
            raise ClientError(
                {
                    "Error": {"Code": self._code, "Message": f"injected {self._code}"},
                    "ResponseMetadata": {"HTTPStatusCode": self._status},
                },
                self._operation,
            )

    def __enter__(self) -> _Fault:
        self._client.meta.events.register(self._event, self._hook, unique_id=self._unique_id)
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self._client.meta.events.unregister(self._event, unique_id=self._unique_id)


def dynamodb_client_of(model: Any) -> Any:
    """The botocore client a pynamodb model sends its requests through."""
    return model._get_connection().connection.client


def dynamo_fault(
    model: Any,
    operation: str,
    code: str = "ProvisionedThroughputExceededException",
    *,
    when: Callable[[dict[str, Any]], bool] = lambda params: True,
    status: int = 400,
) -> _Fault:
    return _Fault(dynamodb_client_of(model), "dynamodb", operation, code, when=when, status=status)


def sqs_fault(
    client: Any,
    operation: str = "SendMessage",
    code: str = "InternalError",
    *,
    when: Callable[[dict[str, Any]], bool] = lambda params: True,
    status: int = 500,
) -> _Fault:
    return _Fault(client, "sqs", operation, code, when=when, status=status)


def item_pk(params: Mapping[str, Any]) -> str:
    """The `pk` of a PutItem/GetItem request (pynamodb sends DynamoDB JSON)."""
    source = params.get("Item") or params.get("Key") or {}
    return str(source.get("pk", {}).get("S", ""))


@contextlib.contextmanager
def atomic_moto_requests(client: Any) -> Iterator[None]:
    """Handle one request at a time in in-process moto, as DynamoDB makes each item write atomic.

    moto evaluates a ConditionExpression and stores the item in separate Python steps, so
    threads could interleave there; real DynamoDB cannot. Only the emulator is serialized.
    """
    from moto.core.models import botocore_stubber

    lock = threading.Lock()

    def serialized(event_name: str, request: Any, **kwargs: Any) -> Any:
        with lock:
            return botocore_stubber(event_name=event_name, request=request, **kwargs)

    unique_id = f"fieldsync-atomic-{next(_Fault._ids)}"
    client.meta.events.register_first("before-send.dynamodb", serialized, unique_id=unique_id)
    try:
        yield
    finally:
        client.meta.events.unregister("before-send.dynamodb", unique_id=unique_id)


@contextlib.contextmanager
def slow_requests(
    client: Any,
    operation: str,
    delay_s: Callable[[], float],
    *,
    when: Callable[[bytes], bool] = lambda body: True,
) -> Iterator[None]:
    """Delay matching requests on the wire (after the SDK built them, before the service)."""

    def delay(request: Any, **_: Any) -> None:
        body = request.body if isinstance(request.body, bytes) else str(request.body).encode()
        if when(body):
            time.sleep(delay_s())

    event = f"before-send.dynamodb.{operation}"
    unique_id = f"fieldsync-slow-{next(_Fault._ids)}"
    client.meta.events.register_first(event, delay, unique_id=unique_id)
    try:
        yield
    finally:
        client.meta.events.unregister(event, unique_id=unique_id)


@contextlib.contextmanager
def count_requests(client: Any) -> Iterator[Counter[str]]:
    """Count the DynamoDB operations a client sends while active ({"PutItem": 3, ...})."""
    counts: Counter[str] = Counter()

    def count(model: Any, **_: Any) -> None:
        counts[model.name] += 1

    unique_id = f"fieldsync-count-{next(_Fault._ids)}"
    client.meta.events.register("before-call.dynamodb", count, unique_id=unique_id)
    try:
        yield counts
    finally:
        client.meta.events.unregister("before-call.dynamodb", unique_id=unique_id)


@contextlib.contextmanager
def before_request(
    client: Any, operation: str, action: Callable[[dict[str, Any]], None]
) -> Iterator[None]:
    """Run `action(params)` before each `operation` request is built (e.g. a rival write)."""

    def hook(params: dict[str, Any], **_: Any) -> None:
        action(params)

    unique_id = f"fieldsync-before-{next(_Fault._ids)}"
    event = f"before-parameter-build.dynamodb.{operation}"
    client.meta.events.register(event, hook, unique_id=unique_id)
    try:
        yield
    finally:
        client.meta.events.unregister(event, unique_id=unique_id)


@contextlib.contextmanager
def edit_responses(
    client: Any, operation: str, edit: Callable[[dict[str, Any]], None]
) -> Iterator[None]:
    """Let `edit(parsed)` change each parsed `operation` response (e.g. leave keys unprocessed)."""

    def hook(parsed: dict[str, Any], **_: Any) -> None:
        edit(parsed)

    unique_id = f"fieldsync-edit-{next(_Fault._ids)}"
    event = f"after-call.dynamodb.{operation}"
    client.meta.events.register(event, hook, unique_id=unique_id)
    try:
        yield
    finally:
        client.meta.events.unregister(event, unique_id=unique_id)
