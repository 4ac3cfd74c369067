"""Per-tenant numbers: records, tombstones, dead letters; and the queues' depths.

The retry queue's depth is reported as a whole: attributing its messages to tenants would
mean receiving them, which would count against their redrive limit and delay the worker.
The DLQ is read (and left in place), so its messages are counted per tenant.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from admin.dlq import DeadLetterQueue, queue_depth
from admin.stack import StackResources


def collect(resources: StackResources) -> dict[str, Any]:
    from shared.dal import records_model

    records: Counter[str] = Counter()
    tombstones: Counter[str] = Counter()
    model = records_model()
    for item in model.scan(attributes_to_get=["tenant_id", "deleted"]):
        records[item.tenant_id] += 1
        if item.deleted:
            tombstones[item.tenant_id] += 1
    sqs = resources.client("sqs")
    dead: Counter[str] = Counter()
    dlq: dict[str, int] = {}
    if resources.dlq_url:
        for message in DeadLetterQueue(sqs, resources.dlq_url).peek():
            dead[str(message.summary().get("tenant_id", "?"))] += 1
        dlq = queue_depth(sqs, resources.dlq_url)
    queue = queue_depth(sqs, resources.queue_url) if resources.queue_url else {}
    tenants = sorted(set(records) | set(dead))
    return {
        "tenants": {
            tenant: {
                "records": records[tenant],
                "live": records[tenant] - tombstones[tenant],
                "tombstones": tombstones[tenant],
                "dlq": dead[tenant],
            }
            for tenant in tenants
        },
        "retry_queue": queue,
        "dlq": dlq,
    }


def render(stats: dict[str, Any]) -> str:
    lines = [f"{'tenant':<24} {'records':>8} {'live':>8} {'tombstones':>10} {'dlq':>5}"]
    for tenant, row in stats["tenants"].items():
        lines.append(
            f"{tenant:<24} {row['records']:>8} {row['live']:>8} {row['tombstones']:>10} "
            f"{row['dlq']:>5}"
        )
    if not stats["tenants"]:
        lines.append("(no records)")
    queue, dlq = stats["retry_queue"], stats["dlq"]
    if queue:
        lines.append(f"retry queue: {queue['visible']} waiting, {queue['in_flight']} in flight")
    if dlq:
        lines.append(f"dead-letter queue: {dlq['visible'] + dlq['in_flight']} messages")
    return "\n".join(lines)
