"""The one exception hierarchy of 0k-Sync: every error we raise derives from SyncError.

Every public exception is defined here, once; the modules that raise one re-export it
under its old name. The tree::

    SyncError
    ├── WireError                  bytes that are not a valid message
    ├── CryptoError                DecryptionError, HandshakeError, NonceExhaustedError,
    │                              KeyFileError, InvalidProofError, RecoveryKeyError,
    │                              EpochKeyError
    ├── MembershipError            a log entry that cannot be accepted (``reason``)
    │   ├── TicketError            an enrollment ticket used, expired, cancelled, unknown
    │   └── LogForkError           two different entries at one position
    ├── ProtocolError
    │   ├── LocalProtocolError     this side's code broke a rule (our bug or misuse)
    │   │   └── FrameTooLargeError a frame we were asked to send is over a limit
    │   └── RemoteProtocolError    the peer broke a rule
    │       ├── OversizedFrameError    a frame from the peer is over the agreed limit
    │       └── HandshakeTimeoutError
    ├── RemoteError                the relay answered with an ERROR (``code``)
    ├── ConnectError, NotConnectedError, DeviceRevokedError, BlobTooLargeError,
    │   StateError, InviteError, RelayUnreachableError     the client's
    └── ConfigError, StorageError  the relay's (StorageFullError, StorageUnavailableError)

As in h11, the split between local and remote protocol errors says whose fault it is: a
LocalProtocolError is a bug in the caller and is never turned into a quiet ``False``; a
RemoteProtocolError ends the session with the peer (the sessions turn it into a
ConnectionClosed event and an ERROR for the peer).
"""

from __future__ import annotations


class SyncError(Exception):
    """Base class of every error raised by 0k-Sync."""


class WireError(SyncError):
    """Bytes that are not a valid 0k-Sync message (malformed, unknown type, bad field, ...)."""


# -- cryptography ---------------------------------------------------------------------------


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


class RecoveryKeyError(CryptoError):
    """A recovery key (its words or its QR text) is mistyped, incomplete or damaged."""


# -- membership -----------------------------------------------------------------------------


class MembershipError(SyncError):
    """A membership log entry cannot be accepted. ``reason`` says why, in one word
    (malformed, signature, chain, unauthorized, ticket, epoch, group, limit), and
    ``seq`` names the entry's position when it is known."""

    def __init__(self, reason: str, message: str, *, seq: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.seq = seq


class TicketError(MembershipError):
    """An enrollment ticket cannot be used: ``reason`` is used, expired, cancelled or
    unknown."""

    def __init__(self, reason: str, message: str, *, seq: int | None = None) -> None:
        super().__init__(reason, message, seq=seq)


class LogForkError(MembershipError):
    """Two different entries were seen at one position of a group's log: a relay (or a
    device) equivocated. ``seq`` is the position."""

    def __init__(self, message: str, *, seq: int) -> None:
        super().__init__("fork", message, seq=seq)


class EpochKeyError(CryptoError):
    """The key of a group epoch is missing (not wrapped for this device) or does not
    unwrap."""


# -- protocol -------------------------------------------------------------------------------


class ProtocolError(SyncError):
    """The protocol was broken; see LocalProtocolError and RemoteProtocolError for by whom."""


class LocalProtocolError(ProtocolError):
    """This side was asked to break the protocol: send in the wrong state, send a message
    its role may not send, accept a HELLO that is not pending. A bug in the caller."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol: a malformed fragment, an oversized message, a late
    handshake. The session ends; the peer is told why when it still can be."""


class FrameTooLargeError(LocalProtocolError):
    """A frame this side was asked to send exceeds a limit (the wire's, or the one the
    relay announced); nothing was sent."""


class OversizedFrameError(RemoteProtocolError):
    """A frame from the peer exceeds the limit agreed for the connection.

    ``head`` holds the first bytes of the frame, enough to find its request id.
    """

    def __init__(self, message: str, *, head: bytes = b"") -> None:
        super().__init__(message)
        self.head = head


class HandshakeTimeoutError(RemoteProtocolError):
    """The peer did not finish the handshake before the deadline."""


class RemoteError(SyncError):
    """The peer answered with an ERROR message; ``retry_after`` is its advice, in seconds,
    for RATE_LIMITED and RELAY_OVERLOADED (0: none given)."""

    def __init__(self, code: int, message: str, *, retry_after: int = 0) -> None:
        super().__init__(f"{message} (error {code})")
        self.code = code
        self.message = message
        self.retry_after = retry_after


# -- connections (client) -------------------------------------------------------------------


class ConnectError(SyncError):
    """The relay could not be reached or refused the connection. ``reason`` is a short text
    an app can show: "unreachable", "relay full" (HTTP 503 at the upgrade), "too many
    devices from your network" (HTTP 429), "handshake failed", "connection lost"."""

    def __init__(self, message: str, *, reason: str = "unreachable") -> None:
        super().__init__(message)
        self.reason = reason


class NotConnectedError(SyncError):
    """No relay could be reached in time for an operation that needs one."""


class DeviceRevokedError(SyncError):
    """This device was revoked from its group; it cannot sync any more."""


class BlobTooLargeError(SyncError):
    """The data is larger than the relay accepts in one blob."""


class StateError(SyncError):
    """The local state is missing something or is unusable."""


class InviteError(SyncError):
    """An invite or short code cannot be used. ``reason`` says why, in one word:
    mistyped, expired, used, cancelled, wrong, unknown, invalid."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class RelayUnreachableError(SyncError):
    """The relay could not be reached over HTTP."""


# -- the relay ------------------------------------------------------------------------------


class ConfigError(SyncError):
    """A configuration value is missing, unknown or malformed."""


class StorageError(SyncError):
    """The relay's database is unusable (wrong schema, unreachable, corrupt)."""


class StorageFullError(StorageError):
    """The relay's disk (or database size limit) is full: a write that needs space was
    refused. Nothing was stored; the same write may succeed once space comes back."""


class StorageUnavailableError(StorageError):
    """The relay's database cannot be reached, or did not answer within the storage
    deadline. A write may or may not have taken effect; clients are told to retry later
    (ERROR 3000 with ``retry_after``)."""
