"""BlobCipher: XChaCha20-Poly1305 sealing with bound associated data and PADME padding.

The sealed layout is checked against an independent XChaCha20-Poly1305 built here from
HChaCha20 (pure Python, draft-irtf-cfrg-xchacha §2.2) and pyca's ChaCha20-Poly1305.
"""

from __future__ import annotations

import os
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given
from hypothesis import strategies as st

from zerok.crypto.blob import BlobCipher
from zerok.crypto.keys import GroupKeys
from zerok.crypto.padding import padme
from zerok.errors import CryptoError, DecryptionError
from zerok.wire.ids import BlobId, DeviceId, GroupId

NONCE = 24
TAG = 16
HEADER = 1 + NONCE

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


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys() -> GroupKeys:
    return GroupKeys(bytes(range(32)))


@pytest.fixture
def cipher(keys: GroupKeys) -> BlobCipher:
    return BlobCipher(keys.blob_key, keys.group_id)


BLOB = BlobId(bytes(range(16)))
SENDER = DeviceId(bytes(range(100, 132)))

SAMPLES = {
    "empty": b"",
    "one-byte": b"\x01",
    "zero-byte": b"\x00",
    "marker-byte": b"\x80",
    "ends-0x80": b"some data\x80",
    "ends-0x80-0x80": b"\x80\x80",
    "ends-zeros": b"some data\x00\x00\x00",
    "ends-0x80-zeros": b"data\x80\x00\x00",
    "all-zeros": bytes(100),
    "100KiB": os.urandom(100 * 1024),
}


