"""A handler's import (Lambda's init phase) loads no SDK and no powertools.

powertools, aws_xray_sdk (through the Tracer), pynamodb and boto3/botocore are imported at a
function's first invocation instead (shared/observability.py, shared/logic/rest.py,
shared/dal/models.py, shared/dal/aws.py). Checked in a fresh interpreter per handler.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.aws import ROOT, handler_path, load_template

HEAVY = ("aws_lambda_powertools", "aws_xray_sdk", "pynamodb", "boto3", "botocore")
FUNCTIONS = [
    "HealthFunction",
    "BatchesFunction",
    "ChangesFunction",
    "AuthorizerFunction",
    "RetryWorkerFunction",
]
PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import {module}
heavy = sorted({{name.split(".")[0] for name in sys.modules}} & set(json.loads(sys.argv[2])))
print(json.dumps({{"heavy": heavy, "handler": callable({module}.{attribute})}}))
"""


@pytest.mark.parametrize("function", FUNCTIONS)
def test_importing_a_handler_loads_no_sdk_and_no_powertools(function: str) -> None:
    # Given the handler file the template names for the function
    source, attribute = handler_path(load_template(), function)
    module = source.stem
    # When it is imported in a fresh interpreter, as Lambda's init phase does
    probe = PROBE.format(module=module, attribute=attribute)
    done = subprocess.run(
        [sys.executable, "-c", probe, str(source.parent), json.dumps(HEAVY)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    # Then it exposes its handler and none of the heavy packages has been imported
    answer = json.loads(done.stdout)
    assert answer == {"heavy": [], "handler": True}
