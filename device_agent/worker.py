"""`sync-agent run`: the long-running worker.

It pushes whenever the outbox holds work and the cloud is reachable, pulls every
`pull_interval_s`, and after a failure waits a jittered, budgeted backoff (never a fixed
interval: a fleet must not retry in step). Ops recorded by another process are noticed
within `poll_interval_s` through SQLite's `PRAGMA data_version`, which changes when another
connection commits.

Reconnects. While the cloud is unreachable the worker probes `GET /v1/health`, spaced by a
full-jitter backoff capped at 90 % of the reconnect window (`default_probe_backoff`). The
reconnect window (`reconnect_window_s`, 10 s) is the promise made to the fleet and to the
user: once the link is back, every device sends its first sync request within the window,
at a random point in it, so a thousand devices that regain the network together neither
arrive together nor wait long. Two ways to learn of a reconnect:

- by this device's own probe: its jittered probe gap has already spread it out, so the
  time waited since the previous failed probe counts against the window
  (`ReconnectJitter.delay(waited_s)`): the first request goes at a random instant in what
  is left of it, or at once. Not when the link has been black-holing (the previous failed
  probe hung for over `quick_probe_s` before failing) or this probe's answer was that slow:
  the request may have been held by the dead link and answered the instant it came back,
  the same instant for every device that had a probe in flight, so the whole window is used;
- by a link-up event (anything else moving the shared monitor from offline to online, e.g.
  an OS network callback calling `monitor.set_state`): every device hears it at the same
  instant, so the whole window is used.

Probe load while the cloud stays unreachable: mean spacing 0.45 x the window once the
backoff reaches its cap (4.5 s with the defaults: about 0.22 probes per second, 13 a
minute, per device). A cloud that answers at all, even 5xx, is not offline: the worker then
backs off with `retry_policy` (cap 300 s and a retry budget) and does not probe.

SIGTERM/SIGINT stop it between batches: an op is acked only after the cloud answered for it,
and anything claimed but unsent is released, so nothing is lost or applied twice.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from types import FrameType
from typing import Any, Optional

from device_agent.agent import Agent, PathLike
from device_agent.backoff import (
    BackoffStrategy,
    Clock,
    ExponentialBackoff,
    ReconnectJitter,
    RetryBudget,
    RetryPolicy,
)
from device_agent.errors import DatabaseError
from device_agent.network import Connectivity
from device_agent.outcomes import Healthy
from device_agent.sync import SyncEngine

log = logging.getLogger("device_agent.worker")


PROBE_CAP_SHARE = 0.9
"""The offline probe spacing is capped at this share of the reconnect window: the rest of
the window absorbs the probe's own round trip, so the last device still syncs within it."""


def fleet_rng() -> random.Random:
    """Seeded from the OS, so devices booted in the same second still draw differently."""
    return random.Random(os.urandom(16))


def default_probe_backoff(
    reconnect_window_s: float, rng: Optional[random.Random] = None
) -> ExponentialBackoff:
    """Offline probe spacing: exponential from 1 s with full jitter, capped at 90 % of the
    reconnect window (never below 1 s), so a device learns the link is back within the window
    however long the outage was. Full jitter keeps a fleet that went offline together from
    probing in step."""
    cap = max(1.0, PROBE_CAP_SHARE * reconnect_window_s)
    return ExponentialBackoff(base=1.0, cap=cap, rng=rng)


