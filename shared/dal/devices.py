"""The device registry: tokens issued, checked and revoked.

A token is `fs1.<base64url(device id)>.<43 chars of secrets.token_urlsafe(32)>`: 32 random
bytes, plus the device id so the authorizer can do one strongly consistent GetItem instead of
an eventually consistent index lookup (a revocation takes effect on the next request). Only
the SHA-256 of the token is stored (the secret has 256 bits of entropy, so a fast hash is
enough); the comparison is constant-time. Tokens are never logged.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Optional

from shared.dal.aws import error_code, is_transient
from shared.dal.models import DEVICES_BY_TENANT_INDEX, devices_model
from shared.dal.principal import Principal
from shared.errors import DeviceError, InvalidToken, StoreError, TransientStoreError

if TYPE_CHECKING:
    from pynamodb.exceptions import PynamoDBException

    from shared.dal.schema import DeviceItem

# pynamodb is imported by devices_model() on first use; each function below imports the
# exception classes it catches after that call.

TOKEN_PREFIX = "fs1"  # noqa: S105 - a format marker, not a secret
TOKEN_SECRET_BYTES = 32
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")  # \Z: $ allows a final newline
# A device id is also the node id of its HLCs, so it follows the HLC node alphabet.
DEVICE_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}\Z")


@dataclass(frozen=True)
class DeviceInfo:
    device_id: str
    tenant_id: str
    created_at: str
    revoked_at: Optional[str]

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "tenant_id": self.tenant_id,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "revoked": self.revoked,
        }


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode("utf-8")).decode("ascii").rstrip("=")


def _unb64(text: str) -> str:
    padded = text + "=" * (-len(text) % 4)
    return base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8")


def device_of_token(token: str) -> str:
    """The device id a token claims (not yet verified). Raises InvalidToken."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or len(parts[2]) < 43:
        raise InvalidToken("the token is not a FieldSync device token")
    try:
        device_id = _unb64(parts[1])
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidToken("the token is not a FieldSync device token") from exc
    if not DEVICE_PATTERN.match(device_id):
        raise InvalidToken("the token is not a FieldSync device token")
    return device_id


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _translate(exc: PynamoDBException, action: str) -> StoreError:
    code = error_code(exc)
    if is_transient(exc):
        return TransientStoreError(f"{action} failed with {code}; try again", aws_code=code)
    return StoreError(f"{action} failed with {code}; check the devices table", aws_code=code)


def _info(item: DeviceItem) -> DeviceInfo:
    return DeviceInfo(item.device_id, item.tenant_id, item.created_at, item.revoked_at)


def _get(device_id: str) -> Optional[DeviceItem]:
    model = devices_model()
    from pynamodb.exceptions import DoesNotExist, PynamoDBException

    try:
        return model.get(device_id, consistent_read=True)
    except DoesNotExist:
        return None
    except PynamoDBException as exc:
        raise _translate(exc, "reading the device") from exc


def register_device(tenant_id: str, device_id: str) -> str:
    """Issue a new token for `device_id` in `tenant_id` and return it (shown once).

    Registering a device again (same tenant) rotates its token and lifts a revocation.
    Raises DeviceError if the ids are malformed or the device id belongs to another tenant.
    """
    if not TENANT_PATTERN.match(tenant_id):
        raise DeviceError(f"tenant id {tenant_id!r} is invalid: use 1-64 of [A-Za-z0-9_-]")
    if not DEVICE_PATTERN.match(device_id):
        raise DeviceError(f"device id {device_id!r} is invalid: use 1-64 of [A-Za-z0-9_.:-]")
    existing = _get(device_id)
    if existing is not None and existing.tenant_id != tenant_id:
        raise DeviceError(
            f"device id {device_id!r} is registered to another tenant: choose another id"
        )
    token = f"{TOKEN_PREFIX}.{_b64(device_id)}.{secrets.token_urlsafe(TOKEN_SECRET_BYTES)}"
    model = devices_model()
    from pynamodb.exceptions import PynamoDBException

    item = model(
        device_id,
        tenant_id=tenant_id,
        token_hash=hash_token(token),
        created_at=_now(),
        revoked_at=None,
    )
    try:
        if existing is None:
            # Two concurrent registrations of a new id must not silently swap tenants.
            item.save(condition=model.device_id.does_not_exist())
        else:
            item.save(condition=model.tenant_id == tenant_id)
    except PynamoDBException as exc:
        if error_code(exc) == "ConditionalCheckFailedException":
            raise DeviceError(
                f"device id {device_id!r} was registered concurrently: try again"
            ) from exc
        raise _translate(exc, "registering the device") from exc
    return token


def revoke_device(device_id: str) -> DeviceInfo:
    """Revoke the device's token at once. Raises DeviceError if the device is unknown."""
    model = devices_model()
    from pynamodb.exceptions import PynamoDBException

    item = _get(device_id)
    if item is None:
        raise DeviceError(f"no device {device_id!r} is registered: check `device list`")
    try:
        item.update(actions=[model.revoked_at.set(_now())])
    except PynamoDBException as exc:
        raise _translate(exc, "revoking the device") from exc
    return _info(item)


def list_devices(tenant_id: Optional[str] = None) -> list[DeviceInfo]:
    """Registered devices, of one tenant or of all, sorted by tenant and device id."""
    model = devices_model()
    from pynamodb.exceptions import PynamoDBException

    try:
        if tenant_id is None:
            items = list(model.scan())
        else:
            items = list(model.query(tenant_id, index_name=DEVICES_BY_TENANT_INDEX))
    except PynamoDBException as exc:
        raise _translate(exc, "listing devices") from exc
    return sorted((_info(item) for item in items), key=lambda d: (d.tenant_id, d.device_id))


def authenticate(token: str) -> Principal:
    """The principal a bearer token stands for. Raises InvalidToken (unknown, wrong, revoked)."""
    device_id = device_of_token(token)
    item = _get(device_id)
    presented = hash_token(token)
    stored = item.token_hash if item is not None else hash_token("")
    # Constant-time, and done even for an unknown device so timing does not tell the two apart.
    matches = hmac.compare_digest(presented, stored)
    if item is None or not matches:
        raise InvalidToken("the token is not valid")
    if item.revoked_at is not None:
        raise InvalidToken("the token was revoked")
    return Principal(item.tenant_id, item.device_id)
