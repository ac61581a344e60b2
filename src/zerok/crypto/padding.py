"""PADME padding (Nikitin et al., PETS 2019): leaks O(log log L) bits of a length L,
with at most 12 % overhead."""

from __future__ import annotations


def padme(length: int) -> int:
    """The padded size for a plaintext of ``length`` bytes."""
    if length < 0:
        raise ValueError("length must be non-negative")
    if length < 2:
        return length
    e = length.bit_length() - 1  # floor(log2 L)
    s = e.bit_length()  # floor(log2 E) + 1
    mask = (1 << (e - s)) - 1
    return (length + mask) & ~mask
