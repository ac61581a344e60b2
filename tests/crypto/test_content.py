"""Chunk sealing: the layout recomputed from its formula with other libraries, frozen
vectors for the docs, and every way a chunk can fail to open."""

from __future__ import annotations

import hashlib
import hmac

import msgspec
import pytest
from nacl.bindings import crypto_aead_chacha20poly1305_ietf_encrypt

from tests.wire.test_manifest import VECTOR_BYTES, VECTOR_MANIFEST
from zerok.crypto.content import (
    ADDRESS_BYTES,
    CHUNK_FORMAT,
    CHUNK_OVERHEAD,
    MAX_CHUNK,
    MAX_SEALED_CHUNK,
    ChunkRef,
    chunk_address,
    chunk_key,
    chunking_seed,
    open_chunk,
    seal_chunk,
)
from zerok.crypto.epoch import content_key
from zerok.errors import CryptoError, DecryptionError
from zerok.wire.ids import GroupId
from zerok.wire.manifest import ChunkRef as WireChunkRef
from zerok.wire.manifest import encode_manifest

# The story of docs/protocol.md §13: the group of Vector 10, epoch 1 (key 11 x 32, started
# by Vector 16), and the plaintext of Vector 21.
EPOCH_KEY = bytes([0x11]) * 32
GROUP = GroupId(bytes.fromhex("d50ba1ae2734c680a073b001cba9aad92b61ac3375ddef0a94118866c0a51f98"))
PLAINTEXT = b"The quick brown fox jumps over the lazy dog."

# Frozen once from this module, for the docs: change them only with the format.
CONTENT_KEY = bytes.fromhex("856c253653212d6fa54e9b67f1f1948500339e260e86c7f7c3cdc0b6cb619206")
CHUNK_KEY = bytes.fromhex("32a1f5f8b5ad10c923ea2c39e2358dfcdb40f7058042a49761c575021151b1b7")
SEALED = bytes.fromhex(
    "017ad2d04e7493d0cde7a25c908039571e81061092ca8b74d2b79d1ce337bf4a86ffc29d54884f02ff31f2"
    "0b7ec1f4e2e0bf23babbccb95c124d72d34d"
)
ADDRESS = bytes.fromhex("b5ab59df914f823d54e92c492be7a61f7742e63bc7519842ee7a107256653f1b")
SEED = 0x35C500618959E081


