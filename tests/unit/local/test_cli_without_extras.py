"""`pip install .` on a device installs `sync-local` and `sync-admin` too, without the extras
they need: each then says in one line what is missing and how to install it, never a
traceback. The extras are hidden from a child interpreter (None in sys.modules)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.support.local_stack import ROOT

# What the local cloud and the admin CLI import beyond the agent's own dependencies.
_HIDDEN = ("yaml", "moto", "samtranslator", "boto3", "botocore", "pynamodb")
_AWS = ["--endpoint-url", "http://127.0.0.1:9", "--region", "us-east-1"]


def _run_without_extras(module: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
    script = textwrap.dedent(
        f"""
        import sys
        for name in {_HIDDEN!r}:
            sys.modules[name] = None  # `import name` now fails as if not installed
        from {module} import main
        sys.exit(main({argv!r}))
        """
    )
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("module", "argv", "extras"),
    [
        ("local.cli", ["serve", "--port", "0"], "'.[local]'"),
        ("admin.cli", [*_AWS, "--table", "t", "stats"], "'.[cloud]'"),
        ("admin.cli", [*_AWS, "--dlq-url", "http://127.0.0.1:9/q", "dlq", "list"], "'.[cloud]'"),
    ],
)
def test_a_command_without_its_extras_names_them_in_one_line(
    module: str, argv: list[str], extras: str
) -> None:
    # Given an interpreter where the extras are not installed
    # When the command runs
    result = _run_without_extras(module, argv)
    # Then it fails with exit 1 and one line naming what is missing and what to install
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "is not installed" in lines[0] and extras in lines[0]


def test_registering_a_device_needs_no_extras() -> None:
    # Given an interpreter without the extras and no sync-local running at the endpoint
    result = _run_without_extras(
        "local.cli", ["token", "--tenant", "t", "--device", "d", "--endpoint", "http://127.0.0.1:9"]
    )
    # Then `sync-local token` still runs (plain HTTP) and says the cloud is not reachable
    assert result.returncode == 1
    assert result.stderr.startswith("sync-local: cannot reach sync-local")
