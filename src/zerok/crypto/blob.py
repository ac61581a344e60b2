"""Blob sealing: XChaCha20-Poly1305-IETF (libsodium via PyNaCl).

Sealed layout: ``version (0x01) ‖ nonce (24 random bytes) ‖ AEAD ciphertext with tag``.
The plaintext inside is ``data ‖ 0x80 ‖ 0x00*`` (ISO/IEC 7816-4 padding), so padding is
unambiguous without a length field; with padding on, the zeros fill the total up to the
PADME size. The associated data is ``group id ‖ blob id ‖ sender id``, so a ciphertext
cannot be replayed under another id, group or sender.
"""

from __future__ import annotations

import os

from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError as NaclCryptoError

from zerok.crypto.padding import padme
from zerok.errors import CryptoError, DecryptionError
from zerok.wire.ids import BlobId, DeviceId, GroupId

BLOB_FORMAT = 0x01
NONCE_BYTES = 24
TAG_BYTES = 16
OVERHEAD = 1 + NONCE_BYTES + TAG_BYTES + 1  # version, nonce, tag, padding marker
_MARKER = 0x80


def _associated_data(group_id: GroupId, blob_id: BlobId, sender: DeviceId) -> bytes:
    return bytes(group_id) + bytes(blob_id) + bytes(sender)


class BlobCipher:
    """Seals and opens one group's blobs."""

    def __init__(self, blob_key: bytes, group_id: GroupId) -> None:
        if len(blob_key) != 32:
            raise CryptoError("a blob key is 32 bytes")
        self._key = bytes(blob_key)
        self.group_id = group_id

    def seal(
        self,
        data: bytes,
        *,
        blob_id: BlobId,
        sender: DeviceId,
        pad: bool = False,
        nonce: bytes | None = None,
    ) -> bytes:
        """Encrypt ``data``. ``nonce`` is for test vectors only; leave it random."""
        nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
        if len(nonce) != NONCE_BYTES:
            raise CryptoError(f"nonce must be {NONCE_BYTES} bytes")
        inner = len(data) + 1
        zeros = padme(inner) - inner if pad else 0
        plaintext = bytes(data) + bytes((_MARKER,)) + bytes(zeros)
        ad = _associated_data(self.group_id, blob_id, sender)
        sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, self._key)
        return bytes((BLOB_FORMAT,)) + nonce + sealed

    def open(self, sealed: bytes, *, blob_id: BlobId, sender: DeviceId) -> bytes:
        """Decrypt and check a sealed blob; DecryptionError if anything was changed."""
        if len(sealed) < OVERHEAD:
            raise DecryptionError(f"sealed blob of {len(sealed)} bytes is too short")
        if sealed[0] != BLOB_FORMAT:
            raise DecryptionError(f"unknown blob format 0x{sealed[0]:02x}")
        nonce = bytes(sealed[1 : 1 + NONCE_BYTES])
        ad = _associated_data(self.group_id, blob_id, sender)
        try:
            plaintext = crypto_aead_xchacha20poly1305_ietf_decrypt(
                bytes(sealed[1 + NONCE_BYTES :]), ad, nonce, self._key
            )
        except NaclCryptoError:
            raise DecryptionError(
                "blob failed authentication: wrong group key, or it was modified"
            ) from None
        end = plaintext.rstrip(b"\x00")
        if not end or end[-1] != _MARKER:
            raise DecryptionError("blob padding is malformed")
        return end[:-1]
