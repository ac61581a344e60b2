"""Deterministic fuzzing of the frame decoder and of the relay's session state machine.

Part (a) feeds random and mutated frames to ``zerok.wire.decode``: WireError is the only
exception allowed out. Part (b) feeds random bytes, tampered Noise messages and encrypted
random/mutated frames to a RelaySession in each of its states (HANDSHAKE, AWAIT_HELLO,
HELLO_PENDING, OPEN): ``receive`` must never raise and every outcome is checked against
what the protocol prescribes (stay, move on for a valid message, or close with an ERROR
the client can read).

The inputs come from ``random.Random`` with fixed seeds; the Noise ephemeral keys (and so
the ciphertexts and HELLO proofs) are fresh each run, the fuzzed plaintexts are not.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric import x25519

from zerok.crypto import DeviceIdentity, make_hello
from zerok.crypto.noise import MAX_FRAGMENT_PAYLOAD, HandshakeState, NoiseTransport
from zerok.errors import WireError
from zerok.protocol import (
    CLASSIC,
    HYBRID,
    ClientSession,
    ConnectionClosed,
    Event,
    HandshakeComplete,
    HelloReceived,
    RelaySession,
    RequestReceived,
    SessionState,
    Variant,
    Welcomed,
)
from zerok.protocol.catalog import CLIENT_REQUESTS
from zerok.protocol.relay import HELLO_FRAME
from zerok.protocol.variants import prologue
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
    peek_request_id,
)
from zerok.wire.manifest import MAX_SEALED_CHUNK
from zerok.wire.messages import MAX_CHUNK_PIECE

SEED = 0x0C5_F022
I64_MAX = 2**63 - 1
MAX_NOISE_MESSAGE = 65535

DECODE_CASES = 30_000  # part (a): mutated frames; random bytes and structures come on top
MIN_DECODE_CASES = 10_000
MIN_SESSION_CASES = 10_000

#: Relay cases per (state, variant); HYBRID handshakes cost more, so it gets a few hundred.
SESSION_PLAN: dict[tuple[SessionState, Variant], int] = {
    (SessionState.HANDSHAKE, CLASSIC): 2_600,
    (SessionState.HANDSHAKE, HYBRID): 150,
    (SessionState.AWAIT_HELLO, CLASSIC): 2_300,
    (SessionState.AWAIT_HELLO, HYBRID): 100,
    (SessionState.HELLO_PENDING, CLASSIC): 2_000,
    (SessionState.HELLO_PENDING, HYBRID): 100,
    (SessionState.OPEN, CLASSIC): 3_400,
    (SessionState.OPEN, HYBRID): 150,
}

RELAY_MAX_FRAME = 8 * 1024  # small, so oversize frames are cheap to make
RELAY_MAX_FRAME_LARGE = 100_000  # larger than one Noise fragment: oversize only on the 2nd

INTERESTING_BYTES = bytes.fromhex(
    "00 01 7f 80 8f 90 9f a0 bf c0 c1 c2 c3 c4 c5 c6 c7 ca cb cc cd ce cf d0 d3 d4 d8 d9"
    "da db dc dd de df e0 ed f0 fe ff"
)
TEXT_ALPHABET = "abcxyz019 -_./:éßü€日本😀\u200b"


# -- random valid messages ------------------------------------------------------------------


def _text(rng: random.Random, max_chars: int) -> str:
    n = rng.choice([0, 1, rng.randint(0, min(max_chars, 12)), rng.randint(0, max_chars)])
    return "".join(rng.choice(TEXT_ALPHABET) for _ in range(n))


def _int(rng: random.Random, top: int) -> int:
    return rng.choice([0, 1, top, rng.randint(0, 255), rng.randint(0, 70_000), rng.randint(0, top)])


def _blob_id(rng: random.Random) -> BlobId:
    return BlobId(rng.randbytes(16))


def _device_id(rng: random.Random) -> DeviceId:
    return DeviceId(rng.randbytes(32))


def _ciphertext(rng: random.Random) -> bytes:
    return rng.randbytes(rng.choice([0, 1, rng.randint(0, 64), rng.randint(0, 600)]))


def _entries(rng: random.Random, most: int) -> list[bytes]:
    """Log entries as the wire sees them: opaque bytes (the relay's log reads them)."""
    return [_ciphertext(rng) for _ in range(rng.choice([0, 1, rng.randint(0, most)]))]


def _addresses(rng: random.Random, most: int) -> list[bytes]:
    """Chunk addresses; a few, like the entries, so that frames stay small."""
    return [rng.randbytes(32) for _ in range(rng.choice([0, 1, rng.randint(0, most)]))]


def _piece(rng: random.Random) -> bytes:
    """A piece of a chunk (1 byte at least); its 512 KiB bound is checked in test_codec."""
    return _ciphertext(rng) or rng.randbytes(1)


def _chunk_info(rng: random.Random) -> ChunkInfo:
    return ChunkInfo(
        address=rng.randbytes(32),
        size=_int(rng, MAX_SEALED_CHUNK),
        received=_int(rng, MAX_SEALED_CHUNK),
        complete=rng.random() < 0.5,
    )


def _signer(rng: random.Random) -> bytes:
    # A Hello holds an empty signer or a whole key; other lengths fail to decode (and are
    # tested with the codec).
    return rng.choice([b"", rng.randbytes(32)])


def _limits(rng: random.Random) -> Limits:
    return Limits(
        max_blob_size=_int(rng, I64_MAX),
        max_group_storage=_int(rng, I64_MAX),
        messages_per_minute=_int(rng, I64_MAX),
        max_frame_size=_int(rng, I64_MAX),
        default_ttl=_int(rng, U32_MAX),
        max_ttl=_int(rng, U32_MAX),
    )


def _stored_blob(rng: random.Random) -> StoredBlob:
    return StoredBlob(
        blob_id=_blob_id(rng),
        cursor=_int(rng, I64_MAX),
        sender=_device_id(rng),
        ciphertext=_ciphertext(rng),
        timestamp=_int(rng, I64_MAX),
    )


def _device_info(rng: random.Random) -> DeviceInfo:
    return DeviceInfo(
        device_id=_device_id(rng),
        name=_text(rng, 64),
        last_seen=_int(rng, I64_MAX),
        pending=_int(rng, I64_MAX),
        online=rng.random() < 0.5,
        revoked=rng.random() < 0.5,
    )


MESSAGE_MAKERS: dict[type[Message], Callable[[random.Random], Message]] = {
    Hello: lambda r: Hello(
        group_id=GroupId(r.randbytes(32)),
        proof=r.randbytes(64),
        signer=_signer(r),
        device_name=_text(r, 64),
        last_cursor=_int(r, I64_MAX),
        client=_text(r, 64),
        entries=_entries(r, 4),
    ),
    Welcome: lambda r: Welcome(
        relay_id=r.randbytes(32),
        max_cursor=_int(r, I64_MAX),
        pending=_int(r, I64_MAX),
        limits=_limits(r),
        log_seq=_int(r, I64_MAX),
        log_hash=r.randbytes(32),
        epoch=_int(r, U32_MAX),
        server_time=_int(r, I64_MAX),
        provisional=r.random() < 0.5,
    ),
    Push: lambda r: Push(
        blob_id=_blob_id(r),
        ciphertext=_ciphertext(r),
        epoch=_int(r, U32_MAX),
        ttl=_int(r, U32_MAX),
        repair=r.random() < 0.5,
        chunks=_addresses(r, 4),
    ),
    PushAck: lambda r: PushAck(
        blob_id=_blob_id(r), cursor=_int(r, I64_MAX), timestamp=_int(r, I64_MAX)
    ),
    Pull: lambda r: Pull(after=_int(r, I64_MAX), limit=r.randint(1, 1000)),
    PullResponse: lambda r: PullResponse(
        blobs=[_stored_blob(r) for _ in range(r.randint(0, 3))],
        has_more=r.random() < 0.5,
        max_cursor=_int(r, I64_MAX),
    ),
    Presence: lambda r: Presence(online=r.random() < 0.5),
    Notify: lambda r: Notify(
        blob_id=_blob_id(r),
        cursor=_int(r, I64_MAX),
        sender=_device_id(r),
        timestamp=_int(r, I64_MAX),
        size=_int(r, I64_MAX),
    ),
    Ack: lambda r: Ack(cursor=_int(r, I64_MAX)),
    Delete: lambda r: Delete(blob_id=_blob_id(r), force=r.random() < 0.5),
    ListDevices: lambda r: ListDevices(),
    Devices: lambda r: Devices(devices=[_device_info(r) for _ in range(r.randint(0, 3))]),
    LogGet: lambda r: LogGet(start=_int(r, I64_MAX), limit=r.randint(1, 256)),
    Log: lambda r: Log(start=_int(r, I64_MAX), entries=_entries(r, 4), head_seq=_int(r, I64_MAX)),
    LogAppend: lambda r: LogAppend(entries=_entries(r, 4) or [_ciphertext(r)]),
    LogAppended: lambda r: LogAppended(head_seq=_int(r, I64_MAX), head_hash=r.randbytes(32)),
    Membership: lambda r: Membership(start=_int(r, I64_MAX), entries=_entries(r, 4)),
    RegisterPush: lambda r: RegisterPush(
        token=_text(r, 300) or "t",
        platform=r.choice(list(PushPlatform)),
        app_id=_text(r, 256),
    ),
    UnregisterPush: lambda r: UnregisterPush(reason=_text(r, 1024)),
    ChunkHave: lambda r: ChunkHave(addresses=_addresses(r, 4) or [r.randbytes(32)]),
    ChunkStatus: lambda r: ChunkStatus(chunks=[_chunk_info(r) for _ in range(r.randint(0, 3))]),
    ChunkBegin: lambda r: ChunkBegin(address=r.randbytes(32), size=_int(r, MAX_SEALED_CHUNK) or 1),
    ChunkPut: lambda r: ChunkPut(
        address=r.randbytes(32), offset=_int(r, MAX_SEALED_CHUNK), data=_piece(r)
    ),
    ChunkGet: lambda r: ChunkGet(
        address=r.randbytes(32),
        offset=_int(r, MAX_SEALED_CHUNK),
        length=r.choice([1, MAX_CHUNK_PIECE, r.randint(1, MAX_CHUNK_PIECE)]),
    ),
    ChunkData: lambda r: ChunkData(
        address=r.randbytes(32), offset=_int(r, MAX_SEALED_CHUNK), data=_ciphertext(r)
    ),
    Error: lambda r: Error(
        code=r.choice([*ErrorCode, 0, 4242, 65535]),
        message=_text(r, 1024),
        retry_after=_int(r, U32_MAX),
    ),
}


def test_every_message_type_has_a_maker() -> None:
    assert set(MESSAGE_MAKERS) == set(ALL_MESSAGES)
    rng = random.Random(SEED + 6)
    for cls in ALL_MESSAGES:  # and what each makes is a valid message of its type
        for _ in range(50):
            message = random_message(rng, cls)
            assert type(message) is cls
            assert decode(encode(message)) == message


def random_message(rng: random.Random, cls: type[Message] | None = None) -> Message:
    return MESSAGE_MAKERS[cls or rng.choice(ALL_MESSAGES)](rng)


def random_frame(rng: random.Random, cls: type[Message] | None = None) -> bytes:
    request_id = rng.choice([0, 1, 2, U32_MAX, rng.randint(0, U32_MAX)])
    return encode(random_message(rng, cls), request_id=request_id)


# -- mutation ---------------------------------------------------------------------------------


def _interesting(rng: random.Random) -> int:
    return rng.choice(INTERESTING_BYTES) if rng.random() < 0.5 else rng.randrange(256)


def _bit_flip(rng: random.Random, data: bytearray, corpus: list[bytes]) -> None:
    for _ in range(rng.randint(1, 8)):
        if data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)


