"""Every message of the 0k-Sync wire protocol as an immutable typed structure.

A message's body is a MessagePack map keyed by the field names below; fields with a default
may be omitted by the sender, and receivers ignore keys they do not know, so later versions
can add optional fields without breaking older peers. Every size that a peer controls is
bounded here, so a decoded message is always within these limits.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec

from zerok.wire.codes import MessageType, PushPlatform, RevokeReason
from zerok.wire.ids import BlobId, DeviceId, GroupId

# Bounds shared by the messages (documented in docs/protocol.md §5).
U32_MAX = 2**32 - 1
I64_MAX = 2**63 - 1
MAX_BLOB_BYTES = 16 * 1024 * 1024  # hard wire cap; relays configure a lower limit
MAX_PULL_LIMIT = 1000
MAX_DEVICES = 10_000
MAX_NAME_CHARS = 64
MAX_TEXT_CHARS = 1024
MAX_TOKEN_CHARS = 4096

Cursor = Annotated[int, msgspec.Meta(ge=0, le=I64_MAX)]
Millis = Annotated[int, msgspec.Meta(ge=0, le=I64_MAX)]
Count = Annotated[int, msgspec.Meta(ge=0, le=I64_MAX)]
Seconds = Annotated[int, msgspec.Meta(ge=0, le=U32_MAX)]
Name = Annotated[str, msgspec.Meta(max_length=MAX_NAME_CHARS)]
Text = Annotated[str, msgspec.Meta(max_length=MAX_TEXT_CHARS)]
Ciphertext = Annotated[bytes, msgspec.Meta(max_length=MAX_BLOB_BYTES)]
Signature = Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]
PublicKey = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
PullLimit = Annotated[int, msgspec.Meta(ge=1, le=MAX_PULL_LIMIT)]
# What a StoredBlob adds to its ciphertext in a PULL_RESPONSE, at most (its map, keys,
# ids, cursor, timestamp, bin header): used to keep pages within the frame limit.
STORED_BLOB_OVERHEAD = 128
PULL_RESPONSE_OVERHEAD = 64


class Message(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Base of every wire message; TYPE is its number on the wire."""

    TYPE: ClassVar[MessageType]


class Hello(Message, frozen=True, kw_only=True, omit_defaults=True):
    """C→R, the first frame after the handshake: which group, and proof of membership."""

    TYPE = MessageType.HELLO
    group_id: GroupId
    auth_key: PublicKey  # the group's Ed25519 authentication public key
    proof: Signature  # Ed25519 over the membership transcript (docs/protocol.md §7)
    device_name: Name = ""
    last_cursor: Cursor = 0
    client: Name = ""  # software name/version, informational


