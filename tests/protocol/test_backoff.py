"""Backoff: the reconnect schedule (1, 2, 4, 8, 16, then 30 s, plus jitter),
and ClientTiming, which holds it with the client's retry delays."""

from __future__ import annotations

import itertools
import random

import pytest

from zerok.protocol import Backoff, ClientTiming
from zerok.protocol.backoff import JITTER, SCHEDULE


def _zero() -> float:
    return 0.0


def _almost_one() -> float:
    return 0.9999999999


def test_schedule_without_jitter() -> None:
    backoff = Backoff(rng=_zero)
    delays = [backoff.next_delay() for _ in range(10)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0, 30.0]


def test_schedule_stays_at_30_for_a_long_time() -> None:
    backoff = Backoff(rng=_zero)
    for _ in range(1000):
        backoff.next_delay()
    assert backoff.next_delay() == 30.0


def test_jitter_is_below_five_seconds() -> None:
    backoff = Backoff(rng=_almost_one)
    bases = [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    for base in bases:
        delay = backoff.next_delay()
        assert base + 4.99 < delay < base + 5.0


def test_jitter_with_a_real_random_source() -> None:
    rng = random.Random(1234)
    backoff = Backoff(rng=rng.random)
    bases = itertools.chain([1.0, 2.0, 4.0, 8.0, 16.0], itertools.repeat(30.0))
    for base in itertools.islice(bases, 200):
        delay = backoff.next_delay()
        assert base <= delay < base + 5.0


def test_default_rng_jitter_bounds() -> None:
    backoff = Backoff()
    delay = backoff.next_delay()
    assert 1.0 <= delay < 6.0


def test_jitter_uses_the_rng_value_linearly() -> None:
    backoff = Backoff(rng=lambda: 0.5)
    assert backoff.next_delay() == 1.0 + 2.5


def test_attempt_counter() -> None:
    backoff = Backoff(rng=_zero)
    assert backoff.attempt == 0
    backoff.next_delay()
    assert backoff.attempt == 1
    for _ in range(9):
        backoff.next_delay()
    assert backoff.attempt == 10


def test_reset_starts_over() -> None:
    backoff = Backoff(rng=_zero)
    for _ in range(7):
        backoff.next_delay()
    backoff.reset()
    assert backoff.attempt == 0
    assert [backoff.next_delay() for _ in range(3)] == [1.0, 2.0, 4.0]


def test_reset_before_any_attempt_is_harmless() -> None:
    backoff = Backoff(rng=_zero)
    backoff.reset()
    assert backoff.next_delay() == 1.0


def test_custom_schedule_and_jitter() -> None:
    backoff = Backoff(rng=_almost_one, schedule=(0.5, 3.0), jitter=0.0)
    assert [backoff.next_delay() for _ in range(4)] == [0.5, 3.0, 3.0, 3.0]


def test_custom_jitter_scale() -> None:
    backoff = Backoff(rng=lambda: 0.5, schedule=(10.0,), jitter=2.0)
    assert backoff.next_delay() == 11.0
    assert backoff.next_delay() == 11.0


def test_empty_schedule_is_rejected() -> None:
    with pytest.raises(ValueError):
        Backoff(schedule=())


def test_client_timing_defaults_are_the_documented_delays() -> None:
    timing = ClientTiming()
    assert timing.schedule == SCHEDULE == (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
    assert timing.jitter == JITTER == 5.0
    assert timing.retry_later == 1.0
    assert timing.quota_retry == 30.0
    assert timing.refused_retry == 5.0
    assert timing.pull_retry == 2.0


def test_client_timing_makes_its_backoff() -> None:
    backoff = ClientTiming(schedule=(0.5, 3.0), jitter=2.0, rng=lambda: 0.25).backoff()
    assert [backoff.next_delay() for _ in range(3)] == [1.0, 3.5, 3.5]


def test_client_timing_scaled_scales_every_delay_and_keeps_the_rng() -> None:
    fast = ClientTiming(rng=_almost_one).scaled(0.5)
    assert fast == ClientTiming(
        schedule=(0.5, 1.0, 2.0, 4.0, 8.0, 15.0),
        jitter=2.5,
        retry_later=0.5,
        quota_retry=15.0,
        refused_retry=2.5,
        pull_retry=1.0,
    )
    assert fast.rng is _almost_one


@pytest.mark.parametrize(
    "bad",
    [{"schedule": ()}, {"schedule": (1.0, -1.0)}, {"jitter": -0.1}, {"quota_retry": -1.0}],
)
def test_client_timing_refuses_impossible_delays(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ClientTiming(**bad)  # type: ignore[arg-type]
