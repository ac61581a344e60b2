"""The client's delays: the reconnect schedule (1, 2, 4, 8, 16, then 30 s, each
plus 0–5 s of jitter) and how long a refused push or pull waits before it is tried again.

``ClientTiming`` gathers them so that a test can run the same rules faster
(``SyncClient(..., timing=ClientTiming().scaled(0.02))``) instead of waiting in real time.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass, field

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


@dataclass(frozen=True, slots=True)
class ClientTiming:
    """Every delay a client waits by its own decision, in seconds."""

    schedule: tuple[float, ...] = SCHEDULE  # reconnect backoff
    jitter: float = JITTER  # spreads a restarting relay's devices over time
    rng: Callable[[], float] = field(default=random.random, compare=False)
    retry_later: float = 1.0  # a push refused 2000/3000 without a retry_after
    quota_retry: float = 30.0  # a push refused 2002: space frees up as blobs expire
    refused_retry: float = 5.0  # a push refused with a code not about the blob itself
    pull_retry: float = 2.0  # changes() after its PULL was refused (rate limit, busy relay)
    # Deadlines: how long the client waits for the relay before it gives up on a path.
    open_timeout: float = 10.0  # TCP connect, WebSocket upgrade, handshake and WELCOME
    request_timeout: float = 30.0  # each request's answer; past it the connection is dead
    heartbeat: float = 30.0  # probe (PRESENCE with an id) after this long without traffic
    heartbeat_timeout: float = 30.0  # the probe's answer; past it the connection is dead

    def __post_init__(self) -> None:
        if not self.schedule:
            raise ValueError("schedule must not be empty")
        delays = (self.jitter, self.retry_later, self.quota_retry, self.refused_retry)
        if min((*self.schedule, *delays, self.pull_retry)) < 0:
            raise ValueError("delays must not be negative")
        deadlines = (self.open_timeout, self.request_timeout, self.heartbeat)
        if min((*deadlines, self.heartbeat_timeout)) <= 0:
            raise ValueError("deadlines must be positive")

    def backoff(self) -> Backoff:
        return Backoff(rng=self.rng, schedule=self.schedule, jitter=self.jitter)

    def scaled(self, factor: float) -> ClientTiming:
        """The same timing with every delay multiplied by ``factor``. The deadlines
        (``open_timeout``, ``request_timeout``, ``heartbeat``, ``heartbeat_timeout``) stay:
        they depend on the network and the machine, not on the rules; a test that wants
        them short sets them with ``dataclasses.replace``."""
        return dataclasses.replace(
            self,
            schedule=tuple(s * factor for s in self.schedule),
            jitter=self.jitter * factor,
            retry_later=self.retry_later * factor,
            quota_retry=self.quota_retry * factor,
            refused_retry=self.refused_retry * factor,
            pull_retry=self.pull_retry * factor,
        )
