"""Blob format 2: epoch in clear, kind/seq/link under the AEAD, the sender's hash chain.

The layout is checked against the independent XChaCha20-Poly1305 of test_blob.py (HChaCha20
from draft-irtf-cfrg-xchacha, checked there against the draft's vector, plus pyca's
ChaCha20-Poly1305), and the chain hash against hashlib written out from the spec.
"""

from __future__ import annotations

import hashlib
import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.crypto.test_blob import xchacha_decrypt, xchacha_encrypt
from zerok.crypto.blob import (
    BLOB_FORMAT_V2,
    KIND_DATA,
    KIND_REPAIR,
    NO_LINK,
    V2_OVERHEAD,
    BlobHeader,
    OpenedBlob,
    chain_hash,
    open_blob,
    seal_blob,
    sealed_epoch,
)
from zerok.crypto.padding import padme
from zerok.errors import CryptoError, DecryptionError
from zerok.wire.ids import BlobId, DeviceId, GroupId

KEY = bytes(range(32))
NONCE = bytes(range(200, 224))
GROUP = GroupId(bytes(range(32, 64)))
BLOB = BlobId(bytes(range(16)))
SENDER = DeviceId(bytes(range(100, 132)))
PREV = chain_hash(BlobId(bytes(range(16, 32))), 2, KIND_DATA, b"previous blob")
HEADER = BlobHeader(epoch=7, kind=KIND_DATA, seq=3, link=PREV)
DATA = b"the change blob"
IDS = {"group_id": GROUP, "blob_id": BLOB, "sender": SENDER}


def _seal(data: bytes = DATA, header: BlobHeader = HEADER, *, pad: bool = False) -> bytes:
    return seal_blob(data, key=KEY, header=header, pad=pad, **IDS)  # type: ignore[arg-type]


def _open(sealed: bytes, key: bytes = KEY, **ids: bytes) -> OpenedBlob:
    return open_blob(sealed, key=key, **{**IDS, **ids})  # type: ignore[arg-type]


def _ad(epoch: int) -> bytes:
    return struct.pack(">BI", 2, epoch) + bytes(GROUP) + bytes(BLOB) + bytes(SENDER)


def _forge(inner: bytes, epoch: int = 7) -> bytes:
    """An authentic v2 blob (made with the key) around an arbitrary inner plaintext."""
    return struct.pack(">BI", 2, epoch) + NONCE + xchacha_encrypt(KEY, NONCE, inner, _ad(epoch))


# -- frozen vectors (docs/protocol: blob format 2) -----------------------------------------

VECTOR_PREV = "f1d878b4bf8e9a47c29fd7ad0c9ddaa4ec4014a8eb5481dc79952db34a1b9565"
VECTOR_RECORD = "3b159c635719815675afd6492bb1cad1dcdc911acc677a790733ac6632049272"
VECTOR_UNPADDED = (
    "0200000007c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf7968288442727c665b5aaecef47cb1"
    "f95f165a300a97b76b8702361b4b55cab92dc5910903042185cdc8d1823f4e4975451e6db291b535be35a2"
    "3c9e51a9506e1554ace95dcb0870ae"
)
VECTOR_PADDED = (
    "0200000007c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf7968288442727c665b5aaecef47cb1"
    "f95f165a300a97b76b8702361b4b55cab92dc5910903042185cdc8d1823f4e4975451e6db291b535be3523"
    "a72c94d37d800ed993f75d87de677f8e4722"
)
VECTOR_REPAIR_EMPTY = (
    "0201020304c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf7868288442727c6659ab76b640c33f"
    "6318d4c5e7a79b2ab123ee760fe3be9e38f1bc0424b04e3a10a83c1d2edde35a782d7794c179a28dd9aaf3"
)


def _spec_chain_hash(blob_id: bytes, seq: int, kind: int, data: bytes) -> bytes:
    inner = hashlib.sha256(data).digest()
    return hashlib.sha256(
        b"0k-sync/v2/link\x00" + blob_id + seq.to_bytes(8, "big") + bytes([kind]) + inner
    ).digest()


def test_chain_hash_vector() -> None:
    assert PREV.hex() == VECTOR_PREV
    assert _spec_chain_hash(bytes(range(16, 32)), 2, 0, b"previous blob") == PREV
    assert chain_hash(BLOB, 3, KIND_DATA, DATA).hex() == VECTOR_RECORD


@pytest.mark.parametrize(
    ("pad", "expected"), [(False, VECTOR_UNPADDED), (True, VECTOR_PADDED)], ids=["plain", "pad"]
)
def test_frozen_vectors(pad: bool, expected: str) -> None:
    sealed = seal_blob(DATA, key=KEY, nonce=NONCE, header=HEADER, pad=pad, **IDS)  # type: ignore[arg-type]
    assert sealed.hex() == expected
    opened = _open(sealed)
    assert opened == OpenedBlob(header=HEADER, data=DATA, blob_id=BLOB)
    assert opened.record_hash.hex() == VECTOR_RECORD


