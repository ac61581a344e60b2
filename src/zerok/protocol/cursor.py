"""Cursor tracking on the client: what has been delivered, and what is missing.

The relay gives each group a gap-free cursor sequence, but blobs can disappear before a
device pulls them (TTL, force delete), so only the relay can say that a range is done:
``covered(through)`` records a PULL page's word for it. ``last`` only moves over cursors
that were delivered or covered, so saving it never skips a blob.
"""

from __future__ import annotations


class CursorTracker:
    def __init__(self, last: int = 0) -> None:
        if last < 0:
            raise ValueError("cursor must be non-negative")
        self._last = last
        self._known_max = last
        self._ahead: set[int] = set()  # delivered out of order, above last

    @property
    def last(self) -> int:
        """Every cursor up to this one was delivered (or is known to be gone)."""
        return self._last

    @property
    def known_max(self) -> int:
        """The highest cursor the relay has told us exists."""
        return self._known_max

    @property
    def needs_pull(self) -> bool:
        return self._known_max > self._last

    def announce(self, cursor: int) -> bool:
        """The relay said ``cursor`` exists (NOTIFY, WELCOME max_cursor). True if it is new."""
        self._known_max = max(self._known_max, cursor)
        return cursor > self._last and cursor not in self._ahead

    def deliver(self, cursor: int) -> bool:
        """A blob with this cursor was handed to the app. False if it is a duplicate."""
        if cursor <= self._last or cursor in self._ahead:
            return False
        self.announce(cursor)
        if cursor == self._last + 1:
            self._last = cursor
            self._absorb()
        else:
            self._ahead.add(cursor)
        return True

    def covered(self, through: int) -> None:
        """The relay answered for every cursor up to ``through`` (a PULL page)."""
        if through > self._last:
            self._ahead = {c for c in self._ahead if c > through}
            self._last = through
            self.announce(through)
            self._absorb()

    def gaps(self) -> list[tuple[int, int]]:
        """Missing cursor ranges (inclusive) between ``last`` and ``known_max``."""
        out: list[tuple[int, int]] = []
        start = self._last + 1
        for cursor in sorted(self._ahead):
            if cursor > start:
                out.append((start, cursor - 1))
            start = cursor + 1
        if start <= self._known_max:
            out.append((start, self._known_max))
        return out

    def _absorb(self) -> None:
        while self._last + 1 in self._ahead:
            self._last += 1
            self._ahead.discard(self._last)
