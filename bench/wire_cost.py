"""Wire cost: bytes and HTTP requests per op, the real agent vs a naive one-op-per-POST client.

The backlog is recorded one put at a time, as a device accumulates writes offline. Both
clients talk to the same `sync-local serve` through a counting TCP proxy on 127.0.0.1 (bytes
each way, HTTP request lines, TCP connections; headers included, as on a metered link):

- kit: the real agent pushes its whole outbox backlog (10,000 ops, and 1,000 to show the
  per-op figures do not depend on the size) with its real sync engine (batches, gzip above
  its threshold, as it plans them; push only);
- naive: the same kind of ops (recorded by a real agent, so the same op shape and sizes),
  each POSTed as its own JSON request (`{"batch_id", "ops": [op]}`) with `requests`,
  keep-alive on (the naive client is given the benefit of a persistent connection). Its
  cost is exactly per op, so it pushes a systematic sample of the 10,000 (1 op in 50):
  pushing all of them one request at a time would take the local stack many minutes.
"""

from __future__ import annotations

import json
import statistics
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
NAIVE_STRIDE = 50  # the naive client pushes 1 op in 50 of the backlog (see render)


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


def _record_backlog(agent: Any, n: int, tag: str) -> None:
    """Record `n` writes one `put` at a time, as a device accumulates them offline.

    Not `put_many`: the ops of one call get op ids from one random draw, counted up, which
    gzip compresses far better than the ids of writes made one by one in the field.
    """
    for collection, key, data in _docs(n, tag):
        agent.put(collection, key, data)


def kit_push(stack: Any, proxy: CountingProxy, tmp: Path, n: int, tag: str) -> dict[str, Any]:
    from device_agent import Agent

    token = stack.register("bench", f"wire-{tag}")
    agent = Agent.init(
        tmp / f"kit-{tag}.db", endpoint=proxy.url, token=token, device_id=f"wire-{tag}"
    )
    try:
        _record_backlog(agent, n, tag)
        proxy.reset_counters()
        seconds, requests = push_all(agent)
        return _counters(proxy, n, seconds, agent_requests=requests)
    finally:
        agent.close()


def _naive_body(op: dict[str, Any]) -> dict[str, Any]:
    return {"batch_id": str(uuid.uuid4()), "ops": [op]}


def _body_bytes(op: dict[str, Any]) -> int:
    # What `requests` sends for json=: json.dumps(allow_nan=False), UTF-8 encoded.
    return len(json.dumps(_naive_body(op), allow_nan=False).encode())


