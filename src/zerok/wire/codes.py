"""Protocol constants: message type numbers and error codes (docs/protocol.md §6 and §12)."""

from __future__ import annotations

from enum import IntEnum, StrEnum

PROTOCOL_VERSION = 2


class MessageType(IntEnum):
    HELLO = 0x01
    WELCOME = 0x02
    PUSH = 0x10
    PUSH_ACK = 0x11
    PULL = 0x20
    PULL_RESPONSE = 0x21
    PRESENCE = 0x30
    NOTIFY = 0x31
    ACK = 0x32
    DELETE = 0x40
    LIST_DEVICES = 0x52
    DEVICES = 0x53
    LOG_GET = 0x54
    LOG = 0x55
    LOG_APPEND = 0x56
    LOG_APPENDED = 0x57
    MEMBERSHIP = 0x58
    REGISTER_PUSH = 0x60
    UNREGISTER_PUSH = 0x61
    CHUNK_HAVE = 0x70
    CHUNK_STATUS = 0x71
    CHUNK_BEGIN = 0x72
    CHUNK_PUT = 0x73
    CHUNK_GET = 0x74
    CHUNK_DATA = 0x75
    ERROR = 0xFF


class ErrorCode(IntEnum):
    """Error codes. 1xxx: the request is wrong; 2xxx: a limit; 3xxx: the relay's state."""

    INVALID_MESSAGE = 1000
    UNKNOWN_GROUP = 1001
    UNAUTHORIZED = 1002
    DEVICE_REVOKED = 1003
    NOT_BLOB_OWNER = 1004
    LOG_REJECTED = 1005
    LOG_OUTDATED = 1006
    TICKET_USED = 1007
    TICKET_EXPIRED = 1008
    TICKET_CANCELLED = 1009
    CHUNK_MISMATCH = 1010
    CHUNK_UNKNOWN = 1011
    RATE_LIMITED = 2000
    BLOB_TOO_LARGE = 2001
    GROUP_QUOTA_EXCEEDED = 2002
    INVALID_PUSH_TOKEN = 2003
    EPOCH_STALE = 2004
    RELAY_OVERLOADED = 3000
    RELAY_SHUTTING_DOWN = 3001
    STORAGE_FULL = 3002

    @property
    def fatal(self) -> bool:
        """Whether the connection is closed after this error."""
        return self in _FATAL


_FATAL = frozenset(
    {
        ErrorCode.INVALID_MESSAGE,
        ErrorCode.UNKNOWN_GROUP,
        ErrorCode.UNAUTHORIZED,
        ErrorCode.DEVICE_REVOKED,
        ErrorCode.RELAY_OVERLOADED,
        ErrorCode.RELAY_SHUTTING_DOWN,
    }
)


class PushPlatform(StrEnum):
    APNS = "apns"
    FCM = "fcm"
    WEB = "web"
