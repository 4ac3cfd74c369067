"""Operator tooling (`sync-admin`): devices, the dead-letter queue, stats."""
