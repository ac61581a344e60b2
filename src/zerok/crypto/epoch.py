"""Epoch keys: the group key of protocol v2, replaced on every device revocation.

Each new epoch key is wrapped for every remaining member (device or recovery key) with
X-Wing, and seals the previous epoch's key so a member that holds epoch N can walk back to
the keys of older blobs. Every AEAD key here is used for one message only, so a zero nonce
is safe; the associated data binds a wrap to its epoch and recipient.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from zerok.crypto import xwing
from zerok.crypto.keys import hkdf_sha256
from zerok.crypto.xwing import XWingPrivateKey
from zerok.errors import CryptoError, EpochKeyError

EPOCH_KEY_BYTES = 32
TAG_BYTES = 16
WRAPPED_BYTES = xwing.CIPHERTEXT_BYTES + EPOCH_KEY_BYTES + TAG_BYTES  # 1168
SEALED_BYTES = EPOCH_KEY_BYTES + TAG_BYTES  # 48
RECIPIENT_BYTES = 32
MAX_EPOCH = 0xFFFFFFFF

LABEL_BLOB_KEY = b"0k-sync/v2/blob-key"
LABEL_CONTENT_KEY = b"0k-sync/v2/content-key"
LABEL_EPOCH_WRAP = b"0k-sync/v2/epoch-wrap"
LABEL_PREV_KEY = b"0k-sync/v2/prev-key"
AD_EPOCH_KEY = b"0k-sync/v2/epoch-key\x00"
AD_PREV_KEY = b"0k-sync/v2/prev-key\x00"

_ZERO_NONCE = bytes(12)


def new_epoch_key() -> bytes:
    return os.urandom(EPOCH_KEY_BYTES)


def blob_key(epoch_key: bytes) -> bytes:
    """The key that seals blobs pushed during the epoch."""
    return hkdf_sha256(_checked_key(epoch_key, "epoch key"), LABEL_BLOB_KEY)


def content_key(epoch_key: bytes) -> bytes:
    """The key of the epoch's content layer (what the relay never sees in clear)."""
    return hkdf_sha256(_checked_key(epoch_key, "epoch key"), LABEL_CONTENT_KEY)


def wrap_epoch_key(
    epoch_key: bytes, *, epoch: int, recipient: bytes, recipient_wrap_public: bytes
) -> bytes:
    """X-Wing ciphertext ‖ ChaCha20-Poly1305(epoch key): WRAPPED_BYTES for ``recipient`` (its
    32-byte Ed25519 sign public key) under its X-Wing ``recipient_wrap_public``."""
    _checked_key(epoch_key, "epoch key")
    ad = _wrap_ad(epoch, recipient)
    shared, ciphertext = xwing.encapsulate(recipient_wrap_public)
    key = hkdf_sha256(shared, LABEL_EPOCH_WRAP)
    return ciphertext + ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, epoch_key, ad)


def unwrap_epoch_key(
    wrapped: bytes, *, epoch: int, recipient: bytes, wrap_key: XWingPrivateKey
) -> bytes:
    """The epoch key; EpochKeyError when the wrap is not for this recipient and epoch, or
    was modified."""
    ad = _wrap_ad(epoch, recipient)
    if len(wrapped) != WRAPPED_BYTES:
        raise EpochKeyError(f"a wrapped epoch key is {WRAPPED_BYTES} bytes, got {len(wrapped)}")
    ciphertext, sealed = wrapped[: xwing.CIPHERTEXT_BYTES], wrapped[xwing.CIPHERTEXT_BYTES :]
    try:
        shared = wrap_key.decapsulate(ciphertext)
    except CryptoError:
        # Only a forged X25519 share gets here; to the caller it is one more bad wrap.
        raise EpochKeyError(_wrap_failure(epoch)) from None
    key = hkdf_sha256(shared, LABEL_EPOCH_WRAP)
    try:
        return ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, sealed, ad)
    except InvalidTag:
        raise EpochKeyError(_wrap_failure(epoch)) from None


def seal_previous(old_key: bytes, *, new_key: bytes, epoch: int) -> bytes:
    """Epoch ``epoch - 1``'s key sealed under epoch ``epoch``'s key (48 bytes; deterministic)."""
    _checked_key(old_key, "previous epoch key")
    aead = ChaCha20Poly1305(hkdf_sha256(_checked_key(new_key, "epoch key"), LABEL_PREV_KEY))
    return aead.encrypt(_ZERO_NONCE, old_key, _prev_ad(epoch))


def open_previous(sealed: bytes, *, new_key: bytes, epoch: int) -> bytes:
    """Epoch ``epoch - 1``'s key from ``seal_previous``'s output; EpochKeyError if it does
    not open."""
    ad = _prev_ad(epoch)
    aead = ChaCha20Poly1305(hkdf_sha256(_checked_key(new_key, "epoch key"), LABEL_PREV_KEY))
    if len(sealed) != SEALED_BYTES:
        raise EpochKeyError(
            f"a sealed previous epoch key is {SEALED_BYTES} bytes, got {len(sealed)}"
        )
    try:
        return aead.decrypt(_ZERO_NONCE, sealed, ad)
    except InvalidTag:
        raise EpochKeyError(
            f"the key of epoch {epoch - 1} does not open with the key of epoch {epoch}: "
            "wrong epoch, or the data was modified"
        ) from None


def _checked_key(key: bytes, what: str) -> bytes:
    if len(key) != EPOCH_KEY_BYTES:
        raise CryptoError(f"the {what} must be {EPOCH_KEY_BYTES} bytes, got {len(key)}")
    return key


def _u32(epoch: int) -> bytes:
    if not 0 <= epoch <= MAX_EPOCH:
        raise CryptoError(f"an epoch number is 0..{MAX_EPOCH}, got {epoch}")
    return struct.pack(">I", epoch)


def _wrap_ad(epoch: int, recipient: bytes) -> bytes:
    if len(recipient) != RECIPIENT_BYTES:
        raise CryptoError(
            f"a recipient is a {RECIPIENT_BYTES}-byte Ed25519 public key, got {len(recipient)}"
        )
    return AD_EPOCH_KEY + _u32(epoch) + recipient


def _prev_ad(epoch: int) -> bytes:
    # Epoch 0 has no predecessor: sealing one under it means the caller mixed up numbers.
    if epoch == 0:
        raise CryptoError("epoch 0 is the group's first: there is no previous key to seal")
    return AD_PREV_KEY + _u32(epoch)


def _wrap_failure(epoch: int) -> str:
    return (
        f"the key of epoch {epoch} does not unwrap: it was wrapped for another device or "
        "epoch, or modified"
    )
