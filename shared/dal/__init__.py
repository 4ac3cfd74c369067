"""Data access: pynamodb models, the records repository, the device registry, the retry queue.

The operator CLI and the local cloud call `register_device`, `revoke_device`, `list_devices`.
"""

from shared.dal.devices import (
    DeviceInfo,
    authenticate,
    list_devices,
    register_device,
    revoke_device,
)
from shared.dal.models import devices_model, records_model, reset_models
from shared.dal.principal import Principal
from shared.dal.queue import RetryMessage, enqueue, parse_message

__all__ = [
    "DeviceInfo",
    "Principal",
    "RetryMessage",
    "authenticate",
    "devices_model",
    "enqueue",
    "list_devices",
    "parse_message",
    "records_model",
    "register_device",
    "reset_models",
    "revoke_device",
]