class Limits(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The relay's limits, announced in WELCOME so clients can respect them up front."""

    max_blob_size: Count
    max_group_storage: Count
    messages_per_minute: Count
    max_frame_size: Count
    default_ttl: Seconds
    max_ttl: Seconds
    # Added later, optional: 0 (and absent, from older relays) means not announced.
    idle_timeout: Seconds = 0  # the relay closes a connection silent this long
    heartbeat_interval: Seconds = 0  # the relay asks for a heartbeat at least this often


class Welcome(Message, frozen=True, kw_only=True, omit_defaults=True):
    """R→C, HELLO accepted."""

    TYPE = MessageType.WELCOME
    relay_id: PublicKey
    max_cursor: Cursor
    pending: Count
    limits: Limits
    server_time: Millis = 0


class Push(Message, frozen=True, kw_only=True, omit_defaults=True):
    """C→R, store one sealed blob; ttl 0 means the relay's default."""

    TYPE = MessageType.PUSH
    blob_id: BlobId
    ciphertext: Ciphertext
    ttl: Seconds = 0


class PushAck(Message, frozen=True, kw_only=True, omit_defaults=True):
    """R→C, the blob is durably stored at this cursor."""

    TYPE = MessageType.PUSH_ACK
    blob_id: BlobId
    cursor: Cursor
    timestamp: Millis


class Pull(Message, frozen=True, kw_only=True, omit_defaults=True):
    """C→R, blobs with cursor > after, ascending."""

    TYPE = MessageType.PULL
    after: Cursor = 0
    limit: PullLimit = 100


class StoredBlob(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One blob as the relay holds it."""

    blob_id: BlobId
    cursor: Cursor
    sender: DeviceId
    ciphertext: Ciphertext
    timestamp: Millis


class PullResponse(Message, frozen=True, kw_only=True, omit_defaults=True):
    TYPE = MessageType.PULL_RESPONSE
    blobs: Annotated[list[StoredBlob], msgspec.Meta(max_length=MAX_PULL_LIMIT)]
    has_more: bool
    max_cursor: Cursor


class Presence(Message, frozen=True, kw_only=True, omit_defaults=True):
    """C→R heartbeat; also tells the relay whether the app is in the foreground."""

    TYPE = MessageType.PRESENCE
    online: bool = True


class Notify(Message, frozen=True, kw_only=True, omit_defaults=True):
    """R→C, a new blob is available for the group."""

    TYPE = MessageType.NOTIFY
    blob_id: BlobId
    cursor: Cursor
    sender: DeviceId
    timestamp: Millis
    size: Count


class Ack(Message, frozen=True, kw_only=True, omit_defaults=True):
    """C→R, this device has durably processed everything up to cursor."""

    TYPE = MessageType.ACK
    cursor: Cursor


class Delete(Message, frozen=True, kw_only=True, omit_defaults=True):
    """C→R, delete one blob; force lets the blob's owner delete before it expires."""

    TYPE = MessageType.DELETE
    blob_id: BlobId
    force: bool = False


class RevokeDevice(Message, frozen=True, kw_only=True, omit_defaults=True):
    TYPE = MessageType.REVOKE_DEVICE
    device_id: DeviceId
    reason: RevokeReason


class DeviceRevoked(Message, frozen=True, kw_only=True, omit_defaults=True):
    TYPE = MessageType.DEVICE_REVOKED
    device_id: DeviceId
    revoked_by: DeviceId
    timestamp: Millis
    reason: RevokeReason


class ListDevices(Message, frozen=True, kw_only=True, omit_defaults=True):
    TYPE = MessageType.LIST_DEVICES


class DeviceInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    device_id: DeviceId
    name: Name = ""
    last_seen: Millis = 0
    pending: Count = 0
    online: bool = False
    revoked: bool = False


class Devices(Message, frozen=True, kw_only=True, omit_defaults=True):
    TYPE = MessageType.DEVICES
    devices: Annotated[list[DeviceInfo], msgspec.Meta(max_length=MAX_DEVICES)]


class RegisterPush(Message, frozen=True, kw_only=True, omit_defaults=True):
    TYPE = MessageType.REGISTER_PUSH
    token: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TOKEN_CHARS)]
    platform: PushPlatform
    app_id: Annotated[str, msgspec.Meta(max_length=256)] = ""


class UnregisterPush(Message, frozen=True, kw_only=True, omit_defaults=True):
    TYPE = MessageType.UNREGISTER_PUSH
    reason: Text = ""


class Error(Message, frozen=True, kw_only=True, omit_defaults=True):
    """Both directions. ``code`` is an ErrorCode value; unknown codes are kept as ints."""

    TYPE = MessageType.ERROR
    code: Annotated[int, msgspec.Meta(ge=0, le=65535)]
    message: Text = ""
    retry_after: Seconds = 0  # for RATE_LIMITED / RELAY_OVERLOADED: when to try again


ALL_MESSAGES: tuple[type[Message], ...] = (
    Hello,
    Welcome,
    Push,
    PushAck,
    Pull,
    PullResponse,
    Presence,
    Notify,
    Ack,
    Delete,
    RevokeDevice,
    DeviceRevoked,
    ListDevices,
    Devices,
    RegisterPush,
    UnregisterPush,
    Error,
)
