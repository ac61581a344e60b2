"""CursorTracker: what the client has received, and which cursors it still misses."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zerok.protocol import CursorTracker


def test_starts_empty() -> None:
    t = CursorTracker()
    assert t.last == 0
    assert t.known_max == 0
    assert not t.needs_pull
    assert t.gaps() == []


def test_starts_from_a_saved_cursor() -> None:
    t = CursorTracker(41)
    assert t.last == 41
    assert t.known_max == 41
    assert not t.needs_pull
    assert t.gaps() == []
    assert not t.deliver(41)
    assert t.deliver(42)
    assert t.last == 42


@pytest.mark.parametrize("start", [-1, -100])
def test_negative_start_is_rejected(start: int) -> None:
    with pytest.raises(ValueError):
        CursorTracker(start)


def test_in_order_delivery() -> None:
    t = CursorTracker()
    for cursor in range(1, 11):
        assert t.deliver(cursor)
        assert t.last == cursor
        assert t.known_max == cursor
        assert t.gaps() == []
        assert not t.needs_pull


def test_duplicates_are_rejected() -> None:
    t = CursorTracker()
    assert t.deliver(1)
    assert t.deliver(2)
    assert not t.deliver(1)
    assert not t.deliver(2)
    assert t.deliver(5)  # ahead, buffered
    assert not t.deliver(5)
    assert t.last == 2
    assert not t.deliver(0)
    assert not t.deliver(-3)
    assert t.last == 2


def test_out_of_order_is_buffered_then_absorbed() -> None:
    t = CursorTracker()
    assert t.deliver(3)
    assert t.deliver(5)
    assert t.last == 0
    assert t.known_max == 5
    assert t.needs_pull
    assert t.gaps() == [(1, 2), (4, 4)]
    assert t.deliver(1)
    assert t.last == 1
    assert t.gaps() == [(2, 2), (4, 4)]
    assert t.deliver(2)  # absorbs 3
    assert t.last == 3
    assert t.gaps() == [(4, 4)]
    assert t.deliver(4)  # absorbs 5
    assert t.last == 5
    assert t.gaps() == []
    assert not t.needs_pull


def test_gaps_are_exact_ranges() -> None:
    t = CursorTracker(10)
    for cursor in (12, 13, 17, 20):
        t.deliver(cursor)
    t.announce(25)
    assert t.gaps() == [(11, 11), (14, 16), (18, 19), (21, 25)]


def test_gaps_with_nothing_above_the_buffered_cursors() -> None:
    t = CursorTracker()
    t.deliver(2)
    t.deliver(3)
    assert t.gaps() == [(1, 1)]


def test_announce() -> None:
    t = CursorTracker(5)
    assert t.announce(8)  # new
    assert t.known_max == 8
    assert t.needs_pull
    assert t.gaps() == [(6, 8)]
    assert t.announce(7)  # not delivered yet, so still new
    assert t.known_max == 8  # never lowered
    assert not t.announce(5)  # already delivered
    assert not t.announce(3)
    t.deliver(7)
    assert not t.announce(7)  # buffered counts as delivered
    assert t.gaps() == [(6, 6), (8, 8)]


def test_announce_never_moves_last() -> None:
    t = CursorTracker()
    t.announce(100)
    assert t.last == 0
    assert t.needs_pull
    assert t.gaps() == [(1, 100)]


def test_covered_skips_deleted_cursors() -> None:
    t = CursorTracker()
    t.deliver(1)
    t.announce(6)
    # A PULL page says: everything up to 4 was answered (2..4 expired before we pulled).
    t.covered(4)
    assert t.last == 4
    assert t.gaps() == [(5, 6)]
    assert t.needs_pull
    assert t.deliver(5)
    assert t.deliver(6)
    assert t.last == 6
    assert not t.needs_pull


def test_covered_drops_buffered_cursors_below_it_and_absorbs_above() -> None:
    t = CursorTracker()
    for cursor in (2, 4, 7, 8):
        t.deliver(cursor)
    t.covered(5)
    assert t.last == 5
    assert t.gaps() == [(6, 6)]
    assert not t.deliver(4)  # covered: a duplicate now
    assert t.deliver(6)  # absorbs 7 and 8
    assert t.last == 8
    assert t.gaps() == []


def test_covered_absorbs_the_next_buffered_cursor() -> None:
    t = CursorTracker()
    t.deliver(4)
    t.deliver(5)
    t.covered(3)
    assert t.last == 5
    assert t.gaps() == []


def test_covered_raises_known_max() -> None:
    t = CursorTracker()
    t.covered(9)
    assert t.last == 9
    assert t.known_max == 9
    assert not t.needs_pull


def test_never_moves_backwards() -> None:
    t = CursorTracker(10)
    t.covered(5)
    assert t.last == 10
    t.covered(10)
    assert t.last == 10
    assert not t.deliver(7)
    assert t.last == 10
    t.announce(3)
    assert t.last == 10
    assert t.known_max == 10


# -- the property -------------------------------------------------------------------------


@dataclass
class Model:
    """The truth: which cursors are done (delivered, covered, or at/below the start)."""

    start: int
    delivered: set[int] = field(default_factory=set)
    covered_through: int = 0
    known_max: int = 0

    def done(self, cursor: int) -> bool:
        return cursor <= max(self.start, self.covered_through) or cursor in self.delivered

    def prefix(self) -> int:
        n = max(self.start, self.covered_through)
        while n + 1 in self.delivered:
            n += 1
        return n


MAX_CURSOR = 12  # small, so that deliveries collide, touch and fill gaps often

operations = st.lists(
    st.tuples(
        st.sampled_from(["deliver", "covered", "announce"]),
        st.integers(min_value=-2, max_value=MAX_CURSOR),
    ),
    max_size=80,
)


@given(start=st.integers(min_value=0, max_value=3), ops=operations)
def test_tracker_matches_the_model(start: int, ops: list[tuple[str, int]]) -> None:
    t = CursorTracker(start)
    m = Model(start, known_max=start)
    for op, cursor in ops:
        previous_last = t.last
        if op == "deliver":
            new = not m.done(cursor) and cursor >= 1
            assert t.deliver(cursor) is new
            if new:
                m.delivered.add(cursor)
                m.known_max = max(m.known_max, cursor)
        elif op == "covered":
            t.covered(cursor)
            if cursor > m.prefix():
                m.covered_through = max(m.covered_through, cursor)
                m.known_max = max(m.known_max, cursor)
        else:
            new = not m.done(cursor) and cursor >= 1
            assert t.announce(cursor) is new
            m.known_max = max(m.known_max, cursor)

        assert t.last >= previous_last  # never backwards
        assert t.last == m.prefix()  # never past a missing cursor, never behind a done one
        assert t.known_max == m.known_max
        assert t.needs_pull is (m.known_max > m.prefix())
        missing = {c for c in range(t.last + 1, m.known_max + 1) if not m.done(c)}
        ranges = t.gaps()
        assert {c for lo, hi in ranges for c in range(lo, hi + 1)} == missing
        # Ranges are sorted, non-empty, disjoint and maximal (no two touch).
        for lo, hi in ranges:
            assert lo <= hi
        for (_, hi), (lo, _) in itertools.pairwise(ranges):
            assert hi + 1 < lo


@given(
    order=st.permutations(list(range(1, 21))),
    keep=st.lists(st.booleans(), min_size=20, max_size=20),
    covers=st.lists(st.integers(min_value=0, max_value=20), max_size=3),
)
def test_permuted_subset_of_deliveries(
    order: list[int], keep: list[bool], covers: list[int]
) -> None:
    t = CursorTracker()
    t.announce(20)
    delivered = {c for c, k in zip(range(1, 21), keep, strict=True) if k}
    cover_at = {i * 7: c for i, c in enumerate(covers)}  # interleave covers among deliveries
    covered = 0
    for i, cursor in enumerate(order):
        if i in cover_at:
            t.covered(cover_at[i])
            covered = max(covered, cover_at[i])
        if cursor in delivered:
            t.deliver(cursor)
    prefix = covered
    while prefix + 1 in delivered:
        prefix += 1
    assert t.last == prefix
    missing = [c for c in range(prefix + 1, 21) if c not in delivered]
    assert [c for lo, hi in t.gaps() for c in range(lo, hi + 1)] == missing
    assert t.needs_pull is bool(missing)
