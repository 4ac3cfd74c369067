"""Backoff under contention: Marc Brooker's OCC experiment, driven by device_agent.backoff.

After "Exponential Backoff And Jitter" (AWS Architecture Blog, 2015) and its simulator
(aws-samples/aws-arch-backoff-simulator): N clients each want to update one item once,
with optimistic concurrency - read the version, write conditionally on it; a client whose
write loses the race backs off and tries again. A discrete-event simulation in
milliseconds, network delay |N(10, 2)| ms per message, base 5 ms, cap 2000 ms as in the
post. The delays come from the agent's real classes (`ExponentialBackoff` with each
`Jitter`, `ConstantBackoff(0)` for "no backoff"), called exactly as the agent calls them:
`delay(attempt)` with attempt 1 for the first retry, `reset()` never needed (one success
per client). Reported: writes ("calls") and the time until the last client is done,
averaged over trials.
"""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import Sequence
from typing import Any, Callable

from bench.common import IMG, Context, Deadline, Goal, Section, fmt, header, table
from device_agent.backoff import BackoffStrategy, ConstantBackoff, ExponentialBackoff, Jitter

BASE_MS = 5.0
CAP_MS = 2000.0
NET_MEAN_MS = 10.0
NET_SD_MS = 2.0

Factory = Callable[[random.Random], BackoffStrategy]

STRATEGIES: dict[str, Factory] = {
    "no backoff": lambda rng: ConstantBackoff(0.0, rng=rng),
    "exponential": lambda rng: ExponentialBackoff(BASE_MS, CAP_MS, jitter=Jitter.NONE, rng=rng),
    "full jitter": lambda rng: ExponentialBackoff(BASE_MS, CAP_MS, jitter=Jitter.FULL, rng=rng),
    "equal jitter": lambda rng: ExponentialBackoff(BASE_MS, CAP_MS, jitter=Jitter.EQUAL, rng=rng),
    "decorrelated jitter": lambda rng: ExponentialBackoff(
        BASE_MS, CAP_MS, jitter=Jitter.DECORRELATED, rng=rng
    ),
}

_READ, _READ_REPLY, _WRITE, _WRITE_REPLY = range(4)


def simulate(clients: int, factory: Factory, seed: int) -> tuple[int, float]:
    """One race of `clients` writers on one item: (writes made, ms until the last is done)."""
    net = random.Random(seed)
    backoffs = [factory(random.Random(seed * 1_000_003 + i)) for i in range(clients)]
    attempts = [0] * clients

    def delay() -> float:
        return abs(net.normalvariate(NET_MEAN_MS, NET_SD_MS))

    version = 0
    writes = 0
    now = 0.0
    # (time, sequence, event, client, payload): the sequence keeps ties deterministic.
    queue: list[tuple[float, int, int, int, int]] = []
    seq = 0
    for client in range(clients):
        queue.append((delay(), seq, _READ, client, 0))
        seq += 1
    heapq.heapify(queue)
    while queue:
        now, _, event, client, payload = heapq.heappop(queue)
        if event == _READ:  # the server reads the version and answers
            nxt = (now + delay(), seq, _READ_REPLY, client, version)
        elif event == _READ_REPLY:  # the client writes, conditional on what it read
            nxt = (now + delay(), seq, _WRITE, client, payload)
        elif event == _WRITE:  # the server applies the condition
            writes += 1
            won = payload == version
            if won:
                version += 1
            nxt = (now + delay(), seq, _WRITE_REPLY, client, int(won))
        else:  # the client learns the outcome
            if payload:
                continue
            attempts[client] += 1
            wait = backoffs[client].delay(attempts[client])
            nxt = (now + delay() + wait, seq, _READ, client, 0)
        seq += 1
        heapq.heappush(queue, nxt)
    return writes, now


