"""Chunk sealing for large content: keyed convergent encryption under the epoch's content
key, each sealed chunk addressed by the hash of its bytes.

::

    h       = SHA-256(plaintext)
    k       = HKDF-SHA256(content key, "0k-sync/v2/chunk-key" ‖ 0x00 ‖ h)
    sealed  = 0x01 ‖ ChaCha20-Poly1305(k, nonce = 12 zero bytes,
                                       aad = "0k-sync/v2/chunk" ‖ 0x00 ‖ group id, plaintext)
    address = SHA-256(sealed)

Equal plaintexts give equal chunks within a group and epoch, so an edited file re-sends only
the chunks that changed and the relay stores an equal chunk once; the relay checks an
upload against its address without reading it. Each key seals one plaintext only, so the
fixed nonce is safe. The relay learns the size of each chunk and which chunks are equal
(within a group and epoch), never their content: without the content key it cannot derive
``k`` for a guessed plaintext, so it cannot test a guess against a stored chunk.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from zerok.crypto.keys import hkdf_sha256
from zerok.errors import CryptoError, DecryptionError
from zerok.wire.ids import GroupId
from zerok.wire.manifest import (
    ADDRESS_BYTES,
    CHUNK_OVERHEAD,
    MAX_CHUNK,
    MAX_SEALED_CHUNK,
    ChunkRef,
)

__all__ = [
    "ADDRESS_BYTES",
    "CHUNK_FORMAT",
    "CHUNK_OVERHEAD",
    "MAX_CHUNK",
    "MAX_SEALED_CHUNK",
    "ChunkRef",
    "chunk_address",
    "chunk_key",
    "chunking_seed",
    "open_chunk",
    "seal_chunk",
]

CHUNK_FORMAT = 0x01
TAG_BYTES = 16
CONTENT_KEY_BYTES = 32
LABEL_CHUNK_KEY = b"0k-sync/v2/chunk-key\x00"
LABEL_CHUNK_SEED = b"0k-sync/v2/chunk-seed"
AD_CHUNK = b"0k-sync/v2/chunk\x00"

_ZERO_NONCE = bytes(12)


def chunk_key(content_key: bytes, plaintext: bytes) -> bytes:
    """The key of the chunk holding ``plaintext``: equal plaintexts get equal keys within
    an epoch, and nobody without the content key can compute it."""
    digest = hashlib.sha256(plaintext).digest()
    return hkdf_sha256(_checked_content_key(content_key), LABEL_CHUNK_KEY + digest)


def chunk_address(sealed: bytes) -> bytes:
    """Where a sealed chunk is stored: SHA-256 of its bytes, format byte included."""
    return hashlib.sha256(sealed).digest()


def seal_chunk(
    plaintext: bytes, *, content_key: bytes, group_id: GroupId
) -> tuple[bytes, ChunkRef]:
    """Seal one chunk (1..MAX_CHUNK bytes); the sealed bytes and the manifest's reference
    to them. Deterministic: the same plaintext, key and group give the same bytes."""
    if not 1 <= len(plaintext) <= MAX_CHUNK:
        raise CryptoError(f"a chunk holds 1..{MAX_CHUNK} bytes, got {len(plaintext)}")
    key = chunk_key(content_key, plaintext)
    ciphertext = ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, bytes(plaintext), _ad(group_id))
    sealed = bytes((CHUNK_FORMAT,)) + ciphertext
    return sealed, ChunkRef(address=chunk_address(sealed), key=key, size=len(plaintext))


def open_chunk(sealed: bytes, ref: ChunkRef, *, group_id: GroupId) -> bytes:
    """The plaintext of a sealed chunk. DecryptionError if the bytes are not the ones
    ``ref`` addresses (checked first: the relay served the wrong chunk, or a damaged one),
    or if they do not open with ``ref``'s key in this group."""
    ad = _ad(group_id)
    if not isinstance(ref, ChunkRef):
        raise CryptoError(f"a chunk is opened with its ChunkRef, not {type(ref).__name__}")
    if chunk_address(sealed) != ref.address:
        raise DecryptionError("the chunk's bytes do not match its address: it was modified")
    if len(sealed) != ref.size + CHUNK_OVERHEAD:
        raise DecryptionError(
            f"a chunk of {ref.size} bytes is sealed in {ref.size + CHUNK_OVERHEAD}, "
            f"got {len(sealed)}"
        )
    if sealed[0] != CHUNK_FORMAT:
        raise DecryptionError(f"unknown chunk format 0x{sealed[0]:02x} (expected 0x01)")
    try:
        return ChaCha20Poly1305(ref.key).decrypt(_ZERO_NONCE, bytes(sealed[1:]), ad)
    except InvalidTag:
        raise DecryptionError(
            "the chunk does not open: wrong key or group, or it was modified"
        ) from None


def chunking_seed(content_key: bytes) -> int:
    """The seed of the content-defined chunker for the epoch (``chunks(..., seed=)``).

    With the public gear table, chunk boundaries depend on the content alone, and the relay
    sees each chunk's size: it could match the size sequence against a file it has a copy
    of, or spot a known file inside a larger one. Keying the boundaries with a secret of
    the epoch takes that test away; every device of the group derives the same seed, so
    equal files still give equal chunks.
    """
    raw = hkdf_sha256(_checked_content_key(content_key), LABEL_CHUNK_SEED, 8)
    return (int.from_bytes(raw, "big") >> 1) or 1  # 63 bits; 0 would mean "no seed"


def _checked_content_key(content_key: bytes) -> bytes:
    if len(content_key) != CONTENT_KEY_BYTES:
        raise CryptoError(f"a content key is {CONTENT_KEY_BYTES} bytes, got {len(content_key)}")
    return bytes(content_key)


def _ad(group_id: GroupId) -> bytes:
    if len(group_id) != GroupId.SIZE:
        raise CryptoError(f"a group id is {GroupId.SIZE} bytes, got {len(group_id)}")
    return AD_CHUNK + bytes(group_id)
