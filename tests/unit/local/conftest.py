"""The local cloud's tests need the `local` extra (moto, aws-sam-translator, boto3, PyYAML).

On an interpreter without it - the agent-only Python 3.9 run - they are not collected.
"""

from __future__ import annotations

import importlib.util

_LOCAL_EXTRA = ("moto", "samtranslator", "boto3", "yaml")

collect_ignore_glob = (
    [] if all(importlib.util.find_spec(name) for name in _LOCAL_EXTRA) else ["test_*.py"]
)