def _truncate(rng: random.Random, data: bytearray, corpus: list[bytes]) -> None:
    if data:
        del data[rng.randrange(len(data)) :]


def _insert(rng: random.Random, data: bytearray, corpus: list[bytes]) -> None:
    pos = rng.randint(0, len(data))
    data[pos:pos] = bytes(_interesting(rng) for _ in range(rng.randint(1, 16)))


def _replace(rng: random.Random, data: bytearray, corpus: list[bytes]) -> None:
    for _ in range(rng.randint(1, 4)):
        if data:
            data[rng.randrange(len(data))] = _interesting(rng)


def _duplicate(rng: random.Random, data: bytearray, corpus: list[bytes]) -> None:
    if data:
        start = rng.randrange(len(data))
        chunk = data[start : start + rng.randint(1, 64)]
        pos = rng.randint(0, len(data))
        data[pos:pos] = chunk * rng.randint(1, 4)


def _delete(rng: random.Random, data: bytearray, corpus: list[bytes]) -> None:
    if data:
        start = rng.randrange(len(data))
        del data[start : start + rng.randint(1, 16)]


def _splice(rng: random.Random, data: bytearray, corpus: list[bytes]) -> None:
    other = rng.choice(corpus)
    data[rng.randint(0, len(data)) :] = other[rng.randint(0, len(other)) :]