def naive_push(
    stack: Any, proxy: CountingProxy, tmp: Path, n: int, tag: str, *, stride: int
) -> dict[str, Any]:
    """POST 1 op in `stride` of an `n`-op backlog, each as its own request; per-op counters.

    The naive client's cost is exactly per op (one request, same headers, one op in the
    body), so a systematic sample spread over the whole backlog has the backlog's per-op
    figures; the JSON body sizes of the sample and of all `n` ops are returned to show it.
    """
    import requests

    from device_agent import Agent

    token = stack.register("bench", f"naive-{tag}")
    # The ops come from a real agent's outbox, so they are the same ops the kit would send.
    agent = Agent.init(tmp / f"naive-{tag}.db", endpoint=proxy.url, token=token, device_id=tag)
    try:
        _record_backlog(agent, n, tag)
        every = [pending.op.to_wire() for pending in agent.outbox.claim(limit=n, max_bytes=1 << 30)]
    finally:
        agent.close()
    ops = every[::stride]
    session = requests.Session()
    headers = {"Authorization": f"Bearer {token}"}
    proxy.reset_counters()
    started = time.monotonic()
    failures = 0
    for op in ops:
        answer = session.post(
            proxy.url + "/v1/batches", json=_naive_body(op), headers=headers, timeout=30
        )
        failures += answer.status_code != 200
    seconds = time.monotonic() - started
    session.close()
    out = _counters(proxy, len(ops), seconds, agent_requests=len(ops))
    out.update(
        failures=failures,
        population=len(every),
        stride=stride,
        body_mean_sample=statistics.fmean(_body_bytes(op) for op in ops),
        body_mean_all=statistics.fmean(_body_bytes(op) for op in every),
    )
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
    # The goal's backlog is the last one; a smaller one shows the per-op figures do not
    # depend on the backlog size. The naive client pushes 1 op in NAIVE_STRIDE of it.
    backlogs = [100, 500] if quick else [1_000, 10_000]
    stride = 10 if quick else NAIVE_STRIDE
    started = time.monotonic()
    out: dict[str, Any] = {"backlogs": backlogs, "kit": [], "naive": None}
    with local_stack() as stack, tempfile.TemporaryDirectory(prefix="fieldsync-wire-") as tmp:
        gateway = urlparse(stack.endpoint)
        with CountingProxy((gateway.hostname or "127.0.0.1", int(gateway.port or 80))) as proxy:
            for n in backlogs:
                out["kit"].append(kit_push(stack, proxy, Path(tmp), n, f"k{n}"))
            # Tag of the same length as the kit's: the same key lengths, so the same op sizes.
            out["naive"] = naive_push(
                stack, proxy, Path(tmp), backlogs[-1], f"n{backlogs[-1]}", stride=stride
            )
    out["seconds"] = time.monotonic() - started
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
        title=f"Bytes on the wire per op, {kit['ops']:,}-op backlog (headers included)",
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
    naive_label = (
        f"naive, {naive['ops']:,} of the {naive['population']:,} ops (1 in {naive['stride']})"
    )
    rows = [_row(f"kit, {k['ops']:,}-op backlog", k) for k in results["kit"]]
    rows.append(_row(naive_label, naive))
    body = (
        header(ctx)
        + "\nCounted at a TCP proxy on 127.0.0.1 between the client and `sync-local serve` "
        "(every byte each way, HTTP headers included; requests counted from the request "
        "lines). The backlog is recorded one `put` at a time, as a device accumulates writes "
        "offline (each op id its own random draw). The kit is the real agent pushing its "
        "whole backlog (push only, its default batches, gzip above its threshold). Answers "
        "of 1 KiB or more come back gzipped to clients that accept it, as the deployed API "
        "does with the template's `MinimumCompressionSize` (the naive client's answers are "
        "smaller). The naive client POSTs each op of the same "
        "shape (recorded by a real agent, keys of the same length) as its own JSON request "
        "with `requests`, keep-alive on. Document: 4 small fields, like a preferences "
        "record.\n\n"
        + _sample_text(kit, naive)
        + "\n\n![wire](img/wire_cost.png)\n\n"
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
    if "seconds" in results:
        body += f"\nThis section's measurements took {results['seconds']:.0f} s.\n"
    return Section("Wire cost", body, goals, ["img/wire_cost.png"])


def _row(label: str, r: dict[str, Any]) -> list[Any]:
    return [
        label,
        fmt(r["up_per_op"]),
        fmt(r["down_per_op"]),
        fmt(r["bytes_per_op"]),
        f"{r['requests']:,} ({r['requests_per_op']:.4f}/op)",
        r["connections"],
        fmt(r["ops"] / r["seconds"]),
    ]


def _sample_text(kit: dict[str, Any], naive: dict[str, Any]) -> str:
    """Why the naive client's sample stands for its whole backlog, with the figures."""
    naive_rate = naive["ops"] / naive["seconds"]
    population = naive["population"]
    return (
        f"Backlog: the kit pushes the whole {kit['ops']:,}-op backlog "
        f"({kit['requests']:,} requests in {kit['seconds']:.0f} s). The naive client, at "
        f"~{fmt(naive_rate)} requests/s against the local stack here, would need "
        f"~{population / naive_rate:,.0f} s for all {population:,}, so it pushes a "
        f"systematic sample: every {naive['stride']}th op of an identical {population:,}-op "
        f"backlog, {naive['ops']:,} requests. Its costs are exactly per op (one request "
        "per op, the same headers, one op in the body), so the sample's per-op figures are "
        "the backlog's: the sample's JSON bodies average "
        f"{naive['body_mean_sample']:.1f} B against {naive['body_mean_all']:.1f} B over all "
        f"{population:,} ops. Extrapolated, the naive client would make {population:,} "
        f"requests and move ~{naive['bytes_per_op'] * population / 1e6:.2f} MB (both ways) "
        f"for the backlog the kit pushed in {kit['requests']:,} requests and "
        f"{kit['bytes_per_op'] * kit['ops'] / 1e6:.2f} MB."
    )