class Worker:
    """Runs sync rounds for one device database until `stop()` (or a signal).

    Defaults: outbox poll 0.5 s; pull every 30 s (+-20 %); reconnect window 10 s; a round
    gives up after 120 s; failures back off `ExponentialBackoff(1 s .. 300 s)` with full
    jitter and a retry budget of 10 tokens refilled at 0.1/s; offline probes are spaced by
    `default_probe_backoff(reconnect_window_s)` (1 s .. 9 s, full jitter); a probe answered
    within `quick_probe_s` (1 s) counts as this device's own discovery of the reconnect.
    """

    def __init__(
        self,
        path: PathLike,
        *,
        poll_interval_s: float = 0.5,
        pull_interval_s: float = 30.0,
        reconnect_window_s: float = 10.0,
        quick_probe_s: float = 1.0,
        round_timeout_s: float = 120.0,
        retry_policy: Optional[RetryPolicy] = None,
        probe_backoff: Optional[BackoffStrategy] = None,
        rng: Optional[random.Random] = None,
        clock: Clock = time.monotonic,
        agent_options: Optional[dict[str, Any]] = None,
    ) -> None:
        self.path = path
        self.poll_interval_s = poll_interval_s
        self.pull_interval_s = pull_interval_s
        self.round_timeout_s = round_timeout_s
        self._rng = rng or fleet_rng()
        self.retry_policy = retry_policy or RetryPolicy(
            ExponentialBackoff(base=1.0, cap=300.0, rng=self._rng),
            budget=RetryBudget(capacity=10, refill_per_s=0.1, clock=clock),
            rng=self._rng,
        )
        self.probe_backoff = probe_backoff or default_probe_backoff(reconnect_window_s, self._rng)
        self.reconnect = ReconnectJitter(reconnect_window_s, rng=self._rng)
        self.quick_probe_s = quick_probe_s
        self._clock = clock
        self._agent_options = agent_options or {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.rounds = 0
        self.loops = 0  # loop iterations: an idle or offline worker must not spin
        # The schedule (monotonic seconds), reset at the start of every run.
        self._next_pull = self._next_attempt = self._next_probe = 0.0
        self._failures = self._probes_failed = 0
        self._failed_at = 0.0  # when the last failed probe (or unreachable round) started
        self._hung = False  # ... and whether it hung before failing (a black-holing link)
        self._version = 0
        self._work_known = True
        self._probing = False  # our own probe is in flight: its answer is not a link-up event
        self._linked_up = threading.Event()  # a link-up event heard from elsewhere

    # -- control -------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the worker to finish its current batch and return (safe from any thread)."""
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        """Look at the outbox now instead of at the next poll."""
        self._wake.set()

    def install_signal_handlers(self) -> None:
        """Stop cleanly on SIGTERM and SIGINT (main thread only)."""

        def handler(signum: int, frame: Optional[FrameType]) -> None:
            log.info("stopping signal=%s", signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        """Run until stopped. Opens its own Agent: a SQLite connection belongs to a thread.

        Raises NotConfigured at once for a database without endpoint or token (waiting would
        not help: only `sync-agent init` does); an unreachable cloud is waited out.
        """
        with Agent.open(self.path, **self._agent_options) as agent:
            agent.require_configured()
            agent.monitor.subscribe(self._on_connectivity)
            try:
                self._loop(agent)
            finally:
                agent.state.update_stats(current_backoff_s=0.0)
        log.info("worker stopped rounds=%d", self.rounds)

    def _on_connectivity(self, old: Connectivity, new: Connectivity) -> None:
        if old is Connectivity.OFFLINE and new is not Connectivity.AUTH and not self._probing:
            self._linked_up.set()  # heard by every device at once: use the whole window
        self._wake.set()

    def _loop(self, agent: Agent) -> None:
        now = self._clock()
        self._next_pull = now  # pull once at start
        self._next_attempt = now  # gate after failures (backoff) and reconnects (jitter)
        self._next_probe = now
        self._failures = self._probes_failed = 0
        self._failed_at = now
        self._hung = False
        self._linked_up.clear()
        self._version = _data_version(agent)
        self._work_known = True
        while not self._stop.is_set():
            self.loops += 1
            engine = agent.engine()  # rebuilt (and auth cleared) when settings change
            engine.should_stop = self._stop.is_set  # finish the current batch, then return
            state = agent.monitor.state
            try:
                if state is Connectivity.AUTH:
                    self._wait(self.poll_interval_s * 4)  # only a new token (init) helps
                elif state is Connectivity.OFFLINE:
                    self._offline_step(agent, engine)
                elif self._online_step(agent, engine) == "stopped":
                    break
            except DatabaseError as exc:
                # Locked too long by another process, disk full...: every op is still on disk
                # (transactions roll back), so wait and try again rather than die.
                self._failures += 1
                delay = self.retry_policy.next_delay(self._failures)
                log.error("database error error=%s retry_in_s=%.2f", exc, delay)
                self._wait(delay)

    def _offline_step(self, agent: Agent, engine: SyncEngine) -> None:
        """Probe the health endpoint on a jittered schedule; on success, schedule a sync
        after the reconnect jitter."""
        now = self._clock()
        if now >= self._next_probe:
            self._probing = True
            try:
                answer = engine.transport.health()
            finally:
                self._probing = False
            agent.monitor.observe(answer)
            if isinstance(answer, Healthy):
                # The cloud's time: the clock merges it and the offset estimate follows.
                agent.state.merge_server_time(answer.server_time)
            answered = self._clock()
            slow = answered - now > self.quick_probe_s
            if agent.monitor.state is Connectivity.OFFLINE:
                self._probes_failed += 1
                self._failed_at, self._hung = now, slow
                delay = self.probe_backoff.delay(self._probes_failed)
                self._next_probe = now + delay
                agent.state.update_stats(current_backoff_s=round(delay, 3))
                log.info("offline probes=%d next_probe_s=%.2f", self._probes_failed, delay)
            else:
                # Our own jittered probe found the link: the time since the previous failed
                # probe already spread this device out - unless the link black-holes
                # requests, when this answer may be a held request released the instant the
                # link came back, the same instant for every device.
                held = slow or self._hung
                waited = 0.0 if held else answered - self._failed_at
                self._reconnected(answered, self.reconnect.delay(waited), waited)
                self._linked_up.clear()
        self._wait_until(self._next_probe)

    def _reconnected(self, now: float, jitter: float, waited: float) -> None:
        """Schedule the first sync after a reconnect `jitter` seconds from `now`."""
        self._probes_failed = self._failures = 0
        self._next_attempt = now + jitter
        self._next_pull = min(self._next_pull, self._next_attempt)
        self._work_known = True
        log.info("reconnected sync_in_s=%.2f waited_s=%.2f", jitter, waited)

    def _online_step(self, agent: Agent, engine: SyncEngine) -> Optional[str]:
        """Run a round if one is due (work in the outbox, or a pull), else wait a poll."""
        now = self._clock()
        if self._linked_up.is_set():
            self._linked_up.clear()
            self._reconnected(now, self.reconnect.delay(), 0.0)
        fresh = _data_version(agent)
        if fresh != self._version:
            self._version, self._work_known = fresh, True
        pull_due = now >= self._next_pull
        push_due = self._work_known and agent.outbox.depth() > 0
        if now < self._next_attempt:
            self._wait_until(self._next_attempt)  # backing off, or the reconnect jitter
            return None
        if not (push_due or pull_due):
            self._wait_until(self._next_pull)
            return None
        summary = engine.round(deadline=now + self.round_timeout_s, pull=pull_due)
        self.rounds += 1
        if summary.requests:
            log.info("round n=%d %s", self.rounds, summary.line())
        self._work_known = summary.remaining > 0
        stopped_by = summary.stopped_by
        if stopped_by is None:
            self._failures = 0
            self.retry_policy.reset()
            if pull_due:
                # +-20 %: devices booted together drift apart instead of pulling in step.
                spread = self._rng.uniform(0.8, 1.2)
                self._next_pull = self._clock() + self.pull_interval_s * spread
        elif stopped_by == "timeout":
            pass  # a long outbox: carry on at once with the next round
        elif stopped_by == "auth":
            log.error("token refused: run `sync-agent init --token NEW` to fix")
        elif stopped_by == "unreachable":
            self._probes_failed = 1
            self._failed_at = self._clock()
            self._hung = summary.duration_s > self.quick_probe_s
            self._next_probe = self._failed_at + self.probe_backoff.delay(1)
        elif stopped_by != "stopped":
            self._failures += 1
            delay = self.retry_policy.next_delay(self._failures, summary.retry_after)
            self._next_attempt = self._clock() + delay
            agent.state.update_stats(current_backoff_s=round(delay, 3))
            log.info("backing off failures=%d delay_s=%.2f", self._failures, delay)
        return stopped_by

    def _wait_until(self, when: float) -> None:
        """Sleep until `when`, a wake-up, or the next outbox poll - whichever comes first."""
        self._wait(max(0.0, min(when - self._clock(), self.poll_interval_s)))

    def _wait(self, seconds: float) -> None:
        if self._wake.wait(seconds):
            self._wake.clear()


def _data_version(agent: Agent) -> int:
    """Changes whenever another connection (another process) commits to the database."""
    row = agent.conn.execute("PRAGMA data_version").fetchone()
    return int(row[0])
