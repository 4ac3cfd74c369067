"""Backoff strategies, Retry-After, the retry budget and the reconnect jitter."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_agent.backoff import (
    BackoffStrategy,
    ConstantBackoff,
    ExponentialBackoff,
    Jitter,
    LinearBackoff,
    ReconnectJitter,
    RetryBudget,
    RetryPolicy,
    honour_retry_after,
)

pytestmark = pytest.mark.agent

attempts = st.integers(min_value=1, max_value=10**6)
seeds = st.integers(min_value=0, max_value=2**32)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@given(attempt=attempts, seed=seeds)
def test_full_jitter_stays_between_zero_and_the_capped_exponential(attempt: int, seed: int) -> None:
    backoff = ExponentialBackoff(base=0.5, cap=60.0, rng=random.Random(seed))
    ceiling = min(60.0, 0.5 * 2.0 ** min(attempt - 1, 200))
    assert 0.0 <= backoff.delay(attempt) <= ceiling


@given(attempt=attempts, seed=seeds)
def test_equal_jitter_never_waits_less_than_half_the_ceiling(attempt: int, seed: int) -> None:
    backoff = ExponentialBackoff(base=1.0, cap=30.0, jitter=Jitter.EQUAL, rng=random.Random(seed))
    ceiling = backoff.ceiling(attempt)
    assert ceiling / 2 <= backoff.delay(attempt) <= ceiling


@given(seed=seeds, count=st.integers(min_value=1, max_value=60))
def test_decorrelated_jitter_stays_between_base_and_cap(seed: int, count: int) -> None:
    backoff = ExponentialBackoff(
        base=0.2, cap=10.0, jitter=Jitter.DECORRELATED, rng=random.Random(seed)
    )
    delays = [backoff.delay(attempt) for attempt in range(1, count + 1)]
    assert all(0.2 <= delay <= 10.0 for delay in delays)


@given(seed=seeds, restart=st.integers(min_value=1, max_value=10**6))
def test_decorrelated_jitter_grows_from_the_previous_delay_at_most_threefold(
    seed: int, restart: int
) -> None:
    # Given a decorrelated backoff, base 0.2 s and cap 10 s
    backoff = ExponentialBackoff(
        base=0.2, cap=10.0, jitter=Jitter.DECORRELATED, rng=random.Random(seed)
    )
    # When it is asked for 40 consecutive retries
    previous = 0.2  # the first retry grows from the base
    for attempt in range(1, 41):
        delay = backoff.delay(attempt)
        # Then each delay lies in [base, min(cap, 3 x the previous delay)]
        assert 0.2 <= delay <= min(10.0, 3 * previous) * (1 + 1e-12), (attempt, previous)
        previous = delay
    # And after a success the growth starts over from the base, whatever the attempt number
    backoff.reset()
    assert 0.2 <= backoff.delay(restart) <= 0.6 * (1 + 1e-12)


def test_decorrelated_jitter_follows_the_previous_delay_not_the_attempt_number() -> None:
    # Given 2,000 consecutive decorrelated delays (base 0.1 s, cap 60 s) and as many full
    # jitter ones, whose ceiling is the cap from attempt 11 on
    def run(jitter: Jitter) -> list[tuple[int, float, float]]:
        backoff = ExponentialBackoff(base=0.1, cap=60.0, jitter=jitter, rng=random.Random(11))
        delays = [backoff.delay(attempt) for attempt in range(1, 2001)]
        return [(n, prev, delay) for n, (prev, delay) in enumerate(zip(delays, delays[1:]), 2)]

    decorrelated, full = run(Jitter.DECORRELATED), run(Jitter.FULL)
    # Then, late in the run, a short delay is followed by a short one: it grows from the last
    # delay, where a strategy keyed to the attempt number draws from the whole range again
    after_short = [delay for n, prev, delay in decorrelated if n > 20 and prev < 0.3]
    assert len(after_short) >= 20
    assert max(after_short) <= 0.9
    assert max(delay for n, prev, delay in full if n > 20 and prev < 0.3) > 10.0
    # And it still climbs to near the cap
    assert max(delay for _, _, delay in decorrelated) > 50.0


@given(attempt=attempts, seed=seeds)
def test_linear_and_constant_stay_within_their_jittered_bounds(attempt: int, seed: int) -> None:
    linear = LinearBackoff(base=1.0, step=2.0, cap=20.0, jitter=0.5, rng=random.Random(seed))
    constant = ConstantBackoff(3.0, jitter=0.1, rng=random.Random(seed))
    expected_ceiling = min(20.0, 1.0 + 2.0 * (attempt - 1))
    assert expected_ceiling / 2 <= linear.delay(attempt) <= expected_ceiling
    assert 2.7 <= constant.delay(attempt) <= 3.0


def test_full_jitter_is_the_default_and_actually_spreads_delays() -> None:
    # Given the default strategy, when it is asked many times for the same attempt
    backoff = ExponentialBackoff(base=1.0, cap=100.0, rng=random.Random(7))
    delays = [backoff.delay(5) for _ in range(500)]
    # Then the delays cover the whole range [0, 16) rather than clustering
    assert backoff.jitter is Jitter.FULL
    assert min(delays) < 2.0 and max(delays) > 14.0


def test_a_millionth_attempt_neither_overflows_nor_exceeds_the_cap() -> None:
    strategies: list[BackoffStrategy] = [
        ExponentialBackoff(base=1.0, cap=300.0, jitter=jitter, rng=random.Random(1))
        for jitter in Jitter
    ] + [LinearBackoff(cap=300.0), ConstantBackoff(300.0)]
    for strategy in strategies:
        assert 0.0 <= strategy.delay(10**6) <= 300.0
    assert ExponentialBackoff(jitter=Jitter.NONE).delay(10**6) == 300.0


@given(retry_after=st.floats(min_value=0.01, max_value=3600), seed=seeds)
def test_retry_after_is_a_floor_with_positive_bounded_jitter(retry_after: float, seed: int) -> None:
    waited = honour_retry_after(0.0, retry_after, rng=random.Random(seed))
    assert retry_after <= waited <= retry_after + max(1.0, retry_after * 0.25)


def test_retry_after_never_shortens_a_longer_backoff() -> None:
    assert honour_retry_after(50.0, 2.0, rng=random.Random(0)) == 50.0
    assert honour_retry_after(5.0, None, rng=random.Random(0)) == 5.0


def test_retry_after_jitter_spreads_a_fleet_told_the_same_time() -> None:
    # Given 200 devices all told "Retry-After: 30"
    waits = [honour_retry_after(0.0, 30.0, rng=random.Random(seed)) for seed in range(200)]
    # Then none comes back early and they do not all come back in the same second
    assert min(waits) >= 30.0
    assert len({int(wait) for wait in waits}) >= 5


def test_retry_budget_allows_a_burst_then_paces_retries_to_the_refill_rate() -> None:
    clock = FakeClock()
    budget = RetryBudget(capacity=3, refill_per_s=0.5, clock=clock)
    # Given a full bucket, the first three retries cost no extra wait
    assert [budget.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    # When a fourth retry is asked for at once, it must wait for one token (2 s)
    assert budget.reserve() == pytest.approx(2.0)
    # And when time passes the bucket refills
    clock.now += 10.0
    assert budget.tokens == pytest.approx(3.0)
    assert budget.try_spend()


def test_retry_policy_waits_for_the_budget_when_backoff_alone_would_retry_sooner() -> None:
    clock = FakeClock()
    policy = RetryPolicy(
        ConstantBackoff(0.1),
        budget=RetryBudget(capacity=1, refill_per_s=0.1, clock=clock),
        rng=random.Random(3),
    )
    assert policy.next_delay(1) == pytest.approx(0.1)
    # The bucket is empty now: the next retry waits ~10 s for its token, not 0.1 s
    assert 10.0 <= policy.next_delay(2) <= 11.0


@given(seed=seeds, window=st.floats(min_value=0.0, max_value=120.0))
def test_reconnect_jitter_lands_inside_its_window(seed: int, window: float) -> None:
    delay = ReconnectJitter(window, rng=random.Random(seed)).delay()
    assert 0.0 <= delay <= window


def test_reconnect_jitter_spreads_devices_that_reconnect_together() -> None:
    delays = sorted(ReconnectJitter(10.0, rng=random.Random(seed)).delay() for seed in range(1000))
    # Roughly uniform: each second of the window gets some of the fleet, none gets most of it
    per_second = [sum(1 for d in delays if s <= d < s + 1) for s in range(10)]
    assert min(per_second) > 50 and max(per_second) < 150


def test_invalid_parameters_are_refused_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="multiplier"):
        ExponentialBackoff(multiplier=0.5)
    with pytest.raises(ValueError, match="capacity"):
        RetryBudget(capacity=0)