def rfc5869_hkdf(ikm: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 with an empty salt, written out from RFC 5869."""
    prk = hmac.new(bytes(32), ikm, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes((counter,)), hashlib.sha256).digest()
        out, counter = out + block, counter + 1
    return out[:length]


def test_vector() -> None:
    assert content_key(EPOCH_KEY) == CONTENT_KEY
    sealed, ref = seal_chunk(PLAINTEXT, content_key=CONTENT_KEY, group_id=GROUP)
    assert sealed == SEALED
    assert ref == ChunkRef(address=ADDRESS, key=CHUNK_KEY, size=len(PLAINTEXT))
    assert len(sealed) == len(PLAINTEXT) + CHUNK_OVERHEAD == 61
    assert chunking_seed(CONTENT_KEY) == SEED
    assert open_chunk(SEALED, ref, group_id=GROUP) == PLAINTEXT


def test_vector_follows_the_formula() -> None:
    """What an implementation in another language computes from the formula alone
    (RFC 5869 HKDF by hand, libsodium's ChaCha20-Poly1305)."""
    digest = hashlib.sha256(PLAINTEXT).digest()
    key = rfc5869_hkdf(CONTENT_KEY, b"0k-sync/v2/chunk-key\x00" + digest)
    aad = b"0k-sync/v2/chunk\x00" + bytes(GROUP)
    sealed = b"\x01" + crypto_aead_chacha20poly1305_ietf_encrypt(PLAINTEXT, aad, bytes(12), key)
    assert (key, sealed, hashlib.sha256(sealed).digest()) == (CHUNK_KEY, SEALED, ADDRESS)
    assert rfc5869_hkdf(EPOCH_KEY, b"0k-sync/v2/content-key") == CONTENT_KEY
    raw = rfc5869_hkdf(CONTENT_KEY, b"0k-sync/v2/chunk-seed", 8)
    assert int.from_bytes(raw, "big") >> 1 == SEED


def test_the_manifest_vector_lists_these_chunks() -> None:
    """tests/wire/test_manifest.py's vector is the fox file cut in two, sealed here."""
    refs = tuple(
        seal_chunk(part, content_key=CONTENT_KEY, group_id=GROUP)[1]
        for part in (PLAINTEXT[:20], PLAINTEXT[20:])
    )
    assert refs == VECTOR_MANIFEST.chunks
    assert encode_manifest(msgspec.structs.replace(VECTOR_MANIFEST, chunks=refs)) == VECTOR_BYTES


def test_constants() -> None:
    assert (CHUNK_FORMAT, ADDRESS_BYTES, MAX_CHUNK) == (0x01, 32, 4 * 1024 * 1024)
    assert ChunkRef is WireChunkRef


def test_equal_plaintexts_converge_within_a_group_and_epoch() -> None:
    first = seal_chunk(PLAINTEXT, content_key=CONTENT_KEY, group_id=GROUP)
    assert seal_chunk(bytes(PLAINTEXT), content_key=CONTENT_KEY, group_id=GROUP) == first
    assert chunk_key(CONTENT_KEY, PLAINTEXT) == first[1].key
    assert chunk_address(first[0]) == first[1].address


def test_another_epoch_or_group_gives_other_bytes() -> None:
    other_epoch = content_key(bytes([0x12]) * 32)
    sealed, ref = seal_chunk(PLAINTEXT, content_key=other_epoch, group_id=GROUP)
    assert ref.key != CHUNK_KEY and ref.address != ADDRESS
    other_group, _ = seal_chunk(PLAINTEXT, content_key=CONTENT_KEY, group_id=GroupId(bytes(32)))
    assert other_group[1:] != SEALED[1:]
    assert open_chunk(sealed, ref, group_id=GROUP) == PLAINTEXT


def test_the_largest_chunk() -> None:
    plaintext = bytes(range(256)) * (MAX_CHUNK // 256)
    sealed, ref = seal_chunk(plaintext, content_key=CONTENT_KEY, group_id=GROUP)
    assert (len(sealed), ref.size) == (MAX_SEALED_CHUNK, MAX_CHUNK)
    assert open_chunk(sealed, ref, group_id=GROUP) == plaintext


def test_the_address_is_checked_before_anything_else() -> None:
    ref = ChunkRef(address=ADDRESS, key=bytes(32), size=len(PLAINTEXT))  # wrong key too
    tampered = SEALED[:-1] + bytes((SEALED[-1] ^ 1,))
    with pytest.raises(DecryptionError, match="address"):
        open_chunk(tampered, ref, group_id=GROUP)
    with pytest.raises(DecryptionError, match="address"):
        open_chunk(SEALED[:-1], ref, group_id=GROUP)


def _ref_for(sealed: bytes, *, key: bytes = CHUNK_KEY, size: int = len(PLAINTEXT)) -> ChunkRef:
    return ChunkRef(address=chunk_address(sealed), key=key, size=size)


def test_modified_bytes_at_their_own_address_do_not_open() -> None:
    # A member with the key could re-address modified bytes; the AEAD still refuses them.
    tampered = SEALED[:10] + bytes((SEALED[10] ^ 1,)) + SEALED[11:]
    with pytest.raises(DecryptionError, match="does not open"):
        open_chunk(tampered, _ref_for(tampered), group_id=GROUP)


def test_wrong_key_or_group_does_not_open() -> None:
    with pytest.raises(DecryptionError, match="does not open"):
        open_chunk(SEALED, _ref_for(SEALED, key=bytes(32)), group_id=GROUP)
    with pytest.raises(DecryptionError, match="does not open"):
        open_chunk(SEALED, _ref_for(SEALED), group_id=GroupId(bytes(32)))


def test_a_size_that_does_not_match_is_refused() -> None:
    with pytest.raises(DecryptionError, match="sealed in"):
        open_chunk(SEALED, _ref_for(SEALED, size=len(PLAINTEXT) - 1), group_id=GROUP)


def test_an_unknown_format_is_refused() -> None:
    other = b"\x02" + SEALED[1:]
    with pytest.raises(DecryptionError, match="format 0x02"):
        open_chunk(other, _ref_for(other), group_id=GROUP)


@pytest.mark.parametrize("size", [0, MAX_CHUNK + 1])
def test_chunk_sizes_outside_the_bounds_are_refused(size: int) -> None:
    with pytest.raises(CryptoError, match=r"1\.\.4194304 bytes"):
        seal_chunk(bytes(size), content_key=CONTENT_KEY, group_id=GROUP)


@pytest.mark.parametrize("bad", [b"", bytes(31), bytes(33)])
def test_a_content_key_of_the_wrong_size_is_refused(bad: bytes) -> None:
    with pytest.raises(CryptoError, match="content key is 32 bytes"):
        seal_chunk(PLAINTEXT, content_key=bad, group_id=GROUP)
    with pytest.raises(CryptoError, match="content key is 32 bytes"):
        chunk_key(bad, PLAINTEXT)
    with pytest.raises(CryptoError, match="content key is 32 bytes"):
        chunking_seed(bad)


def test_a_group_id_of_the_wrong_size_is_refused() -> None:
    short = bytes(16)
    with pytest.raises(CryptoError, match="group id is 32 bytes"):
        seal_chunk(PLAINTEXT, content_key=CONTENT_KEY, group_id=short)  # type: ignore[arg-type]
    ref = _ref_for(SEALED)
    with pytest.raises(CryptoError, match="group id is 32 bytes"):
        open_chunk(SEALED, ref, group_id=short)  # type: ignore[arg-type]


def test_open_needs_a_chunk_ref() -> None:
    with pytest.raises(CryptoError, match="ChunkRef"):
        open_chunk(SEALED, (ADDRESS, CHUNK_KEY, 44), group_id=GROUP)  # type: ignore[arg-type]


def test_chunking_seeds_are_63_bit_and_differ_by_epoch() -> None:
    seeds = {chunking_seed(content_key(bytes([n]) * 32)) for n in range(32)}
    assert len(seeds) == 32
    assert all(1 <= seed < 2**63 for seed in seeds)  # what pyfastcdc takes