def _retype(rng: random.Random, data: bytearray, corpus: list[bytes]) -> None:
    """Keep version, request id and body; put another (usually known) type on it."""
    try:
        envelope = msgspec.msgpack.decode(bytes(data), type=tuple[Any, Any, Any, msgspec.Raw])
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return
    new_type = rng.choice([*(int(t) for t in MessageType), rng.randint(0, 300)])
    data[:] = msgspec.msgpack.encode([envelope[0], new_type, envelope[2], envelope[3]])


MUTATIONS: dict[str, Callable[[random.Random, bytearray, list[bytes]], None]] = {
    "bit-flip": _bit_flip,
    "truncate": _truncate,
    "insert": _insert,
    "replace": _replace,
    "duplicate": _duplicate,
    "delete": _delete,
    "splice": _splice,
    "retype": _retype,
}


def mutate(rng: random.Random, data: bytes, corpus: list[bytes]) -> tuple[str, bytes]:
    """1 to 4 stacked mutations; the result always differs from ``data``."""
    out = bytearray(data)
    names = []
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3, 4])):
        name = rng.choice(list(MUTATIONS))
        MUTATIONS[name](rng, out, corpus)
        names.append(name)
    if bytes(out) == data:
        out.append(_interesting(rng))
        names.append("append")
    return "+".join(sorted(set(names))), bytes(out)


def random_bytes(rng: random.Random) -> bytes:
    n = rng.choice(
        [rng.randint(0, 8), rng.randint(0, 64), rng.randint(0, 512), rng.randint(0, 4096)]
    )
    data = rng.randbytes(n)
    if rng.random() < 0.3:  # a plausible envelope start, then noise
        data = (
            bytes([0x94, PROTOCOL_VERSION, rng.choice([int(t) for t in MessageType][:-1])]) + data
        )
    return data


