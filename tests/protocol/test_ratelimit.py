"""Token-bucket RateLimiter: bursts, refill over (explicit) time, retry_after, pruning."""

from __future__ import annotations

import pytest

from zerok.protocol.ratelimit import RateLimiter

T0 = 1000.0


def drain(limiter: RateLimiter, key: object, now: float) -> int:
    """Take events until refused; return how many were allowed."""
    allowed = 0
    while limiter.allow(key, now):
        allowed += 1
        assert allowed <= 10_000
    return allowed


def test_burst_up_to_per_minute_then_refused() -> None:
    limiter = RateLimiter(100)
    assert all(limiter.allow("dev", T0) for _ in range(100))
    assert not limiter.allow("dev", T0)
    assert not limiter.allow("dev", T0)


def test_refill_over_time() -> None:
    limiter = RateLimiter(60)  # one token per second
    assert drain(limiter, "k", T0) == 60
    assert not limiter.allow("k", T0 + 0.5)
    assert limiter.allow("k", T0 + 1.0)
    assert not limiter.allow("k", T0 + 1.0)
    # Ten seconds later, ten more (the half second of refill before was not lost).
    assert drain(limiter, "k", T0 + 11.0) == 10


def test_refill_is_capped_at_the_burst_size() -> None:
    limiter = RateLimiter(30)
    assert drain(limiter, "k", T0) == 30
    assert drain(limiter, "k", T0 + 3600) == 30


def test_refused_attempts_do_not_consume() -> None:
    limiter = RateLimiter(60)
    drain(limiter, "k", T0)
    for i in range(1, 10):
        assert not limiter.allow("k", T0 + i * 0.1)
    assert limiter.allow("k", T0 + 1.0)


def test_cost_takes_several_tokens() -> None:
    limiter = RateLimiter(10)
    assert limiter.allow("k", T0, cost=6)
    assert not limiter.allow("k", T0, cost=5)
    assert limiter.allow("k", T0, cost=4)
    assert not limiter.allow("k", T0)


def test_retry_after() -> None:
    limiter = RateLimiter(60)  # one token per second
    assert limiter.retry_after("unknown", T0) == 0
    assert limiter.allow("k", T0)
    assert limiter.retry_after("k", T0) == 0  # allowed: no wait
    drain(limiter, "k", T0)
    assert limiter.retry_after("k", T0) == 1
    assert limiter.retry_after("k", T0 + 0.9) == 1  # never 0 while refused
    assert not limiter.allow("k", T0 + 0.9)
    assert limiter.retry_after("k", T0 + 1.0) == 0
    assert limiter.retry_after("k", T0, cost=5) == 5


def test_retry_after_slow_rate() -> None:
    limiter = RateLimiter(2)  # one token per 30 s
    drain(limiter, "k", T0)
    assert limiter.retry_after("k", T0) == 30
    assert limiter.retry_after("k", T0 + 29.5) == 1
    # 20 s exactly; floating point may round the division up by a second (harmless).
    assert limiter.retry_after("k", T0 + 10) in (20, 21)
    assert limiter.allow("k", T0 + 30)
    assert not limiter.allow("k", T0 + 30)


def test_retry_after_is_enough_to_be_allowed() -> None:
    limiter = RateLimiter(7)
    now = T0
    drain(limiter, "k", now)
    for _ in range(20):
        wait = limiter.retry_after("k", now)
        assert wait >= 1
        assert not limiter.allow("k", now)
        now += wait
        assert limiter.allow("k", now)


def test_keys_are_independent() -> None:
    limiter = RateLimiter(5)
    assert drain(limiter, "a", T0) == 5
    assert drain(limiter, ("ip", "10.0.0.1"), T0) == 5
    assert drain(limiter, b"\x01" * 32, T0) == 5
    assert limiter.retry_after("b", T0) == 0
    assert limiter.allow("b", T0)
    assert len(limiter) == 4


def test_zero_disables_the_limit() -> None:
    limiter = RateLimiter(0)
    assert all(limiter.allow("k", T0) for _ in range(10_000))
    assert limiter.retry_after("k", T0) == 0
    assert len(limiter) == 0
    limiter.prune(T0)
    assert len(limiter) == 0


def test_negative_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="rate must be"):
        RateLimiter(-1)


def test_prune_forgets_only_full_buckets() -> None:
    limiter = RateLimiter(60)  # one token per second
    drain(limiter, "early", T0)
    drain(limiter, "late", T0 + 30)
    assert len(limiter) == 2
    limiter.prune(T0 + 59)  # "early" is one token short of full: it must be kept
    assert len(limiter) == 2
    limiter.prune(T0 + 60)  # "early" is full again; "late" has 30 of 60 tokens
    assert len(limiter) == 1
    assert drain(limiter, "late", T0 + 60) == 30  # still limited: not forgotten
    assert drain(limiter, "early", T0 + 60) == 60  # starts over full, as it would anyway
    limiter.prune(T0 + 1000)
    assert len(limiter) == 0


def test_prune_before_refill_keeps_the_limit() -> None:
    limiter = RateLimiter(60)
    drain(limiter, "k", T0)
    limiter.prune(T0 + 10)
    assert len(limiter) == 1
    assert drain(limiter, "k", T0 + 10) == 10


def test_burst_is_separate_from_the_sustained_rate() -> None:
    limiter = RateLimiter(600, burst=2000)  # 10 a second, bursts of 2000
    assert drain(limiter, "k", T0) == 2000
    assert limiter.retry_after("k", T0) == 1
    assert drain(limiter, "k", T0 + 1) == 10
    assert drain(limiter, "k", T0 + 1000) == 2000  # refills only up to the burst


def test_rate_over_another_period_with_costs() -> None:
    hour = 3600.0
    limiter = RateLimiter(3600 * 1000, per=hour)  # 1000 bytes a second, an hour's burst
    assert limiter.allow("ip", T0, cost=3600 * 1000)
    assert not limiter.allow("ip", T0, cost=1)
    assert limiter.retry_after("ip", T0, cost=5000) == 5
    assert not limiter.allow("ip", T0 + 4, cost=5000)
    assert limiter.allow("ip", T0 + 5, cost=5000)


def test_a_burst_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(60, burst=0.5)


def test_give_back_returns_tokens_up_to_the_burst() -> None:
    limiter = RateLimiter(100)
    assert limiter.allow("k", T0, cost=100)
    assert not limiter.allow("k", T0, cost=30)
    limiter.give_back("k", 30)
    assert limiter.allow("k", T0, cost=30)
    limiter.give_back("k", 1000)
    assert drain(limiter, "k", T0) == 100  # never more than the burst
    limiter.give_back("unknown", 5)  # a key never seen: nothing to give back to
    assert len(limiter) == 1
