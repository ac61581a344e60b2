"""An independent XChaCha20-Poly1305, and PADME padding of sealed blobs.

The XChaCha20-Poly1305 here is built from HChaCha20 (pure Python, draft-irtf-cfrg-xchacha
§2.2) and pyca's ChaCha20-Poly1305, checked against the draft's vectors; the blob format
tests (test_blob_v2.py) check the sealed layout against it. The padding tests check that a
padded blob's inner plaintext is exactly PADME's size, whatever the data's length.
"""

from __future__ import annotations

import os
import struct

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_encrypt

from zerok.crypto.blob import KIND_DATA, NO_LINK, V2_OVERHEAD, BlobHeader, open_blob, seal_blob
from zerok.crypto.padding import padme
from zerok.errors import CryptoError, DecryptionError
from zerok.wire.ids import BlobId, DeviceId, GroupId

# -- an independent XChaCha20-Poly1305 -------------------------------------------------

_MASK = 0xFFFFFFFF


def _rotl(v: int, c: int) -> int:
    return ((v << c) & _MASK) | (v >> (32 - c))


def _quarter(s: list[int], a: int, b: int, c: int, d: int) -> None:
    s[a] = (s[a] + s[b]) & _MASK
    s[d] = _rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & _MASK
    s[b] = _rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & _MASK
    s[d] = _rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & _MASK
    s[b] = _rotl(s[b] ^ s[c], 7)


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    state = [
        *struct.unpack("<4I", b"expand 32-byte k"),
        *struct.unpack("<8I", key),
        *struct.unpack("<4I", nonce16),
    ]
    for _ in range(10):
        _quarter(state, 0, 4, 8, 12)
        _quarter(state, 1, 5, 9, 13)
        _quarter(state, 2, 6, 10, 14)
        _quarter(state, 3, 7, 11, 15)
        _quarter(state, 0, 5, 10, 15)
        _quarter(state, 1, 6, 11, 12)
        _quarter(state, 2, 7, 8, 13)
        _quarter(state, 3, 4, 9, 14)
    return struct.pack("<8I", *state[0:4], *state[12:16])


def xchacha_encrypt(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    subkey = hchacha20(key, nonce[:16])
    return ChaCha20Poly1305(subkey).encrypt(bytes(4) + nonce[16:], plaintext, ad)


def xchacha_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    subkey = hchacha20(key, nonce[:16])
    return ChaCha20Poly1305(subkey).decrypt(bytes(4) + nonce[16:], ciphertext, ad)


def test_hchacha20_vector() -> None:
    """draft-irtf-cfrg-xchacha-03 §2.2.1."""
    key = bytes(range(32))
    nonce = bytes.fromhex("000000090000004a0000000031415927")
    expected = bytes.fromhex("82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc")
    assert hchacha20(key, nonce) == expected


# draft-irtf-cfrg-xchacha-03 §A.3.1: the AEAD_XChaCha20_Poly1305 test vector.
VECTOR_KEY = bytes(range(0x80, 0xA0))
VECTOR_NONCE = bytes(range(0x40, 0x58))
VECTOR_AD = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
VECTOR_PLAINTEXT = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the "
    b"future, sunscreen would be it."
)
VECTOR_SEALED = bytes.fromhex(
    "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb731c7f1b0b4aa6440b"
    "f3a82f4eda7e39ae64c6708c54c216cb96b72e1213b4522f8c9ba40db5d945b11b69b982c1bb9e3f3f"
    "ac2bc369488f76b2383565d3fff921f9664c97637da9768812f615c68b13b52e"
    "c0875924c1c7987947deafd8780acf49"  # the tag
)


def test_xchacha20_poly1305_vector() -> None:
    sealed = xchacha_encrypt(VECTOR_KEY, VECTOR_NONCE, VECTOR_PLAINTEXT, VECTOR_AD)
    assert sealed == VECTOR_SEALED
    assert xchacha_decrypt(VECTOR_KEY, VECTOR_NONCE, sealed, VECTOR_AD) == VECTOR_PLAINTEXT
    # libsodium, which the blob format uses, agrees.
    libsodium = crypto_aead_xchacha20poly1305_ietf_encrypt(
        VECTOR_PLAINTEXT, VECTOR_AD, VECTOR_NONCE, VECTOR_KEY
    )
    assert libsodium == VECTOR_SEALED


def test_independent_xchacha_rejects_a_changed_tag() -> None:
    changed = VECTOR_SEALED[:-1] + bytes([VECTOR_SEALED[-1] ^ 1])
    with pytest.raises(InvalidTag):
        xchacha_decrypt(VECTOR_KEY, VECTOR_NONCE, changed, VECTOR_AD)


# -- padding ---------------------------------------------------------------------------------

KEY = bytes(range(32))
GROUP = GroupId(bytes(range(32, 64)))
BLOB = BlobId(bytes(range(16)))
SENDER = DeviceId(bytes(range(100, 132)))
HEADER = BlobHeader(epoch=3, kind=KIND_DATA, seq=1, link=NO_LINK)
INNER_HEADER = 1 + 8 + 32  # kind, seq, link: sealed with the data
PREFIX = 1 + 4 + 24  # format, epoch, nonce
TAG = 16


def _seal(data: bytes, *, pad: bool) -> bytes:
    return seal_blob(
        data, key=KEY, group_id=GROUP, blob_id=BLOB, sender=SENDER, header=HEADER, pad=pad
    )


@pytest.mark.parametrize("size", [0, 1, 2, 7, 8, 100, 255, 256, 1000, 4097, 65536, 100_000])
def test_padded_sizes_follow_padme(size: int) -> None:
    data = os.urandom(size)
    padded = _seal(data, pad=True)
    plain = _seal(data, pad=False)
    unpadded = INNER_HEADER + size + 1  # header, data and the 0x80 marker
    assert len(padded) == PREFIX + padme(unpadded) + TAG
    assert len(plain) == PREFIX + unpadded + TAG == size + V2_OVERHEAD
    assert len(padded) >= len(plain)
    for sealed in (padded, plain):
        opened = open_blob(sealed, key=KEY, group_id=GROUP, blob_id=BLOB, sender=SENDER)
        assert opened.data == data


def test_padding_hides_nearby_sizes() -> None:
    lengths = {len(_seal(bytes(n), pad=True)) for n in range(1000, 1030)}
    assert len(lengths) < 30 // 4
    assert len({len(_seal(bytes(n), pad=False)) for n in range(1000, 1030)}) == 30


def test_padding_overhead_is_bounded() -> None:
    """PADME adds at most about 12 % (less for larger blobs): padding costs little."""
    for size in (100, 1000, 10_000, 100_000):
        unpadded = INNER_HEADER + size + 1
        assert padme(unpadded) - unpadded <= unpadded * 0.12
        assert len(_seal(bytes(size), pad=True)) - len(_seal(bytes(size), pad=False)) == (
            padme(unpadded) - unpadded
        )


def test_decryption_error_is_a_crypto_error() -> None:
    assert issubclass(DecryptionError, CryptoError)
