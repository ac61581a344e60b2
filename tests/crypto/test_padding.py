"""PADME (Nikitin et al., "Reducing Metadata Leakage from Encrypted Files and Communication
with PURBs", PETS 2019, Algorithm 1) against a straightforward re-implementation."""

from __future__ import annotations

import itertools
import math

import pytest

from zerok.crypto.padding import padme


def floor_log2(x: int) -> int:
    """floor(log2 x) from math.log2, corrected where floats round across a power of two."""
    e = math.floor(math.log2(x))
    while 2**e > x:
        e -= 1
    while 2 ** (e + 1) <= x:
        e += 1
    return e


def reference_padme(length: int) -> int:
    """Algorithm 1 of the paper; L = 0 and L = 1 (log2 undefined / E = 0) are not padded."""
    if length < 2:
        return length
    e = floor_log2(length)
    s = floor_log2(e) + 1
    last_bits = e - s
    bit_mask = (1 << last_bits) - 1
    return (length + bit_mask) & ~bit_mask


SMALL = range(70_001)
LARGE = [
    2**20 - 1,
    2**20,
    2**20 + 1,
    10**7,
    16 * 1024 * 1024 + 4096,
    2**31 - 1,
    2**32 - 1,
    2**32,
    2**32 + 1,
    10**12,
    2**48 + 7,
    2**53 - 1,
    2**53 + 1,
    2**63 - 1,
    2**64 + 12345,
    10**30,
]


def test_known_values() -> None:
    known = {
        0: 0,
        1: 1,
        2: 2,
        3: 3,
        7: 7,
        8: 8,
        9: 10,
        15: 16,
        16: 16,
        17: 18,
        100: 104,
        255: 256,
        256: 256,
        257: 272,
        1000: 1024,
        1025: 1088,
        1089: 1152,
        65536: 65536,
        65537: 67584,
    }
    for length, padded in known.items():
        assert padme(length) == padded, length
        assert reference_padme(length) == padded, length


def test_matches_reference_up_to_70000() -> None:
    mismatches = [n for n in SMALL if padme(n) != reference_padme(n)]
    assert mismatches == []


@pytest.mark.parametrize("length", LARGE)
def test_matches_reference_for_large_values(length: int) -> None:
    assert padme(length) == reference_padme(length)
    assert padme(length) >= length


def test_never_shrinks() -> None:
    assert all(padme(n) >= n for n in SMALL)


def test_monotonic_non_decreasing() -> None:
    values = [padme(n) for n in SMALL]
    assert all(a <= b for a, b in itertools.pairwise(values))


def test_idempotent() -> None:
    assert all(padme(padme(n)) == padme(n) for n in SMALL)


def test_overhead_bound() -> None:
    """The overhead is below 2^-S with S = floor(log2 E) + 1 (E = floor(log2 L)).

    That is at most 12 % over all lengths (the paper's bound; the worst case here is
    15/129 ≈ 11.6 % at L = 129) and below 1/16 = 6.25 % once L ≥ 2^8 (E ≥ 8, S ≥ 4).
    """
    worst = 0.0
    for n in range(2, 70_001):
        overhead = padme(n) - n
        s = floor_log2(floor_log2(n)) + 1
        assert overhead * 2**s < n, n
        worst = max(worst, overhead / n)
        if n >= 2**8:
            assert overhead / n < 1 / 16, n
    assert worst <= 0.12
    assert worst == pytest.approx(15 / 129)
    for n in LARGE:
        assert (padme(n) - n) / n < 1 / 16


def test_leaks_only_log_log_bits() -> None:
    """Lengths in [2^E, 2^(E+1)) map to at most 2^S distinct padded sizes, plus 2^(E+1)
    itself which the top of the range rounds up to."""
    for e in range(1, 17):
        s = floor_log2(e) + 1
        sizes = {padme(n) for n in range(2**e, 2 ** (e + 1))}
        assert len(sizes) <= 2**s + 1, e
        assert max(sizes) <= 2 ** (e + 1)


def test_low_bits_are_cleared() -> None:
    for n in list(range(2, 5000)) + LARGE:
        e = floor_log2(n)
        last_bits = e - (floor_log2(e) + 1)
        assert padme(n) % (1 << last_bits) == 0


def test_negative_length() -> None:
    with pytest.raises(ValueError):
        padme(-1)
