"""Every message of the 0k-Sync wire protocol as an immutable typed structure.

A message's body is a MessagePack map keyed by the field names below; fields with a default
may be omitted by the sender, and receivers ignore keys they do not know, so later versions
can add optional fields without breaking older peers. Every size that a peer controls is
bounded here, so a decoded message is always within these limits.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec

from zerok.wire.codes import MessageType, PushPlatform
from zerok.wire.ids import BlobId, DeviceId, GroupId
from zerok.wire.log import MAX_ENTRY_BYTES
from zerok.wire.manifest import ADDRESS_BYTES, MAX_CHUNKS, MAX_SEALED_CHUNK

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
Epoch = Annotated[int, msgspec.Meta(ge=0, le=U32_MAX)]
LogSeq = Annotated[int, msgspec.Meta(ge=0, le=I64_MAX)]
Digest = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
# A log entry as stored (zerok.wire.log.SignedEntry, encoded); its inside is checked by
# zerok.protocol.membership, its size here.
LogEntry = Annotated[bytes, msgspec.Meta(max_length=MAX_ENTRY_BYTES + 256)]
MAX_HELLO_ENTRIES = 64  # a new group's log (genesis and first entries) or one enrollment
MAX_APPEND_ENTRIES = 16
MAX_LOG_PAGE = 256
# Large content: a sealed chunk (at most MAX_SEALED_CHUNK bytes) travels in pieces.
MAX_CHUNK_PIECE = 512 * 1024
MAX_CHUNK_QUERY = 1024
Address = Annotated[bytes, msgspec.Meta(min_length=ADDRESS_BYTES, max_length=ADDRESS_BYTES)]
ChunkSize = Annotated[int, msgspec.Meta(ge=1, le=MAX_SEALED_CHUNK)]
ChunkOffset = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEALED_CHUNK)]
# What a StoredBlob adds to its ciphertext in a PULL_RESPONSE, at most (its map, keys,
# ids, cursor, timestamp, bin header): used to keep pages within the frame limit.
STORED_BLOB_OVERHEAD = 128
PULL_RESPONSE_OVERHEAD = 64


class Message(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Base of every wire message; TYPE is its number on the wire."""

    TYPE: ClassVar[MessageType]


class Hello(Message, frozen=True, kw_only=True, omit_defaults=True):
    """C→R, the first frame after the handshake: which group, and a proof by a key the
    group's log knows. ``signer`` empty: the device's own enrolled signing key. Otherwise an
    open ticket's key (a device enrolling with an invite) or the group's recovery key: the
    session is then *provisional*, for LOG_GET and LOG_APPEND only, until an entry makes
    this device a member. ``entries`` carries entries the relay may lack, appended before
    admission: a new group's log from its genesis, or entries the relay lost."""

    TYPE = MessageType.HELLO
    group_id: GroupId
    proof: Signature  # Ed25519 by the signer (docs/protocol.md §7)
    signer: Annotated[bytes, msgspec.Meta(max_length=32)] = b""
    device_name: Name = ""
    last_cursor: Cursor = 0
    client: Name = ""  # software name/version, informational
    entries: Annotated[list[LogEntry], msgspec.Meta(max_length=MAX_HELLO_ENTRIES)] = []

    def __post_init__(self) -> None:
        if self.signer and len(self.signer) != 32:
            raise ValueError("signer is empty or a 32-byte Ed25519 public key")


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
    log_seq: LogSeq  # the relay's last log entry
    log_hash: Digest  # and its hash
    epoch: Epoch  # the group's current epoch, by the relay's log
    server_time: Millis = 0
    provisional: bool = False  # admitted by a ticket or the recovery key: log requests only


class Push(Message, frozen=True, kw_only=True, omit_defaults=True):
    """C→R, store one sealed blob; ttl 0 means the relay's default. ``epoch`` is the one
    the blob is sealed under (the relay refuses any but the group's current epoch);
    ``repair`` re-pushes a blob another device reported missing."""

    TYPE = MessageType.PUSH
    blob_id: BlobId
    ciphertext: Ciphertext
    epoch: Epoch = 0
    ttl: Seconds = 0
    repair: bool = False
    # The chunks this blob refers to (a file's manifest): the relay keeps them while the
    # blob lives, and may delete them once no live blob refers to them.
    chunks: Annotated[list[Address], msgspec.Meta(max_length=MAX_CHUNKS)] = []


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


class LogGet(Message, frozen=True, kw_only=True, omit_defaults=True):
    """C→R, the group's log entries from position ``start`` on."""

    TYPE = MessageType.LOG_GET
    start: LogSeq = 0
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_LOG_PAGE)] = MAX_LOG_PAGE


