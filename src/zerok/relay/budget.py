"""The relay's memory for clients that read slowly: the send budget.

Every byte the relay has encrypted for a client and not yet handed to the kernel is held
against two limits: ``per_connection`` for that client and ``total`` for all of them. A
connection asks for room before it queues anything (``room``); a client over its own limit
is cut, and when all clients together are over the total, the one holding the most is cut
first, so that a few hostile non-readers cannot starve the clients that do read.

PULL answers are the large ones; the pages being read from the database for them count
too, through ``pull_slots``: at most as many pages are prepared at once as fit in the
total, whatever the number of connections, each counted as ``PAGE_FRAMES`` frames (while
a page is prepared it exists as database rows, an encoded frame, its encrypted fragments
and the joined write, not all released at once).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from prometheus_client import Gauge

PAGE_FRAMES = 4


def page_slots(budget: int, frame_limit: int) -> int:
    """How many PULL pages may be prepared at once within ``budget`` bytes (at least one)."""
    return max(1, budget // (PAGE_FRAMES * max(1, frame_limit)))


class Holder(Protocol):
    def cut(self, why: str) -> None:
        """Drop the connection at once (its held bytes are released)."""
        ...


class SendBudget:
    def __init__(
        self, *, per_connection: int, total: int, frame_limit: int, gauge: Gauge | None = None
    ) -> None:
        self.per_connection = per_connection
        self.total = total
        self.held_total = 0
        self.peak = 0  # the most ever held at once (for tests and benchmarks)
        self._held: dict[Holder, int] = {}
        self._gauge = gauge
        self.pull_slots = asyncio.Semaphore(page_slots(total, frame_limit))

    def held(self, holder: Holder) -> int:
        return self._held.get(holder, 0)

    def set_held(self, holder: Holder, held: int) -> None:
        """What ``holder`` holds now (its session's queue and its socket buffer)."""
        self.held_total += held - self._held.get(holder, 0)
        if held:
            self._held[holder] = held
        else:
            self._held.pop(holder, None)
        self.peak = max(self.peak, self.held_total)
        if self._gauge is not None:
            self._gauge.set(self.held_total)

    def release(self, holder: Holder) -> None:
        self.set_held(holder, 0)

    def room(self, holder: Holder) -> int:
        """How many more bytes ``holder`` may queue now."""
        mine = self._held.get(holder, 0)
        return max(0, min(self.per_connection - mine, self.total - self.held_total))

    def make_room(self, holder: Holder, needed: int) -> bool:
        """Cut the largest other holders until ``needed`` bytes fit the total for
        ``holder``; False if they cannot (its own limit, or it holds the most itself)."""
        if self._held.get(holder, 0) + needed > self.per_connection:
            return False
        while self.total - self.held_total < needed:
            largest = max(self._held, key=self._held.__getitem__, default=None)
            if largest is None or largest is holder:
                return False
            largest.cut(f"the relay's send buffers are full ({self.total} bytes in all)")
            self.release(largest)
        return True
