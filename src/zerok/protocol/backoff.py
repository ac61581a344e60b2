"""Reconnect schedule: 1, 2, 4, 8, 16, then 30 s, each plus 0–5 s of jitter (DESIGN §6)."""

from __future__ import annotations

import random
from collections.abc import Callable

SCHEDULE = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
JITTER = 5.0


class Backoff:
    """Delays between reconnect attempts; ``rng`` returns floats in [0, 1)."""

    def __init__(
        self,
        *,
        rng: Callable[[], float] = random.random,
        schedule: tuple[float, ...] = SCHEDULE,
        jitter: float = JITTER,
    ) -> None:
        if not schedule:
            raise ValueError("schedule must not be empty")
        self._rng = rng
        self._schedule = schedule
        self._jitter = jitter
        self.attempt = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one attempt."""
        base = self._schedule[min(self.attempt, len(self._schedule) - 1)]
        self.attempt += 1
        return base + self._rng() * self._jitter

    def reset(self) -> None:
        """Call after a successful connection."""
        self.attempt = 0
