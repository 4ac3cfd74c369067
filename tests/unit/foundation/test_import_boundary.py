"""The device installs only the agent and the contracts: importing them loads no cloud SDK."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.agent

ROOT = Path(__file__).resolve().parents[3]
FORBIDDEN = ["boto3", "botocore", "pydantic", "pynamodb", "aws_lambda_powertools", "moto"]

PROBE = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys
    import device_agent, shared.contracts, shared.conflict
    names = ["shared.contracts", "shared.conflict"]
    for package in (device_agent, shared.contracts, shared.conflict):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            names.append(info.name)
    for name in names:
        importlib.import_module(name)
    print(json.dumps({"imported": names, "loaded": sorted(sys.modules)}))
    """
)


def test_importing_every_agent_module_loads_no_cloud_sdk() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, check=True
    )
    report = json.loads(result.stdout)
    loaded_roots = {name.split(".")[0] for name in report["loaded"]}
    assert "shared.contracts.hlc" in report["imported"]
    assert loaded_roots.isdisjoint(FORBIDDEN), loaded_roots & set(FORBIDDEN)