class Log(Message, frozen=True, kw_only=True, omit_defaults=True):
    """R→C, answer to LOG_GET: consecutive entries from ``start``, and the relay's head."""

    TYPE = MessageType.LOG
    start: LogSeq
    entries: Annotated[list[LogEntry], msgspec.Meta(max_length=MAX_LOG_PAGE)]
    head_seq: LogSeq


class LogAppend(Message, frozen=True, kw_only=True, omit_defaults=True):
    """C→R, append entries (the first must follow the relay's head) to the group's log."""

    TYPE = MessageType.LOG_APPEND
    entries: Annotated[list[LogEntry], msgspec.Meta(min_length=1, max_length=MAX_APPEND_ENTRIES)]


class LogAppended(Message, frozen=True, kw_only=True, omit_defaults=True):
    """R→C, answer to LOG_APPEND: the entries are stored; the log's new head."""

    TYPE = MessageType.LOG_APPENDED
    head_seq: LogSeq
    head_hash: Digest


class Membership(Message, frozen=True, kw_only=True, omit_defaults=True):
    """R→C, unsolicited: entries were appended to the group's log (from ``start`` on)."""

    TYPE = MessageType.MEMBERSHIP
    start: LogSeq
    entries: Annotated[list[LogEntry], msgspec.Meta(max_length=MAX_APPEND_ENTRIES)]


class ChunkInfo(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What the relay holds of one chunk: ``received`` bytes of ``size`` (0 and 0: none)."""

    address: Address
    size: Annotated[int, msgspec.Meta(ge=0, le=MAX_SEALED_CHUNK)] = 0
    received: ChunkOffset = 0
    complete: bool = False


class ChunkHave(Message, frozen=True, kw_only=True, omit_defaults=True):
    """C→R, which of these chunks the relay holds, whole or in part (to resume, and to send
    only what it lacks)."""

    TYPE = MessageType.CHUNK_HAVE
    addresses: Annotated[list[Address], msgspec.Meta(min_length=1, max_length=MAX_CHUNK_QUERY)]


class ChunkStatus(Message, frozen=True, kw_only=True, omit_defaults=True):
    """R→C, answer to CHUNK_HAVE, CHUNK_BEGIN and CHUNK_PUT: the chunks as the relay holds
    them, in the order asked."""

    TYPE = MessageType.CHUNK_STATUS
    chunks: Annotated[list[ChunkInfo], msgspec.Meta(max_length=MAX_CHUNK_QUERY)]


class ChunkBegin(Message, frozen=True, kw_only=True, omit_defaults=True):
    """C→R, start (or resume) uploading a chunk of ``size`` bytes; counted in the group's
    quota from now on. A chunk the relay holds whole is answered complete at once."""

    TYPE = MessageType.CHUNK_BEGIN
    address: Address
    size: ChunkSize


class ChunkPut(Message, frozen=True, kw_only=True, omit_defaults=True):
    """C→R, the next piece of a chunk being uploaded, at ``offset`` = what the relay has.
    The last piece completes it: the relay checks SHA-256 of the whole against its
    address (ERROR 1010 and nothing kept when it differs)."""

    TYPE = MessageType.CHUNK_PUT
    address: Address
    offset: ChunkOffset
    data: Annotated[bytes, msgspec.Meta(min_length=1, max_length=MAX_CHUNK_PIECE)]


class ChunkGet(Message, frozen=True, kw_only=True, omit_defaults=True):
    """C→R, read ``length`` bytes of a chunk the relay holds whole, from ``offset``."""

    TYPE = MessageType.CHUNK_GET
    address: Address
    offset: ChunkOffset = 0
    length: Annotated[int, msgspec.Meta(ge=1, le=MAX_CHUNK_PIECE)] = MAX_CHUNK_PIECE


class ChunkData(Message, frozen=True, kw_only=True, omit_defaults=True):
    """R→C, answer to CHUNK_GET: the bytes from ``offset`` (fewer than asked at the end)."""

    TYPE = MessageType.CHUNK_DATA
    address: Address
    offset: ChunkOffset
    data: Annotated[bytes, msgspec.Meta(max_length=MAX_CHUNK_PIECE)]


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
    ListDevices,
    Devices,
    LogGet,
    Log,
    LogAppend,
    LogAppended,
    Membership,
    RegisterPush,
    UnregisterPush,
    ChunkHave,
    ChunkStatus,
    ChunkBegin,
    ChunkPut,
    ChunkGet,
    ChunkData,
    Error,
)
