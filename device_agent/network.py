"""Connectivity: is the cloud reachable, and does it accept our token?

The monitor learns from two sources: cheap probes of `GET /v1/health` while the link is
down (spaced by a jittered backoff, so a fleet does not probe in lock-step), and the outcome
of every real request the sync engine makes (`observe`). Observers are called on every
change; the worker also blocks in `wait_for_change` so a reconnect wakes it at once rather
than at its next poll.

States: `unknown` (nothing learnt yet), `online` (the cloud answered), `offline` (no HTTP
answer), `auth` (the cloud answered 401/403: retrying cannot help until the token changes).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

from device_agent.backoff import BackoffStrategy, Clock, ExponentialBackoff
from device_agent.outcomes import AuthFailed, HealthOutcome, Outcome, Unreachable
from device_agent.state_values import Connectivity  # one vocabulary for the monitor and `status`

log = logging.getLogger("device_agent.network")

__all__ = ["Connectivity", "NetworkMonitor", "Observer", "Probe", "classify"]


Observer = Callable[[Connectivity, Connectivity], None]
"""Called as `observer(old, new)` after every change, outside the monitor's lock."""

Probe = Callable[[], HealthOutcome]


def classify(outcome: Outcome) -> Connectivity:
    """The connectivity an outcome proves: any HTTP answer means the cloud is reachable."""
    if isinstance(outcome, Unreachable):
        return Connectivity.OFFLINE
    if isinstance(outcome, AuthFailed):
        return Connectivity.AUTH
    return Connectivity.ONLINE


class NetworkMonitor:
    """Thread-safe connectivity state with observers, waiting and an optional probe thread."""

    def __init__(
        self,
        probe: Optional[Probe] = None,
        *,
        initial: Connectivity = Connectivity.UNKNOWN,
        probe_backoff: Optional[BackoffStrategy] = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._probe = probe
        self._probe_backoff = probe_backoff or ExponentialBackoff(base=1.0, cap=30.0)
        self._clock = clock
        self._cond = threading.Condition()
        self._state = initial
        self._version = 0
        self._changed_at = clock()
        self._observers: list[Observer] = []
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self._failed_probes = 0

    # -- state -------------------------------------------------------------------------

    @property
    def state(self) -> Connectivity:
        with self._cond:
            return self._state

    @property
    def version(self) -> int:
        """Incremented on every change; pass it to `wait_for_change`."""
        with self._cond:
            return self._version

    @property
    def changed_at(self) -> float:
        with self._cond:
            return self._changed_at

    def set_state(self, new: Connectivity, reason: str = "") -> bool:
        """Move to `new`; notify observers and waiters. Returns True if it was a change."""
        with self._cond:
            old = self._state
            if old is new:
                return False
            self._state = new
            self._version += 1
            self._changed_at = self._clock()
            if new is not Connectivity.OFFLINE:
                self._failed_probes = 0
            observers = list(self._observers)
            self._cond.notify_all()
        log.info("connectivity old=%s new=%s reason=%s", old.value, new.value, reason or "-")
        for observer in observers:
            try:
                observer(old, new)
            except Exception:
                log.exception("connectivity observer failed observer=%r", observer)
        return True

    def observe(self, outcome: Outcome) -> Connectivity:
        """Learn from the outcome of a real request. A 401/403 sticks until `clear_auth`."""
        seen = classify(outcome)
        with self._cond:
            if self._state is Connectivity.AUTH and seen is Connectivity.ONLINE:
                return self._state  # a health answer does not prove the token is good again
        self.set_state(seen, type(outcome).__name__)
        return seen

    def clear_auth(self) -> None:
        """The token changed: forget the auth failure and find out again."""
        with self._cond:
            if self._state is not Connectivity.AUTH:
                return
        self.set_state(Connectivity.UNKNOWN, "token changed")

    # -- observers and waiting ---------------------------------------------------------

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """Call `observer(old, new)` on every change; returns a function that unsubscribes."""
        with self._cond:
            self._observers.append(observer)

        def unsubscribe() -> None:
            with self._cond:
                if observer in self._observers:
                    self._observers.remove(observer)

        return unsubscribe

    def wait_for_change(self, since_version: int, timeout: Optional[float]) -> bool:
        """Block until the state changes after `since_version` (True) or `timeout` (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._version != since_version, timeout)

    # -- probing -----------------------------------------------------------------------

    def probe_once(self) -> Connectivity:
        """Probe `GET /v1/health` now and update the state from the answer."""
        if self._probe is None:
            return self.state
        outcome = self._probe()
        if isinstance(outcome, Unreachable):
            with self._cond:
                self._failed_probes += 1
        return self.observe(outcome)

    def next_probe_delay(self) -> float:
        """Jittered, growing pause between probes while the cloud stays unreachable."""
        with self._cond:
            failures = self._failed_probes
        return self._probe_backoff.delay(max(1, failures))

    def start(self) -> None:
        """Probe in a background thread whenever the state is unknown or offline."""
        if self._probe is None or self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._probe_loop, name="fieldsync-probe")
        self._thread.daemon = True
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _probe_loop(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                state = self._state
            if state in (Connectivity.UNKNOWN, Connectivity.OFFLINE):
                try:
                    self.probe_once()
                except Exception:
                    log.exception("connectivity probe failed")
            with self._cond:
                if self._stopping:
                    return
                if self._state in (Connectivity.UNKNOWN, Connectivity.OFFLINE):
                    failures = self._failed_probes
                    delay = self._probe_backoff.delay(max(1, failures))
                    self._cond.wait(delay)
                else:
                    # Online or auth: real requests keep the state; sleep until it changes.
                    version = self._version

                    def woken(since: int = version) -> bool:
                        return self._stopping or self._version != since

                    self._cond.wait_for(woken)