def test_frozen_vector_repair_kind_first_seq_empty_data() -> None:
    header = BlobHeader(epoch=0x01020304, kind=KIND_REPAIR, seq=1, link=NO_LINK)
    sealed = seal_blob(b"", key=KEY, nonce=NONCE, header=header, **IDS)  # type: ignore[arg-type]
    assert sealed.hex() == VECTOR_REPAIR_EMPTY
    assert len(sealed) == V2_OVERHEAD
    assert sealed_epoch(sealed) == 0x01020304
    assert _open(sealed).header == header


@pytest.mark.parametrize("pad", [False, True])
def test_layout_matches_independent_xchacha(pad: bool) -> None:
    sealed = seal_blob(DATA, key=KEY, nonce=NONCE, header=HEADER, pad=pad, **IDS)  # type: ignore[arg-type]
    unpadded = 1 + 8 + 32 + len(DATA) + 1
    zeros = padme(unpadded) - unpadded if pad else 0
    inner = bytes([0]) + (3).to_bytes(8, "big") + PREV + DATA + b"\x80" + bytes(zeros)
    assert sealed[:5] == b"\x02\x00\x00\x00\x07"
    assert sealed[5:29] == NONCE
    assert xchacha_decrypt(KEY, NONCE, sealed[29:], _ad(7)) == inner
    assert sealed == _forge(inner)


def test_overhead_is_87() -> None:
    assert V2_OVERHEAD == 87
    assert BLOB_FORMAT_V2 == 0x02
    assert bytes(32) == NO_LINK
    for size in (0, 1, 100, 5000):
        assert len(_seal(os.urandom(size))) == size + 87


# -- round trips -----------------------------------------------------------------------------

SAMPLES = {
    "empty": b"",
    "zero-byte": b"\x00",
    "marker-byte": b"\x80",
    "ends-0x80-zeros": b"data\x80\x00\x00",
    "all-zeros": bytes(100),
    "64KiB": os.urandom(64 * 1024),
}


