"""Reading template.yaml: SAM-translated, then the parts the local cloud runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from local.errors import TemplateError
from local.template import load_template

FIXTURE = Path(__file__).parent / "fixtures" / "template.yaml"


def test_routes_come_from_the_translated_api_with_their_authorizer() -> None:
    template = load_template(FIXTURE, region="eu-west-1")

    (api,) = template.apis
    routes = {(r.method, r.path): (r.function, r.authorizer) for r in api.routes}
    assert routes == {
        ("GET", "/v1/health"): ("HealthFunction", None),
        ("POST", "/v1/echo"): ("EchoFunction", "DeviceAuthorizer"),
        ("GET", "/v1/items/{item_id}"): ("EchoFunction", "DeviceAuthorizer"),
    }
    authorizer = api.authorizers["DeviceAuthorizer"]
    assert (authorizer.function, authorizer.identity_headers, authorizer.ttl_s) == (
        "AuthorizerFunction",
        ("Authorization",),
        0,
    )
    assert api.binary_media_types == ("application/octet-stream",)
    assert api.minimum_compression_size == 1024  # MinimumCompressionSize
    assert api.gateway_responses["UNAUTHORIZED"].status == 401


def test_functions_get_globals_and_their_own_environment_and_code_dir() -> None:
    template = load_template(FIXTURE, region="eu-west-1")

    echo = template.functions["EchoFunction"]
    assert echo.code_dir == FIXTURE.parent / "functions" / "echo"
    assert echo.handler == "handler.lambda_handler"
    assert echo.environment["RECORDS_TABLE"] == {"Ref": "RecordsTable"}
    assert echo.environment["DLQ_ARN"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    assert echo.timeout_s == 10


def test_the_sqs_trigger_is_read_with_its_batch_size_and_partial_failures() -> None:
    template = load_template(FIXTURE, region="eu-west-1")

    (source,) = template.event_sources
    assert (source.function, source.queue, source.batch_size) == (
        "RetryWorkerFunction",
        "RetryQueue",
        5,
    )
    assert source.report_batch_item_failures


def test_parameter_overrides_replace_defaults() -> None:
    template = load_template(FIXTURE, region="eu-west-1", overrides={"ConflictStrategies": "a=b"})

    assert template.parameters == {"Stage": "test", "ConflictStrategies": "a=b"}


def test_an_unknown_parameter_override_is_refused_with_the_declared_names() -> None:
    with pytest.raises(TemplateError, match="ConflictStrategies, Stage"):
        load_template(FIXTURE, region="eu-west-1", overrides={"Nope": "1"})


def test_a_missing_template_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="template not found"):
        load_template(tmp_path / "template.yaml", region="eu-west-1")


def test_a_template_sam_cannot_translate_names_the_reason(tmp_path: Path) -> None:
    broken = tmp_path / "template.yaml"
    broken.write_text(
        "Transform: AWS::Serverless-2016-10-31\n"
        "Resources:\n  Fn:\n    Type: AWS::Serverless::Function\n"
        "    Properties: {CodeUri: src/, Handler: h.f, Runtime: python3.13,"
        " Events: {E: {Type: Api, Properties: {Path: 7}}}}\n"
    )
    with pytest.raises(TemplateError, match="SAM cannot translate"):
        load_template(broken, region="eu-west-1")
