"""Fault injection for apps and tests: a transport that fails on purpose.

`FaultTransport` wraps any `Transport` (usually the real `HttpTransport`) and fails in
configurable patterns - fail N times, fail for a duration, flap, add latency, time out,
answer 429/503 with Retry-After, or apply the request and then drop the response (the ack
is lost) - and records the time of every attempt, so a test can check the backoff that was
actually used::

    faulty = FaultTransport(HttpTransport(url, token)).fail_next(3)
    ... run the agent ...
    gaps = faulty.gaps("push")   # seconds between consecutive push attempts
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable, Optional, Union, cast

from device_agent.backoff import Clock
from device_agent.outcomes import (
    Failure,
    HealthOutcome,
    Outcome,
    PullOutcome,
    PushOutcome,
    Throttled,
    Unreachable,
)
from device_agent.transport import Transport
from shared.contracts import Op

ALL_CALLS = frozenset({"health", "push", "pull"})


@dataclass(frozen=True)
class Attempt:
    """One call through the fault transport: when, which, and what it returned."""

    at: float
    call: str
    outcome: str
    injected: bool
    ops: int = 0


@dataclass
class _Counted:
    kind: str  # "fail" | "timeout" | "throttle" | "drop"
    remaining: int
    outcome: Optional[Failure] = None
    calls: frozenset[str] = ALL_CALLS
    hang_s: float = 0.0


class FaultTransport:
    """A `Transport` that injects failures into calls to `inner`, and records attempts.

    Counted faults (`fail_next`, `time_out_next`, `throttle_next`, `drop_response_next`) are
    consumed in the order they were configured; time-based ones (`fail_for`, `flap`,
    `set_offline`) apply while their window lasts. Only the calls named in `calls` (by
    default all of health, push, pull) are affected; the others pass straight through.
    """

    def __init__(
        self,
        inner: Transport,
        *,
        clock: Clock = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.inner = inner
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._counted: list[_Counted] = []
        self._offline = False
        self._down_until = 0.0
        self._flap: Optional[tuple[float, float, float]] = None  # start, up_s, down_s
        self._latency = 0.0
        self.attempts: list[Attempt] = []

    # -- configuration (each returns self, so calls chain) -------------------------------

    def fail_next(
        self, n: int = 1, outcome: Optional[Failure] = None, *, calls: Sequence[str] = ()
    ) -> FaultTransport:
        """The next `n` calls fail with `outcome` (default: unreachable) without reaching inner."""
        return self._add(_Counted("fail", n, outcome, _calls(calls)))

    def time_out_next(
        self, n: int = 1, *, after_s: float = 0.0, calls: Sequence[str] = ()
    ) -> FaultTransport:
        """The next `n` calls hang for `after_s` seconds, then report a timeout."""
        outcome = Unreachable(f"timed out after {after_s:g}s (injected)")
        return self._add(_Counted("timeout", n, outcome, _calls(calls), after_s))

    def throttle_next(
        self,
        n: int = 1,
        *,
        status: int = 429,
        retry_after: Optional[float] = 1.0,
        calls: Sequence[str] = (),
    ) -> FaultTransport:
        """The next `n` calls are answered `status` (429 or 503) with `Retry-After`."""
        outcome = Throttled(status, retry_after, "throttled (injected)")
        return self._add(_Counted("throttle", n, outcome, _calls(calls)))

    def drop_response_next(self, n: int = 1, *, calls: Sequence[str] = ("push",)) -> FaultTransport:
        """The next `n` calls reach the server (which applies them), but the answer is lost."""
        return self._add(
            _Counted("drop", n, Unreachable("response lost (injected)"), _calls(calls))
        )

    def fail_for(self, seconds: float) -> FaultTransport:
        """Every call is unreachable for the next `seconds`."""
        with self._lock:
            self._down_until = self._clock() + seconds
        return self

    def flap(self, up_s: float, down_s: float) -> FaultTransport:
        """Alternate from now: reachable for `up_s`, unreachable for `down_s`, and so on."""
        with self._lock:
            self._flap = (self._clock(), up_s, down_s)
        return self

    def set_offline(self, offline: bool = True) -> FaultTransport:
        """Unreachable until `set_offline(False)`."""
        with self._lock:
            self._offline = offline
        return self

    def add_latency(self, seconds: float) -> FaultTransport:
        """Every call waits `seconds` before it is made."""
        with self._lock:
            self._latency = seconds
        return self

    def heal(self) -> FaultTransport:
        """Remove every configured fault (attempts are kept)."""
        with self._lock:
            self._counted.clear()
            self._offline, self._down_until, self._flap, self._latency = False, 0.0, None, 0.0
        return self

    # -- what happened -------------------------------------------------------------------

    def times(self, call: Optional[str] = None) -> list[float]:
        """Clock readings of every attempt (of `call`, when given), in order."""
        with self._lock:
            return [a.at for a in self.attempts if call is None or a.call == call]

    def gaps(self, call: Optional[str] = None) -> list[float]:
        """Seconds between consecutive attempts: the backoff actually used."""
        stamps = self.times(call)
        return [later - earlier for earlier, later in zip(stamps, stamps[1:])]

    # -- Transport -----------------------------------------------------------------------

    def health(self) -> HealthOutcome:
        return cast("HealthOutcome", self._call("health", 0, self.inner.health, None))

    def push(
        self, batch_id: str, ops: Sequence[Op], *, deadline: Optional[float] = None
    ) -> PushOutcome:
        outcome = self._call(
            "push", len(ops), lambda: self.inner.push(batch_id, ops, deadline=deadline), deadline
        )
        return cast("PushOutcome", outcome)

    def pull(
        self, after: Optional[str], limit: int, *, deadline: Optional[float] = None
    ) -> PullOutcome:
        outcome = self._call(
            "pull", 0, lambda: self.inner.pull(after, limit, deadline=deadline), deadline
        )
        return cast("PullOutcome", outcome)

    def close(self) -> None:
        self.inner.close()

    # -- plumbing ------------------------------------------------------------------------

    def _add(self, fault: _Counted) -> FaultTransport:
        with self._lock:
            self._counted.append(fault)
        return self

    def _down(self, now: float) -> bool:
        if self._offline or now < self._down_until:
            return True
        if self._flap is not None:
            start, up_s, down_s = self._flap
            period = up_s + down_s
            return period > 0 and (now - start) % period >= up_s
        return False

    def _take(self, call: str) -> Optional[_Counted]:
        for fault in self._counted:
            if call in fault.calls and fault.remaining > 0:
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._counted.remove(fault)
                return fault
        return None

    def _wait(self, seconds: float, deadline: Optional[float]) -> bool:
        """Sleep `seconds`, or only until `deadline` (a time.monotonic() reading, as the real
        transport takes it); whether the whole wait fitted."""
        left = seconds if deadline is None else min(seconds, deadline - time.monotonic())
        self._sleep(max(0.0, left))
        return left >= seconds

    def _call(
        self, call: str, ops: int, forward: Callable[[], Outcome], deadline: Optional[float]
    ) -> Outcome:
        with self._lock:
            latency = self._latency
        if latency and not self._wait(latency, deadline):
            return self._record(call, ops, Unreachable(_NO_TIME_LEFT), injected=True)
        with self._lock:
            now = self._clock()
            down = self._down(now)
            fault = None if down else self._take(call)
        injected: Union[Outcome, None] = None
        if down:
            injected = Unreachable("network down (injected)")
        elif fault is not None and fault.kind == "drop":
            forward()  # the server applies it; the device never hears back
            injected = fault.outcome
        elif fault is not None:
            if fault.kind == "timeout" and not self._wait(fault.hang_s, deadline):
                injected = Unreachable(_NO_TIME_LEFT)
            else:
                injected = fault.outcome or Unreachable("connection refused (injected)")
        outcome = injected if injected is not None else forward()
        return self._record(call, ops, outcome, injected=injected is not None, at=now)

    def _record(
        self, call: str, ops: int, outcome: Outcome, *, injected: bool, at: Optional[float] = None
    ) -> Outcome:
        with self._lock:
            when = self._clock() if at is None else at
            self.attempts.append(Attempt(when, call, type(outcome).__name__, injected, ops))
        return outcome


# What a call cut at its deadline answers, as the real transport does.
_NO_TIME_LEFT = "no time left for the request (injected latency or hang cut at the deadline)"


def _calls(calls: Sequence[str]) -> frozenset[str]:
    chosen = frozenset(calls) if calls else ALL_CALLS
    unknown = chosen - ALL_CALLS
    if unknown:
        raise ValueError(f"unknown calls {sorted(unknown)}: use health, push or pull")
    return chosen