def run(quick: bool) -> dict[str, Any]:
    counts = [10, 50, 100] if quick else list(range(10, 101, 10))
    trials = 10 if quick else 100
    budget = Deadline(20.0 if quick else 90.0)
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    for clients in counts:
        for name, factory in STRATEGIES.items():
            calls: list[int] = []
            times: list[float] = []
            for trial in range(trials):
                if budget.expired and calls:
                    break
                writes, ms = simulate(clients, factory, seed=clients * 1000 + trial)
                calls.append(writes)
                times.append(ms)
            rows.append(
                {
                    "clients": clients,
                    "strategy": name,
                    "trials": len(calls),
                    "calls": sum(calls) / len(calls),
                    "time_ms": sum(times) / len(times),
                }
            )
    return {
        "counts": counts,
        "trials": trials,
        "rows": rows,
        "params": {"base_ms": BASE_MS, "cap_ms": CAP_MS, "net_ms": [NET_MEAN_MS, NET_SD_MS]},
        "elapsed_s": time.monotonic() - started,
        "budget_hit": budget.expired,
    }


def _series(results: dict[str, Any], key: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in STRATEGIES}
    for row in results["rows"]:
        out[row["strategy"]].append(row[key])
    return out


def _plot(results: dict[str, Any]) -> list[str]:
    from bench.plots import line_chart

    counts: Sequence[int] = results["counts"]
    calls = _series(results, "calls")
    times = _series(results, "time_ms")
    line_chart(
        IMG / "contention_calls.png",
        counts,
        calls,
        title="Backoff under contention: work (device_agent.backoff)",
        xlabel="clients",
        ylabel="calls (conditional writes), mean per race",
    )
    line_chart(
        IMG / "contention_time.png",
        counts,
        times,
        title="Backoff under contention: completion time (device_agent.backoff)",
        xlabel="clients",
        ylabel="time until the last client is done (ms)",
    )
    return ["img/contention_calls.png", "img/contention_time.png"]


def render(results: dict[str, Any], ctx: Context) -> Section:
    images = _plot(results)
    by = {(r["clients"], r["strategy"]): r for r in results["rows"]}
    top = max(results["counts"])
    full, expo = by[(top, "full jitter")], by[(top, "exponential")]
    ratio = full["calls"] / expo["calls"]
    goals = [
        Goal(
            f"Full Jitter vs exponential, calls ({top} clients)",
            "< 0.5x",
            f"{ratio:.2f}x ({fmt(full['calls'])} vs {fmt(expo['calls'])})",
            ratio < 0.5,
        ),
        Goal(
            f"Full Jitter vs exponential, completion ({top} clients)",
            "sooner",
            f"{fmt(full['time_ms'])} ms vs {fmt(expo['time_ms'])} ms",
            full["time_ms"] < expo["time_ms"],
        ),
    ]
    head = ["clients", *STRATEGIES]
    calls_rows = [[n, *(fmt(by[(n, s)]["calls"]) for s in STRATEGIES)] for n in results["counts"]]
    time_rows = [[n, *(fmt(by[(n, s)]["time_ms"]) for s in STRATEGIES)] for n in results["counts"]]
    p = results["params"]
    body = (
        header(ctx)
        + "\nN clients race to update one item once with optimistic concurrency (read the "
        "version, write conditionally; the loser backs off and retries), as in Marc Brooker's "
        '"Exponential Backoff And Jitter" (AWS Architecture Blog, 2015). Discrete-event '
        f"simulation: network delay |N({p['net_ms'][0]:g}, {p['net_ms'][1]:g})| ms per message, "
        f"base {p['base_ms']:g} ms, cap {p['cap_ms']:g} ms; the delays are drawn by the agent's "
        "own `device_agent.backoff.ExponentialBackoff` (jitter none/full/equal/decorrelated) and "
        "`ConstantBackoff(0)` for no backoff, called as the agent calls them (attempt 1 = first "
        "retry, so the first un-jittered wait is the base, where the post's code starts at twice "
        f"the base). Mean of {results['trials']} seeded races per point"
        + (" (the time budget cut some points short)" if results["budget_hit"] else "")
        + f"; simulation took {results['elapsed_s']:.0f} s.\n\n"
        + "![calls](img/contention_calls.png)\n![time](img/contention_time.png)\n\n"
        + "Calls (conditional writes) per race, mean:\n\n"
        + table(head, calls_rows)
        + "\nTime until the last client is done (ms), mean:\n\n"
        + table(head, time_rows)
        + "\nReading: no backoff finishes soonest but costs the most work; un-jittered "
        "exponential backoff keeps the clients in lock-step, so each round most of them collide "
        "again; Full Jitter spreads them and does the least work.\n"
    )
    return Section("Backoff under contention", body, goals, images)
