"""How long to wait before trying again, so a fleet of devices never becomes a retry storm.

Three ideas work together (after the AWS Architecture Blog, "Exponential Backoff And Jitter"):

- a *backoff strategy* turns an attempt number into a delay: exponential with full
  (the default), equal or decorrelated jitter, linear or constant; every strategy is capped
  and safe for absurd attempt counts (a device offline for a month);
- a *retry budget* (a token bucket) limits how many retries a device may spend per minute,
  so an outage cannot multiply the load on the cloud when it comes back;
- a *reconnect jitter* spreads the first request after connectivity returns over a window,
  so devices that regain the network together (a cell tower back up) do not arrive together.

`Retry-After` from the cloud is a floor: the wait is at least that, plus positive jitter.
Every random choice goes through an injectable `random.Random` and every reading of time
through an injectable clock, so tests are deterministic.
"""

from __future__ import annotations

import math
import random
import threading
import time
from enum import Enum
from typing import Callable, Optional, Protocol

Clock = Callable[[], float]


class Jitter(str, Enum):
    FULL = "full"
    EQUAL = "equal"
    DECORRELATED = "decorrelated"
    NONE = "none"


class BackoffStrategy(Protocol):
    """Turns the number of consecutive failures into a delay in seconds."""

    def delay(self, attempt: int) -> float:
        """Delay before retry number `attempt` (1 = the first retry). Never negative."""
        ...

    def reset(self) -> None:
        """Forget any state (called after a success)."""
        ...


def _ceiling(base: float, multiplier: float, attempt: int, cap: float) -> float:
    """min(cap, base * multiplier ** (attempt - 1)) without ever computing a huge power."""
    if attempt <= 1 or multiplier <= 1.0:
        return min(cap, base)
    if base <= 0:
        return 0.0
    # Past this exponent the product is beyond the cap: no float overflow for attempt 10**6.
    limit = math.log(cap / base, multiplier) if cap > base else 0.0
    exponent = attempt - 1
    if exponent >= limit:
        return cap
    return min(cap, base * multiplier**exponent)


class ExponentialBackoff:
    """`base * multiplier**(attempt-1)`, capped at `cap`, with jitter (full by default).

    - full: uniform(0, ceiling) - the least total work for the cloud;
    - equal: ceiling/2 + uniform(0, ceiling/2) - never retries immediately;
    - decorrelated: min(cap, uniform(base, previous * 3)) - grows from the last delay;
    - none: the ceiling itself (only for tests and demos).
    """

    def __init__(
        self,
        base: float = 1.0,
        cap: float = 300.0,
        *,
        multiplier: float = 2.0,
        jitter: Jitter = Jitter.FULL,
        rng: Optional[random.Random] = None,
    ) -> None:
        if base < 0 or cap < 0 or multiplier < 1.0:
            raise ValueError("base and cap must be >= 0 and multiplier >= 1")
        self.base = base
        self.cap = max(cap, base)
        self.multiplier = multiplier
        self.jitter = Jitter(jitter)
        self._rng = rng or random.Random()
        self._previous = base

    def ceiling(self, attempt: int) -> float:
        """The largest delay this strategy may return for `attempt`."""
        return _ceiling(self.base, self.multiplier, attempt, self.cap)

    def delay(self, attempt: int) -> float:
        ceiling = self.ceiling(attempt)
        if self.jitter is Jitter.FULL:
            return self._rng.uniform(0.0, ceiling)
        if self.jitter is Jitter.EQUAL:
            return ceiling / 2 + self._rng.uniform(0.0, ceiling / 2)
        if self.jitter is Jitter.DECORRELATED:
            if attempt <= 1:
                self._previous = self.base
            upper = min(self.cap, max(self.base, self._previous * 3))
            self._previous = min(self.cap, self._rng.uniform(self.base, upper))
            return self._previous
        return ceiling

    def reset(self) -> None:
        self._previous = self.base


class LinearBackoff:
    """`base + step * (attempt-1)`, capped, with up to `jitter` fraction taken off at random."""

    def __init__(
        self,
        base: float = 1.0,
        step: float = 1.0,
        cap: float = 60.0,
        *,
        jitter: float = 0.0,
        rng: Optional[random.Random] = None,
    ) -> None:
        if base < 0 or step < 0 or cap < 0 or not 0.0 <= jitter <= 1.0:
            raise ValueError("base, step and cap must be >= 0 and jitter within 0..1")
        self.base, self.step, self.cap, self.jitter = base, step, max(cap, base), jitter
        self._rng = rng or random.Random()

    def ceiling(self, attempt: int) -> float:
        steps = max(0, attempt - 1)
        if self.step and steps >= (self.cap - self.base) / self.step:
            return self.cap
        return min(self.cap, self.base + self.step * steps)

    def delay(self, attempt: int) -> float:
        ceiling = self.ceiling(attempt)
        return ceiling - self._rng.uniform(0.0, ceiling * self.jitter)

    def reset(self) -> None:
        return None


