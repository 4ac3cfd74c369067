"""Assemble and run the local cloud: moto server, stack, handlers, gateway, queue pollers.

Environment changes (fake credentials, region, `AWS_ENDPOINT_URL` pointing at the moto
server, each function's variables) are made in this process only: `sync-local` is its own
process, so nothing leaks into a test runner or the user's shell.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from local.authorizer import LocalAuthorizer
from local.errors import StartupError, TemplateError
from local.events import HttpRequest
from local.functions import LocalFunction, load_functions
from local.gateway import Gateway, GatewayConfig, GatewayServer
from local.moto_process import MotoProcess
from local.resources import Stack, create_stack
from local.retry import QueuePoller
from local.template import StackTemplate, load_template

log = logging.getLogger("fieldsync.local")

SHUTDOWN_POLL_S = 0.1  # how often the gateway's loop looks for a shutdown request
DEV_TENANT = "dev"
DEV_DEVICE = "dev-device"


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8787
    template: Path = Path("template.yaml")
    verbose: bool = False
    stack_name: str = "fieldsync-local"
    region: str = "us-east-1"
    parameters: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    retry_visibility_s: Optional[int] = None
    authorizer_ttl_s: Optional[int] = None  # None: the template's authorizerResultTtlInSeconds


def _fake_aws_environment(region: str, verbose: bool) -> None:
    """Fake credentials and region, and no endpoint override but the moto one set later."""
    for name in list(os.environ):
        if (
            name == "AWS_PROFILE"
            or name.startswith("AWS_ENDPOINT_URL")
            or name.endswith("_ENDPOINT_URL")
        ):
            del os.environ[name]
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": region,
            "AWS_REGION": region,
            "POWERTOOLS_TRACE_DISABLED": "true",  # no X-Ray daemon here
        }
    )
    if not verbose:
        os.environ.update({"AWS_LAMBDA_LOG_LEVEL": "WARN", "POWERTOOLS_METRICS_DISABLED": "true"})
        warnings.filterwarnings("ignore", message="Current log level")
        logging.getLogger("werkzeug").setLevel(logging.ERROR)


class LocalCloud:
    """The whole cloud side on this machine. `start()`, then `endpoint`, then `stop()`."""

    def __init__(self, options: ServeOptions) -> None:
        self.options = options
        self.template: Optional[StackTemplate] = None
        self.stack: Optional[Stack] = None
        self.functions: dict[str, LocalFunction] = {}
        self.moto_endpoint = ""
        self._moto: Optional[MotoProcess] = None
        self._server: Optional[GatewayServer] = None
        self._pollers: list[QueuePoller] = []
        self._threads: list[threading.Thread] = []

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        port = int(self._server.server_address[1])
        return f"http://{self.options.host}:{port}"

    def start(self) -> None:
        options = self.options
        try:
            self._server = GatewayServer((options.host, options.port), None)  # type: ignore[arg-type]
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {options.host}:{options.port} ({exc.strerror}): "
                "stop what uses it or pass --port"
            ) from exc
        _fake_aws_environment(options.region, options.verbose)
        template = load_template(
            options.template, region=options.region, overrides=dict(options.parameters)
        )
        self.template = template
        self._start_moto()
        import boto3

        self.stack = create_stack(template, options.stack_name, options.region, boto3.Session())
        self.functions = load_functions(template, self.stack, options.env)
        self._server.gateway = self._gateway(template, self.stack)
        self._register_cloudformation_stack(boto3.Session())
        self._start_pollers(template, self.stack)
        thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": SHUTDOWN_POLL_S},
            name="gateway",
            daemon=True,
        )
        thread.start()
        self._threads.append(thread)

    def _register_cloudformation_stack(self, session: Any) -> None:
        """A CloudFormation stack named like this one in moto, whose Outputs are the
        template's, resolved locally (`resources()["outputs"]`), so that
        `sync-admin --endpoint-url MOTO --stack-name fieldsync-local` finds the stack as it
        would in AWS. Its only resource is a harmless WaitConditionHandle: the real resources
        are created directly (create_stack above), not by CloudFormation.
        """
        outputs = self.resources()["outputs"]
        assert self.template is not None
        body = {
            "AWSTemplateFormatVersion": "2010-09-09",
            "Description": "FieldSync local stack (sync-local): outputs only",
            "Resources": {"LocalStack": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
            "Outputs": {
                name: {"Value": str(value)}
                for name, value in outputs.items()
                if isinstance(value, (str, int, float)) and str(value)
            },
        }
        try:
            session.client("cloudformation").create_stack(
                StackName=self.options.stack_name, TemplateBody=json.dumps(body)
            )
        except Exception as exc:
            raise StartupError(
                f"could not register the CloudFormation stack {self.options.stack_name!r} "
                f"in moto: {exc}"
            ) from exc

    def _start_moto(self) -> None:
        self._moto = MotoProcess(verbose=self.options.verbose)
        self.moto_endpoint = self._moto.start()
        os.environ["AWS_ENDPOINT_URL"] = self.moto_endpoint

    def _gateway(self, template: StackTemplate, stack: Stack) -> Gateway:
        if len(template.apis) != 1:
            raise TemplateError(
                f"the template declares {len(template.apis)} REST APIs; "
                "the local gateway serves exactly one"
            )
        api = template.apis[0]
        stage = str(stack.resolve(api.stage, "the API's StageName") or "local")
        ttl = self.options.authorizer_ttl_s
        authorizers = {
            name: LocalAuthorizer(
                spec if ttl is None else dataclasses.replace(spec, ttl_s=ttl),
                self.functions[spec.function],
                region=stack.region,
                stage=stage,
            )
            for name, spec in api.authorizers.items()
        }
        config = GatewayConfig(
            api=api,
            stage=stage,
            functions=self.functions,
            authorizers=authorizers,
            inflate_limit=self._batch_limit(),
            max_ops=self._batch_ops(),
            local_routes={
                ("POST", "/_local/devices"): self._register_route,
                ("GET", "/_local/resources"): lambda _request: (200, self.resources()),
                ("POST", "/_local/environment"): self._environment_route,
            },
            verbose=self.options.verbose,
        )
        return Gateway(config)

    def _batch_limit(self) -> int:
        from shared.config import ENV_MAX_BATCH_BYTES
        from shared.contracts import limits

        values = [
            int(f.environment[ENV_MAX_BATCH_BYTES])
            for f in self.functions.values()
            if f.environment.get(ENV_MAX_BATCH_BYTES, "").isdigit()
        ]
        return max(values) if values else limits.MAX_BATCH_BYTES

    def _batch_ops(self) -> int:
        from shared.config import ENV_MAX_BATCH_OPS
        from shared.contracts import limits

        values = [
            int(f.environment[ENV_MAX_BATCH_OPS])
            for f in self.functions.values()
            if f.environment.get(ENV_MAX_BATCH_OPS, "").isdigit()
        ]
        return max(values) if values else limits.MAX_OPS_PER_BATCH

    def _start_pollers(self, template: StackTemplate, stack: Stack) -> None:
        import boto3

        sqs = boto3.client("sqs")
        for source in template.event_sources:
            poller = QueuePoller(
                sqs,
                stack.queues[source.queue],
                source,
                self.functions[source.function],
                region=stack.region,
                failure_visibility_s=self.options.retry_visibility_s,
            )
            poller.start()
            self._pollers.append(poller)

    def register_device(self, tenant: str, device: str) -> str:
        """A new token for `device` of `tenant`, through the project's device registry."""
        from shared.dal import register_device

        return register_device(tenant, device)

    def _register_route(self, request: HttpRequest) -> tuple[int, Any]:
        from shared.errors import FieldSyncError

        try:
            payload = json_object(request.body)
            tenant, device = str(payload["tenant"]), str(payload["device"])
        except (ValueError, KeyError) as exc:
            return 400, _error("bad_request", f'send {{"tenant": T, "device": D}}: {exc}')
        try:
            token = self.register_device(tenant, device)
        except FieldSyncError as exc:
            return 400, _error("bad_request", str(exc))
        return 200, {"tenant": tenant, "device": device, "token": token}

    def _environment_route(self, request: HttpRequest) -> tuple[int, Any]:
        """Change function environment variables at runtime, as a redeploy would in AWS.

        Only settings the handlers read per invocation change (shared.config reads them at
        call time); this is how a local operator "fixes the cause" before a DLQ redrive.
        """
        try:
            changes = json_object(request.body)
        except ValueError as exc:
            return 400, _error("bad_request", f'send {{"NAME": "VALUE", ...}}: {exc}')
        values = {str(name): str(value) for name, value in changes.items()}
        for function in self.functions.values():
            function.environment.update(values)
        os.environ.update(values)
        return 200, {"updated": sorted(values)}

    def resources(self) -> dict[str, Any]:
        """Where this stack lives, for operator tools (`sync-admin --local URL`).

        `outputs` are the template's Outputs resolved against the local stack - the same
        values `sync-admin --stack-name` reads from CloudFormation - with ApiUrl pointing at
        this gateway.
        """
        assert self.stack is not None and self.template is not None
        outputs: dict[str, Any] = {}
        for name, value in self.template.outputs.items():
            with contextlib.suppress(TemplateError):
                outputs[name] = self.stack.resolve(value, f"output {name}")
        if "ApiUrl" in outputs:
            outputs["ApiUrl"] = self.endpoint
        return {
            "endpoint_url": self.moto_endpoint,
            "region": self.stack.region,
            "stack_name": self.stack.name,
            "outputs": outputs,
        }

    def stop(self) -> None:
        """Stop within a second or two: no new requests, pollers done, then moto.

        A poller's in-flight receive is a short long-poll; it finishes (or the batch it got
        is handled and settled) before moto goes, so no message is dropped mid-handling.
        """
        for poller in self._pollers:
            poller.request_stop()
        if self._server is not None:
            if self._threads:
                self._server.shutdown()
            self._server.server_close()
        for poller in self._pollers:
            poller.stop()
        if self._moto is not None:
            self._moto.stop()


def json_object(body: bytes) -> dict[str, Any]:
    value = json.loads(body or b"{}")
    if not isinstance(value, dict):
        raise ValueError("the body must be a JSON object")
    return value


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
