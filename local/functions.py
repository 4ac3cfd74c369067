"""Run the template's Lambda handlers in this process, with their template environment.

Each handler is imported from its `CodeUri` directory as Lambda would (the code directory
and the layers on `sys.path`), after its environment - Globals plus its own variables, with
intrinsics resolved against the local stack - has been put in `os.environ`, so settings read
at import time (table names, queue URLs, the logger's service) are the function's own.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from local.errors import StartupError, TemplateError
from local.resources import Stack
from local.template import FunctionSpec, StackTemplate

log = logging.getLogger("fieldsync.local")


@dataclass
class LambdaContext:
    """The attributes of the Lambda context object that handlers and powertools read."""

    function_name: str
    invoked_function_arn: str
    memory_limit_in_mb: int
    timeout_s: int
    function_version: str = "$LATEST"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = ""
    log_stream_name: str = "local"
    _started: float = field(default_factory=time.monotonic)

    def get_remaining_time_in_millis(self) -> int:
        elapsed = time.monotonic() - self._started
        return max(0, int((self.timeout_s - elapsed) * 1000))


@dataclass
class LocalFunction:
    spec: FunctionSpec
    name: str
    arn: str
    environment: dict[str, str]
    handler: Callable[[Any, Any], Any]
    # One execution environment handles one request at a time. Handlers may keep the current
    # request on module-level objects (powertools' resolver keeps `current_event`), so two
    # concurrent calls into one module would answer one device with another's request.
    _environment_busy: threading.Lock = field(
        default_factory=threading.Lock, repr=False, compare=False
    )

    def invoke(self, event: Any) -> Any:
        """Call the handler once, as a Lambda invocation would; exceptions propagate.

        Calls are serialised per function, as in a single Lambda execution environment.
        """
        context = LambdaContext(
            function_name=self.name,
            invoked_function_arn=self.arn,
            memory_limit_in_mb=self.spec.memory_mb,
            timeout_s=self.spec.timeout_s,
            log_group_name=f"/aws/lambda/{self.name}",
        )
        with self._environment_busy:
            return self.handler(event, context)


def function_environment(
    spec: FunctionSpec, stack: Stack, extra: Mapping[str, str]
) -> dict[str, str]:
    """The function's variables with intrinsics resolved, then the `--env` overrides."""
    resolved = stack.resolve(spec.environment, f"environment of {spec.logical_id}")
    environment = {name: _as_env_value(value) for name, value in resolved.items()}
    environment.update({name: value for name, value in extra.items()})
    name = stack.context.resources[spec.logical_id].ref
    environment.update(
        {
            "AWS_LAMBDA_FUNCTION_NAME": name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(spec.memory_mb),
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        }
    )
    return environment


def _as_env_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def load_functions(
    template: StackTemplate, stack: Stack, extra_env: Mapping[str, str]
) -> dict[str, LocalFunction]:
    """Import every function's handler, each under its own environment; keyed by logical id."""
    root = str(template.path.parent.resolve())
    for directory in (root, *(str(p) for p in template.layer_dirs)):
        for candidate in (directory, os.path.join(directory, "python")):
            if os.path.isdir(candidate) and candidate not in sys.path:
                sys.path.insert(0, candidate)
    functions: dict[str, LocalFunction] = {}
    seen: dict[str, tuple[str, str]] = {}
    for logical_id, spec in template.functions.items():
        environment = function_environment(spec, stack, extra_env)
        for key, value in environment.items():
            if key in seen and seen[key][1] != value and not key.startswith("AWS_LAMBDA_"):
                log.warning(
                    "environment variable differs between functions",
                    extra={"variable": key, "functions": [seen[key][0], logical_id]},
                )
            seen[key] = (logical_id, value)
        os.environ.update(environment)
        physical = stack.context.resources[logical_id]
        functions[logical_id] = LocalFunction(
            spec=spec,
            name=physical.ref,
            arn=physical.attributes["Arn"],
            environment=environment,
            handler=_import_handler(spec),
        )
    return functions


def _import_handler(spec: FunctionSpec) -> Callable[[Any, Any], Any]:
    module_path, _, attribute = spec.handler.rpartition(".")
    if not module_path or not attribute:
        raise TemplateError(
            f"function {spec.logical_id}: Handler {spec.handler!r} is not module.function"
        )
    source = spec.code_dir / Path(*module_path.split(".")).with_suffix(".py")
    if not source.is_file():
        raise TemplateError(
            f"function {spec.logical_id}: handler file {source} does not exist; "
            "check CodeUri and Handler"
        )
    module = _import_file(f"fieldsync_local_{spec.logical_id}", source, spec.code_dir)
    handler = getattr(module, attribute, None)
    if not callable(handler):
        raise TemplateError(f"function {spec.logical_id}: {source} has no function {attribute!r}")
    return handler  # type: ignore[no-any-return]


def _import_file(name: str, source: Path, code_dir: Path) -> ModuleType:
    if str(code_dir) not in sys.path:
        sys.path.insert(0, str(code_dir))
    module_spec = importlib.util.spec_from_file_location(name, source)
    if module_spec is None or module_spec.loader is None:
        raise StartupError(f"cannot import {source}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise StartupError(f"importing {source} failed: {type(exc).__name__}: {exc}") from exc
    return module