@pytest.mark.parametrize("pad", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("data", list(SAMPLES.values()), ids=list(SAMPLES))
def test_round_trip(cipher: BlobCipher, data: bytes, pad: bool) -> None:
    sealed = cipher.seal(data, blob_id=BLOB, sender=SENDER, pad=pad)
    assert cipher.open(sealed, blob_id=BLOB, sender=SENDER) == data
    assert sealed[0] == 0x01
    inner = padme(len(data) + 1) if pad else len(data) + 1
    assert len(sealed) == HEADER + inner + TAG


@pytest.mark.parametrize("size", [0, 1, 2, 7, 8, 100, 255, 256, 1000, 4097, 65536, 100_000])
def test_padded_sizes_follow_padme(cipher: BlobCipher, size: int) -> None:
    data = os.urandom(size)
    padded = cipher.seal(data, blob_id=BLOB, sender=SENDER, pad=True)
    plain = cipher.seal(data, blob_id=BLOB, sender=SENDER, pad=False)
    assert len(padded) == HEADER + padme(size + 1) + TAG
    assert len(plain) == HEADER + size + 1 + TAG
    assert len(padded) >= len(plain)


def test_padding_hides_nearby_sizes(cipher: BlobCipher) -> None:
    lengths = {
        len(cipher.seal(bytes(n), blob_id=BLOB, sender=SENDER, pad=True)) for n in range(1000, 1030)
    }
    assert len(lengths) < 30 // 4


@pytest.mark.parametrize("pad", [False, True])
def test_layout_matches_independent_xchacha(keys: GroupKeys, pad: bool) -> None:
    cipher = BlobCipher(keys.blob_key, keys.group_id)
    nonce = bytes(range(200, 224))
    data = b"the change blob"
    sealed = cipher.seal(data, blob_id=BLOB, sender=SENDER, pad=pad, nonce=nonce)
    zeros = padme(len(data) + 1) - len(data) - 1 if pad else 0
    plaintext = data + b"\x80" + bytes(zeros)
    ad = bytes(keys.group_id) + bytes(BLOB) + bytes(SENDER)
    expected = b"\x01" + nonce + xchacha_encrypt(keys.blob_key, nonce, plaintext, ad)
    assert sealed == expected
    assert xchacha_decrypt(keys.blob_key, sealed[1:25], sealed[25:], ad) == plaintext


def test_fixed_nonce_is_deterministic(cipher: BlobCipher) -> None:
    nonce = b"\x07" * 24
    a = cipher.seal(b"data", blob_id=BLOB, sender=SENDER, nonce=nonce)
    b = cipher.seal(b"data", blob_id=BLOB, sender=SENDER, nonce=nonce)
    assert a == b
    assert a[1:25] == nonce


def test_random_nonce_makes_seals_differ(cipher: BlobCipher) -> None:
    sealed = {cipher.seal(b"same data", blob_id=BLOB, sender=SENDER) for _ in range(20)}
    assert len(sealed) == 20
    assert len({s[1:25] for s in sealed}) == 20


@pytest.mark.parametrize("size", [0, 23, 25, 32])
def test_bad_nonce_length(cipher: BlobCipher, size: int) -> None:
    with pytest.raises(CryptoError):
        cipher.seal(b"data", blob_id=BLOB, sender=SENDER, nonce=bytes(size))


@pytest.mark.parametrize("size", [0, 16, 31, 33])
def test_bad_key_length(size: int) -> None:
    with pytest.raises(CryptoError):
        BlobCipher(bytes(size), GroupId(bytes(32)))


# -- tampering -------------------------------------------------------------------------


def _sealed(cipher: BlobCipher, pad: bool = False) -> bytes:
    return cipher.seal(b"a blob of some length " * 3, blob_id=BLOB, sender=SENDER, pad=pad)


TAMPER_POSITIONS = {
    "version": 0,
    "nonce-first": 1,
    "nonce-middle": 12,
    "nonce-last": 24,
    "ciphertext-first": 25,
    "ciphertext-middle": 50,
    "tag-first": -16,
    "tag-middle": -8,
    "tag-last": -1,
}


@pytest.mark.parametrize("pad", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("position", list(TAMPER_POSITIONS.values()), ids=list(TAMPER_POSITIONS))
def test_modified_ciphertext_is_rejected(cipher: BlobCipher, position: int, pad: bool) -> None:
    sealed = bytearray(_sealed(cipher, pad))
    for bit in (0, 7):
        changed = bytearray(sealed)
        changed[position] ^= 1 << bit
        with pytest.raises(DecryptionError):
            cipher.open(bytes(changed), blob_id=BLOB, sender=SENDER)


@pytest.mark.parametrize("version", [0x00, 0x02, 0x81, 0xFF])
def test_wrong_version_byte(cipher: BlobCipher, version: int) -> None:
    sealed = _sealed(cipher)
    with pytest.raises(DecryptionError):
        cipher.open(bytes([version]) + sealed[1:], blob_id=BLOB, sender=SENDER)


def test_other_blob_id_is_rejected(cipher: BlobCipher) -> None:
    sealed = _sealed(cipher)
    other = bytearray(BLOB)
    other[-1] ^= 1
    with pytest.raises(DecryptionError):
        cipher.open(sealed, blob_id=BlobId(bytes(other)), sender=SENDER)
    with pytest.raises(DecryptionError):
        cipher.open(sealed, blob_id=BlobId.random(), sender=SENDER)


def test_other_sender_is_rejected(cipher: BlobCipher) -> None:
    sealed = _sealed(cipher)
    other = bytearray(SENDER)
    other[0] ^= 0x80
    with pytest.raises(DecryptionError):
        cipher.open(sealed, blob_id=BLOB, sender=DeviceId(bytes(other)))


def test_fields_cannot_be_shifted_between_ids(keys: GroupKeys, cipher: BlobCipher) -> None:
    """The AD is a fixed-length concatenation, so ids cannot trade bytes with each other."""
    sealed = _sealed(cipher)
    shifted_blob = BlobId(bytes(BLOB)[1:] + bytes(SENDER)[:1])
    shifted_sender = DeviceId(bytes(SENDER)[1:] + b"\x00")
    with pytest.raises(DecryptionError):
        cipher.open(sealed, blob_id=shifted_blob, sender=shifted_sender)


def test_other_group_id_is_rejected(keys: GroupKeys, cipher: BlobCipher) -> None:
    sealed = _sealed(cipher)
    other_group = GroupId(bytes(reversed(bytes(keys.group_id))))
    same_key_other_group = BlobCipher(keys.blob_key, other_group)
    with pytest.raises(DecryptionError):
        same_key_other_group.open(sealed, blob_id=BLOB, sender=SENDER)


def test_other_key_is_rejected(keys: GroupKeys, cipher: BlobCipher) -> None:
    sealed = _sealed(cipher)
    other = GroupKeys.generate()
    with pytest.raises(DecryptionError):
        BlobCipher(other.blob_key, keys.group_id).open(sealed, blob_id=BLOB, sender=SENDER)
    with pytest.raises(DecryptionError):
        BlobCipher(other.blob_key, other.group_id).open(sealed, blob_id=BLOB, sender=SENDER)


@pytest.mark.parametrize("keep", [0, 1, 25, 40, 41, 42, -1, -16, -17])
def test_truncated_is_rejected(cipher: BlobCipher, keep: int) -> None:
    sealed = _sealed(cipher)
    with pytest.raises(DecryptionError):
        cipher.open(sealed[:keep], blob_id=BLOB, sender=SENDER)


def test_truncated_empty_blob_is_rejected(cipher: BlobCipher) -> None:
    sealed = cipher.seal(b"", blob_id=BLOB, sender=SENDER)
    assert len(sealed) == 42
    for keep in range(42):
        with pytest.raises(DecryptionError):
            cipher.open(sealed[:keep], blob_id=BLOB, sender=SENDER)


def test_extended_is_rejected(cipher: BlobCipher) -> None:
    sealed = _sealed(cipher)
    for extra in (b"\x00", b"\x80", os.urandom(16)):
        with pytest.raises(DecryptionError):
            cipher.open(sealed + extra, blob_id=BLOB, sender=SENDER)


@pytest.mark.parametrize(
    "plaintext",
    [b"no marker", b"\x00\x00\x00", b"data\x81", b"\x00", b"x\x80y"],
    ids=["no-marker", "all-zeros", "wrong-marker", "single-zero", "marker-not-last"],
)
def test_malformed_padding_is_rejected(
    keys: GroupKeys, cipher: BlobCipher, plaintext: bytes
) -> None:
    """Authentic ciphertexts (made with the key) whose inner padding is malformed."""
    nonce = os.urandom(24)
    ad = bytes(keys.group_id) + bytes(BLOB) + bytes(SENDER)
    sealed = b"\x01" + nonce + xchacha_encrypt(keys.blob_key, nonce, plaintext, ad)
    with pytest.raises(DecryptionError):
        cipher.open(sealed, blob_id=BLOB, sender=SENDER)


def test_decryption_error_is_a_crypto_error() -> None:
    assert issubclass(DecryptionError, CryptoError)


@given(data=st.binary(max_size=4096), pad=st.booleans())
def test_round_trip_property(data: bytes, pad: bool) -> None:
    keys = GroupKeys(bytes(range(32)))
    cipher = BlobCipher(keys.blob_key, keys.group_id)
    sealed = cipher.seal(data, blob_id=BLOB, sender=SENDER, pad=pad)
    assert cipher.open(sealed, blob_id=BLOB, sender=SENDER) == data
    inner = padme(len(data) + 1) if pad else len(data) + 1
    assert len(sealed) == HEADER + inner + TAG
