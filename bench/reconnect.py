"""Reconnect latency: from the link coming back to the first critical op applied in the cloud.

The real worker (`device_agent.worker.Worker`, in a thread of this process, its own Agent
and database) syncs through a TCP proxy on 127.0.0.1 to `sync-local serve`. Each trial:
black-hole the proxy (connections are held and never answered, as on a dead cell link),
record a critical op from another connection to the same database (as an app would), let
the worker find the cloud unreachable and start probing, restore the link after a random
outage, and time until the op's record exists in the cloud's table (polled on moto every
20 ms). The worker runs with its defaults except two settings, named in the section: a
small reconnect window, and short transport timeouts so each trial takes seconds, not the
default 30 s read timeout.
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

from bench.common import (
    IMG,
    Context,
    CountingProxy,
    Goal,
    Section,
    fmt,
    header,
    local_stack,
    percentile,
    table,
)

WINDOW_S = 1.0
TIMEOUT_S = 1.0
OUTAGE_S = (2.0, 4.0)
TENANT = "bench"
DEVICE = "reconnect-1"


def _applied(ddb: Any, table_name: str, pk: str) -> bool:
    item = ddb.get_item(TableName=table_name, Key={"pk": {"S": pk}}, ConsistentRead=True)
    return "Item" in item


def trial(
    n: int,
    *,
    proxy: CountingProxy,
    writer: Any,
    ddb: Any,
    table_name: str,
    rng: random.Random,
) -> dict[str, Any]:
    from device_agent import Priority

    key = f"trial-{n}-{rng.randrange(1 << 30)}"
    pk = f"{TENANT}#reconnect#{key}"
    outage = rng.uniform(*OUTAGE_S)
    proxy.blackhole()
    writer.put("reconnect", key, {"trial": n}, priority=Priority.CRITICAL)
    time.sleep(outage)
    restored = proxy.restore()
    deadline = restored + 20.0
    applied_at: Optional[float] = None
    while time.monotonic() < deadline:
        if _applied(ddb, table_name, pk):
            applied_at = time.monotonic()
            break
        time.sleep(0.02)
    after = [(t - restored, line) for t, line in list(proxy.request_log) if t >= restored]
    first_any = after[0][0] if after else float("nan")
    first_push = next((t for t, line in after if line.startswith("POST /v1/batches")), None)
    return {
        "outage_s": outage,
        "latency_s": (applied_at - restored) if applied_at else float("nan"),
        "first_request_s": first_any,
        "first_push_s": first_push if first_push is not None else float("nan"),
        "applied": applied_at is not None,
    }


def run(quick: bool) -> dict[str, Any]:
    from device_agent import Agent
    from device_agent.transport import HttpTransport
    from device_agent.worker import Worker

    trials = 4 if quick else 20
    rng = random.Random(20261124)
    results: list[dict[str, Any]] = []
    with local_stack() as stack, tempfile.TemporaryDirectory(prefix="fieldsync-rc-") as tmp:
        import boto3

        ddb = boto3.client(
            "dynamodb",
            endpoint_url=stack.resources["endpoint_url"],
            region_name=stack.resources["region"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # moto's placeholder credentials
        )
        table_name = stack.resources["outputs"]["RecordsTableName"]
        gateway = urlparse(stack.endpoint)
        with CountingProxy((gateway.hostname or "127.0.0.1", int(gateway.port or 80))) as proxy:
            token = stack.register(TENANT, DEVICE)
            path = Path(tmp) / "device.db"
            Agent.init(path, endpoint=proxy.url, token=token, device_id=DEVICE).close()

            def transport(endpoint: str, token: str) -> HttpTransport:
                return HttpTransport(
                    endpoint,
                    token,
                    connect_timeout=TIMEOUT_S,
                    read_timeout=TIMEOUT_S,
                    probe_timeout=TIMEOUT_S,
                )

            worker = Worker(
                path,
                reconnect_window_s=WINDOW_S,
                agent_options={"transport_factory": transport},
            )
            defaults = {
                "poll_interval_s": worker.poll_interval_s,
                "probe_backoff": repr(_describe(worker.probe_backoff)),
            }
            crashed: list[str] = []

            def run_worker() -> None:
                try:
                    worker.run()
                except Exception as exc:  # reported in the section, not swallowed
                    crashed.append(f"{type(exc).__name__}: {exc}")

            thread = threading.Thread(target=run_worker, name="bench-worker", daemon=True)
            thread.start()
            writer = Agent.open(path)
            try:
                # Warm up: one op through a healthy link, so the worker is online and idle.
                writer.put("reconnect", "warm-up", {"ok": True})
                pk = f"{TENANT}#reconnect#warm-up"
                end = time.monotonic() + 30
                while time.monotonic() < end and not _applied(ddb, table_name, pk):
                    time.sleep(0.05)
                for n in range(trials):
                    if crashed or not thread.is_alive():
                        raise RuntimeError(f"the worker stopped: {crashed or 'without an error'}")
                    results.append(
                        trial(
                            n, proxy=proxy, writer=writer, ddb=ddb, table_name=table_name, rng=rng
                        )
                    )
                    if len(results) >= 2 and not any(t["applied"] for t in results[-2:]):
                        break  # two trials in a row never applied: stop, report what we have
                    time.sleep(0.3)
            finally:
                writer.close()
                worker.stop()
                thread.join(15)
    return {
        "planned": trials,
        "trials": results,
        "window_s": WINDOW_S,
        "timeout_s": TIMEOUT_S,
        "outage_s": list(OUTAGE_S),
        "defaults": defaults,
    }


def _describe(backoff: Any) -> str:
    parts = [type(backoff).__name__]
    for name in ("base", "cap", "jitter"):
        if hasattr(backoff, name):
            value = getattr(backoff, name)
            parts.append(f"{name}={getattr(value, 'value', value)}")
    return " ".join(parts)


def render(results: dict[str, Any], ctx: Context) -> Section:
    from bench.plots import cdf_chart

    trials = results["trials"]
    window = results["window_s"]
    goal_s = window + 1.0
    lat = [t["latency_s"] for t in trials if t["applied"]]
    first = [t["first_request_s"] for t in trials if t["first_request_s"] == t["first_request_s"]]
    push = [t["first_push_s"] for t in trials if t["first_push_s"] == t["first_push_s"]]
    cdf_chart(
        IMG / "reconnect_latency.png",
        {
            "link back -> op applied": lat,
            "link back -> first request through": first,
            "link back -> first push": push,
        },
        title=f"Reconnect latency, {len(trials)} trials (reconnect window {window:g} s)",
        xlabel="seconds after the link came back",
        vline=goal_s,
        vline_label=f"goal: window + 1 s = {goal_s:g} s",
    )
    within = sum(1 for v in lat if v <= goal_s)
    worst = max(lat) if lat else float("nan")
    goals = [
        Goal(
            f"link back -> critical op applied, every trial (window {window:g} s)",
            f"<= {goal_s:g} s",
            f"{within}/{len(trials)} within; p50 {fmt(percentile(lat, 50))} s, max {fmt(worst)} s",
            bool(lat) and len(lat) == len(trials) and worst <= goal_s,
        )
    ]
    rows = [
        [
            i + 1,
            f"{t['outage_s']:.2f}",
            fmt(t["first_request_s"]),
            fmt(t["first_push_s"]),
            fmt(t["latency_s"]) if t["applied"] else "not applied in 20 s",
        ]
        for i, t in enumerate(trials)
    ]
    summary = [
        [name, fmt(percentile(vals, 50)), fmt(percentile(vals, 90)), fmt(max(vals) if vals else 0)]
        for name, vals in (
            ("first request through the link", first),
            ("first push", push),
            ("critical op applied", lat),
        )
    ]
    d = results["defaults"]
    body = (
        header(ctx)
        + f"\n{len(trials)} trials with the real worker (`device_agent.worker.Worker` in a "
        "thread, its own Agent and database) behind a TCP proxy to `sync-local serve`. Per "
        "trial: black-hole the link (connections held, never answered), record a critical "
        "op from another connection to the database (as an app would), keep the link dead "
        f"for a random {results['outage_s'][0]:g}-{results['outage_s'][1]:g} s (the worker's "
        "push times out, it marks itself offline and probes), restore it, and time until "
        "the op's record exists in the cloud table (moto polled every 20 ms). Configured for "
        f"the trials: reconnect window **{window:g} s** (default 10 s) and transport "
        f"connect/read/probe timeouts {results['timeout_s']:g} s (default 5 s / 30 s / 5 s) "
        "so a trial "
        "takes seconds; everything else is the worker's default (poll "
        f"{d['poll_interval_s']:g} s, probe backoff {d['probe_backoff'].strip(chr(39))}: the "
        "default for this window, capped at 90 % of it and never under 1 s).\n\n"
        "Scope: the outages here are short (2-4 s); since issue 6 the probe spacing is "
        "capped at 90 % of the reconnect window (at least 1 s) however long the outage, so "
        "a longer one does not make the worker slower to notice the link (the Reconnect "
        "herd section measures long outages, with the default 10 s window).\n\n"
        "![reconnect](img/reconnect_latency.png)\n\n"
        + table(["seconds after the link came back", "p50", "p90", "max"], summary)
        + "\nPer trial:\n\n"
        + table(["trial", "outage s", "first request s", "first push s", "applied s"], rows)
    )
    if len(trials) < results.get("planned", len(trials)):
        body += (
            f"\nOnly {len(trials)} of {results['planned']} trials ran: two trials in a row "
            "never saw their op applied within 20 s, so the run stopped there.\n"
        )
    body += (
        "\nWhat happens (issue 6): while the link black-holes, each probe hangs until its "
        f"{results['timeout_s']:g} s timeout and the next starts within the probe cap "
        f"({d['probe_backoff'].strip(chr(39)).split('cap=')[-1].split()[0]} s), so a probe "
        "is nearly always in flight and goes through the moment the link is back (the "
        '"first request" column). Because the link was black-holing, the worker does not '
        "count its probe gap against the reconnect window (every device with a held probe "
        "hears back at that same instant) and waits a random part of the whole window "
        "before pushing; so link back -> applied is at most the window plus one push. "
        "Before issue 6 the probe spacing grew with full jitter up to a 30 s cap (4 s by "
        "the third probe), and the window started only after the probe that found the link: "
        "an earlier run of this benchmark against that worker (not this run) had "
        "19/20 trials within the goal, max 2.81 s, the miss being a trial whose next probe "
        "was 2.15 s after the link came back.\n"
        "\nWith the default transport timeouts (connect 5 s, read 30 s) a request that is "
        "in flight into a black hole holds the worker until it times out; these trials use "
        f"{results['timeout_s']:g} s so that cost is not what is measured.\n"
    )
    if lat and worst > goal_s:
        body += (
            "\nWhy the goal is missed: link back -> applied is the wait for the first "
            "request through the restored link (a probe in flight, or the next probe within "
            "the probe cap), then the reconnect delay (at most the window), then a push; the "
            "per-trial table shows which part ran long in the trials over the goal (on this "
            "shared machine, a slow push or a late poll can also be the cause).\n"
        )
    return Section("Reconnect latency", body, goals, ["img/reconnect_latency.png"])
