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
    """Allows ``per_minute`` events per key per minute, in bursts of up to ``per_minute``.

    ``per_minute`` 0 disables the limit. Buckets that have refilled completely are
    forgotten by ``prune`` so memory follows the number of active keys.
    """

    def __init__(self, per_minute: int) -> None:
        if per_minute < 0:
            raise ValueError("per_minute must be 0 (off) or positive")
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._buckets: dict[Hashable, _Bucket] = {}

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
