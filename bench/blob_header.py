"""What the version-2 blob header costs each blob, next to version 1 (issue 12).

Version 2 adds the epoch in clear and, under the AEAD, the kind, the sender's sequence
number and the link to its previous blob (zerok.crypto.blob). Version 1's format is
rebuilt here from its specification (``0x01 ‖ nonce ‖ XChaCha20-Poly1305(data ‖ 0x80)``,
associated data group ‖ blob ‖ sender) with the same libsodium AEAD, so that the
comparison survives the removal of the old ``BlobCipher``: the difference measured is
the header, not the cipher.
"""

from __future__ import annotations

import os

from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)

from bench.harness import Figure, rate, scaled
from zerok.crypto.blob import (
    KIND_DATA,
    NO_LINK,
    BlobHeader,
    chain_hash,
    open_blob,
    seal_blob,
)
from zerok.crypto.epoch import blob_key, new_epoch_key
from zerok.errors import DecryptionError
from zerok.wire import BlobId, DeviceId, GroupId

KIB = os.urandom(1024)
GOAL_HEADER_BYTES = 64  # issue 12: what version 2 may add to every blob
V1_FORMAT, V1_NONCE, V1_MARKER = b"\x01", 24, 0x80


def v1_seal(data: bytes, *, key: bytes, ad: bytes) -> bytes:
    nonce = os.urandom(V1_NONCE)
    return (
        V1_FORMAT
        + nonce
        + crypto_aead_xchacha20poly1305_ietf_encrypt(data + bytes((V1_MARKER,)), ad, nonce, key)
    )


def v1_open(sealed: bytes, *, key: bytes, ad: bytes) -> bytes:
    nonce = sealed[1 : 1 + V1_NONCE]
    plain = crypto_aead_xchacha20poly1305_ietf_decrypt(sealed[1 + V1_NONCE :], ad, nonce, key)
    end = plain.rstrip(b"\x00")
    if not end or end[-1] != V1_MARKER:
        raise DecryptionError("version 1 blob padding is malformed")
    return end[:-1]


def blob_header_figures() -> list[Figure]:
    n = scaled(20_000, 20)
    key = blob_key(new_epoch_key())
    group_id, blob_id, sender = GroupId.random(), BlobId.random(), DeviceId.random()
    v1_ad = bytes(group_id) + bytes(blob_id) + bytes(sender)
    header = BlobHeader(epoch=1, kind=KIND_DATA, seq=1, link=NO_LINK)

    def v1() -> None:
        for _ in range(n):
            v1_open(v1_seal(KIB, key=key, ad=v1_ad), key=key, ad=v1_ad)

    def v2() -> None:
        for _ in range(n):
            sealed = seal_blob(
                KIB, key=key, group_id=group_id, blob_id=blob_id, sender=sender, header=header
            )
            open_blob(sealed, key=key, group_id=group_id, blob_id=blob_id, sender=sender)

    def v2_chained() -> None:
        # What a sender and a receiver also do per blob: the chain hash the next blob
        # links to (sender) and the one to check that link against (receiver).
        for _ in range(n):
            sealed = seal_blob(
                KIB, key=key, group_id=group_id, blob_id=blob_id, sender=sender, header=header
            )
            chain_hash(blob_id, header.seq, header.kind, KIB)
            opened = open_blob(sealed, key=key, group_id=group_id, blob_id=blob_id, sender=sender)
            _ = opened.record_hash

    v1_bytes = len(v1_seal(KIB, key=key, ad=v1_ad)) - len(KIB)
    v2_bytes = len(
        seal_blob(KIB, key=key, group_id=group_id, blob_id=blob_id, sender=sender, header=header)
    ) - len(KIB)
    v1_us = 1e6 / rate(v1, ops=n)
    base = "version 1 format, same AEAD"
    return [
        Figure(
            "v2 blob overhead (bytes over the data)", "B", v2_bytes, "version 1 format", v1_bytes
        ),
        Figure(
            "v2 header: bytes added to every blob",
            "B",
            v2_bytes - v1_bytes,
            "goal (issue 12)",
            GOAL_HEADER_BYTES,
        ),
        Figure("v2 seal+open 1 KiB", "µs", 1e6 / rate(v2, ops=n), base, v1_us),
        Figure(
            "v2 seal+open 1 KiB, with chain hashes",
            "µs",
            1e6 / rate(v2_chained, ops=n),
            base,
            v1_us,
        ),
    ]
