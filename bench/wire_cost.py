"""Wire cost: bytes and HTTP requests per op, the real agent vs a naive one-op-per-POST client.

Both talk to the same `sync-local serve` through a counting TCP proxy on 127.0.0.1 (bytes
each way, HTTP request lines, TCP connections; headers included, as on a metered link):

- kit: the real agent pushes its outbox backlog with its real sync engine (batches, gzip
  above its threshold, as it plans them; push only);
- naive: the same kind of ops (recorded by a real agent, so the same op shape and sizes),
  each POSTed as its own JSON request (`{"batch_id", "ops": [op]}`) with `requests`,
  keep-alive on (the naive client is given the benefit of a persistent connection).
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from bench.common import IMG, Context, CountingProxy, Goal, Section, fmt, header, local_stack, table
from bench.kit_overhead import push_all

GOAL_BYTES = 0.35
GOAL_REQUESTS = 0.01


def _docs(n: int, tag: str) -> list[tuple[str, str, dict[str, Any]]]:
    # A realistic small document: a few fields, as a settings/preferences sync would carry.
    return [
        (
            "preferences",
            f"user-{tag}-{i}",
            {"currency": "BTC", "theme": "dark", "language": "en-GB", "count": i},
        )
        for i in range(n)
    ]


def kit_push(stack: Any, proxy: CountingProxy, tmp: Path, n: int, tag: str) -> dict[str, Any]:
    from device_agent import Agent

    token = stack.register("bench", f"wire-{tag}")
    agent = Agent.init(
        tmp / f"kit-{tag}.db", endpoint=proxy.url, token=token, device_id=f"wire-{tag}"
    )
    try:
        agent.put_many(_docs(n, tag))
        proxy.reset_counters()
        seconds, requests = push_all(agent)
        return _counters(proxy, n, seconds, agent_requests=requests)
    finally:
        agent.close()


def naive_push(stack: Any, proxy: CountingProxy, tmp: Path, n: int, tag: str) -> dict[str, Any]:
    import requests

    from device_agent import Agent

    token = stack.register("bench", f"naive-{tag}")
    # The ops come from a real agent's outbox, so they are the same ops the kit would send.
    agent = Agent.init(tmp / f"naive-{tag}.db", endpoint=proxy.url, token=token, device_id=tag)
    try:
        agent.put_many(_docs(n, tag))
        ops = [pending.op.to_wire() for pending in agent.outbox.claim(limit=n, max_bytes=1 << 30)]
    finally:
        agent.close()
    session = requests.Session()
    headers = {"Authorization": f"Bearer {token}"}
    proxy.reset_counters()
    started = time.monotonic()
    failures = 0
    for op in ops:
        body = {"batch_id": str(uuid.uuid4()), "ops": [op]}
        answer = session.post(proxy.url + "/v1/batches", json=body, headers=headers, timeout=30)
        failures += answer.status_code != 200
    seconds = time.monotonic() - started
    session.close()
    out = _counters(proxy, len(ops), seconds, agent_requests=len(ops))
    out["failures"] = failures
    return out


def _counters(proxy: CountingProxy, n: int, seconds: float, agent_requests: int) -> dict[str, Any]:
    time.sleep(0.2)  # let the proxy's pumps count the last response
    return {
        "ops": n,
        "seconds": seconds,
        "up": proxy.bytes_up,
        "down": proxy.bytes_down,
        "requests": proxy.requests,
        "agent_requests": agent_requests,
        "connections": proxy.connections,
        "bytes_per_op": (proxy.bytes_up + proxy.bytes_down) / n,
        "up_per_op": proxy.bytes_up / n,
        "down_per_op": proxy.bytes_down / n,
        "requests_per_op": proxy.requests / n,
    }


def run(quick: bool) -> dict[str, Any]:
    backlogs = [100, 300] if quick else [500, 2000]
    naive_n = 50 if quick else 150
    out: dict[str, Any] = {"backlogs": backlogs, "kit": [], "naive": None}
    with local_stack() as stack, tempfile.TemporaryDirectory(prefix="fieldsync-wire-") as tmp:
        gateway = urlparse(stack.endpoint)
        with CountingProxy((gateway.hostname or "127.0.0.1", int(gateway.port or 80))) as proxy:
            for n in backlogs:
                out["kit"].append(kit_push(stack, proxy, Path(tmp), n, f"k{n}"))
            out["naive"] = naive_push(stack, proxy, Path(tmp), naive_n, "naive")
    return out


def render(results: dict[str, Any], ctx: Context) -> Section:
    from bench.plots import bar_chart

    kit = results["kit"][-1]
    naive = results["naive"]
    bytes_ratio = kit["bytes_per_op"] / naive["bytes_per_op"]
    bar_chart(
        IMG / "wire_cost.png",
        ["kit: sent", "kit: received", "naive: sent", "naive: received"],
        [kit["up_per_op"], kit["down_per_op"], naive["up_per_op"], naive["down_per_op"]],
        title="Bytes on the wire per op (headers included)",
        ylabel="bytes per op",
    )
    goals = [
        Goal(
            f"bytes on the wire per op, kit / naive ({kit['ops']:,}-op backlog)",
            f"<= {GOAL_BYTES}x",
            f"{bytes_ratio:.3f}x ({fmt(kit['bytes_per_op'])} vs {fmt(naive['bytes_per_op'])} B)",
            bytes_ratio <= GOAL_BYTES,
        ),
        Goal(
            f"HTTP requests per op, kit ({kit['ops']:,}-op backlog)",
            f"<= {GOAL_REQUESTS}",
            f"{kit['requests_per_op']:.4f} ({kit['requests']} requests)",
            kit["requests_per_op"] <= GOAL_REQUESTS,
        ),
    ]
    rows = []
    for label, r in [(f"kit, {k['ops']:,}-op backlog", k) for k in results["kit"]] + [
        (f"naive, {naive['ops']:,} ops", naive)
    ]:
        rows.append(
            [
                label,
                fmt(r["up_per_op"]),
                fmt(r["down_per_op"]),
                fmt(r["bytes_per_op"]),
                f"{r['requests']} ({r['requests_per_op']:.4f}/op)",
                r["connections"],
                fmt(r["ops"] / r["seconds"]),
            ]
        )
    per_batch = kit["requests"] and kit["ops"] / kit["requests"]
    projected = 10_000 / per_batch if per_batch else float("nan")
    body = (
        header(ctx)
        + "\nCounted at a TCP proxy on 127.0.0.1 between the client and `sync-local serve` "
        "(every byte each way, HTTP headers included; requests counted from the request "
        "lines). The kit is the real agent pushing its backlog (push only, its default "
        "batches, gzip above its threshold). The naive client POSTs each op of the same "
        "shape (recorded by a real agent) as its own JSON request with `requests`, "
        "keep-alive on. Document: 4 small fields, like a preferences record.\n\n"
        f"Backlog size: the brief asks for a 10,000-op backlog; at the local stack's "
        f"~{fmt(kit['ops'] / kit['seconds'])} ops/s here that alone would take "
        f"{10_000 / (kit['ops'] / kit['seconds']):.0f} s, so this run pushes "
        f"{' and '.join(f'{b:,}' for b in results['backlogs'])}-op backlogs. The per-op "
        "figures do not depend on the backlog size once it fills whole batches (compare the "
        "two kit rows); a 10,000-op backlog would be "
        f"{projected:.0f} requests of the same size.\n\n"
        "![wire](img/wire_cost.png)\n\n"
        + table(
            [
                "client",
                "sent B/op",
                "received B/op",
                "total B/op",
                "requests",
                "TCP connections",
                "ops/s",
            ],
            rows,
        )
    )
    if naive.get("failures"):
        body += f"\nThe naive client got {naive['failures']} non-200 answers.\n"
    return Section("Wire cost", body, goals, ["img/wire_cost.png"])
