"""Frame codec: hand-built examples of all 26 messages, exact bytes, strict decoding."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from zerok.errors import WireError
from zerok.wire import (
    ALL_MESSAGES,
    PROTOCOL_VERSION,
    U32_MAX,
    Ack,
    BlobId,
    ChunkBegin,
    ChunkData,
    ChunkGet,
    ChunkHave,
    ChunkInfo,
    ChunkPut,
    ChunkStatus,
    Delete,
    DeviceId,
    DeviceInfo,
    Devices,
    Error,
    ErrorCode,
    Frame,
    GroupId,
    Hello,
    Limits,
    ListDevices,
    Log,
    LogAppend,
    LogAppended,
    LogGet,
    Membership,
    Message,
    MessageType,
    Notify,
    Presence,
    Pull,
    PullResponse,
    Push,
    PushAck,
    PushPlatform,
    RegisterPush,
    StoredBlob,
    UnregisterPush,
    Welcome,
    decode,
    decode_frame,
    encode,
)
from zerok.wire.log import MAX_ENTRY_BYTES
from zerok.wire.manifest import MAX_CHUNKS, MAX_SEALED_CHUNK
from zerok.wire.messages import MAX_CHUNK_PIECE, MAX_CHUNK_QUERY

MIB = 1024 * 1024
GROUP = b"\x01" * 32
SIGNER = b"\x02" * 32
PROOF = b"\x03" * 64
RELAY = b"\x04" * 32
BLOB = b"\x05" * 16
BLOB2 = b"\x06" * 16
DEV_A = b"\x07" * 32
DEV_B = b"\x08" * 32
HEAD = b"\x09" * 32
ENTRY_A = b"a signed log entry"
ENTRY_B = b"another one"
ADDR_A = b"\x0a" * 32  # chunk addresses (SHA-256 of a sealed chunk)
ADDR_B = b"\x0b" * 32
ADDR_C = b"\x0c" * 32
# The chunk bounds as docs/protocol.md §6.22-6.27 writes them, pinned as numbers so that a
# change of a constant cannot move the wire unnoticed.
SEALED_MAX = 4 * MIB + 17  # 4194321: a 4 MiB chunk, its format byte and AEAD tag
PIECE_MAX = 512 * 1024  # 524288
QUERY_MAX = 1024
PUSH_CHUNKS_MAX = 16384

LIMITS = Limits(
    max_blob_size=MIB,
    max_group_storage=100 * MIB,
    messages_per_minute=100,
    max_frame_size=MIB,
    default_ttl=604800,
    max_ttl=2592000,
)
LIMITS_RAW: dict[str, Any] = {
    "max_blob_size": MIB,
    "max_group_storage": 100 * MIB,
    "messages_per_minute": 100,
    "max_frame_size": MIB,
    "default_ttl": 604800,
    "max_ttl": 2592000,
}

#: (message, its body exactly as it must appear on the wire, fields in declaration order).
EXAMPLES: list[tuple[Message, dict[str, Any]]] = [
    (
        Hello(
            group_id=GroupId(GROUP),
            proof=PROOF,
            signer=SIGNER,
            device_name="laptop",
            last_cursor=42,
            client="zerok/0.1",
            entries=[ENTRY_A, ENTRY_B],
        ),
        {
            "group_id": GROUP,
            "proof": PROOF,
            "signer": SIGNER,
            "device_name": "laptop",
            "last_cursor": 42,
            "client": "zerok/0.1",
            "entries": [ENTRY_A, ENTRY_B],
        },
    ),
    (
        Welcome(
            relay_id=RELAY,
            max_cursor=100,
            pending=3,
            limits=LIMITS,
            log_seq=5,
            log_hash=HEAD,
            epoch=2,
            server_time=1_700_000_000_000,
            provisional=True,
        ),
        {
            "relay_id": RELAY,
            "max_cursor": 100,
            "pending": 3,
            "limits": LIMITS_RAW,
            "log_seq": 5,
            "log_hash": HEAD,
            "epoch": 2,
            "server_time": 1_700_000_000_000,
            "provisional": True,
        },
    ),
    (
        Push(
            blob_id=BlobId(BLOB),
            ciphertext=b"sealed bytes",
            epoch=7,
            ttl=3600,
            repair=True,
            chunks=[ADDR_A, ADDR_B],
        ),
        {
            "blob_id": BLOB,
            "ciphertext": b"sealed bytes",
            "epoch": 7,
            "ttl": 3600,
            "repair": True,
            "chunks": [ADDR_A, ADDR_B],
        },
    ),
    (
        PushAck(blob_id=BlobId(BLOB), cursor=7, timestamp=123456),
        {"blob_id": BLOB, "cursor": 7, "timestamp": 123456},
    ),
    (Pull(after=10, limit=50), {"after": 10, "limit": 50}),
    (
        PullResponse(
            blobs=[
                StoredBlob(
                    blob_id=BlobId(BLOB),
                    cursor=11,
                    sender=DeviceId(DEV_A),
                    ciphertext=b"one",
                    timestamp=1000,
                ),
                StoredBlob(
                    blob_id=BlobId(BLOB2),
                    cursor=12,
                    sender=DeviceId(DEV_B),
                    ciphertext=b"",
                    timestamp=2000,
                ),
            ],
            has_more=True,
            max_cursor=12,
        ),
        {
            "blobs": [
                {
                    "blob_id": BLOB,
                    "cursor": 11,
                    "sender": DEV_A,
                    "ciphertext": b"one",
                    "timestamp": 1000,
                },
                {
                    "blob_id": BLOB2,
                    "cursor": 12,
                    "sender": DEV_B,
                    "ciphertext": b"",
                    "timestamp": 2000,
                },
            ],
            "has_more": True,
            "max_cursor": 12,
        },
    ),
    (Presence(online=False), {"online": False}),
    (
        Notify(blob_id=BlobId(BLOB), cursor=13, sender=DeviceId(DEV_A), timestamp=3000, size=4096),
        {"blob_id": BLOB, "cursor": 13, "sender": DEV_A, "timestamp": 3000, "size": 4096},
    ),
    (Ack(cursor=9), {"cursor": 9}),
    (Delete(blob_id=BlobId(BLOB), force=True), {"blob_id": BLOB, "force": True}),
    (ListDevices(), {}),
    (
        Devices(
            devices=[
                DeviceInfo(
                    device_id=DeviceId(DEV_A), name="phone", last_seen=5, pending=2, online=True
                ),
                DeviceInfo(device_id=DeviceId(DEV_B), revoked=True),
            ]
        ),
        {
            "devices": [
                {
                    "device_id": DEV_A,
                    "name": "phone",
                    "last_seen": 5,
                    "pending": 2,
                    "online": True,
                },
                {"device_id": DEV_B, "revoked": True},
            ]
        },
    ),
    (LogGet(start=3, limit=50), {"start": 3, "limit": 50}),
    (
        Log(start=3, entries=[ENTRY_A, ENTRY_B], head_seq=9),
        {"start": 3, "entries": [ENTRY_A, ENTRY_B], "head_seq": 9},
    ),
    (LogAppend(entries=[ENTRY_B]), {"entries": [ENTRY_B]}),
    (LogAppended(head_seq=10, head_hash=HEAD), {"head_seq": 10, "head_hash": HEAD}),
    (
        Membership(start=10, entries=[ENTRY_A]),
        {"start": 10, "entries": [ENTRY_A]},
    ),
    (
        RegisterPush(token="token-123", platform=PushPlatform.FCM, app_id="com.example.app"),
        {"token": "token-123", "platform": "fcm", "app_id": "com.example.app"},
    ),
    (UnregisterPush(reason="logged out"), {"reason": "logged out"}),
    (ChunkHave(addresses=[ADDR_A, ADDR_B]), {"addresses": [ADDR_A, ADDR_B]}),
    (
        ChunkStatus(
            chunks=[
                ChunkInfo(address=ADDR_A, size=4096, received=1024),
                ChunkInfo(address=ADDR_B, size=17, received=17, complete=True),
                ChunkInfo(address=ADDR_C),  # held by nobody: every default, omitted
            ]
        ),
        {
            "chunks": [
                {"address": ADDR_A, "size": 4096, "received": 1024},
                {"address": ADDR_B, "size": 17, "received": 17, "complete": True},
                {"address": ADDR_C},
            ]
        },
    ),
    (ChunkBegin(address=ADDR_A, size=4096), {"address": ADDR_A, "size": 4096}),
    (
        ChunkPut(address=ADDR_A, offset=1024, data=b"a piece"),
        {"address": ADDR_A, "offset": 1024, "data": b"a piece"},
    ),
    (
        ChunkGet(address=ADDR_B, offset=512, length=1024),
        {"address": ADDR_B, "offset": 512, "length": 1024},
    ),
    (
        ChunkData(address=ADDR_B, offset=512, data=b"the bytes"),
        {"address": ADDR_B, "offset": 512, "data": b"the bytes"},
    ),
    (
        Error(code=2000, message="slow down", retry_after=30),
        {"code": 2000, "message": "slow down", "retry_after": 30},
    ),
]
EXAMPLE_IDS = [type(message).__name__ for message, _ in EXAMPLES]
EXAMPLE_PARAMS = pytest.mark.parametrize(("message", "body"), EXAMPLES, ids=EXAMPLE_IDS)


def raw_frame(
    body: Any, type_: Any, *, request_id: Any = 0, version: Any = PROTOCOL_VERSION
) -> bytes:
    """A frame built by hand, without the codec."""
    return msgspec.msgpack.encode([version, type_, request_id, body])


def test_examples_cover_every_message_type() -> None:
    types = [type(message) for message, _ in EXAMPLES]
    assert sorted(types, key=lambda cls: int(cls.TYPE)) == sorted(
        ALL_MESSAGES, key=lambda cls: int(cls.TYPE)
    )
    assert len(set(types)) == len(MessageType) == 26


def test_message_type_numbers_are_the_design_ones() -> None:
    assert {t.name: t.value for t in MessageType} == {
        "HELLO": 0x01,
        "WELCOME": 0x02,
        "PUSH": 0x10,
        "PUSH_ACK": 0x11,
        "PULL": 0x20,
        "PULL_RESPONSE": 0x21,
        "PRESENCE": 0x30,
        "NOTIFY": 0x31,
        "ACK": 0x32,
        "DELETE": 0x40,
        "LIST_DEVICES": 0x52,
        "DEVICES": 0x53,
        "LOG_GET": 0x54,
        "LOG": 0x55,
        "LOG_APPEND": 0x56,
        "LOG_APPENDED": 0x57,
        "MEMBERSHIP": 0x58,
        "REGISTER_PUSH": 0x60,
        "UNREGISTER_PUSH": 0x61,
        "CHUNK_HAVE": 0x70,
        "CHUNK_STATUS": 0x71,
        "CHUNK_BEGIN": 0x72,
        "CHUNK_PUT": 0x73,
        "CHUNK_GET": 0x74,
        "CHUNK_DATA": 0x75,
        "ERROR": 0xFF,
    }
    assert PROTOCOL_VERSION == 2


def test_error_code_numbers_are_the_design_ones() -> None:
    assert sorted(int(code) for code in ErrorCode) == [
        1000,
        1001,
        1002,
        1003,
        1004,
        1005,
        1006,
        1007,
        1008,
        1009,
        1010,
        1011,
        2000,
        2001,
        2002,
        2003,
        2004,
        3000,
        3001,
        3002,
    ]


# -- round trips of the hand-built examples ----------------------------------------------


@EXAMPLE_PARAMS
def test_encode_decode_round_trip(message: Message, body: dict[str, Any]) -> None:
    data = encode(message, request_id=77)
    frame = decode_frame(data)
    assert isinstance(frame, Frame)
    assert frame == (77, message)
    assert frame.request_id == 77
    assert frame.message == message
    assert type(frame.message) is type(message)
    assert decode(data) == message


@EXAMPLE_PARAMS
def test_default_request_id_is_zero(message: Message, body: dict[str, Any]) -> None:
    assert decode_frame(encode(message)).request_id == 0


@EXAMPLE_PARAMS
def test_encoding_is_the_documented_envelope(message: Message, body: dict[str, Any]) -> None:
    data = encode(message, request_id=5)
    assert data == raw_frame(body, int(message.TYPE), request_id=5)
    assert msgspec.msgpack.decode(data) == [2, int(message.TYPE), 5, body]


@EXAMPLE_PARAMS
def test_hand_built_frame_decodes(message: Message, body: dict[str, Any]) -> None:
    assert decode_frame(raw_frame(body, int(message.TYPE), request_id=9)) == (9, message)


@EXAMPLE_PARAMS
def test_unknown_body_keys_are_ignored(message: Message, body: dict[str, Any]) -> None:
    extended = {"zz_future": [1, {"nested": b"x"}], **body, "another_new_field": "hi"}
    assert decode(raw_frame(extended, int(message.TYPE))) == message


def test_unknown_keys_in_nested_structures_are_ignored() -> None:
    welcome_body = {**WELCOME_BODY, "limits": {**LIMITS_RAW, "max_devices": 10}, "new": None}
    decoded = decode(raw_frame(welcome_body, MessageType.WELCOME))
    assert decoded == Welcome(
        relay_id=RELAY, max_cursor=0, pending=0, limits=LIMITS, log_seq=1, log_hash=HEAD, epoch=0
    )
    blob = {"blob_id": BLOB, "cursor": 1, "sender": DEV_A, "ciphertext": b"c", "timestamp": 0}
    response = {"blobs": [{**blob, "signature": b"later"}], "has_more": False, "max_cursor": 1}
    decoded = decode(raw_frame(response, MessageType.PULL_RESPONSE))
    assert isinstance(decoded, PullResponse)
    assert decoded.blobs[0].ciphertext == b"c"
    devices = {"devices": [{"device_id": DEV_A, "platform": "ios"}]}
    assert decode(raw_frame(devices, MessageType.DEVICES)) == Devices(
        devices=[DeviceInfo(device_id=DeviceId(DEV_A))]
    )


def test_exact_bytes_of_ack() -> None:
    data = encode(Ack(cursor=5), request_id=7)
    # fixarray(4), version 2, type 0x32, request id 7, fixmap(1) {"cursor": 5}
    assert data == bytes.fromhex("9402320781a6") + b"cursor" + b"\x05"
    assert msgspec.msgpack.decode(data) == [2, 0x32, 7, {"cursor": 5}]


def test_exact_bytes_of_list_devices() -> None:
    data = encode(ListDevices())
    assert data == bytes.fromhex("9402520080")
    assert msgspec.msgpack.decode(data) == [2, 0x52, 0, {}]


def test_exact_bytes_of_error() -> None:
    data = encode(Error(code=ErrorCode.INVALID_MESSAGE, message="bad"), request_id=3)
    # type 0xff is a uint8 (cc ff); code 1000 is a uint16 (cd 03 e8)
    expected = (
        bytes.fromhex("94 02 cc ff 03 82 a4")
        + b"code"
        + bytes.fromhex("cd 03 e8 a7")
        + b"message"
        + bytes.fromhex("a3")
        + b"bad"
    )
    assert data == expected
    assert msgspec.msgpack.decode(data) == [2, 0xFF, 3, {"code": 1000, "message": "bad"}]


def test_exact_bytes_of_push() -> None:
    data = encode(Push(blob_id=BlobId(BLOB), ciphertext=b"xy"), request_id=2**32 - 1)
    expected = (
        bytes.fromhex("94 02 10 ce ff ff ff ff 82 a7")
        + b"blob_id"
        + bytes.fromhex("c4 10")
        + BLOB
        + bytes.fromhex("aa")
        + b"ciphertext"
        + bytes.fromhex("c4 02")
        + b"xy"
    )
    assert data == expected  # epoch 0, ttl 0, repair false, no chunks: defaults, omitted


def test_exact_bytes_of_log_append() -> None:
    data = encode(LogAppend(entries=[b"\x01\x02"]), request_id=9)
    # {"entries": [bin8(2) 01 02]}
    expected = bytes.fromhex("94 02 56 09 81 a7") + b"entries" + bytes.fromhex("91 c4 02 01 02")
    assert data == expected


def test_exact_bytes_of_push_with_chunks() -> None:
    data = encode(Push(blob_id=BlobId(BLOB), ciphertext=b"", chunks=[ADDR_A]), request_id=1)
    # chunks: fixarray(1) of bin8(32); it follows the other fields as declared
    expected = (
        bytes.fromhex("94 02 10 01 83 a7")
        + b"blob_id"
        + bytes.fromhex("c4 10")
        + BLOB
        + bytes.fromhex("aa")
        + b"ciphertext"
        + bytes.fromhex("c4 00 a6")
        + b"chunks"
        + bytes.fromhex("91 c4 20")
        + ADDR_A
    )
    assert data == expected


def test_exact_bytes_of_chunk_get_with_defaults() -> None:
    data = encode(ChunkGet(address=ADDR_A), request_id=4)
    # offset 0 and length 524288 are defaults and are omitted
    assert data == bytes.fromhex("94 02 74 04 81 a7") + b"address" + bytes.fromhex("c4 20") + ADDR_A


def test_exact_bytes_of_chunk_put() -> None:
    data = encode(ChunkPut(address=ADDR_B, offset=0, data=b"xyz"), request_id=5)
    # offset is required, so 0 is written; data is bin8
    expected = (
        bytes.fromhex("94 02 73 05 83 a7")
        + b"address"
        + bytes.fromhex("c4 20")
        + ADDR_B
        + bytes.fromhex("a6")
        + b"offset"
        + bytes.fromhex("00 a4")
        + b"data"
        + bytes.fromhex("c4 03")
        + b"xyz"
    )
    assert data == expected


def test_exact_bytes_of_chunk_data_at_a_large_offset() -> None:
    data = encode(ChunkData(address=ADDR_C, offset=4 * MIB, data=b""), request_id=6)
    # 4194304 needs a uint32 (ce 00 40 00 00); empty data is bin8 of length 0
    expected = (
        bytes.fromhex("94 02 75 06 83 a7")
        + b"address"
        + bytes.fromhex("c4 20")
        + ADDR_C
        + bytes.fromhex("a6")
        + b"offset"
        + bytes.fromhex("ce 00 40 00 00 a4")
        + b"data"
        + bytes.fromhex("c4 00")
    )
    assert data == expected


def test_exact_bytes_of_chunk_status_of_an_unknown_chunk() -> None:
    data = encode(ChunkStatus(chunks=[ChunkInfo(address=ADDR_A)]), request_id=8)
    # {"chunks": [{"address": ...}]}: size 0, received 0 and complete false are omitted
    expected = (
        bytes.fromhex("94 02 71 08 81 a6")
        + b"chunks"
        + bytes.fromhex("91 81 a7")
        + b"address"
        + bytes.fromhex("c4 20")
        + ADDR_A
    )
    assert data == expected


def test_defaults_are_omitted_and_restored() -> None:
    assert msgspec.msgpack.decode(encode(Pull())) == [2, 0x20, 0, {}]
    assert decode(raw_frame({}, MessageType.PULL)) == Pull(after=0, limit=100)
    assert decode(raw_frame({}, MessageType.PRESENCE)) == Presence(online=True)
    assert decode(raw_frame({}, MessageType.UNREGISTER_PUSH)) == UnregisterPush(reason="")
    assert decode(raw_frame({}, MessageType.LOG_GET)) == LogGet(start=0, limit=256)
    hello = decode(raw_frame({"group_id": GROUP, "proof": PROOF}, 0x01))
    assert hello == Hello(group_id=GroupId(GROUP), proof=PROOF)
    assert isinstance(hello, Hello)
    assert (hello.device_name, hello.last_cursor, hello.client) == ("", 0, "")
    assert (hello.signer, hello.entries) == (b"", [])
    assert msgspec.msgpack.decode(encode(hello))[3] == {"group_id": GROUP, "proof": PROOF}
    push = decode(raw_frame(PUSH_BODY, MessageType.PUSH))
    assert isinstance(push, Push)
    assert (push.epoch, push.ttl, push.repair) == (0, 0, False)
    welcome = decode(raw_frame(WELCOME_BODY, MessageType.WELCOME))
    assert isinstance(welcome, Welcome)
    assert (welcome.server_time, welcome.provisional) == (0, False)
    assert msgspec.msgpack.decode(encode(welcome))[3] == WELCOME_BODY


def test_chunk_defaults_are_omitted_and_restored() -> None:
    push = decode(raw_frame(PUSH_BODY, MessageType.PUSH))
    assert isinstance(push, Push)
    assert push.chunks == []
    assert msgspec.msgpack.decode(encode(push))[3] == PUSH_BODY
    get = decode(raw_frame({"address": ADDR_A}, MessageType.CHUNK_GET))
    assert get == ChunkGet(address=ADDR_A, offset=0, length=PIECE_MAX)
    status = decode(raw_frame({"chunks": [{"address": ADDR_A}]}, MessageType.CHUNK_STATUS))
    assert isinstance(status, ChunkStatus)
    [info] = status.chunks
    assert type(info) is ChunkInfo
    assert (info.address, info.size, info.received, info.complete) == (ADDR_A, 0, 0, False)


def test_chunk_bounds_are_the_documented_ones() -> None:
    assert (MAX_SEALED_CHUNK, MAX_CHUNK_PIECE) == (SEALED_MAX, PIECE_MAX) == (4194321, 524288)
    assert (MAX_CHUNK_QUERY, MAX_CHUNKS) == (QUERY_MAX, PUSH_CHUNKS_MAX)


def test_decoded_ids_have_their_id_types() -> None:
    hello = decode(encode(EXAMPLES[0][0]))
    assert isinstance(hello, Hello)
    assert type(hello.group_id) is GroupId
    sent = Notify(blob_id=BlobId(BLOB), cursor=1, sender=DeviceId(DEV_A), timestamp=0, size=0)
    notify = decode(encode(sent))
    assert isinstance(notify, Notify)
    assert type(notify.blob_id) is BlobId
    assert type(notify.sender) is DeviceId
    log = decode(encode(Log(start=1, entries=[ENTRY_A], head_seq=1)))
    assert isinstance(log, Log)
    assert [type(entry) for entry in log.entries] == [bytes]
    push = decode(encode(RegisterPush(token="t", platform=PushPlatform.APNS)))
    assert isinstance(push, RegisterPush)
    assert push.platform is PushPlatform.APNS


def test_decode_accepts_bytearray_and_memoryview() -> None:
    data = encode(Ack(cursor=1))
    assert decode(bytearray(data)) == Ack(cursor=1)  # type: ignore[arg-type]
    assert decode(memoryview(data)) == Ack(cursor=1)  # type: ignore[arg-type]


# -- request id bounds ----------------------------------------------------------------------


@pytest.mark.parametrize("request_id", [0, 1, 2**31, U32_MAX])
def test_request_id_in_bounds(request_id: int) -> None:
    assert U32_MAX == 2**32 - 1
    message = Ack(cursor=1)
    assert decode_frame(encode(message, request_id=request_id)) == (request_id, message)
    assert decode_frame(raw_frame({"cursor": 1}, 0x32, request_id=request_id)) == (
        request_id,
        message,
    )


@pytest.mark.parametrize("request_id", [-1, 2**32, 2**40, -(2**31)])
def test_request_id_out_of_bounds_on_encode(request_id: int) -> None:
    with pytest.raises(WireError):
        encode(Ack(cursor=1), request_id=request_id)


@pytest.mark.parametrize("request_id", [-1, 2**32, 2**63, -(2**63)])
def test_request_id_out_of_bounds_on_decode(request_id: int) -> None:
    with pytest.raises(WireError):
        decode_frame(raw_frame({"cursor": 1}, 0x32, request_id=request_id))


@pytest.mark.parametrize("value", [Limits(**LIMITS_RAW), {"cursor": 1}, b"bytes", None, 5])
def test_encode_rejects_non_messages(value: object) -> None:
    with pytest.raises(WireError):
        encode(value)  # type: ignore[arg-type]


# -- strict decoding ------------------------------------------------------------------------

ACK_BODY = {"cursor": 1}
HELLO_BODY: dict[str, Any] = {"group_id": GROUP, "proof": PROOF}
PUSH_BODY: dict[str, Any] = {"blob_id": BLOB, "ciphertext": b"c"}
STORED: dict[str, Any] = {
    "blob_id": BLOB,
    "cursor": 1,
    "sender": DEV_A,
    "ciphertext": b"c",
    "timestamp": 0,
}
WELCOME_BODY: dict[str, Any] = {
    "relay_id": RELAY,
    "max_cursor": 0,
    "pending": 0,
    "limits": LIMITS_RAW,
    "log_seq": 1,
    "log_hash": HEAD,
    "epoch": 0,
}
LOG_BODY: dict[str, Any] = {"start": 1, "entries": [ENTRY_A], "head_seq": 1}
BIG_ENTRY = bytes(MAX_ENTRY_BYTES + 256)  # the largest entry the wire carries
APPENDED_BODY: dict[str, Any] = {"head_seq": 1, "head_hash": HEAD}
MEMBERSHIP_BODY: dict[str, Any] = {"start": 1, "entries": [ENTRY_A]}
VALID_ACK = raw_frame(ACK_BODY, 0x32)


def _frames_with_bad_envelopes() -> dict[str, bytes]:
    enc = msgspec.msgpack.encode
    return {
        "unknown type 0x00": raw_frame({}, 0x00),
        "unknown type 0x03": raw_frame({}, 0x03),
        "unknown type 0x62": raw_frame({}, 0x62),
        "unknown type 0x6f": raw_frame({}, 0x6F),
        "unknown type 0x76": raw_frame({}, 0x76),
        "v1 type REVOKE_DEVICE 0x50": raw_frame({"device_id": DEV_A, "reason": "lost"}, 0x50),
        "v1 type DEVICE_REVOKED 0x51": raw_frame({}, 0x51),
        "unknown type 0x59": raw_frame({}, 0x59),
        "unknown type 0xfe": raw_frame({}, 0xFE),
        "unknown type 256": raw_frame({}, 256),
        "negative type": raw_frame({}, -1),
        "type as str": raw_frame(ACK_BODY, "ACK"),
        "type as bool": raw_frame(ACK_BODY, True),
        "type as float": raw_frame(ACK_BODY, 50.0),
        "version 0": raw_frame(ACK_BODY, 0x32, version=0),
        "version 1": raw_frame(ACK_BODY, 0x32, version=1),
        "version 3": raw_frame(ACK_BODY, 0x32, version=3),
        "version -1": raw_frame(ACK_BODY, 0x32, version=-1),
        "version as bool": raw_frame(ACK_BODY, 0x32, version=True),
        "version as float": raw_frame(ACK_BODY, 0x32, version=2.0),
        "version as str": raw_frame(ACK_BODY, 0x32, version="2"),
        "version nil": raw_frame(ACK_BODY, 0x32, version=None),
        "request id as bool": raw_frame(ACK_BODY, 0x32, request_id=False),
        "request id as str": raw_frame(ACK_BODY, 0x32, request_id="1"),
        "request id nil": raw_frame(ACK_BODY, 0x32, request_id=None),
        "request id as float": raw_frame(ACK_BODY, 0x32, request_id=1.0),
        "envelope of 3": enc([2, 0x32, 0]),
        "envelope of 3 without id": enc([2, 0x32, ACK_BODY]),
        "envelope of 5": enc([2, 0x32, 0, ACK_BODY, None]),
        "envelope of 5 with body twice": enc([2, 0x32, 0, ACK_BODY, ACK_BODY]),
        "envelope of 0": enc([]),
        "envelope of 1": enc([2]),
        "top level map": enc({"version": 2, "type": 0x32, "request_id": 0, "body": ACK_BODY}),
        "top level int": enc(1),
        "top level str": enc("frame"),
        "top level nil": enc(None),
        "top level bin": enc(VALID_ACK),
        "top level bool": enc(True),
        "top level float": enc(1.5),
        "top level ext": enc(msgspec.msgpack.Ext(1, VALID_ACK)),
        "body is array": raw_frame([1], 0x32),
        "body is int": raw_frame(1, 0x32),
        "body is nil": raw_frame(None, 0x32),
        "body is bin": raw_frame(msgspec.msgpack.encode(ACK_BODY), 0x32),
        "body is str": raw_frame("cursor", 0x32),
        "body is ext": raw_frame(msgspec.msgpack.Ext(5, b"\x00"), 0x32),
        "empty": b"",
        "truncated": VALID_ACK[:-1],
        "truncated to header": VALID_ACK[:4],
        "only array header": b"\x94",
        "trailing byte": VALID_ACK + b"\x00",
        "trailing frame": VALID_ACK + VALID_ACK,
        "reserved byte 0xc1": b"\xc1",
        "reserved byte in body": b"\x94\x02\x32\x00\xc1",
        "huge array length": b"\xdd\xff\xff\xff\xff",
        "huge str length in body": b"\x94\x02\x32\x00\x81\xa6cursor\xdb\xff\xff\xff\xff",
        "non-str keys": raw_frame({1: 2, "cursor": 1}, 0x32),
        "nil key": b"\x94\x02\x32\x00\x82\xc0\x01\xa6cursor\x05",
    }


def _frames_with_bad_bodies() -> dict[str, bytes]:
    seconds_over = 2**32
    too_many_blobs = [STORED] * 1001
    too_many_devices = [{"device_id": DEV_A}] * 10_001
    return {
        # wrong field types
        "cursor as str": raw_frame({"cursor": "1"}, 0x32),
        "cursor as float": raw_frame({"cursor": 1.0}, 0x32),
        "cursor as bool": raw_frame({"cursor": True}, 0x32),
        "cursor as bin": raw_frame({"cursor": b"\x01"}, 0x32),
        "cursor nil": raw_frame({"cursor": None}, 0x32),
        "pull after as bool": raw_frame({"after": False}, 0x20),
        "pull limit as bool": raw_frame({"limit": True}, 0x20),
        "error code as bool": raw_frame({"code": True}, 0xFF),
        "error code as str": raw_frame({"code": "1000"}, 0xFF),
        "ttl as bool": raw_frame({**PUSH_BODY, "ttl": True}, 0x10),
        "has_more as int": raw_frame({"blobs": [], "has_more": 1, "max_cursor": 0}, 0x21),
        "online as int": raw_frame({"online": 1}, 0x30),
        "force as str": raw_frame({"blob_id": BLOB, "force": "yes"}, 0x40),
        "blob id as str": raw_frame({"blob_id": "a" * 16, "ciphertext": b""}, 0x10),
        "blob id as list": raw_frame({"blob_id": list(BLOB), "ciphertext": b""}, 0x10),
        "ciphertext as str": raw_frame({"blob_id": BLOB, "ciphertext": "text"}, 0x10),
        "device name as bin": raw_frame({**HELLO_BODY, "device_name": b"laptop"}, 0x01),
        "group id as str": raw_frame({**HELLO_BODY, "group_id": "g" * 32}, 0x01),
        "limits as array": raw_frame({**WELCOME_BODY, "limits": list(LIMITS_RAW.values())}, 2),
        "limits field as str": raw_frame(
            {**WELCOME_BODY, "limits": {**LIMITS_RAW, "max_ttl": "1"}}, 0x02
        ),
        "blobs as map": raw_frame({"blobs": {}, "has_more": False, "max_cursor": 0}, 0x21),
        "stored blob as array": raw_frame(
            {"blobs": [list(STORED.values())], "has_more": False, "max_cursor": 0}, 0x21
        ),
        "devices as bin": raw_frame({"devices": b""}, 0x53),
        "push epoch as bool": raw_frame({**PUSH_BODY, "epoch": True}, 0x10),
        "push repair as int": raw_frame({**PUSH_BODY, "repair": 1}, 0x10),
        "welcome provisional as int": raw_frame({**WELCOME_BODY, "provisional": 1}, 0x02),
        "welcome log hash as str": raw_frame({**WELCOME_BODY, "log_hash": "h" * 32}, 0x02),
        "hello signer as str": raw_frame({**HELLO_BODY, "signer": "s" * 32}, 0x01),
        "hello entries as bin": raw_frame({**HELLO_BODY, "entries": ENTRY_A}, 0x01),
        "hello entry as str": raw_frame({**HELLO_BODY, "entries": ["entry"]}, 0x01),
        "log entries as map": raw_frame({**LOG_BODY, "entries": {"0": ENTRY_A}}, 0x55),
        "log entry as int": raw_frame({**LOG_BODY, "entries": [5]}, 0x55),
        "log append entry nil": raw_frame({"entries": [None]}, 0x56),
        "membership entry as str": raw_frame({**MEMBERSHIP_BODY, "entries": ["e"]}, 0x58),
        "log get start as str": raw_frame({"start": "1"}, 0x54),
        "log appended head seq as float": raw_frame({**APPENDED_BODY, "head_seq": 1.0}, 0x57),
        "push platform unknown": raw_frame({"token": "t", "platform": "gcm"}, 0x60),
        "field is ext": raw_frame({"cursor": msgspec.msgpack.Ext(1, b"\x01")}, 0x32),
        # missing required fields
        "ack without cursor": raw_frame({}, 0x32),
        "push without blob id": raw_frame({"ciphertext": b"c"}, 0x10),
        "push without ciphertext": raw_frame({"blob_id": BLOB}, 0x10),
        "hello without proof": raw_frame({"group_id": GROUP, "signer": SIGNER}, 0x01),
        "hello without group": raw_frame({"signer": SIGNER, "proof": PROOF}, 0x01),
        "welcome without limits": raw_frame(
            {k: v for k, v in WELCOME_BODY.items() if k != "limits"}, 0x02
        ),
        "limits without max_ttl": raw_frame(
            {**WELCOME_BODY, "limits": {k: v for k, v in LIMITS_RAW.items() if k != "max_ttl"}},
            0x02,
        ),
        "stored blob without sender": raw_frame(
            {
                "blobs": [{k: v for k, v in STORED.items() if k != "sender"}],
                "has_more": False,
                "max_cursor": 0,
            },
            0x21,
        ),
        "pull response without has_more": raw_frame({"blobs": [], "max_cursor": 0}, 0x21),
        "notify without size": raw_frame(
            {"blob_id": BLOB, "cursor": 1, "sender": DEV_A, "timestamp": 0}, 0x31
        ),
        "delete without blob id": raw_frame({"force": True}, 0x40),
        "welcome without log seq": raw_frame(
            {k: v for k, v in WELCOME_BODY.items() if k != "log_seq"}, 0x02
        ),
        "welcome without log hash": raw_frame(
            {k: v for k, v in WELCOME_BODY.items() if k != "log_hash"}, 0x02
        ),
        "welcome without epoch": raw_frame(
            {k: v for k, v in WELCOME_BODY.items() if k != "epoch"}, 0x02
        ),
        "log without start": raw_frame({"entries": [], "head_seq": 0}, 0x55),
        "log without entries": raw_frame({"start": 0, "head_seq": 0}, 0x55),
        "log without head seq": raw_frame({"start": 0, "entries": []}, 0x55),
        "log append without entries": raw_frame({}, 0x56),
        "log appended without head hash": raw_frame({"head_seq": 1}, 0x57),
        "log appended without head seq": raw_frame({"head_hash": HEAD}, 0x57),
        "membership without start": raw_frame({"entries": [ENTRY_A]}, 0x58),
        "membership without entries": raw_frame({"start": 1}, 0x58),
        "device info without id": raw_frame({"devices": [{"name": "x"}]}, 0x53),
        "register push without platform": raw_frame({"token": "t"}, 0x60),
        "error without code": raw_frame({"message": "m"}, 0xFF),
        # out-of-bounds and oversized fields
        "device name of 65 chars": raw_frame({**HELLO_BODY, "device_name": "n" * 65}, 0x01),
        "client of 65 chars": raw_frame({**HELLO_BODY, "client": "c" * 65}, 0x01),
        "device name of 65 non-ascii chars": raw_frame(
            {**HELLO_BODY, "device_name": "é" * 65}, 0x01
        ),
        "proof of 63 bytes": raw_frame({**HELLO_BODY, "proof": PROOF[:-1]}, 0x01),
        "proof of 65 bytes": raw_frame({**HELLO_BODY, "proof": PROOF + b"\x00"}, 0x01),
        "signer of 33 bytes": raw_frame({**HELLO_BODY, "signer": SIGNER + b"\x00"}, 0x01),
        "hello of 65 entries": raw_frame({**HELLO_BODY, "entries": [b"e"] * 65}, 0x01),
        "hello entry too large": raw_frame({**HELLO_BODY, "entries": [BIG_ENTRY + b"\x00"]}, 0x01),
        "log hash of 31 bytes": raw_frame({**WELCOME_BODY, "log_hash": HEAD[:-1]}, 0x02),
        "log hash of 33 bytes": raw_frame({**WELCOME_BODY, "log_hash": HEAD + b"\x00"}, 0x02),
        "head hash of 31 bytes": raw_frame({**APPENDED_BODY, "head_hash": HEAD[:-1]}, 0x57),
        "head hash empty": raw_frame({**APPENDED_BODY, "head_hash": b""}, 0x57),
        "welcome log seq negative": raw_frame({**WELCOME_BODY, "log_seq": -1}, 0x02),
        "welcome epoch of 2**32": raw_frame({**WELCOME_BODY, "epoch": 2**32}, 0x02),
        "welcome epoch negative": raw_frame({**WELCOME_BODY, "epoch": -1}, 0x02),
        "push epoch of 2**32": raw_frame({**PUSH_BODY, "epoch": 2**32}, 0x10),
        "push epoch negative": raw_frame({**PUSH_BODY, "epoch": -1}, 0x10),
        "log get start negative": raw_frame({"start": -1}, 0x54),
        "log get start of 2**63": raw_frame({"start": 2**63}, 0x54),
        "log get limit 0": raw_frame({"limit": 0}, 0x54),
        "log get limit 257": raw_frame({"limit": 257}, 0x54),
        "log of 257 entries": raw_frame({**LOG_BODY, "entries": [b"e"] * 257}, 0x55),
        "log entry too large": raw_frame({**LOG_BODY, "entries": [BIG_ENTRY + b"\x00"]}, 0x55),
        "log head seq negative": raw_frame({**LOG_BODY, "head_seq": -1}, 0x55),
        "log append of 0 entries": raw_frame({"entries": []}, 0x56),
        "log append of 17 entries": raw_frame({"entries": [b"e"] * 17}, 0x56),
        "log append entry too large": raw_frame({"entries": [BIG_ENTRY + b"\x00"]}, 0x56),
        "log appended head seq of 2**63": raw_frame({**APPENDED_BODY, "head_seq": 2**63}, 0x57),
        "membership of 17 entries": raw_frame({**MEMBERSHIP_BODY, "entries": [b"e"] * 17}, 0x58),
        "membership start negative": raw_frame({**MEMBERSHIP_BODY, "start": -1}, 0x58),
        "group id of 31 bytes": raw_frame({**HELLO_BODY, "group_id": GROUP[:-1]}, 0x01),
        "relay id of 33 bytes": raw_frame({**WELCOME_BODY, "relay_id": RELAY + b"\x00"}, 0x02),
        "blob id of 15 bytes": raw_frame({"blob_id": BLOB[:-1], "ciphertext": b""}, 0x10),
        "blob id of 17 bytes": raw_frame({"blob_id": BLOB + b"\x00", "ciphertext": b""}, 0x10),
        "blob id of 32 bytes": raw_frame({"blob_id": DEV_A, "force": True}, 0x40),
        "sender of 16 bytes": raw_frame(
            {"blob_id": BLOB, "cursor": 1, "sender": BLOB, "timestamp": 0, "size": 0}, 0x31
        ),
        "device id of 31 bytes": raw_frame({"devices": [{"device_id": DEV_A[:-1]}]}, 0x53),
        "ciphertext over 16 MiB": raw_frame(
            {"blob_id": BLOB, "ciphertext": bytes(16 * MIB + 1)}, 0x10
        ),
        "stored ciphertext over 16 MiB": raw_frame(
            {
                "blobs": [{**STORED, "ciphertext": bytes(16 * MIB + 1)}],
                "has_more": False,
                "max_cursor": 1,
            },
            0x21,
        ),
        "cursor of 2**63": raw_frame({"cursor": 2**63}, 0x32),
        "cursor negative": raw_frame({"cursor": -1}, 0x32),
        "hello last cursor negative": raw_frame({**HELLO_BODY, "last_cursor": -5}, 0x01),
        "pull after of 2**63": raw_frame({"after": 2**63}, 0x20),
        "pull limit 0": raw_frame({"limit": 0}, 0x20),
        "pull limit 1001": raw_frame({"limit": 1001}, 0x20),
        "pull limit negative": raw_frame({"limit": -1}, 0x20),
        "ttl of 2**32": raw_frame({**PUSH_BODY, "ttl": seconds_over}, 0x10),
        "ttl negative": raw_frame({**PUSH_BODY, "ttl": -1}, 0x10),
        "default ttl of 2**32": raw_frame(
            {**WELCOME_BODY, "limits": {**LIMITS_RAW, "default_ttl": seconds_over}}, 0x02
        ),
        "max blob size negative": raw_frame(
            {**WELCOME_BODY, "limits": {**LIMITS_RAW, "max_blob_size": -1}}, 0x02
        ),
        "server time negative": raw_frame({**WELCOME_BODY, "server_time": -1}, 0x02),
        "pending of 2**63": raw_frame({**WELCOME_BODY, "pending": 2**63}, 0x02),
        "notify size negative": raw_frame(
            {"blob_id": BLOB, "cursor": 1, "sender": DEV_A, "timestamp": 0, "size": -1}, 0x31
        ),
        "timestamp negative": raw_frame(
            {"blob_id": BLOB, "cursor": 1, "timestamp": -1}, MessageType.PUSH_ACK
        ),
        "1001 stored blobs": raw_frame(
            {"blobs": too_many_blobs, "has_more": True, "max_cursor": 1}, 0x21
        ),
        "10001 devices": raw_frame({"devices": too_many_devices}, 0x53),
        "device info name of 65 chars": raw_frame(
            {"devices": [{"device_id": DEV_A, "name": "x" * 65}]}, 0x53
        ),
        "unregister reason of 1025 chars": raw_frame({"reason": "r" * 1025}, 0x61),
        "error message of 1025 chars": raw_frame({"code": 1000, "message": "m" * 1025}, 0xFF),
        "error code negative": raw_frame({"code": -1}, 0xFF),
        "error code 65536": raw_frame({"code": 65536}, 0xFF),
        "error retry_after of 2**32": raw_frame({"code": 2000, "retry_after": 2**32}, 0xFF),
        "empty push token": raw_frame({"token": "", "platform": "apns"}, 0x60),
        "push token of 4097 chars": raw_frame({"token": "t" * 4097, "platform": "apns"}, 0x60),
        "app id of 257 chars": raw_frame(
            {"token": "t", "platform": "web", "app_id": "a" * 257}, 0x60
        ),
    }


def _frames_with_bad_chunk_bodies() -> dict[str, bytes]:
    """Bodies of the chunk messages (and PUSH.chunks) that break a type or a bound."""
    short, long = ADDR_A[:-1], ADDR_A + b"\x00"
    info: dict[str, Any] = {"address": ADDR_A, "size": 10, "received": 5}
    begin: dict[str, Any] = {"address": ADDR_A, "size": 10}
    put: dict[str, Any] = {"address": ADDR_A, "offset": 0, "data": b"d"}
    got: dict[str, Any] = {"address": ADDR_A, "offset": 0, "data": b"d"}

    def status(**fields: Any) -> bytes:
        return raw_frame({"chunks": [{**info, **fields}]}, 0x71)

    return {
        # wrong field types
        "push chunks as bin": raw_frame({**PUSH_BODY, "chunks": ADDR_A}, 0x10),
        "push chunk as str": raw_frame({**PUSH_BODY, "chunks": ["a" * 32]}, 0x10),
        "chunk have addresses as bin": raw_frame({"addresses": ADDR_A}, 0x70),
        "chunk have address as str": raw_frame({"addresses": ["a" * 32]}, 0x70),
        "chunk have address nil": raw_frame({"addresses": [None]}, 0x70),
        "chunk status chunks as map": raw_frame({"chunks": {"0": info}}, 0x71),
        "chunk info as array": raw_frame({"chunks": [list(info.values())]}, 0x71),
        "chunk info as address": raw_frame({"chunks": [ADDR_A]}, 0x71),
        "chunk info complete as int": status(complete=1),
        "chunk info size as str": status(size="10"),
        "chunk begin size as float": raw_frame({**begin, "size": 10.0}, 0x72),
        "chunk begin size as bool": raw_frame({**begin, "size": True}, 0x72),
        "chunk begin address as list": raw_frame({**begin, "address": list(ADDR_A)}, 0x72),
        "chunk put offset as bool": raw_frame({**put, "offset": False}, 0x73),
        "chunk put data as str": raw_frame({**put, "data": "d"}, 0x73),
        "chunk get length as str": raw_frame({"address": ADDR_A, "length": "1"}, 0x74),
        "chunk get offset as float": raw_frame({"address": ADDR_A, "offset": 0.0}, 0x74),
        "chunk data data as list": raw_frame({**got, "data": [1]}, 0x75),
        "chunk data data nil": raw_frame({**got, "data": None}, 0x75),
        # missing required fields
        "chunk have without addresses": raw_frame({}, 0x70),
        "chunk status without chunks": raw_frame({}, 0x71),
        "chunk info without address": raw_frame({"chunks": [{"size": 1}]}, 0x71),
        "chunk begin without address": raw_frame({"size": 10}, 0x72),
        "chunk begin without size": raw_frame({"address": ADDR_A}, 0x72),
        "chunk put without address": raw_frame({"offset": 0, "data": b"d"}, 0x73),
        "chunk put without offset": raw_frame({"address": ADDR_A, "data": b"d"}, 0x73),
        "chunk put without data": raw_frame({"address": ADDR_A, "offset": 0}, 0x73),
        "chunk get without address": raw_frame({"offset": 0, "length": 1}, 0x74),
        "chunk data without address": raw_frame({"offset": 0, "data": b""}, 0x75),
        "chunk data without offset": raw_frame({"address": ADDR_A, "data": b""}, 0x75),
        "chunk data without data": raw_frame({"address": ADDR_A, "offset": 0}, 0x75),
        # addresses that are not 32 bytes, wherever one goes
        "push chunk of 31 bytes": raw_frame({**PUSH_BODY, "chunks": [ADDR_A, short]}, 0x10),
        "push chunk of 33 bytes": raw_frame({**PUSH_BODY, "chunks": [long]}, 0x10),
        "push chunk empty": raw_frame({**PUSH_BODY, "chunks": [b""]}, 0x10),
        "chunk have address of 31 bytes": raw_frame({"addresses": [short]}, 0x70),
        "chunk have address of 33 bytes": raw_frame({"addresses": [ADDR_B, long]}, 0x70),
        "chunk info address of 31 bytes": status(address=short),
        "chunk info address of 33 bytes": status(address=long),
        "chunk begin address of 31 bytes": raw_frame({**begin, "address": short}, 0x72),
        "chunk begin address of 16 bytes": raw_frame({**begin, "address": BLOB}, 0x72),
        "chunk put address of 33 bytes": raw_frame({**put, "address": long}, 0x73),
        "chunk get address empty": raw_frame({"address": b""}, 0x74),
        "chunk get address of 64 bytes": raw_frame({"address": ADDR_A * 2}, 0x74),
        "chunk data address of 31 bytes": raw_frame({**got, "address": short}, 0x75),
        # counts
        "push of 16385 chunks": raw_frame({**PUSH_BODY, "chunks": [ADDR_A] * 16385}, 0x10),
        "chunk have of 0 addresses": raw_frame({"addresses": []}, 0x70),
        "chunk have of 1025 addresses": raw_frame({"addresses": [ADDR_A] * 1025}, 0x70),
        "chunk status of 1025 chunks": raw_frame({"chunks": [info] * 1025}, 0x71),
        # sizes and offsets
        "chunk info size negative": status(size=-1),
        "chunk info size over the sealed maximum": status(size=SEALED_MAX + 1),
        "chunk info received negative": status(received=-1),
        "chunk info received over the sealed maximum": status(received=SEALED_MAX + 1),
        "chunk begin size 0": raw_frame({**begin, "size": 0}, 0x72),
        "chunk begin size negative": raw_frame({**begin, "size": -1}, 0x72),
        "chunk begin size over the sealed maximum": raw_frame(
            {**begin, "size": SEALED_MAX + 1}, 0x72
        ),
        "chunk begin size of 2**63": raw_frame({**begin, "size": 2**63}, 0x72),
        "chunk put offset negative": raw_frame({**put, "offset": -1}, 0x73),
        "chunk put offset over the sealed maximum": raw_frame(
            {**put, "offset": SEALED_MAX + 1}, 0x73
        ),
        "chunk put data empty": raw_frame({**put, "data": b""}, 0x73),
        "chunk put data over 512 KiB": raw_frame({**put, "data": bytes(PIECE_MAX + 1)}, 0x73),
        "chunk get offset negative": raw_frame({"address": ADDR_A, "offset": -1}, 0x74),
        "chunk get offset over the sealed maximum": raw_frame(
            {"address": ADDR_A, "offset": SEALED_MAX + 1}, 0x74
        ),
        "chunk get length 0": raw_frame({"address": ADDR_A, "length": 0}, 0x74),
        "chunk get length negative": raw_frame({"address": ADDR_A, "length": -1}, 0x74),
        "chunk get length over 512 KiB": raw_frame(
            {"address": ADDR_A, "length": PIECE_MAX + 1}, 0x74
        ),
        "chunk data offset negative": raw_frame({**got, "offset": -1}, 0x75),
        "chunk data offset over the sealed maximum": raw_frame(
            {**got, "offset": SEALED_MAX + 1}, 0x75
        ),
        "chunk data data over 512 KiB": raw_frame({**got, "data": bytes(PIECE_MAX + 1)}, 0x75),
    }


BAD_BODIES = {**_frames_with_bad_bodies(), **_frames_with_bad_chunk_bodies()}
BAD_FRAMES = {**_frames_with_bad_envelopes(), **BAD_BODIES}


@pytest.mark.parametrize("data", list(BAD_FRAMES.values()), ids=list(BAD_FRAMES))
def test_strict_decoding_raises_wire_error(data: bytes) -> None:
    with pytest.raises(WireError):
        decode_frame(data)
    with pytest.raises(WireError):
        decode(data)


@pytest.mark.parametrize("data", list(BAD_BODIES.values()), ids=list(BAD_BODIES))
def test_bad_bodies_are_refused_for_their_body(data: bytes) -> None:
    """Each bad body sits in a valid envelope (this version, a known type), so it is
    refused for what the body holds and not for an envelope defect."""
    with pytest.raises(WireError, match=r"^invalid [A-Z_]+ message: "):
        decode_frame(data)


@pytest.mark.parametrize("data", [None, "frame", 5, [2, 0x32, 0, {"cursor": 1}]])
def test_decoding_a_non_bytes_object_raises_wire_error(data: object) -> None:
    with pytest.raises(WireError):
        decode_frame(data)  # type: ignore[arg-type]


def test_bounds_that_are_exactly_at_the_limit_decode() -> None:
    name64 = "n" * 64
    hello = decode(raw_frame({**HELLO_BODY, "device_name": name64, "client": "é" * 64}, 0x01))
    assert isinstance(hello, Hello)
    assert hello.device_name == name64
    assert decode(raw_frame({"cursor": 2**63 - 1}, 0x32)) == Ack(cursor=2**63 - 1)
    assert decode(raw_frame({"limit": 1000}, 0x20)) == Pull(limit=1000)
    assert decode(raw_frame({"limit": 1}, 0x20)) == Pull(limit=1)
    push = decode(raw_frame({**PUSH_BODY, "ttl": U32_MAX}, 0x10))
    assert isinstance(push, Push)
    assert push.ttl == U32_MAX
    assert decode(raw_frame({"reason": "r" * 1024}, 0x61)) == UnregisterPush(reason="r" * 1024)
    assert decode(raw_frame({"code": 65535}, 0xFF)) == Error(code=65535)
    register = decode(raw_frame({"token": "t" * 4096, "platform": "web", "app_id": "a" * 256}, 96))
    assert isinstance(register, RegisterPush)
    big = decode(raw_frame({"blob_id": BLOB, "ciphertext": bytes(16 * MIB)}, 0x10))
    assert isinstance(big, Push)
    assert len(big.ciphertext) == 16 * MIB


def test_log_bounds_that_are_exactly_at_the_limit_decode() -> None:
    hello = decode(raw_frame({**HELLO_BODY, "signer": SIGNER, "entries": [b"e"] * 64}, 0x01))
    assert isinstance(hello, Hello)
    assert (hello.signer, len(hello.entries)) == (SIGNER, 64)
    hello = decode(raw_frame({**HELLO_BODY, "entries": [BIG_ENTRY]}, 0x01))
    assert isinstance(hello, Hello)
    assert hello.entries == [BIG_ENTRY]
    welcome = decode(raw_frame({**WELCOME_BODY, "epoch": U32_MAX, "log_seq": 2**63 - 1}, 0x02))
    assert isinstance(welcome, Welcome)
    assert (welcome.epoch, welcome.log_seq) == (U32_MAX, 2**63 - 1)
    push = decode(raw_frame({**PUSH_BODY, "epoch": U32_MAX}, 0x10))
    assert isinstance(push, Push)
    assert push.epoch == U32_MAX
    assert decode(raw_frame({"start": 2**63 - 1, "limit": 256}, 0x54)) == LogGet(
        start=2**63 - 1, limit=256
    )
    assert decode(raw_frame({"limit": 1}, 0x54)) == LogGet(limit=1)
    log = decode(raw_frame({**LOG_BODY, "entries": [b"e"] * 256}, 0x55))
    assert isinstance(log, Log)
    assert len(log.entries) == 256
    assert decode(raw_frame({"entries": [b"e"] * 16}, 0x56)) == LogAppend(entries=[b"e"] * 16)
    assert decode(raw_frame({"entries": [BIG_ENTRY]}, 0x56)) == LogAppend(entries=[BIG_ENTRY])
    assert decode(raw_frame({"entries": [b""]}, 0x56)) == LogAppend(entries=[b""])
    membership = decode(raw_frame({**MEMBERSHIP_BODY, "entries": [b"e"] * 16}, 0x58))
    assert membership == Membership(start=1, entries=[b"e"] * 16)
    assert decode(raw_frame({**MEMBERSHIP_BODY, "entries": []}, 0x58)) == Membership(
        start=1, entries=[]
    )


def test_chunk_bounds_that_are_exactly_at_the_limit_decode() -> None:
    """The edges the bad-body cases above lie one past: each one still decodes."""
    many = [bytes([i % 256]) * 32 for i in range(QUERY_MAX)]
    assert decode(raw_frame({"addresses": [ADDR_A]}, 0x70)) == ChunkHave(addresses=[ADDR_A])
    assert decode(raw_frame({"addresses": many}, 0x70)) == ChunkHave(addresses=many)
    assert decode(raw_frame({"chunks": []}, 0x71)) == ChunkStatus(chunks=[])
    top = ChunkInfo(address=ADDR_A, size=SEALED_MAX, received=SEALED_MAX, complete=True)
    top_body = {"address": ADDR_A, "size": SEALED_MAX, "received": SEALED_MAX, "complete": True}
    status = decode(raw_frame({"chunks": [top_body] * QUERY_MAX}, 0x71))
    assert status == ChunkStatus(chunks=[top] * QUERY_MAX)
    for size in (1, SEALED_MAX):
        begin = decode(raw_frame({"address": ADDR_A, "size": size}, 0x72))
        assert begin == ChunkBegin(address=ADDR_A, size=size)
    for offset, data in ((0, b"\x01"), (SEALED_MAX, b"\x01"), (0, bytes(PIECE_MAX))):
        put = decode(raw_frame({"address": ADDR_A, "offset": offset, "data": data}, 0x73))
        assert put == ChunkPut(address=ADDR_A, offset=offset, data=data)
    for offset, length in ((SEALED_MAX, 1), (0, PIECE_MAX)):
        get = decode(raw_frame({"address": ADDR_A, "offset": offset, "length": length}, 0x74))
        assert get == ChunkGet(address=ADDR_A, offset=offset, length=length)
    for offset, data in ((SEALED_MAX, b""), (0, bytes(PIECE_MAX))):
        got = decode(raw_frame({"address": ADDR_A, "offset": offset, "data": data}, 0x75))
        assert got == ChunkData(address=ADDR_A, offset=offset, data=data)
    chunks = [ADDR_A] * PUSH_CHUNKS_MAX  # a manifest of the most chunks a file may have
    push = decode(raw_frame({**PUSH_BODY, "chunks": chunks}, 0x10))
    assert isinstance(push, Push)
    assert push.chunks == chunks


# Invalid UTF-8 inside a str field must come out as WireError like any other defect. Each
# frame is given with a valid string of the same length too, so that the frame is known to
# fail for its string alone.
_UTF8_FRAMES: dict[str, tuple[bytes, bytes, bytes]] = {
    "unregister-reason": (b"\x94\x02\x61\x00\x81\xa6reason\xa2", b"\xff\xfe", b""),
    "surrogate": (b"\x94\x02\x61\x00\x81\xa6reason\xa3", b"\xed\xa0\x80", b""),
    "error-message": (
        b"\x94\x02\xcc\xff\x00\x82\xa4code\xcd\x03\xe8\xa7message\xa2",
        b"\xc3\x28",
        b"",
    ),
    "hello-device-name": (
        b"\x94\x02\x01\x00\x83\xa8group_id\xc4\x20"
        + GROUP
        + b"\xa5proof\xc4\x40"
        + PROOF
        + b"\xabdevice_name\xa1",
        b"\x80",
        b"",
    ),
}


@pytest.mark.parametrize(
    ("head", "bad", "tail"), list(_UTF8_FRAMES.values()), ids=list(_UTF8_FRAMES)
)
def test_invalid_utf8_in_a_string_field_raises_wire_error(
    head: bytes, bad: bytes, tail: bytes
) -> None:
    decode_frame(head + b"x" * len(bad) + tail)  # the same frame with a valid string decodes
    with pytest.raises(WireError):
        decode_frame(head + bad + tail)


@pytest.mark.parametrize(
    "data",
    [
        b"\x94\x02\x30\x00" + b"\x91" * 10_000 + b"\x00",  # body: 10,000 nested arrays
        b"\x94\x02\x30\x00\x81\xa1x" + b"\x91" * 10_000 + b"\xc0",  # under an unknown key
        b"\x94\x02\x30\x00" + b"\x81\xa1x" * 10_000 + b"\xc0",  # nested maps
    ],
    ids=["nested-arrays-body", "nested-arrays-unknown-key", "nested-maps-body"],
)
def test_deeply_nested_body_raises_wire_error(data: bytes) -> None:
    assert len(data) < 64 * 1024  # small enough for any frame limit
    with pytest.raises(WireError):
        decode_frame(data)


def test_moderately_nested_unknown_key_is_ignored() -> None:
    data = b"\x94\x02\x30\x00\x81\xa1x" + b"\x91" * 50 + b"\xc0"
    assert decode(data) == Presence()


# -- error codes ----------------------------------------------------------------------------


def test_error_code_decodes_as_int() -> None:
    message = decode(encode(Error(code=ErrorCode.UNAUTHORIZED, message="no")))
    assert isinstance(message, Error)
    assert message.code == 1002
    assert type(message.code) is int
    assert ErrorCode(message.code) is ErrorCode.UNAUTHORIZED


@pytest.mark.parametrize(
    ("code", "name"), [(1010, "CHUNK_MISMATCH"), (1011, "CHUNK_UNKNOWN")], ids=["1010", "1011"]
)
def test_chunk_error_codes_decode_as_known_non_fatal_codes(code: int, name: str) -> None:
    message = decode(raw_frame({"code": code, "message": "chunk"}, 0xFF))
    assert message == Error(code=code, message="chunk")
    assert ErrorCode(code) is ErrorCode[name]
    assert not ErrorCode[name].fatal  # a chunk refused leaves the session open


@pytest.mark.parametrize("code", [0, 999, 1012, 2005, 4242, 65535])
def test_unknown_error_codes_still_decode(code: int) -> None:
    message = decode(raw_frame({"code": code, "message": "future"}, 0xFF))
    assert message == Error(code=code, message="future")
    assert isinstance(message, Error)
    assert message.code == code
    assert code not in {int(c) for c in ErrorCode}
    assert decode(encode(Error(code=code))) == Error(code=code)


FATAL = {1000, 1001, 1002, 1003, 3000, 3001}


@pytest.mark.parametrize("code", list(ErrorCode), ids=[c.name for c in ErrorCode])
def test_error_code_fatal(code: ErrorCode) -> None:
    assert code.fatal is (int(code) in FATAL)


def test_fatal_table() -> None:
    assert {int(c) for c in ErrorCode if c.fatal} == FATAL
    assert {int(c) for c in ErrorCode if not c.fatal} == {
        1004,
        1005,
        1006,
        1007,
        1008,
        1009,
        1010,
        1011,
        2000,
        2001,
        2002,
        2003,
        2004,
        3002,
    }


@pytest.mark.parametrize("length", [1, 16, 31])
def test_a_hello_signer_is_empty_or_a_whole_key(length: int) -> None:
    hello = Hello(group_id=GroupId(bytes(32)), proof=bytes(64))
    frame = msgspec.msgpack.decode(encode(hello, request_id=1))
    frame[3]["signer"] = bytes(length)
    with pytest.raises(WireError, match="signer is empty or a 32-byte"):
        decode_frame(msgspec.msgpack.encode(frame))
    frame[3]["signer"] = bytes(32)
    decoded = decode_frame(msgspec.msgpack.encode(frame)).message
    assert isinstance(decoded, Hello) and decoded.signer == bytes(32)
