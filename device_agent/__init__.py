"""FieldSync device agent: a durable SQLite outbox synced to the cloud when it can be.

from device_agent import Agent, Priority
"""

from __future__ import annotations

from device_agent.agent import Agent
from device_agent.summary import ProcessingSummary
from shared.contracts import Priority

__all__ = ["Agent", "Priority", "ProcessingSummary"]