def _random_obj(rng: random.Random, depth: int) -> Any:
    kinds = ["int", "neg", "big", "float", "str", "bytes", "bool", "nil", "ext"]
    if depth < 4:
        kinds += ["list", "map", "map"]
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.randint(0, 300)
    if kind == "neg":
        return -rng.randint(1, 2**63)
    if kind == "big":
        return rng.choice([2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1])
    if kind == "float":
        return rng.choice([0.0, 1.0, -1.5, 1e300, float("inf"), float("nan")])
    if kind == "str":
        return _text(rng, 80)
    if kind == "bytes":
        return rng.randbytes(
            rng.choice([0, 15, 16, 17, 31, 32, 33, 63, 64, 65, rng.randint(0, 99)])
        )
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "nil":
        return None
    if kind == "ext":
        return msgspec.msgpack.Ext(rng.randint(-128, 127), rng.randbytes(rng.randint(0, 12)))
    if kind == "list":
        return [_random_obj(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys: list[Any] = ["cursor", "blob_id", "x", "", 1, "devices", "blobs", "limits", "code"]
    keys += ["entries", "start", "epoch", "signer"]
    keys += ["chunks", "address", "addresses", "offset", "data", "size"]
    return {rng.choice(keys): _random_obj(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def structured_frame(rng: random.Random) -> bytes:
    """A well-formed MessagePack envelope whose body has the right keys and random values."""
    cls = rng.choice(ALL_MESSAGES)
    names = list(cls.__struct_fields__)
    body: dict[str, Any] = {}
    for name in names:
        if rng.random() < 0.8:
            body[name] = _random_obj(rng, 1)
    if rng.random() < 0.3:
        body[_text(rng, 8) or "k"] = _random_obj(rng, 1)
    version = 2 if rng.random() < 0.9 else rng.choice([0, 1, 3, -1, True, "2"])
    request_id = rng.choice([0, 1, U32_MAX, U32_MAX + 1, -1, rng.randint(0, U32_MAX)])
    return msgspec.msgpack.encode([version, int(cls.TYPE), request_id, body])


def nested_frame(rng: random.Random) -> bytes:
    """A body nested ``depth`` levels deep (arrays or maps), well within frame size limits."""
    depth = rng.choice([rng.randint(1, 200), rng.randint(200, 3000)])
    opener = b"\x91" if rng.random() < 0.5 else b"\x81\xa1k"
    inner = opener * depth + b"\xc0"
    if rng.random() < 0.5:  # under an unknown key of a PRESENCE body
        return b"\x94\x02\x30\x00\x81\xa1x" + inner
    return b"\x94\x02\x30\x00" + inner


# -- failure bookkeeping ------------------------------------------------------------------


@dataclass
class Failures:
    """Unexpected outcomes, grouped by a short key; keeps the first few of each group."""

    examples: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)

    def add(self, key: str, data: bytes, detail: str = "") -> None:
        self.counts[key] += 1
        examples = self.examples.setdefault(key, [])
        if len(examples) < 3:
            examples.append((detail[:160], data))

    def report(self) -> str:
        lines = [f"{sum(self.counts.values())} unexpected outcomes:"]
        for key, count in self.counts.most_common():
            lines.append(f"  {count:6d} x {key}")
            for detail, data in self.examples[key]:
                shown = data[:60].hex() + ("..." if len(data) > 60 else "")
                lines.append(f"           e.g. {detail} <- {len(data)} bytes {shown}")
        return "\n".join(lines)


# -- part (a): the decoder ----------------------------------------------------------------


def _check_decode(data: bytes, category: str, failures: Failures) -> str:
    try:
        frame = decode_frame(data)
    except WireError:
        return "WireError"
    except Exception as exc:
        failures.add(f"[{category}] decode raised {type(exc).__name__}", data, str(exc))
        return type(exc).__name__
    # A decoded message is within bounds: it encodes and decodes to itself.
    try:
        again = decode_frame(encode(frame.message, request_id=frame.request_id))
    except Exception as exc:
        failures.add(f"[{category}] re-encoding a decoded frame failed", data, repr(exc))
        return "decoded"
    if again != frame:
        failures.add(f"[{category}] decoded frame does not round trip", data)
    if decode(data) != frame.message:
        failures.add(f"[{category}] decode() and decode_frame() disagree", data)
    return "decoded"


def test_fuzz_decode() -> None:
    rng = random.Random(SEED)
    started = time.perf_counter()
    corpus: list[bytes] = []
    for cls in ALL_MESSAGES:
        corpus += [random_frame(rng, cls) for _ in range(12)]
    failures = Failures()
    outcomes: Counter[str] = Counter()
    categories: Counter[str] = Counter()

    def run(category: str, data: bytes) -> None:
        categories[category] += 1
        outcomes[_check_decode(data, category, failures)] += 1

    for data in corpus:  # the unmutated corpus decodes
        run("valid", data)
    assert outcomes["decoded"] == len(corpus)
    for _ in range(DECODE_CASES):
        ops, data = mutate(rng, rng.choice(corpus), corpus)
        run("mutated", data)
        for op in ops.split("+"):
            categories[f"  op {op}"] += 1
    for _ in range(3_000):
        run("random-bytes", random_bytes(rng))
    for _ in range(1_500):
        run("structured", structured_frame(rng))
    for _ in range(40):
        run("nested", nested_frame(rng))

    total = sum(v for k, v in categories.items() if not k.startswith(" "))
    elapsed = time.perf_counter() - started
    print(f"\nfuzz (a) decode: {total} cases in {elapsed:.1f} s; outcomes {dict(outcomes)}")
    for name, count in sorted(categories.items()):
        print(f"  {name}: {count}")
    assert total >= MIN_DECODE_CASES
    assert categories["mutated"] >= MIN_DECODE_CASES
    assert not failures.counts, failures.report()


# -- part (b): the relay session ----------------------------------------------------------

IDENTITY = DeviceIdentity.from_private_bytes(random.Random(SEED + 1).randbytes(32))
GROUP = GroupId(random.Random(SEED + 2).randbytes(32))
RELAY_KEY = x25519.X25519PrivateKey.from_private_bytes(random.Random(SEED + 3).randbytes(32))
WELCOME = Welcome(
    relay_id=RELAY_KEY.public_key().public_bytes_raw(),
    max_cursor=0,
    pending=0,
    limits=Limits(
        max_blob_size=1 << 20,
        max_group_storage=100 << 20,
        messages_per_minute=100,
        max_frame_size=1 << 20,
        default_ttl=604800,
        max_ttl=604800,
    ),
    log_seq=1,
    log_hash=random.Random(SEED + 5).randbytes(32),
    epoch=0,
)


@dataclass
class Link:
    """A relay session and the client end of its channel (a NoiseTransport once keyed)."""

    relay: RelaySession
    variant: Variant
    transport: NoiseTransport | None = None
    client: ClientSession | None = None
    handshake: HandshakeState | None = None  # raw initiator, for AWAIT_HELLO
    msg1: bytes = b""
    msg3: bytes = b""
    hello_frame: bytes = b""
    sent: list[bytes] = field(default_factory=list)  # encrypted messages sent so far

    @property
    def keyed(self) -> NoiseTransport:
        assert self.transport is not None
        return self.transport


def _pump(a: ClientSession | RelaySession, b: ClientSession | RelaySession) -> list[Event]:
    events: list[Event] = []
    for message in a.data_to_send():
        events += b.receive(message, 0.0)
    return events


def new_link(
    state: SessionState,
    variant: Variant,
    *,
    after_msg1: bool = False,
    max_frame: int = RELAY_MAX_FRAME,
) -> Link:
    """A relay in ``state`` (HANDSHAKE: fresh, or waiting for message 3 if after_msg1)."""
    relay = RelaySession(RELAY_KEY, now=0.0, variant=variant, max_frame=max_frame)
    if state is SessionState.AWAIT_HELLO:
        # A raw initiator, so that nothing has been sent over the transport yet.
        hs = HandshakeState(
            variant.noise_protocol,
            initiator=True,
            prologue=prologue((variant.subprotocol,), variant),
            static=IDENTITY.private_key,
        )
        assert relay.receive(hs.write_message(b""), 0.0) == []
        [msg2] = relay.data_to_send()
        hs.read_message(msg2)
        events = relay.receive(hs.write_message(b""), 0.0)
        assert [type(e) for e in events] == [HandshakeComplete]
        assert relay.state is SessionState.AWAIT_HELLO
        transport = NoiseTransport(hs.result)
        hello = make_hello(IDENTITY, transport.handshake_hash, GROUP)
        link = Link(relay, variant, transport=transport, handshake=hs)
        link.hello_frame = encode(hello, request_id=1)
        return link
    client = ClientSession(IDENTITY, GROUP, now=0.0, variant=variant, heartbeat_interval=None)
    link = Link(relay, variant, client=client)
    [link.msg1] = client.data_to_send()
    if state is SessionState.HANDSHAKE and not after_msg1:
        return link
    assert relay.receive(link.msg1, 0.0) == []
    assert [type(e) for e in _pump(relay, client)] == [HandshakeComplete]
    link.msg3, *hello_messages = client.data_to_send()
    if state is SessionState.HANDSHAKE:
        return link
    assert [type(e) for e in relay.receive(link.msg3, 0.0)] == [HandshakeComplete]
    events = [e for m in hello_messages for e in relay.receive(m, 0.0)]
    assert [type(e) for e in events] == [HelloReceived]
    assert relay.state is SessionState.HELLO_PENDING
    link.transport = client._transport
    if state is SessionState.HELLO_PENDING:
        return link
    relay.accept(WELCOME)
    assert [type(e) for e in _pump(relay, client)] == [Welcomed]
    assert (relay.state, client.state) == (SessionState.OPEN, SessionState.OPEN)
    return link


@dataclass(frozen=True)
class Expect:
    """What the relay must do with one input.

    kind: "stay" (no events, no output), "closed-silently" (handshake failure), "close"
    (ERROR ``code`` sent, then closed), "peer-error" (the client's own ERROR: closed, nothing
    sent), "hello" (HELLO_PENDING), "request" (RequestReceived), "oversize" (ERROR 2001,
    stays OPEN), "handshake-any" (stay with message 2 queued, or close silently).
    """

    kind: str
    code: int | None = None
    message: Message | None = None
    request_id: int = 0


def _oracle_decode(frame: bytes) -> tuple[int, Message] | None:
    try:
        request_id, message = decode_frame(frame)
    except WireError:
        return None
    except Exception:  # the decoder's own bug (see test_codec); must still be a 1000
        return None
    return request_id, message


def expect_for_frame(link: Link, frame: bytes) -> Expect:
    """What the relay must do with one complete (not oversize) frame, in its current state."""
    state = link.relay.state
    decoded = _oracle_decode(frame)
    if decoded is None:
        return Expect("close", ErrorCode.INVALID_MESSAGE)
    request_id, message = decoded
    if isinstance(message, Error):
        return Expect("peer-error", message.code)
    if state is SessionState.AWAIT_HELLO:
        if not isinstance(message, Hello):
            return Expect("close", ErrorCode.INVALID_MESSAGE)
        # Any HELLO, its proof valid or not, goes to the relay's service, which holds the
        # group's log and so the key to check it with.
        return Expect("hello", message=message, request_id=request_id)
    if state is SessionState.HELLO_PENDING:
        return Expect("close", ErrorCode.INVALID_MESSAGE)
    assert state is SessionState.OPEN
    if type(message) not in CLIENT_REQUESTS:
        return Expect("close", ErrorCode.INVALID_MESSAGE)
    return Expect("request", message=message, request_id=request_id)


class RelayFuzzer:
    def __init__(self, rng: random.Random, corpus: list[bytes]) -> None:
        self.rng = rng
        self.corpus = corpus
        self.failures = Failures()
        self.cases: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.messages_fed = 0
        self.relays: Counter[str] = Counter()
        self.oversize_fragments: Counter[int] = Counter()  # where oversize frames were refused

    # -- feeding and checking -------------------------------------------------------------

    def feed(self, link: Link, data: bytes, label: str) -> list[Event] | None:
        self.messages_fed += 1
        try:
            return link.relay.receive(data, 0.0)
        except Exception as exc:
            key = f"[{label}] receive raised {type(exc).__name__}"
            self.failures.add(key, data, str(exc))
            return None

    def fail(self, label: str, what: str, data: bytes) -> None:
        short = what.split(":", maxsplit=1)[0][:80]
        self.failures.add(f"[{label}] {short}", data, what)

    def read_errors(self, link: Link, label: str, data: bytes) -> list[tuple[int, Message]]:
        """Decrypt what the relay sent, as the client would."""
        out: list[tuple[int, Message]] = []
        for message in link.relay.data_to_send():
            try:
                frame = link.keyed.decrypt_message(message)
                assert frame is not None, "a relay ERROR is a single fragment"
                out.append(decode_frame(frame))
            except Exception as exc:
                self.fail(label, f"client cannot read the relay's output: {exc!r}", data)
        return out

    def check(
        self,
        link: Link,
        before: SessionState,
        events: list[Event],
        expect: Expect,
        *,
        label: str,
        data: bytes,
    ) -> None:
        relay = link.relay
        state = relay.state
        self.outcomes[f"{before.name} -> {expect.kind}"] += 1
        if state not in (before, SessionState.CLOSED) and expect.kind != "hello":
            self.fail(label, f"moved from {before.name} to {state.name}", data)
        if expect.kind == "handshake-any":
            output = relay.data_to_send()
            if state is SessionState.CLOSED:
                ok = output == [] and [type(e) for e in events] == [ConnectionClosed]
                ok = ok and relay.close_code is None
            else:
                ok = events == [] and len(output) == 1 and state is before
            if not ok:
                self.fail(label, f"handshake outcome: {state.name} {events} {len(output)}", data)
            return
        if expect.kind == "closed-silently":
            output = relay.data_to_send()
            if state is not SessionState.CLOSED or output or relay.close_code is not None:
                self.fail(label, f"expected a silent close, got {state.name} {events}", data)
            return
        if expect.kind == "stay":
            output = relay.data_to_send()
            if state is not before or events or output:
                self.fail(label, f"expected no effect, got {state.name} {events}", data)
            return
        if expect.kind == "request":
            output = relay.data_to_send()
            assert expect.message is not None
            wanted = [RequestReceived(expect.request_id, expect.message)]
            if state is not SessionState.OPEN or events != wanted or output:
                self.fail(label, f"expected {wanted}, got {state.name} {events}", data)
            return
        if expect.kind == "hello":
            output = relay.data_to_send()
            assert isinstance(expect.message, Hello)
            hh = link.keyed.handshake_hash
            wanted_hello = [HelloReceived(IDENTITY.device_id, expect.message, hh)]
            if state is not SessionState.HELLO_PENDING or events != wanted_hello or output:
                self.fail(label, f"expected HelloReceived, got {state.name} {events}", data)
            return
        if expect.kind == "peer-error":
            output = relay.data_to_send()
            closed = [ConnectionClosed(expect.code, _reason(events), True)]
            if state is not SessionState.CLOSED or events != closed or output:
                self.fail(label, f"expected a close by peer, got {state.name} {events}", data)
            return
        if expect.kind == "oversize":
            errors = self.read_errors(link, label, data)
            codes = [(rid, m.code) for rid, m in errors if isinstance(m, Error)]
            # The answer carries the request id when the frame's first bytes reveal it.
            wanted_codes = [(peek_request_id(data) or 0, 2001)]
            if state is not SessionState.OPEN or events or codes != wanted_codes:
                self.fail(label, f"expected ERROR 2001 and OPEN, got {state.name} {codes}", data)
            return
        assert expect.kind == "close"
        errors = self.read_errors(link, label, data)
        codes = [(rid, m.code) for rid, m in errors if isinstance(m, Error)]
        closed_ok = [type(e) for e in events] == [ConnectionClosed] and (
            isinstance(events[0], ConnectionClosed)
            and events[0].code == expect.code
            and not events[0].by_peer
        )
        if state is not SessionState.CLOSED or not closed_ok or codes != [(0, expect.code)]:
            self.fail(
                label,
                f"expected close with ERROR {expect.code}, got {state.name} {events} {codes}",
                data,
            )
            return
        if relay.close_code != expect.code:
            self.fail(label, f"close_code {relay.close_code} != {expect.code}", data)

    def run_case(
        self, link: Link, messages: list[bytes], expects: list[Expect], label: str, data: bytes
    ) -> None:
        """Feed Noise messages one by one, checking each against its expectation."""
        for message, expect in zip(messages, expects, strict=True):
            before = link.relay.state
            events = self.feed(link, message, label)
            if events is None:
                return
            if before is SessionState.CLOSED:
                if events or link.relay.data_to_send():
                    self.fail(label, "a closed session reacted", data)
                continue
            self.check(link, before, events, expect, label=label, data=data)

    # -- the states ---------------------------------------------------------------------

    def handshake_case(self, variant: Variant) -> str:
        rng = self.rng
        after_msg1 = rng.random() < 0.5
        link = new_link(SessionState.HANDSHAKE, variant, after_msg1=after_msg1)
        if not after_msg1:
            kind = rng.choice(["random", "mutated-msg1", "mutated-msg1", "oversize-random"])
            if kind == "random":
                data = random_bytes(rng)
            elif kind == "oversize-random":
                data = rng.randbytes(rng.randint(MAX_NOISE_MESSAGE + 1, MAX_NOISE_MESSAGE + 99))
            else:
                data = mutate(rng, link.msg1, [link.msg1])[1]
            expect = Expect("handshake-any")
            if kind == "oversize-random" or len(data) < 32:
                expect = Expect("closed-silently")
            label = f"HANDSHAKE/{variant.subprotocol}/{kind}"
        else:
            kind = rng.choice(["random", "mutated-msg3", "mutated-msg3", "msg1-again"])
            if kind == "random":
                data = random_bytes(rng)
            elif kind == "msg1-again":
                data = link.msg1
            else:
                data = mutate(rng, link.msg3, [link.msg3])[1]
            # Message 3 is authenticated: anything but the real one fails the handshake.
            expect = Expect("closed-silently")
            label = f"HANDSHAKE-msg3/{variant.subprotocol}/{kind}"
        self.kinds[label] += 1
        self.run_case(link, [data], [expect], label, data)
        return label

    def frame_case(self, link: Link, variant: Variant) -> None:
        """One input for a relay past the handshake (AWAIT_HELLO, HELLO_PENDING, OPEN)."""
        rng = self.rng
        state = link.relay.state
        kinds = ["garbage", "tampered", "replay", "bad-fragment", "random-frame", "structured"]
        kinds += ["valid", "valid", "mutated", "mutated", "mutated", "mutated", "fragmented"]
        kinds += ["oversize", "nested"]
        if state is SessionState.AWAIT_HELLO:
            kinds += ["hello", "mutated-hello", "mutated-hello", "mutated-hello", "mutated-hello"]
        if state is SessionState.OPEN:
            kinds += ["valid-request", "valid-request", "mutated-request", "mutated-request"]
        kind = rng.choice(kinds)
        label = f"{state.name}/{variant.subprotocol}/{kind}"
        self.kinds[label] += 1
        transport = link.keyed
        close_1000 = Expect("close", ErrorCode.INVALID_MESSAGE)

        if kind == "garbage":
            data = random_bytes(rng)
            if rng.random() < 0.05:
                data = rng.randbytes(rng.randint(MAX_NOISE_MESSAGE + 1, MAX_NOISE_MESSAGE + 99))
            self.run_case(link, [data], [close_1000], label, data)
            return
        if kind == "tampered":
            [message] = transport.encrypt_frame(random_frame(rng))
            data = mutate(rng, message, [message])[1]
            self.run_case(link, [data], [close_1000], label, data)
            return
        if kind == "replay":
            if not link.sent:
                link.sent += transport.encrypt_frame(encode(Presence()))
                expect = self._expect(link, encode(Presence()))
                self.run_case(link, link.sent[-1:], [expect], label, link.sent[-1])
                if link.relay.closed:
                    return
            data = rng.choice(link.sent)
            self.run_case(link, [data], [close_1000], label, data)
            return
        if kind == "bad-fragment":
            flag = rng.choice([0x02, 0x7F, 0x80, 0xFF, None])
            plain = b"" if flag is None else bytes([flag]) + random_frame(rng)
            data = transport._send.encrypt_with_ad(b"", plain)
            self.run_case(link, [data], [close_1000], label, plain)
            return
        if kind == "oversize":
            self.oversize_case(link, label)
            return
        if kind == "fragmented":
            frame = self._pick_frame(link)
            cuts = sorted(rng.sample(range(len(frame) + 1), k=min(len(frame) + 1, 2)))
            parts = [frame[: cuts[0]], frame[cuts[0] : cuts[-1]], frame[cuts[-1] :]]
            messages = [
                transport._send.encrypt_with_ad(b"", bytes([0x01 if i < 2 else 0x00]) + part)
                for i, part in enumerate(parts)
            ]
            expects = [Expect("stay"), Expect("stay"), self._expect(link, frame)]
            link.sent += messages
            self.run_case(link, messages, expects, label, frame)
            return

        if kind == "random-frame":
            frame = random_bytes(rng)
        elif kind == "structured":
            frame = structured_frame(rng)
        elif kind == "nested":
            frame = nested_frame(rng)
        elif kind == "valid":
            frame = random_frame(rng)
        elif kind == "hello":
            frame = link.hello_frame
        elif kind == "mutated-hello":
            frame = mutate(rng, link.hello_frame, self.corpus)[1]
        elif kind == "valid-request":
            frame = random_frame(rng, rng.choice(sorted(CLIENT_REQUESTS, key=lambda c: c.TYPE)))
        elif kind == "mutated-request":
            base = random_frame(rng, rng.choice(sorted(CLIENT_REQUESTS, key=lambda c: c.TYPE)))
            frame = mutate(rng, base, self.corpus)[1]
        else:
            assert kind == "mutated"
            frame = mutate(rng, rng.choice(self.corpus), self.corpus)[1]
        self.send_frame(link, frame, label)

    def _pick_frame(self, link: Link) -> bytes:
        rng = self.rng
        if link.relay.state is SessionState.AWAIT_HELLO and rng.random() < 0.5:
            return link.hello_frame
        if link.relay.state is SessionState.OPEN and rng.random() < 0.5:
            return random_frame(rng, rng.choice(sorted(CLIENT_REQUESTS, key=lambda c: c.TYPE)))
        return rng.choice([random_frame(rng), mutate(rng, rng.choice(self.corpus), self.corpus)[1]])

    def _expect(self, link: Link, frame: bytes) -> Expect:
        if len(frame) > frame_limit(link.relay):
            if link.relay.state is SessionState.OPEN:
                return Expect("oversize")
            return Expect("close", ErrorCode.INVALID_MESSAGE)
        return expect_for_frame(link, frame)

    def send_frame(self, link: Link, frame: bytes, label: str) -> None:
        messages = link.keyed.encrypt_frame(frame)
        assert len(messages) == 1
        link.sent += messages
        self.run_case(link, messages, [self._expect(link, frame)], label, frame)

    def oversize_case(self, link: Link, label: str) -> None:
        """A frame over the relay's limit: ERROR 2001 and still usable when OPEN, else 1000."""
        rng = self.rng
        relay = link.relay
        limit = frame_limit(relay)
        sizes = [limit + 1, limit + rng.randint(1, 140_000)]
        if relay.state is SessionState.OPEN:  # HELLO's own limit is large: keep cases cheap
            sizes.append(rng.randint(limit + 1, 4 * limit))
        size = rng.choice(sizes)
        if rng.random() < 0.5:
            frame = rng.randbytes(size)
        else:
            blob = Push(blob_id=BlobId(rng.randbytes(16)), ciphertext=bytes(size))
            frame = encode(blob, request_id=rng.randint(1, 100))
        messages = link.keyed.encrypt_frame(frame)
        link.sent += messages
        # The frame is refused at the fragment that takes it past the limit (the first one
        # when the limit is below one fragment's 65518 bytes); the fragments after it are
        # skipped silently.
        over = next(i for i in range(len(messages)) if (i + 1) * MAX_FRAGMENT_PAYLOAD > limit)
        if relay.state is SessionState.OPEN:
            refused = Expect("oversize")
        else:
            refused = Expect("close", ErrorCode.INVALID_MESSAGE)
        expects = [Expect("stay")] * over + [refused]
        expects += [Expect("stay")] * (len(messages) - len(expects))
        self.oversize_fragments[over] += 1
        self.run_case(link, messages, expects, label, frame[:64])
        if relay.state is SessionState.OPEN:  # the connection is still usable
            probe = encode(Ack(cursor=size), request_id=7)
            expect = self._expect(link, probe)
            messages = link.keyed.encrypt_frame(probe)
            self.run_case(link, messages, [expect], f"{label}/after", probe)

    def link(self, state: SessionState, variant: Variant) -> Link:
        """A fresh relay in ``state``; one in six allows frames larger than a fragment."""
        large = self.rng.random() < 1 / 6
        max_frame = RELAY_MAX_FRAME_LARGE if large else RELAY_MAX_FRAME
        self.relays[f"{state.name}/max_frame={max_frame}"] += 1
        return new_link(state, variant, max_frame=max_frame)

    def run(self, plan: dict[tuple[SessionState, Variant], int]) -> None:
        for (state, variant), count in plan.items():
            key = f"{state.name}/{variant.subprotocol}"
            if state is SessionState.HANDSHAKE:
                for _ in range(count):
                    self.handshake_case(variant)
                    self.cases[key] += 1
                continue
            link = self.link(state, variant)
            for _ in range(count):
                if link.relay.state is not state or link.relay.closed:
                    link = self.link(state, variant)
                self.frame_case(link, variant)
                self.cases[key] += 1


def frame_limit(relay: RelaySession) -> int:
    """The largest frame the relay reads in its state: HELLO may bring a group's log, so
    until WELCOME the limit is the larger of the HELLO limit and the frame limit
    (docs/protocol.md §4.3)."""
    if relay.state is SessionState.OPEN:
        return relay.max_frame
    return max(HELLO_FRAME, relay.max_frame)


def _reason(events: list[Event]) -> str:
    for event in events:
        if isinstance(event, ConnectionClosed):
            return event.reason
    return ""


def test_fuzz_relay_session() -> None:
    rng = random.Random(SEED + 4)
    started = time.perf_counter()
    corpus: list[bytes] = []
    for cls in ALL_MESSAGES:
        corpus += [random_frame(rng, cls) for _ in range(8)]
    fuzzer = RelayFuzzer(rng, corpus)
    fuzzer.run(SESSION_PLAN)
    elapsed = time.perf_counter() - started

    per_state: Counter[str] = Counter()
    for key, count in fuzzer.cases.items():
        per_state[key.split("/")[0]] += count
    total = sum(fuzzer.cases.values())
    fed = fuzzer.messages_fed
    print(f"\nfuzz (b) relay session: {total} cases, {fed} Noise messages fed, {elapsed:.1f} s")
    for key, count in sorted(fuzzer.cases.items()):
        print(f"  {key}: {count}")
    for key, count in sorted(per_state.items()):
        print(f"  state {key}: {count}")
    for key, count in sorted(fuzzer.outcomes.items()):
        print(f"  outcome {key}: {count}")
    for key, count in sorted(fuzzer.relays.items()):
        print(f"  relays made {key}: {count}")
    print(f"  oversize frames refused at fragment index: {dict(fuzzer.oversize_fragments)}")

    assert total >= MIN_SESSION_CASES
    for state in (SessionState.HANDSHAKE, SessionState.AWAIT_HELLO):
        assert per_state[state.name] >= 2_000
    for state in (SessionState.HELLO_PENDING, SessionState.OPEN):
        assert per_state[state.name] >= 2_000
    hybrid = sum(c for k, c in fuzzer.cases.items() if k.endswith(HYBRID.subprotocol))
    assert hybrid >= 400
    # every kind of outcome was reached, so the checks above were exercised
    reached = {key.split(" -> ")[1] for key in fuzzer.outcomes}
    assert {"close", "peer-error", "hello", "request", "oversize", "stay"} <= reached
    assert {"handshake-any", "closed-silently"} <= reached
    assert {0, 1} <= set(fuzzer.oversize_fragments)
    assert not fuzzer.failures.counts, fuzzer.failures.report()