class ConstantBackoff:
    """Always `interval`, with up to `jitter` fraction taken off at random."""

    def __init__(
        self, interval: float = 5.0, *, jitter: float = 0.0, rng: Optional[random.Random] = None
    ) -> None:
        if interval < 0 or not 0.0 <= jitter <= 1.0:
            raise ValueError("interval must be >= 0 and jitter within 0..1")
        self.interval, self.jitter = interval, jitter
        self._rng = rng or random.Random()

    def ceiling(self, attempt: int) -> float:
        return self.interval

    def delay(self, attempt: int) -> float:
        return self.interval - self._rng.uniform(0.0, self.interval * self.jitter)

    def reset(self) -> None:
        return None


def honour_retry_after(
    delay: float,
    retry_after: Optional[float],
    *,
    rng: random.Random,
    spread: float = 0.25,
    min_spread: float = 1.0,
) -> float:
    """The wait when the cloud said `Retry-After`: at least that long, plus positive jitter.

    A server that tells every device "come back in 30 s" must not get them all at second 30,
    so up to `spread` of the hint (at least `min_spread` seconds) is added at random.
    """
    if retry_after is None or retry_after <= 0:
        return delay
    jitter = rng.uniform(0.0, max(min_spread, retry_after * spread))
    return max(delay, retry_after + jitter)


class RetryBudget:
    """A token bucket for retries: `capacity` tokens, refilled at `refill_per_s`.

    First attempts are free; every retry spends a token. When the bucket is empty the device
    waits for a token instead of retrying, which bounds the load a fleet adds during an outage
    to `refill_per_s` retries per device per second whatever the backoff says.
    """

    def __init__(
        self, capacity: float = 10.0, refill_per_s: float = 0.2, *, clock: Clock = time.monotonic
    ) -> None:
        if capacity < 1 or refill_per_s <= 0:
            raise ValueError("capacity must be >= 1 and refill_per_s > 0")
        self.capacity, self.refill_per_s = capacity, refill_per_s
        self._clock = clock
        self._tokens = capacity
        self._stamp = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.refill_per_s)
        self._stamp = now

    @property
    def tokens(self) -> float:
        with self._lock:
            self._refill()
            return self._tokens

    def try_spend(self) -> bool:
        """Take a token for one retry; False (nothing taken) when the budget is exhausted."""
        with self._lock:
            self._refill()
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False

    def wait_time(self) -> float:
        """Seconds until a token is available (0 when one is)."""
        with self._lock:
            self._refill()
            missing = 1.0 - self._tokens
            return 0.0 if missing <= 0 else missing / self.refill_per_s

    def reserve(self) -> float:
        """Take a token now, going into debt if needed; return the seconds to wait before
        the retry it pays for (0 when the bucket had a token)."""
        with self._lock:
            self._refill()
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.refill_per_s


class ReconnectJitter:
    """A random delay within the window before the first request after connectivity returns.

    Learnt at a shared instant (a link-up event every device hears at once), the whole
    window is used: uniform in [0, window_s). Learnt by a device's own jittered probe, the
    device has already waited a random, device-specific time (`waited_s`, since its previous
    failed probe) that spread the fleet out; that time counts against the window, and the
    delay is uniform over what is left of it: [0, window_s - waited_s), zero once the window
    is used up. Either way the first request goes out within `window_s` of the moment the
    device started waiting.
    """

    def __init__(self, window_s: float = 10.0, *, rng: Optional[random.Random] = None) -> None:
        if window_s < 0:
            raise ValueError("window_s must be >= 0")
        self.window_s = window_s
        self._rng = rng or random.Random()

    def delay(self, waited_s: float = 0.0) -> float:
        """Seconds to wait before the first request; `waited_s` already spent counts."""
        left = self.window_s - max(0.0, waited_s)
        return self._rng.uniform(0.0, left) if left > 0 else 0.0


class RetryPolicy:
    """Backoff, Retry-After and the retry budget combined into one `next_delay` decision."""

    def __init__(
        self,
        strategy: Optional[BackoffStrategy] = None,
        *,
        budget: Optional[RetryBudget] = None,
        rng: Optional[random.Random] = None,
    ) -> None:
        self._rng = rng or random.Random()
        self.strategy: BackoffStrategy = strategy or ExponentialBackoff(rng=self._rng)
        self.budget = budget

    def next_delay(self, attempt: int, retry_after: Optional[float] = None) -> float:
        """Seconds to wait before retry number `attempt` (1-based)."""
        delay = honour_retry_after(self.strategy.delay(attempt), retry_after, rng=self._rng)
        if self.budget is not None:
            owed = self.budget.reserve()
            if owed > 0:
                # Out of budget: wait until the token is paid for, never less than the backoff.
                delay = max(delay, owed + self._rng.uniform(0.0, 1.0))
        return delay

    def reset(self) -> None:
        self.strategy.reset()
