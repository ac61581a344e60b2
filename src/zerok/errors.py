"""The one exception hierarchy of 0k-Sync: every error we raise derives from SyncError."""

from __future__ import annotations


class SyncError(Exception):
    """Base class of every error raised by 0k-Sync."""


class WireError(SyncError):
    """Bytes that are not a valid 0k-Sync message (malformed, unknown type, bad field, ...)."""


class CryptoError(SyncError):
    """A cryptographic operation failed or was given unusable input."""


class DecryptionError(CryptoError):
    """Authenticated decryption failed: wrong key, or the data was modified."""


class HandshakeError(CryptoError):
    """The Noise handshake failed (bad message, wrong key, prologue mismatch, ...)."""


class NonceExhaustedError(CryptoError):
    """A Noise cipher state used its last nonce; the session must be re-established."""


class KeyFileError(CryptoError):
    """A key file is missing, unreadable, malformed or has unsafe permissions."""


class InvalidProofError(CryptoError):
    """A membership proof does not verify."""


class ProtocolError(SyncError):
    """A peer (or our own caller) broke the protocol: wrong order, wrong state, bad frame."""


class FrameTooLargeError(ProtocolError):
    """A frame exceeds the size limit agreed for the connection.

    ``head`` holds the first bytes of a received frame, enough to find its request id.
    """

    def __init__(self, message: str, *, head: bytes = b"") -> None:
        super().__init__(message)
        self.head = head


class HandshakeTimeoutError(ProtocolError):
    """The peer did not finish the handshake before the deadline."""


class RemoteError(SyncError):
    """The peer answered with an ERROR message."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} (error {code})")
        self.code = code
        self.message = message
