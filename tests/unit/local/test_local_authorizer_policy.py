"""Evaluating a Lambda authorizer's policy against the method ARN, as API Gateway does."""

from __future__ import annotations

import pytest

from local.authorizer import policy_allows

ARN = "arn:aws:execute-api:us-east-1:123456789012:local/prod/POST/v1/batches"


def _policy(*statements: dict[str, object]) -> dict[str, object]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


@pytest.mark.parametrize(
    ("policy", "allowed"),
    [
        (_policy({"Effect": "Allow", "Action": "execute-api:Invoke", "Resource": ARN}), True),
        (
            _policy(
                {
                    "Effect": "Allow",
                    "Action": "execute-api:*",
                    "Resource": "arn:aws:execute-api:*:*:local/*",
                }
            ),
            True,
        ),
        (
            _policy(
                {
                    "Effect": "Allow",
                    "Action": "execute-api:Invoke",
                    "Resource": [ARN.replace("POST", "GET")],
                }
            ),
            False,
        ),
        (_policy({"Effect": "Deny", "Action": "execute-api:Invoke", "Resource": ARN}), False),
        (
            _policy(
                {"Effect": "Allow", "Action": "execute-api:Invoke", "Resource": "*"},
                {"Effect": "Deny", "Action": "execute-api:Invoke", "Resource": ARN},
            ),
            False,
        ),
        (_policy({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}), False),
        (
            {"Statement": {"Effect": "Allow", "Action": ["execute-api:Invoke"], "Resource": "*"}},
            True,
        ),
        (_policy(), False),
    ],
)
def test_policy_evaluation(policy: dict[str, object], allowed: bool) -> None:
    assert policy_allows(policy, ARN) is allowed