@pytest.mark.parametrize("pad", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("data", list(SAMPLES.values()), ids=list(SAMPLES))
def test_round_trip(data: bytes, pad: bool) -> None:
    sealed = _seal(data, pad=pad)
    opened = _open(sealed)
    assert opened.data == data
    assert opened.header == HEADER
    assert opened.blob_id == BLOB
    unpadded = 1 + 8 + 32 + len(data) + 1
    inner = padme(unpadded) if pad else unpadded
    assert len(sealed) == 5 + 24 + inner + 16


HEADERS = st.builds(
    BlobHeader,
    epoch=st.integers(0, 2**32 - 1),
    kind=st.sampled_from([KIND_DATA, KIND_REPAIR]),
    seq=st.integers(1, 2**64 - 1),
    link=st.binary(min_size=32, max_size=32),
)


@given(data=st.binary(max_size=2048), pad=st.booleans(), header=HEADERS)
def test_round_trip_property(data: bytes, pad: bool, header: BlobHeader) -> None:
    epoch, kind, seq = header.epoch, header.kind, header.seq
    sealed = _seal(data, header, pad=pad)
    assert sealed_epoch(sealed) == epoch
    opened = _open(sealed)
    assert (opened.header, opened.data) == (header, data)
    assert opened.record_hash == _spec_chain_hash(bytes(BLOB), seq, kind, data)


def test_resealing_under_new_epoch_keeps_the_chain() -> None:
    """The chain hash covers the plaintext: a blob re-sealed under the next epoch's key
    (same id, seq, data) links exactly as before."""
    old = _open(_seal())
    new_key = os.urandom(32)
    header = BlobHeader(epoch=8, kind=KIND_DATA, seq=3, link=PREV)
    resealed = seal_blob(DATA, key=new_key, header=header, **IDS)  # type: ignore[arg-type]
    assert sealed_epoch(resealed) == 8
    assert _open(resealed, key=new_key).record_hash == old.record_hash


def test_random_nonces_differ() -> None:
    assert len({_seal()[5:29] for _ in range(10)}) == 10


# -- what is bound --------------------------------------------------------------------------


def _flip(raw: bytes, index: int = -1) -> bytes:
    changed = bytearray(raw)
    changed[index] ^= 0x01
    return bytes(changed)


@pytest.mark.parametrize("field", ["group_id", "blob_id", "sender"])
def test_every_id_is_bound(field: str) -> None:
    sealed = _seal()
    other = type(IDS[field])(_flip(bytes(IDS[field])))
    with pytest.raises(DecryptionError, match="wrong epoch key, or it was modified"):
        _open(sealed, **{field: other})


@pytest.mark.parametrize("index", [1, 2, 3, 4])
def test_epoch_bytes_are_bound(index: int) -> None:
    changed = _flip(_seal(), index)
    assert sealed_epoch(changed) != 7
    with pytest.raises(DecryptionError, match="blob failed authentication"):
        _open(changed)


def test_wrong_key_is_rejected() -> None:
    with pytest.raises(DecryptionError, match="wrong epoch key"):
        _open(_seal(), key=os.urandom(32))


@pytest.mark.parametrize("pad", [False, True])
@pytest.mark.parametrize("index", [5, 28, 29, 40, 70, -17, -16, -1])
def test_flipped_byte_is_rejected(index: int, pad: bool) -> None:
    sealed = _seal(pad=pad)
    with pytest.raises(DecryptionError):
        _open(_flip(sealed, index))


@pytest.mark.parametrize("keep", [0, 1, 4, 5, 29, 86, -1, -16])
def test_truncated_is_rejected(keep: int) -> None:
    with pytest.raises(DecryptionError):
        _open(_seal()[:keep])


def test_truncated_minimal_blob_is_rejected_at_every_length() -> None:
    sealed = _seal(b"")
    for keep in range(len(sealed)):
        with pytest.raises(DecryptionError):
            _open(sealed[:keep])


def test_extended_is_rejected() -> None:
    with pytest.raises(DecryptionError):
        _open(_seal() + b"\x00")


@pytest.mark.parametrize("version", [0x00, 0x01, 0x03, 0xFF])
def test_other_format_byte(version: int) -> None:
    changed = bytes([version]) + _seal()[1:]
    with pytest.raises(DecryptionError, match="unknown blob format"):
        sealed_epoch(changed)
    with pytest.raises(DecryptionError, match="unknown blob format"):
        _open(changed)


def test_a_version_1_blob_does_not_open() -> None:
    # Format 1 was version byte 0x01, a 24-byte nonce, then the AEAD output.
    v1_sealed = bytes([0x01]) + bytes(24) + bytes(100 + 16)
    with pytest.raises(DecryptionError, match="unknown blob format 0x01"):
        _open(v1_sealed)


def test_sealed_epoch_of_short_input() -> None:
    with pytest.raises(DecryptionError, match="too short"):
        sealed_epoch(b"\x02\x00\x00\x00\x07")


# -- the inner header -------------------------------------------------------------------------


def _inner(kind: int, seq: int, data: bytes = b"x") -> bytes:
    return bytes([kind]) + seq.to_bytes(8, "big") + PREV + data + b"\x80"


@pytest.mark.parametrize("kind", [2, 7, 0x80, 0xFF])
def test_unknown_kind_is_rejected(kind: int) -> None:
    with pytest.raises(DecryptionError, match="unknown blob kind"):
        _open(_forge(_inner(kind, 3)))
    with pytest.raises(CryptoError, match="unknown blob kind"):
        BlobHeader(epoch=7, kind=kind, seq=3, link=PREV)


def test_seq_zero_is_refused_at_seal_and_open() -> None:
    with pytest.raises(CryptoError, match="sequences start at 1"):
        BlobHeader(epoch=7, kind=KIND_DATA, seq=0, link=NO_LINK)
    with pytest.raises(DecryptionError, match="sequences start at 1"):
        _open(_forge(_inner(KIND_DATA, 0)))
    with pytest.raises(CryptoError):
        chain_hash(BLOB, 0, KIND_DATA, b"")


@pytest.mark.parametrize(
    "plaintext",
    [
        _inner(0, 3)[:-1],  # no marker
        _inner(0, 3, b"")[:-1] + b"\x00\x00",  # header and zeros only
        _inner(0, 3)[:20] + b"\x80" + bytes(30),  # marker inside the header
        b"\x80" + bytes(50),
    ],
    ids=["no-marker", "zeros", "short-header", "marker-only"],
)
def test_malformed_inner_is_rejected(plaintext: bytes) -> None:
    with pytest.raises(DecryptionError, match="padding is malformed"):
        _open(_forge(plaintext))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"epoch": -1}, "epoch"),
        ({"epoch": 2**32}, "epoch"),
        ({"seq": 2**64}, "sequence number"),
        ({"seq": -5}, "sequence number"),
        ({"link": bytes(31)}, "link must be 32 bytes"),
        ({"link": bytes(33)}, "link must be 32 bytes"),
    ],
)
def test_bad_header_fields(fields: dict[str, int | bytes], message: str) -> None:
    values: dict[str, object] = {"epoch": 7, "kind": 0, "seq": 3, "link": PREV, **fields}
    with pytest.raises(CryptoError, match=message):
        BlobHeader(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, 16, 31, 33])
def test_bad_key_length(size: int) -> None:
    with pytest.raises(CryptoError, match="32 bytes"):
        seal_blob(DATA, key=bytes(size), header=HEADER, **IDS)  # type: ignore[arg-type]
    with pytest.raises(CryptoError, match="32 bytes"):
        _open(_seal(), key=bytes(size))


@pytest.mark.parametrize("size", [0, 12, 23, 25])
def test_bad_nonce_length(size: int) -> None:
    with pytest.raises(CryptoError, match="nonce"):
        seal_blob(DATA, key=KEY, header=HEADER, nonce=bytes(size), **IDS)  # type: ignore[arg-type]
