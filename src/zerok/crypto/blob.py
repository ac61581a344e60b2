"""Blob sealing, format 2: XChaCha20-Poly1305-IETF (libsodium via PyNaCl) under the group's
epoch key, with the epoch in clear and, under the AEAD, a kind, the sender's sequence number
and a hash chain over the sender's blobs, so receivers can tell drops, replays and forks
apart (zerok.protocol.integrity).

The plaintext ends ``data ‖ 0x80 ‖ 0x00*`` (ISO/IEC 7816-4 padding), so padding is
unambiguous without a length field; with padding on, the zeros fill it up to the PADME
size. The associated data binds the epoch, group, blob id and sender, so a ciphertext
cannot be replayed under another id, group, sender or epoch.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass

from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError as NaclCryptoError

from zerok.crypto.padding import padme
from zerok.errors import CryptoError, DecryptionError
from zerok.wire.ids import BlobId, DeviceId, GroupId

NONCE_BYTES = 24
TAG_BYTES = 16
_MARKER = 0x80


# The layout:
#
# sealed = 0x02 ‖ u32be(epoch) ‖ nonce (24) ‖ XChaCha20-Poly1305(key, nonce, AD, inner)
# AD     = 0x02 ‖ u32be(epoch) ‖ group id (32) ‖ blob id (16) ‖ sender (32)
# inner  = kind (1) ‖ u64be(seq) ‖ link (32) ‖ data ‖ 0x80 ‖ 0x00*
#
# The epoch travels in clear because the receiver (and the relay) must know which key to
# try; it is also in the AD so that it cannot be changed. The header fields live under the
# AEAD so the relay cannot see a device's sequence numbers or rewrite them.

BLOB_FORMAT_V2 = 0x02
KIND_DATA = 0
KIND_REPAIR = 1
KINDS = frozenset({KIND_DATA, KIND_REPAIR})
HASH_BYTES = 32
EPOCH_MAX = 0xFFFF_FFFF
SEQ_MAX = 0xFFFF_FFFF_FFFF_FFFF
_PREFIX_V2 = 1 + 4  # format, epoch
_INNER_HEADER = 1 + 8 + HASH_BYTES  # kind, seq, link
V2_OVERHEAD = _PREFIX_V2 + NONCE_BYTES + TAG_BYTES + _INNER_HEADER + 1
NO_LINK = bytes(HASH_BYTES)  # the link of a sender's first blob
_LINK_LABEL = b"0k-sync/v2/link\x00"
_AUTH_FAILED = "blob failed authentication: wrong epoch key, or it was modified"


@dataclass(frozen=True)
class BlobHeader:
    """What a v2 blob says about itself: the epoch whose key sealed it, its kind, the
    sender's sequence number (1, 2, 3, ...) and the chain hash of the sender's previous blob
    (``NO_LINK`` for seq 1)."""

    epoch: int
    kind: int
    seq: int
    link: bytes

    def __post_init__(self) -> None:
        problem = _header_problem(self.epoch, self.kind, self.seq, self.link)
        if problem:
            raise CryptoError(problem)


@dataclass(frozen=True)
class OpenedBlob:
    """An opened v2 blob. ``blob_id`` is kept so that ``record_hash`` (the chain hash the
    sender's next blob must link to) can be computed without the caller passing it again."""

    header: BlobHeader
    data: bytes
    blob_id: BlobId

    @property
    def record_hash(self) -> bytes:
        return chain_hash(self.blob_id, self.header.seq, self.header.kind, self.data)


def _header_problem(epoch: int, kind: int, seq: int, link: bytes) -> str | None:
    if not 0 <= epoch <= EPOCH_MAX:
        return f"epoch {epoch} is outside 0..{EPOCH_MAX}"
    if kind not in KINDS:
        return f"unknown blob kind {kind}"
    if not 1 <= seq <= SEQ_MAX:
        return f"sequence number {seq} is outside 1..{SEQ_MAX} (sequences start at 1)"
    if len(link) != HASH_BYTES:
        return f"link must be {HASH_BYTES} bytes, got {len(link)}"
    return None


def chain_hash(blob_id: BlobId, seq: int, kind: int, data: bytes) -> bytes:
    """The hash a sender's next blob carries as its link. It covers the plaintext, not the
    ciphertext, so re-sealing a blob under a newer epoch keeps the chain intact."""
    if not 1 <= seq <= SEQ_MAX:
        raise CryptoError(f"sequence number {seq} is outside 1..{SEQ_MAX}")
    if kind not in KINDS:
        raise CryptoError(f"unknown blob kind {kind}")
    return hashlib.sha256(
        _LINK_LABEL + bytes(blob_id) + struct.pack(">QB", seq, kind) + hashlib.sha256(data).digest()
    ).digest()


def _associated_data_v2(epoch: int, group_id: GroupId, blob_id: BlobId, sender: DeviceId) -> bytes:
    return (
        struct.pack(">BI", BLOB_FORMAT_V2, epoch) + bytes(group_id) + bytes(blob_id) + bytes(sender)
    )


def sealed_epoch(sealed: bytes) -> int:
    """The epoch a v2 blob was sealed under, read from its clear header (not authenticated
    until the blob is opened)."""
    if len(sealed) < V2_OVERHEAD:
        raise DecryptionError(f"sealed blob of {len(sealed)} bytes is too short")
    if sealed[0] != BLOB_FORMAT_V2:
        raise DecryptionError(f"unknown blob format 0x{sealed[0]:02x} (expected 0x02)")
    epoch: int = struct.unpack_from(">I", sealed, 1)[0]
    return epoch


def seal_blob(
    data: bytes,
    *,
    key: bytes,
    group_id: GroupId,
    blob_id: BlobId,
    sender: DeviceId,
    header: BlobHeader,
    pad: bool = False,
    nonce: bytes | None = None,
) -> bytes:
    """Seal ``data`` in format 2 under the epoch key ``key``. ``nonce`` is for test vectors
    only; leave it random."""
    if len(key) != 32:
        raise CryptoError("a blob key is 32 bytes")
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    if len(nonce) != NONCE_BYTES:
        raise CryptoError(f"nonce must be {NONCE_BYTES} bytes")
    unpadded = _INNER_HEADER + len(data) + 1
    zeros = padme(unpadded) - unpadded if pad else 0
    inner = b"".join(
        (
            struct.pack(">BQ", header.kind, header.seq),
            bytes(header.link),
            bytes(data),
            bytes((_MARKER,)),
            bytes(zeros),
        )
    )
    ad = _associated_data_v2(header.epoch, group_id, blob_id, sender)
    sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(inner, ad, nonce, bytes(key))
    return ad[:_PREFIX_V2] + nonce + sealed


def open_blob(
    sealed: bytes, *, key: bytes, group_id: GroupId, blob_id: BlobId, sender: DeviceId
) -> OpenedBlob:
    """Decrypt and check a v2 blob; DecryptionError if it is not one, if ``key`` is not its
    epoch's key or if anything was changed."""
    if len(key) != 32:
        raise CryptoError("a blob key is 32 bytes")
    epoch = sealed_epoch(sealed)
    nonce = bytes(sealed[_PREFIX_V2 : _PREFIX_V2 + NONCE_BYTES])
    ad = _associated_data_v2(epoch, group_id, blob_id, sender)
    try:
        inner = crypto_aead_xchacha20poly1305_ietf_decrypt(
            bytes(sealed[_PREFIX_V2 + NONCE_BYTES :]), ad, nonce, bytes(key)
        )
    except NaclCryptoError:
        raise DecryptionError(_AUTH_FAILED) from None
    end = inner.rstrip(b"\x00")
    if len(end) <= _INNER_HEADER or end[-1] != _MARKER:
        raise DecryptionError("blob padding is malformed")
    kind, seq = struct.unpack_from(">BQ", end)
    link = bytes(end[9:_INNER_HEADER])
    problem = _header_problem(epoch, kind, seq, link)
    if problem:
        raise DecryptionError(f"blob header is invalid: {problem}")
    header = BlobHeader(epoch=epoch, kind=kind, seq=seq, link=link)
    return OpenedBlob(header=header, data=bytes(end[_INNER_HEADER:-1]), blob_id=blob_id)
