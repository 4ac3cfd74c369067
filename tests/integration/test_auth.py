"""Device tokens and the REQUEST authorizer."""

from __future__ import annotations

import boto3
import pytest

from shared.dal import devices_model, list_devices, register_device, revoke_device
from shared.dal.devices import hash_token
from shared.errors import DeviceError
from shared.observability import logger
from tests.integration.conftest import Cloud, settle
from tests.support.aws import REGION, load_event

SAMPLE_TOKEN = load_event("authorizer_allow.json")["headers"]["Authorization"][len("Bearer ") :]


def seed_sample_device() -> None:
    """Store the sample event's token the way register_device would (its hash only)."""
    devices_model()(
        "pi-7",
        tenant_id="acme",
        token_hash=hash_token(SAMPLE_TOKEN),
        created_at="2026-11-24T00:00:00+00:00",
    ).save()


def test_sample_allow_event_is_allowed_with_tenant_and_device_context(cloud: Cloud) -> None:
    seed_sample_device()
    answer = cloud.invoke("AuthorizerFunction", load_event("authorizer_allow.json"))
    assert answer["principalId"] == "pi-7"
    assert answer["context"] == {"tenant_id": "acme", "device_id": "pi-7"}
    statement = answer["policyDocument"]["Statement"][0]
    assert statement["Effect"] == "Allow"
    assert statement["Resource"][0].endswith("abcdef1234/dev/*/*")


def test_sample_deny_event_with_a_wrong_secret_is_denied(cloud: Cloud) -> None:
    seed_sample_device()
    answer = cloud.invoke("AuthorizerFunction", load_event("authorizer_deny.json"))
    assert answer["policyDocument"]["Statement"][0]["Effect"] == "Deny"
    assert "context" not in answer or not answer["context"]


def test_missing_token_is_unauthorized(cloud: Cloud) -> None:
    # API Gateway turns an authorizer error whose message is "Unauthorized" into a 401
    with pytest.raises(Exception, match=r"^Unauthorized$"):
        cloud.invoke("AuthorizerFunction", load_event("authorizer_missing_token.json"))


def test_registered_token_is_allowed_until_revoked(cloud: Cloud) -> None:
    # Given a registered device
    token = register_device("acme", "pi-8")
    assert cloud.authorize(f"Bearer {token}")["policyDocument"]["Statement"][0]["Effect"] == (
        "Allow"
    )
    # When it is revoked
    revoke_device("pi-8")
    # Then its token is denied on the next request
    answer = cloud.authorize(f"Bearer {token}")
    assert answer["policyDocument"]["Statement"][0]["Effect"] == "Deny"


def test_reregistering_rotates_the_token(cloud: Cloud) -> None:
    old = register_device("acme", "pi-9")
    new = register_device("acme", "pi-9")
    assert cloud.authorize(f"Bearer {old}")["policyDocument"]["Statement"][0]["Effect"] == "Deny"
    assert cloud.authorize(f"Bearer {new}")["policyDocument"]["Statement"][0]["Effect"] == "Allow"


def test_token_is_random_long_and_stored_only_as_a_hash(cloud: Cloud) -> None:
    tokens = {register_device("acme", f"dev-{i}") for i in range(3)}
    secrets_ = [token.rsplit(".", 1)[1] for token in tokens]
    assert len(set(secrets_)) == 3 and all(len(s) >= 43 for s in secrets_)  # 32 bytes base64url
    table = boto3.resource("dynamodb", region_name=REGION).Table(cloud.stack.tables["DevicesTable"])
    stored = str(table.scan()["Items"])
    assert not any(token in stored or token.rsplit(".", 1)[1] in stored for token in tokens)


def test_token_never_appears_in_logs(cloud: Cloud, caplog: pytest.LogCaptureFixture) -> None:
    # Given debug logging
    level = logger.log_level
    logger.setLevel("DEBUG")
    try:
        # When a good and a bad token are checked
        token = register_device("acme", "pi-10")
        cloud.authorize(f"Bearer {token}")
        cloud.authorize(f"Bearer {token[:-4]}AAAA")
    finally:
        logger.setLevel(level)
    # Then both decisions are logged, and no part of the secret is
    output = " ".join(str(vars(record)) for record in caplog.records)
    assert "token allowed" in output and "token denied" in output
    assert token.rsplit(".", 1)[1][:12] not in output


def test_device_id_of_another_tenant_cannot_be_registered(cloud: Cloud) -> None:
    register_device("acme", "shared-id")
    with pytest.raises(DeviceError, match="another tenant"):
        register_device("globex", "shared-id")


def test_list_devices_by_tenant_and_all(cloud: Cloud) -> None:
    register_device("acme", "a-1")
    register_device("globex", "g-1")
    revoke_device("g-1")
    assert [d.device_id for d in list_devices("acme")] == ["a-1"]
    everything = list_devices()
    assert [(d.tenant_id, d.device_id, d.revoked) for d in everything] == [
        ("acme", "a-1", False),
        ("globex", "g-1", True),
    ]


def test_revoking_an_unknown_device_says_so(cloud: Cloud) -> None:
    with pytest.raises(DeviceError, match="no device"):
        revoke_device("ghost")


def test_authorizer_context_is_what_the_handlers_read(cloud: Cloud) -> None:
    # Given a registered device and the authorizer's answer for its token
    token = register_device("globex", "g-7")
    answer = cloud.authorize(f"Bearer {token}")
    # When API Gateway passes that context to the batches function
    event = load_event("batch_valid.json")
    event["requestContext"]["authorizer"] = {
        "principalId": answer["principalId"],
        **answer["context"],
    }
    response = cloud.http("BatchesFunction", event)
    # Then the ops are applied in the token's tenant
    assert response.status == 200
    settle()
    assert {c["key"] for c in cloud.changes(tenant="globex", device="g-7").body["changes"]} == {
        "user-41",
        "user-42",
    }
    assert cloud.changes(tenant="acme").body["changes"] == []
