"""Token-bucket rate limiting, keyed (per device, per IP); time is passed in."""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Allows ``rate`` events (or units of cost, e.g. bytes) per key per ``per`` seconds,
    in bursts of up to ``burst`` (default: ``rate``).

    A new key starts with a full bucket. ``rate`` 0 disables the limit. Buckets that have
    refilled completely are forgotten by ``prune`` so memory follows the number of active
    keys.
    """

    def __init__(self, rate: float, *, per: float = 60.0, burst: float | None = None) -> None:
        if rate < 0:
            raise ValueError("rate must be 0 (off) or positive")
        if per <= 0:
            raise ValueError("per must be positive")
        if burst is not None and rate and burst < 1:
            raise ValueError("burst must be at least 1")
        self.capacity = float(rate if burst is None or not rate else burst)
        self.rate = rate / per  # tokens per second
        self._buckets: dict[Hashable, _Bucket] = {}

    def seconds_to_drain(self, count: float) -> float:
        """Seconds a key starting with a full bucket needs for ``count`` events at the
        fastest allowed pace (0 if they fit in the burst)."""
        if self.capacity == 0 or count <= self.capacity:
            return 0.0
        return (count - self.capacity) / self.rate

    def allow(self, key: Hashable, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if available; False means the event is over the limit."""
        if self.capacity == 0:
            return True
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self.capacity, now)
        else:
            bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return True
        return False

    def give_back(self, key: Hashable, cost: float) -> None:
        """Return ``cost`` tokens taken by ``allow`` for an event that did not happen after
        all (e.g. a push the storage refused); never above the burst."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.tokens = min(self.capacity, bucket.tokens + cost)

    def retry_after(self, key: Hashable, now: float, cost: float = 1.0) -> int:
        """Whole seconds until ``cost`` tokens are available again."""
        bucket = self._buckets.get(key)
        if bucket is None or self.capacity == 0:
            return 0
        tokens = min(self.capacity, bucket.tokens + (now - bucket.updated) * self.rate)
        return max(1, math.ceil((cost - tokens) / self.rate)) if tokens < cost else 0

    def prune(self, now: float) -> None:
        full_after = self.capacity / self.rate if self.rate else 0.0
        self._buckets = {k: b for k, b in self._buckets.items() if now - b.updated < full_after}

    def __len__(self) -> int:
        return len(self._buckets)
