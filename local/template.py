"""Read `template.yaml` the way CloudFormation would: SAM-translated, then taken apart.

The local cloud has no second, hand-written copy of the stack. It translates the SAM template
with aws-sam-translator (local `CodeUri`/`ContentUri` paths stand in as `s3://` placeholders,
as `sam package` would upload them) and reads from the CloudFormation result the tables,
queues, functions with their environment, the REST API's routes and authorizer (from the
generated OpenAPI body) and the SQS event source mappings.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from samtranslator.yaml_helper import intrinsics_multi_constructor

from local.errors import TemplateError

_PLACEHOLDER_BUCKET = "fieldsync-local-code"


class _CfnLoader(yaml.SafeLoader):  # type: ignore[misc]
    """A YAML loader that reads the short forms (`!Ref`, `!GetAtt`, `!Sub`, ...)."""


_CfnLoader.add_multi_constructor("!", intrinsics_multi_constructor)


@dataclass(frozen=True)
class FunctionSpec:
    logical_id: str
    code_dir: Path
    handler: str  # "module.function", relative to code_dir
    environment: dict[str, Any]  # values may still hold intrinsics
    timeout_s: int
    memory_mb: int
    function_name: Optional[Any] = None  # the FunctionName property, if set


@dataclass(frozen=True)
class Route:
    method: str  # upper case, or ANY
    path: str  # "/v1/items/{item_id}"
    function: str  # logical id of the integration's function
    authorizer: Optional[str]  # name of the authorizer in securityDefinitions, None if open


@dataclass(frozen=True)
class AuthorizerSpec:
    name: str
    function: str
    identity_headers: tuple[str, ...]
    ttl_s: int


@dataclass(frozen=True)
class GatewayResponse:
    status: Optional[int]
    templates: dict[str, str]


@dataclass(frozen=True)
class ApiSpec:
    logical_id: str
    routes: tuple[Route, ...]
    authorizers: dict[str, AuthorizerSpec]
    binary_media_types: tuple[str, ...]
    gateway_responses: dict[str, GatewayResponse]
    stage: Any  # the Stage's StageName, possibly an intrinsic
    # Responses of at least this many bytes are gzipped for clients that accept it (None:
    # never), as the REST API's MinimumCompressionSize does.
    minimum_compression_size: Optional[int] = None


@dataclass(frozen=True)
class EventSourceSpec:
    function: str
    queue: str  # logical id of the queue
    batch_size: int
    report_batch_item_failures: bool


@dataclass(frozen=True)
class StackTemplate:
    """The translated template, with the parts the local cloud runs."""

    path: Path
    parameters: dict[str, str]  # defaults merged with overrides
    conditions: dict[str, Any]
    resources: dict[str, dict[str, Any]]  # the translated CloudFormation resources
    functions: dict[str, FunctionSpec]
    apis: tuple[ApiSpec, ...]
    event_sources: tuple[EventSourceSpec, ...]
    outputs: dict[str, Any] = field(default_factory=dict)  # name -> Value (intrinsics kept)
    layer_dirs: tuple[Path, ...] = field(default=())

    def of_type(self, cfn_type: str) -> dict[str, dict[str, Any]]:
        return {name: res for name, res in self.resources.items() if res["Type"] == cfn_type}


def load_template(
    path: Path, *, region: str, overrides: Optional[dict[str, str]] = None
) -> StackTemplate:
    """Parse and SAM-translate `path`; raise TemplateError with a one-line reason if it fails."""
    if not path.is_file():
        raise TemplateError(f"template not found: {path} (run from the project root or pass it)")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_CfnLoader)  # noqa: S506
    except yaml.YAMLError as exc:
        raise TemplateError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("Resources"), dict):
        raise TemplateError(f"{path} has no Resources section")
    code_paths: dict[str, Path] = {}
    sam = _with_code_placeholders(raw, path.parent, code_paths)
    parameters = _parameters(sam, overrides or {})
    translated = _translate(sam, parameters, region)
    resources: dict[str, dict[str, Any]] = translated["Resources"]
    functions = _functions(resources, code_paths)
    return StackTemplate(
        path=path,
        parameters=parameters,
        conditions=translated.get("Conditions", {}),
        resources=resources,
        functions=functions,
        apis=tuple(_apis(resources, functions)),
        event_sources=tuple(_event_sources(resources)),
        outputs={
            name: output.get("Value")
            for name, output in (translated.get("Outputs") or {}).items()
            if isinstance(output, dict)
        },
        layer_dirs=tuple(code_paths[name] for name in code_paths if name.startswith("layer:")),
    )


def _with_code_placeholders(
    template: dict[str, Any], root: Path, code_paths: dict[str, Path]
) -> dict[str, Any]:
    """A copy whose local code paths are `s3://` placeholders, remembered in `code_paths`."""
    sam = copy.deepcopy(template)

    def placeholder(key: str, value: Any) -> Any:
        if isinstance(value, str) and not value.startswith("s3://"):
            code_paths[key] = (root / value).resolve()
            return f"s3://{_PLACEHOLDER_BUCKET}/{key.replace(':', '/')}"
        return value

    function_globals = sam.get("Globals", {}).get("Function", {})
    if "CodeUri" in function_globals:
        function_globals["CodeUri"] = placeholder("globals", function_globals["CodeUri"])
    for name, resource in sam["Resources"].items():
        properties = resource.get("Properties") or {}
        if resource.get("Type") == "AWS::Serverless::Function" and "CodeUri" in properties:
            properties["CodeUri"] = placeholder(f"function:{name}", properties["CodeUri"])
        if resource.get("Type") == "AWS::Serverless::LayerVersion" and "ContentUri" in properties:
            properties["ContentUri"] = placeholder(f"layer:{name}", properties["ContentUri"])
    return sam


def _parameters(template: dict[str, Any], overrides: dict[str, str]) -> dict[str, str]:
    declared = template.get("Parameters") or {}
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        raise TemplateError(
            f"unknown template parameter(s) {', '.join(unknown)}: "
            f"the template declares {', '.join(sorted(declared)) or 'none'}"
        )
    values = {
        name: str(spec["Default"])
        for name, spec in declared.items()
        if isinstance(spec, dict) and "Default" in spec
    }
    values.update(overrides)
    return values


def _translate(sam: dict[str, Any], parameters: dict[str, str], region: str) -> dict[str, Any]:
    import boto3
    from samtranslator.model.exceptions import InvalidDocumentException
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator

    translator = Translator(None, Parser(), boto_session=boto3.Session(region_name=region))
    try:
        result: dict[str, Any] = translator.translate(
            sam, parameter_values=dict(parameters), get_managed_policy_map=dict
        )
    except InvalidDocumentException as exc:
        reasons = "; ".join(str(cause) for cause in exc.causes)
        raise TemplateError(f"SAM cannot translate the template: {reasons}") from exc
    return result


def _code_dir(properties: dict[str, Any], code_paths: dict[str, Path], name: str) -> Path:
    code = properties.get("Code") or {}
    key = str(code.get("S3Key", ""))
    if code.get("S3Bucket") == _PLACEHOLDER_BUCKET:
        for candidate in (f"function:{name}", "globals"):
            if key == candidate.replace(":", "/"):
                return code_paths[candidate]
    raise TemplateError(f"function {name} has no local CodeUri: the local cloud cannot run it")


def _functions(
    resources: dict[str, dict[str, Any]], code_paths: dict[str, Path]
) -> dict[str, FunctionSpec]:
    functions: dict[str, FunctionSpec] = {}
    for name, resource in resources.items():
        if resource["Type"] != "AWS::Lambda::Function":
            continue
        properties = resource["Properties"]
        functions[name] = FunctionSpec(
            logical_id=name,
            code_dir=_code_dir(properties, code_paths, name),
            handler=str(properties.get("Handler", "")),
            environment=dict((properties.get("Environment") or {}).get("Variables") or {}),
            timeout_s=int(properties.get("Timeout", 3)),
            memory_mb=int(properties.get("MemorySize", 128)),
            function_name=properties.get("FunctionName"),
        )
    return functions


def _function_in(uri: Any, functions: dict[str, FunctionSpec]) -> str:
    """The logical id of the function an integration/authorizer `uri` (an Fn::Sub) invokes."""
    named: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str):
            named.update(re.findall(r"\$\{([A-Za-z0-9]+)(?:\.Arn)?\}", value))
        elif isinstance(value, dict):
            if "Fn::GetAtt" in value:
                target = value["Fn::GetAtt"]
                named.add(str(target[0] if isinstance(target, list) else target).split(".")[0])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(uri)
    found = sorted(named & set(functions))
    if len(found) != 1:
        raise TemplateError(f"cannot tell which function the integration {uri!r} invokes")
    return found[0]


def _apis(
    resources: dict[str, dict[str, Any]], functions: dict[str, FunctionSpec]
) -> list[ApiSpec]:
    apis: list[ApiSpec] = []
    stages = {
        str(res["Properties"].get("RestApiId", {}).get("Ref")): res["Properties"].get("StageName")
        for res in resources.values()
        if res["Type"] == "AWS::ApiGateway::Stage"
    }
    for name, resource in resources.items():
        if resource["Type"] != "AWS::ApiGateway::RestApi":
            continue
        body = resource["Properties"].get("Body")
        if not isinstance(body, dict):
            raise TemplateError(
                f"REST API {name} has no inline definition the local cloud can read"
            )
        apis.append(
            ApiSpec(
                logical_id=name,
                routes=tuple(_routes(body, functions)),
                authorizers=_authorizers(body, functions),
                binary_media_types=tuple(
                    str(t).replace("~1", "/")
                    for t in body.get("x-amazon-apigateway-binary-media-types", [])
                ),
                gateway_responses={
                    kind: GatewayResponse(
                        int(spec["statusCode"]) if "statusCode" in spec else None,
                        dict(spec.get("responseTemplates") or {}),
                    )
                    for kind, spec in (
                        body.get("x-amazon-apigateway-gateway-responses") or {}
                    ).items()
                },
                stage=stages.get(name, "local"),
                minimum_compression_size=_optional_int(
                    resource["Properties"].get("MinimumCompressionSize")
                ),
            )
        )
    return apis


def _optional_int(value: Any) -> Optional[int]:
    """An integer property, or None when absent or not a plain number (an intrinsic)."""
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return int(value)
    return None


def _routes(body: dict[str, Any], functions: dict[str, FunctionSpec]) -> list[Route]:
    default_security = body.get("security") or []
    routes: list[Route] = []
    for path, methods in (body.get("paths") or {}).items():
        for method, operation in methods.items():
            integration = operation.get("x-amazon-apigateway-integration")
            if not integration or integration.get("type") != "aws_proxy":
                continue
            security = operation.get("security", default_security)
            names = [name for item in security for name in item if name != "NONE"]
            routes.append(
                Route(
                    method="ANY" if method == "x-amazon-apigateway-any-method" else method.upper(),
                    path=str(path),
                    function=_function_in(integration.get("uri"), functions),
                    authorizer=names[0] if names else None,
                )
            )
    return routes


def _authorizers(
    body: dict[str, Any], functions: dict[str, FunctionSpec]
) -> dict[str, AuthorizerSpec]:
    authorizers: dict[str, AuthorizerSpec] = {}
    for name, definition in (body.get("securityDefinitions") or {}).items():
        spec = definition.get("x-amazon-apigateway-authorizer")
        if not spec:
            continue
        if spec.get("type") != "request":
            raise TemplateError(f"authorizer {name}: only REQUEST authorizers run locally")
        sources = str(spec.get("identitySource", "")).split(",")
        headers = tuple(
            source.strip().removeprefix("method.request.header.")
            for source in sources
            if source.strip().startswith("method.request.header.")
        )
        authorizers[name] = AuthorizerSpec(
            name=name,
            function=_function_in(spec.get("authorizerUri"), functions),
            identity_headers=headers,
            ttl_s=int(spec.get("authorizerResultTtlInSeconds", 300)),
        )
    return authorizers


def _event_sources(resources: dict[str, dict[str, Any]]) -> list[EventSourceSpec]:
    sources: list[EventSourceSpec] = []
    for resource in resources.values():
        if resource["Type"] != "AWS::Lambda::EventSourceMapping":
            continue
        properties = resource["Properties"]
        arn = properties.get("EventSourceArn")
        function = properties.get("FunctionName")
        if not (isinstance(arn, dict) and "Fn::GetAtt" in arn):
            continue  # not one of this stack's queues
        queue = arn["Fn::GetAtt"][0]
        if resources.get(queue, {}).get("Type") != "AWS::SQS::Queue":
            continue
        sources.append(
            EventSourceSpec(
                function=str(function["Ref"] if isinstance(function, dict) else function),
                queue=str(queue),
                batch_size=int(properties.get("BatchSize", 10)),
                report_batch_item_failures="ReportBatchItemFailures"
                in (properties.get("FunctionResponseTypes") or []),
            )
        )
    return sources
