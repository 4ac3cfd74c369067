"""docs/openapi.yaml and shared/contracts describe one protocol: they must not drift."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from openapi_spec_validator import validate

from shared.contracts import OpKind, OpStatus, limits

OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"


def load() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(OPENAPI.read_text())
    return document


def test_the_openapi_document_is_valid() -> None:
    validate(load())


def test_statuses_kinds_and_limits_match_the_contracts() -> None:
    schemas = load()["components"]["schemas"]
    assert schemas["OpResult"]["properties"]["status"]["enum"] == [s.value for s in OpStatus]
    assert schemas["Op"]["properties"]["kind"]["enum"] == [k.value for k in OpKind]
    assert schemas["Batch"]["properties"]["ops"]["maxItems"] == limits.MAX_OPS_PER_BATCH
    collection = schemas["Op"]["properties"]["collection"]["pattern"]
    assert collection == f"^{limits.COLLECTION_PATTERN}$"
    assert schemas["Op"]["properties"]["key"]["maxLength"] == limits.MAX_KEY_CHARS


def test_every_endpoint_of_the_protocol_is_documented() -> None:
    paths = load()["paths"]
    assert set(paths) == {"/v1/health", "/v1/batches", "/v1/changes"}
    assert paths["/v1/health"]["get"].get("security") is None
    assert paths["/v1/batches"]["post"]["security"] == [{"deviceToken": []}]
