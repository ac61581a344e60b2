"""docs/protocol.md checked against the code, so that the specification cannot drift.

Every ```vector block of §11 is parsed (by its ``### Vector N: title`` heading) and each of
its outputs is recomputed from its inputs with the project's code; where the document gives
a formula (HKDF, the proof transcript, PADME, the AEADs, REKEY) the test also recomputes it
from the formula alone, the way an implementation in another language would. The message
and error tables, the constants and the protocol names are compared with the code as well.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_decrypt

from zerok.crypto.blob import OVERHEAD, BlobCipher
from zerok.crypto.keys import (
    LABEL_BLOB_KEY,
    LABEL_CONTENT_KEY,
    LABEL_GROUP_AUTH,
    LABEL_GROUP_ID,
    MAX_ITERATIONS,
    MAX_MEMORY_KIB,
    MAX_PARALLELISM,
    MIN_MEMORY_KIB,
    GroupKeys,
    KdfParams,
    hkdf_sha256,
)
from zerok.crypto.membership import PROOF_CONTEXT, make_hello, proof_transcript, verify_hello
from zerok.crypto.noise import (
    MAX_FRAGMENT_PAYLOAD,
    CipherState,
    HandshakeResult,
    HandshakeState,
    NoiseTransport,
)
from zerok.crypto.noise.transport import MAX_SEND_FRAME, REKEY_INTERVAL
from zerok.crypto.padding import padme
from zerok.errors import InvalidProofError
from zerok.protocol.client import DEFAULT_HEARTBEAT, HELLO_REQUEST_ID
from zerok.protocol.relay import RelaySession
from zerok.protocol.session import DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_FRAME
from zerok.protocol.variants import CLASSIC, HYBRID, SUBPROTOCOLS, VARIANTS, Variant, prologue
from zerok.wire import (
    ALL_MESSAGES,
    PROTOCOL_VERSION,
    BlobId,
    DeviceId,
    DeviceInfo,
    ErrorCode,
    FixedId,
    Frame,
    GroupId,
    Limits,
    Message,
    MessageType,
    Push,
    StoredBlob,
    decode_frame,
    encode,
    peek_request_id,
)
from zerok.wire import messages as wire_messages

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
DOC = DOC_PATH.read_text(encoding="utf-8")

_VECTOR_HEADING = re.compile(r"^### Vector (\d+): (.+?)\s*$", re.MULTILINE)
_VECTOR_BLOCK = re.compile(r"^```vector\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
_ANY_HEADING = re.compile(r"^#{1,4} ", re.MULTILINE)
_LINE = re.compile(r"^([A-Za-z0-9_.\[\]]+): ((?:[0-9a-f]{2})*)$")

MESSAGE_CLASSES: dict[MessageType, type[Message]] = {cls.TYPE: cls for cls in ALL_MESSAGES}
NESTED: tuple[type[msgspec.Struct], ...] = (Limits, StoredBlob, DeviceInfo)


# -- parsing ------------------------------------------------------------------------------


@dataclass
class Vector:
    """One ```vector block: its heading and its ``name: hex`` lines, in order."""

    number: int
    title: str
    values: dict[str, bytes]
    used: set[str] = field(default_factory=set)

    def __getitem__(self, name: str) -> bytes:
        assert name in self.values, f"vector {self.number} ({self.title}) has no {name!r}"
        self.used.add(name)
        return self.values[name]

    def has(self, name: str) -> bool:
        return name in self.values

    def uint(self, name: str) -> int:
        return int.from_bytes(self[name], "big")

    def text(self, name: str) -> str:
        return self[name].decode("utf-8")

    def flag(self, name: str) -> bool:
        raw = self[name]
        assert raw in (b"\x00", b"\x01"), f"{name} must be 00 or 01"
        return raw == b"\x01"

    def unused(self) -> list[str]:
        return [name for name in self.values if name not in self.used]


def parse_vectors(doc: str) -> list[Vector]:
    headings = list(_VECTOR_HEADING.finditer(doc))
    vectors: list[Vector] = []
    for heading in headings:
        rest = doc[heading.end() :]
        following = _ANY_HEADING.search(rest)
        section = rest[: following.start()] if following else rest
        blocks = _VECTOR_BLOCK.findall(section)
        assert len(blocks) == 1, f"{heading.group(0)!r} must be followed by one vector block"
        values: dict[str, bytes] = {}
        for line in blocks[0].splitlines():
            match = _LINE.fullmatch(line)
            assert match, f"bad vector line {line!r} under {heading.group(0)!r}"
            name, value = match.groups()
            assert name not in values, f"{name} repeated under {heading.group(0)!r}"
            values[name] = bytes.fromhex(value)
        vectors.append(Vector(int(heading.group(1)), heading.group(2), values))
    return vectors


VECTORS = parse_vectors(DOC)


def vector(title: str) -> Vector:
    """A fresh copy of the vector with this title (for cross-checks)."""
    found = [v for v in VECTORS if v.title == title]
    assert len(found) == 1, f"expected one vector titled {title!r}"
    return Vector(found[0].number, found[0].title, dict(found[0].values))


# -- the formulas of the document, written from the text alone -----------------------------


def doc_hkdf(root_key: bytes, label: bytes) -> bytes:
    prk = hmac.new(bytes(32), root_key, hashlib.sha256).digest()
    return hmac.new(prk, label + b"\x01", hashlib.sha256).digest()


def doc_padme(length: int) -> int:
    if length < 2:
        return length
    e = length.bit_length() - 1
    s = e.bit_length()
    mask = (1 << (e - s)) - 1
    return (length + mask) & ~mask


def doc_transcript(
    handshake_hash: bytes,
    *,
    group_id: bytes,
    auth_key: bytes,
    device_id: bytes,
    last_cursor: int,
    device_name: str,
    client: str,
) -> bytes:
    name, soft = device_name.encode("utf-8"), client.encode("utf-8")
    return (
        b"0k-sync/v1/hello-proof\x00"
        + handshake_hash
        + group_id
        + auth_key
        + device_id
        + struct.pack(">Q", last_cursor)
        + struct.pack(">H", len(name))
        + name
        + struct.pack(">H", len(soft))
        + soft
    )


def chachapoly_nonce(n: int) -> bytes:
    return bytes(4) + n.to_bytes(8, "little")


def transport_with(send_key: bytes, receive_key: bytes, *, n: int = 0) -> NoiseTransport:
    send, receive = CipherState(send_key), CipherState(receive_key)
    send.n = receive.n = n
    return NoiseTransport(HandshakeResult(send, receive, bytes(32), None))


def same_key(state: CipherState, key: bytes) -> bool:
    """Whether ``state`` holds ``key``: both encrypt a probe identically at its nonce."""
    probe = CipherState(key)
    probe.n = state.n
    return state.encrypt_with_ad(b"probe", b"") == probe.encrypt_with_ad(b"probe", b"")


# -- one checker per kind of vector --------------------------------------------------------


def check_key_derivation(v: Vector) -> None:
    root = v["root_key"]
    keys = GroupKeys(root)
    assert v["group_id"] == bytes(keys.group_id) == doc_hkdf(root, LABEL_GROUP_ID)
    assert v["blob_key"] == keys.blob_key == doc_hkdf(root, LABEL_BLOB_KEY)
    assert v["content_key"] == keys.content_key == doc_hkdf(root, LABEL_CONTENT_KEY)
    seed = v["auth_seed"]
    assert seed == hkdf_sha256(root, LABEL_GROUP_AUTH) == doc_hkdf(root, LABEL_GROUP_AUTH)
    public = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    assert v["auth_public"] == keys.auth_public == public


def check_argon2id(v: Vector) -> None:
    params = KdfParams(
        salt=v["salt"],
        memory_kib=v.uint("memory_kib"),
        iterations=v.uint("iterations"),
        parallelism=v.uint("parallelism"),
    )
    passphrase = v.text("passphrase")
    assert v["root_key"] == params.derive(passphrase)
    assert GroupKeys.from_passphrase(passphrase, params).root_key == v["root_key"]


def check_padme(v: Vector) -> None:
    def numbers(raw: bytes) -> list[int]:
        assert len(raw) % 4 == 0
        return [int.from_bytes(raw[i : i + 4], "big") for i in range(0, len(raw), 4)]

    lengths, padded = numbers(v["lengths"]), numbers(v["padded"])
    assert len(lengths) == len(padded)
    assert [padme(n) for n in lengths] == padded
    assert [doc_padme(n) for n in lengths] == padded


def check_sealing(v: Vector) -> None:
    key, group_id, nonce = v["blob_key"], GroupId(v["group_id"]), v["nonce"]
    blob_id, sender = BlobId(v["blob_id"]), DeviceId(v["sender"])
    data, pad = v["plaintext"], v.flag("pad")
    cipher = BlobCipher(key, group_id)
    sealed = cipher.seal(data, blob_id=blob_id, sender=sender, pad=pad, nonce=nonce)
    assert v["sealed"] == sealed
    assert cipher.open(sealed, blob_id=blob_id, sender=sender) == data
    # The layout of §9, checked with libsodium directly.
    ad = bytes(group_id) + bytes(blob_id) + bytes(sender)
    assert v["associated_data"] == ad
    inner = v["inner_plaintext"]
    zeros = doc_padme(len(data) + 1) - len(data) - 1 if pad else 0
    assert inner == data + b"\x80" + bytes(zeros)
    assert sealed[0] == 0x01 and sealed[1:25] == nonce
    assert crypto_aead_xchacha20poly1305_ietf_decrypt(sealed[25:], ad, nonce, key) == inner
    assert len(sealed) == 1 + 24 + len(inner) + 16 == OVERHEAD + len(data) + zeros


def classic_handshake(v: Vector) -> tuple[list[bytes], HandshakeState, HandshakeState]:
    def key(name: str) -> x25519.X25519PrivateKey:
        return x25519.X25519PrivateKey.from_private_bytes(v[name])

    name, prologue = v.text("protocol_name"), v["prologue"]
    initiator = HandshakeState(
        name,
        initiator=True,
        prologue=prologue,
        static=key("initiator_static_private"),
        ephemeral=key("initiator_ephemeral_private"),
    )
    responder = HandshakeState(
        name,
        initiator=False,
        prologue=prologue,
        static=key("responder_static_private"),
        ephemeral=key("responder_ephemeral_private"),
    )
    messages = [initiator.write_message(b"")]
    responder.read_message(messages[0])
    messages.append(responder.write_message(b""))
    initiator.read_message(messages[1])
    messages.append(initiator.write_message(b""))
    responder.read_message(messages[2])
    return messages, initiator, responder


def check_classic_handshake(v: Vector) -> None:
    assert v.text("protocol_name") == CLASSIC.noise_protocol
    assert v["prologue"] == prologue(SUBPROTOCOLS, CLASSIC)
    assert v["prologue"] == (
        b"0k-sync prologue v1\noffered: 0k-sync.v1.hfs,0k-sync.v1.xx\nchosen: 0k-sync.v1.xx"
    )
    messages, initiator, responder = classic_handshake(v)
    assert [v["message_1"], v["message_2"], v["message_3"]] == messages
    client, relay = initiator.result, responder.result
    assert v["handshake_hash"] == client.handshake_hash == relay.handshake_hash
    assert v["initiator_static_public"] == relay.remote_static
    assert v["responder_static_public"] == client.remote_static
    assert same_key(client.send, v["k1"]) and same_key(relay.receive, v["k1"])
    assert same_key(client.receive, v["k2"]) and same_key(relay.send, v["k2"])
    check_classic_with_noiseprotocol(v, messages)


def check_classic_with_noiseprotocol(v: Vector, messages: list[bytes]) -> None:
    """An independent Noise implementation (the ``noiseprotocol`` package) agrees."""
    from noise.connection import Keypair, NoiseConnection  # noqa: PLC0415

    peer = NoiseConnection.from_name(v["protocol_name"])
    peer.set_as_initiator()
    peer.set_prologue(v["prologue"])
    peer.set_keypair_from_private_bytes(Keypair.STATIC, v["initiator_static_private"])
    peer.set_keypair_from_private_bytes(Keypair.EPHEMERAL, v["initiator_ephemeral_private"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns that fixed ephemerals are for tests only
        peer.start_handshake()
    assert peer.write_message() == messages[0]
    peer.read_message(messages[1])
    assert peer.write_message() == messages[2]
    assert peer.get_handshake_hash() == v["handshake_hash"]


def handshake_sizes(variant: Variant) -> list[int]:
    initiator = HandshakeState(
        variant.noise_protocol,
        initiator=True,
        prologue=prologue(SUBPROTOCOLS, variant),
        static=x25519.X25519PrivateKey.generate(),
    )
    responder = HandshakeState(
        variant.noise_protocol,
        initiator=False,
        prologue=prologue(SUBPROTOCOLS, variant),
        static=x25519.X25519PrivateKey.generate(),
    )
    first = initiator.write_message(b"")
    responder.read_message(first)
    second = responder.write_message(b"")
    initiator.read_message(second)
    third = initiator.write_message(b"")
    responder.read_message(third)
    assert initiator.result.handshake_hash == responder.result.handshake_hash
    return [len(first), len(second), len(third)]


def check_sizes(v: Vector) -> None:
    for prefix, variant in (("xx", CLASSIC), ("xxhfs", HYBRID)):
        documented = [v.uint(f"{prefix}_message_{i}_length") for i in (1, 2, 3)]
        assert documented == handshake_sizes(variant), variant.noise_protocol


def check_membership(v: Vector) -> None:
    keys = GroupKeys(v["root_key"])
    assert v["group_id"] == bytes(keys.group_id)
    assert v["auth_public"] == keys.auth_public
    handshake_hash, device = v["handshake_hash"], DeviceId(v["device_id"])
    last_cursor, name, client = v.uint("last_cursor"), v.text("device_name"), v.text("client")
    transcript = proof_transcript(
        handshake_hash,
        device,
        group_id=keys.group_id,
        auth_key=keys.auth_public,
        last_cursor=last_cursor,
        device_name=name,
        client=client,
    )
    assert v["transcript"] == transcript
    assert transcript == doc_transcript(
        handshake_hash,
        group_id=bytes(keys.group_id),
        auth_key=keys.auth_public,
        device_id=bytes(device),
        last_cursor=last_cursor,
        device_name=name,
        client=client,
    )
    hello = make_hello(
        keys, handshake_hash, device, device_name=name, last_cursor=last_cursor, client=client
    )
    assert v["proof"] == hello.proof
    ed25519.Ed25519PublicKey.from_public_bytes(keys.auth_public).verify(v["proof"], transcript)
    verify_hello(hello, handshake_hash, device)


def scalar(kind: msgspec.inspect.Type, raw: bytes) -> Any:
    """A field value from its vector form (§11)."""
    if isinstance(kind, msgspec.inspect.IntType):
        return int.from_bytes(raw, "big")
    if isinstance(kind, msgspec.inspect.BoolType):
        assert raw in (b"\x00", b"\x01")
        return raw == b"\x01"
    if isinstance(kind, msgspec.inspect.StrType):
        return raw.decode("utf-8")
    if isinstance(kind, msgspec.inspect.EnumType):
        return kind.cls(raw.decode("utf-8"))
    if isinstance(kind, msgspec.inspect.BytesType):
        return raw
    if isinstance(kind, msgspec.inspect.CustomType):
        return kind.cls(raw)
    raise AssertionError(f"no vector form for {kind!r}")


def build(cls: type[msgspec.Struct], v: Vector, prefix: str = "") -> Any:
    """The message (or nested map) whose fields the vector lists under ``prefix``."""
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    kwargs: dict[str, Any] = {}
    for f in info.fields:
        name = prefix + f.name
        if isinstance(f.type, msgspec.inspect.StructType):
            kwargs[f.name] = build(f.type.cls, v, name + ".")
        elif isinstance(f.type, msgspec.inspect.ListType):
            item = f.type.item_type
            assert isinstance(item, msgspec.inspect.StructType)
            items: list[Any] = []
            while any(k.startswith(f"{name}[{len(items)}].") for k in v.values):
                items.append(build(item.cls, v, f"{name}[{len(items)}]."))
            kwargs[f.name] = items
        elif v.has(name):
            kwargs[f.name] = scalar(f.type, v[name])
    return cls(**kwargs)


def check_frame(v: Vector, name: str) -> None:
    message_type = MessageType[name]
    assert v.uint("type") == int(message_type)
    cls = MESSAGE_CLASSES[message_type]
    request_id = v.uint("request_id")
    message = build(cls, v)
    frame = v["frame"]
    assert encode(message, request_id=request_id) == frame
    assert decode_frame(frame) == Frame(request_id, message)
    # §4.3: a relay reads the request id of an oversized frame from its first bytes.
    assert peek_request_id(frame[:16]) == request_id
    assert msgspec.msgpack.decode(frame)[:3] == [PROTOCOL_VERSION, int(message_type), request_id]


def check_first_transport(v: Vector) -> None:
    k1, k2 = v["k1"], v["k2"]
    for plain_name, message_name, send_key, receive_key in (
        ("client_plaintext", "client_message", k1, k2),
        ("relay_plaintext", "relay_message", k2, k1),
    ):
        plaintext, message = v[plain_name], v[message_name]
        assert plaintext[0] == 0x00  # one fragment, the last
        frame = plaintext[1:]
        decode_frame(frame)
        assert transport_with(send_key, receive_key).encrypt_frame(frame) == [message]
        assert transport_with(receive_key, send_key).decrypt_message(message) == frame
        assert ChaCha20Poly1305(send_key).encrypt(chachapoly_nonce(0), plaintext, b"") == message


def check_fragmentation(v: Vector) -> None:
    size = v.uint("ciphertext_length")
    frame = encode(
        Push(blob_id=BlobId(v["blob_id"]), ciphertext=bytes(i % 256 for i in range(size))),
        request_id=v.uint("request_id"),
    )
    assert v.uint("frame_length") == len(frame)
    assert frame.startswith(v["frame_head"])
    assert v["frame_sha256"] == hashlib.sha256(frame).digest()
    key, first = v["key"], v.uint("first_nonce")
    messages = transport_with(key, key, n=first).encrypt_frame(frame)
    assert len(messages) == 2
    receiver = transport_with(key, key, n=first)
    assert receiver.decrypt_message(messages[0]) is None
    assert receiver.decrypt_message(messages[1]) == frame
    aead = ChaCha20Poly1305(key)
    for i, message in enumerate(messages, start=1):
        assert v.uint(f"message_{i}_length") == len(message)
        assert v[f"message_{i}_sha256"] == hashlib.sha256(message).digest()
        plaintext = aead.decrypt(chachapoly_nonce(first + i - 1), message, b"")
        assert v[f"fragment_{i}_header"] == plaintext[:1]
        assert v.uint(f"fragment_{i}_payload_length") == len(plaintext) - 1
    assert v.uint("fragment_1_payload_length") == MAX_FRAGMENT_PAYLOAD


def check_rekey(v: Vector) -> None:
    key, first, plaintext = v["key"], v.uint("first_nonce"), v["plaintext"]
    assert plaintext[0] == 0x00
    transport = transport_with(key, key, n=first)
    assert transport.encrypt_frame(plaintext[1:]) == [v["message_at_65535"]]
    assert transport.encrypt_frame(plaintext[1:]) == [v["message_at_65536"]]
    # REKEY(k) of §4.4 and the two messages, from the formulas alone.
    rekeyed = ChaCha20Poly1305(key).encrypt(chachapoly_nonce(2**64 - 1), bytes(32), b"")[:32]
    assert v["rekeyed_key"] == rekeyed
    assert first == REKEY_INTERVAL - 1
    old = ChaCha20Poly1305(key).encrypt(chachapoly_nonce(first), plaintext, b"")
    new = ChaCha20Poly1305(rekeyed).encrypt(chachapoly_nonce(first + 1), plaintext, b"")
    assert [old, new] == [v["message_at_65535"], v["message_at_65536"]]


CHECKERS: dict[str, Callable[[Vector], None]] = {
    "Key derivation": check_key_derivation,
    "Argon2id root key": check_argon2id,
    "PADME sizes": check_padme,
    "Blob sealing without padding": check_sealing,
    "Blob sealing with PADME padding": check_sealing,
    "Classic handshake": check_classic_handshake,
    "Handshake message sizes": check_sizes,
    "Membership proof": check_membership,
    "First transport messages": check_first_transport,
    "Fragmentation": check_fragmentation,
    "Rekey": check_rekey,
}


def checker(title: str) -> Callable[[Vector], None]:
    if title.startswith("Frame "):
        name = title.removeprefix("Frame ")
        return lambda v: check_frame(v, name)
    assert title in CHECKERS, f"no check for a vector titled {title!r}"
    return CHECKERS[title]


# -- the vectors ---------------------------------------------------------------------------


def test_vector_blocks_are_all_found() -> None:
    assert len(VECTORS) >= 7
    assert DOC.count("```vector\n") == len(VECTORS), "a vector block without its heading"
    assert [v.number for v in VECTORS] == list(range(1, len(VECTORS) + 1))
    assert len({v.title for v in VECTORS}) == len(VECTORS)
    frames = {v.title.removeprefix("Frame ") for v in VECTORS if v.title.startswith("Frame ")}
    assert frames == {t.name for t in MessageType}, "one frame vector per message type"
    for reference in re.findall(r"Vectors? (\d+)", DOC):
        assert 1 <= int(reference) <= len(VECTORS)


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: f"{v.number}-{v.title.replace(' ', '_')}")
def test_vector(v: Vector) -> None:
    checked = Vector(v.number, v.title, dict(v.values))
    checker(v.title)(checked)
    assert not checked.unused(), f"lines not checked: {checked.unused()}"


def test_vectors_tell_one_story() -> None:
    """The vectors reuse each other's values, as their descriptions say."""
    kdf, handshake = vector("Key derivation").values, vector("Classic handshake").values
    device, relay = handshake["initiator_static_public"], handshake["responder_static_public"]
    proof = vector("Membership proof").values
    assert (proof["handshake_hash"], proof["device_id"]) == (handshake["handshake_hash"], device)
    assert (proof["root_key"], proof["group_id"]) == (kdf["root_key"], kdf["group_id"])
    for title in ("Blob sealing without padding", "Blob sealing with PADME padding"):
        sealing = vector(title).values
        assert (sealing["blob_key"], sealing["group_id"]) == (kdf["blob_key"], kdf["group_id"])
        assert sealing["sender"] == device
    hello, welcome = vector("Frame HELLO").values, vector("Frame WELCOME").values
    assert hello["group_id"] == kdf["group_id"] and hello["auth_key"] == kdf["auth_public"]
    assert hello["proof"] == proof["proof"] and hello["last_cursor"] == proof["last_cursor"]
    assert (hello["device_name"], hello["client"]) == (proof["device_name"], proof["client"])
    assert welcome["relay_id"] == relay
    push = vector("Frame PUSH").values
    assert push["ciphertext"] == vector("Blob sealing without padding").values["sealed"]
    first = vector("First transport messages").values
    assert (first["k1"], first["k2"]) == (handshake["k1"], handshake["k2"])
    assert first["client_plaintext"] == b"\x00" + hello["frame"]
    assert first["relay_plaintext"] == b"\x00" + welcome["frame"]
    assert vector("Fragmentation").values["key"] == handshake["k1"]
    rekey = vector("Rekey").values
    assert rekey["plaintext"] == b"\x00" + vector("Frame PRESENCE").values["frame"]


# -- tables, names and constants -----------------------------------------------------------


def section(heading: re.Pattern[str]) -> str:
    """The text under the one heading matching ``heading``, up to the next heading of the
    same or a higher level."""
    found = list(heading.finditer(DOC))
    assert len(found) == 1, f"expected one heading matching {heading.pattern!r}"
    level = len(found[0].group(0)) - len(found[0].group(0).lstrip("#"))
    rest = DOC[found[0].end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


def message_section(message_type: MessageType) -> str:
    pattern = rf"^### 6\.\d+ {message_type.name} \(0x{int(message_type):02x}\)$"
    return section(re.compile(pattern, re.MULTILINE))


_FIELD_ROW = re.compile(r"^\| `(\w+)` \| ([^|]+) \| ([^|]+) \| ([^|]+) \| .+ \|$", re.MULTILINE)


def render_number(value: int) -> str:
    return {2**63 - 1: "2^63-1", 2**32 - 1: "2^32-1"}.get(value, str(value))


def expected_type(kind: msgspec.inspect.Type) -> tuple[str, str]:
    """The Type and Bounds cells that §6 must show for a field of this kind."""
    inspect = msgspec.inspect
    if isinstance(kind, inspect.IntType):
        assert kind.ge is not None and kind.le is not None
        return "int", f"{render_number(kind.ge)}..{render_number(kind.le)}"
    if isinstance(kind, inspect.BoolType):
        return "bool", "-"
    if isinstance(kind, inspect.StrType):
        if kind.min_length:
            return "str", f"{kind.min_length}..{kind.max_length} chars"
        return "str", f"<= {kind.max_length} chars"
    if isinstance(kind, inspect.EnumType):
        return "str", ", ".join(f'"{member.value}"' for member in kind.cls)
    if isinstance(kind, inspect.BytesType):
        if kind.min_length == kind.max_length:
            return "bin", f"exactly {kind.max_length} bytes"
        return "bin", f"<= {kind.max_length} bytes"
    if isinstance(kind, inspect.CustomType):
        assert issubclass(kind.cls, FixedId)
        return "bin", f"exactly {kind.cls.SIZE} bytes ({kind.cls.__name__})"
    if isinstance(kind, inspect.ListType):
        item = kind.item_type
        assert isinstance(item, inspect.StructType)
        return "array", f"<= {kind.max_length} items of {item.cls.__name__}"
    if isinstance(kind, inspect.StructType):
        return "map", kind.cls.__name__
    raise AssertionError(f"unexpected field type {kind!r}")


def expected_default(f: msgspec.inspect.Field) -> str:
    if f.required:
        return "required"
    if isinstance(f.default, bool):
        return "true" if f.default else "false"
    if isinstance(f.default, str):
        return f'"{f.default}"'
    return str(f.default)


def check_field_table(cls: type[msgspec.Struct], text: str) -> None:
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    rows = {m.group(1): m.groups()[1:] for m in _FIELD_ROW.finditer(text)}
    assert list(rows) == [f.name for f in info.fields], f"fields of {cls.__name__}"
    for f in info.fields:
        type_cell, bounds_cell, default_cell = (cell.strip() for cell in rows[f.name])
        assert (type_cell, bounds_cell) == expected_type(f.type), f"{cls.__name__}.{f.name}"
        assert default_cell.strip("`") == expected_default(f), f"{cls.__name__}.{f.name}"


@pytest.mark.parametrize("message_type", list(MessageType), ids=lambda t: t.name)
def test_message_documented(message_type: MessageType) -> None:
    hex_number = f"0x{int(message_type):02x}"
    row = rf"^\| {message_type.name} \| `{hex_number}` \|"
    assert re.search(row, DOC, re.MULTILINE), f"{message_type.name} missing from §6.1"
    text = message_section(message_type)
    own = text.split("\n#### ", 1)[0]  # the nested maps have their own tables
    check_field_table(MESSAGE_CLASSES[message_type], own)


@pytest.mark.parametrize("cls", NESTED, ids=lambda c: c.__name__)
def test_nested_map_documented(cls: type[msgspec.Struct]) -> None:
    check_field_table(cls, section(re.compile(rf"^#### {cls.__name__}$", re.MULTILINE)))


def test_error_codes_documented() -> None:
    text = section(re.compile(r"^## 10\. Error codes$", re.MULTILINE))
    rows = re.findall(r"^\| (\d+) \| (\w+) \| (yes|no) \|", text, re.MULTILINE)
    documented = {int(code): (name, fatal == "yes") for code, name, fatal in rows}
    assert documented == {int(c): (c.name, c.fatal) for c in ErrorCode}


def test_names_appear_verbatim() -> None:
    for label in (LABEL_GROUP_ID, LABEL_BLOB_KEY, LABEL_GROUP_AUTH, LABEL_CONTENT_KEY):
        assert f"`{label.decode('ascii')}`" in DOC
    assert PROOF_CONTEXT == b"0k-sync/v1/hello-proof\x00"
    assert '"0k-sync/v1/hello-proof" ‖ 0x00' in DOC
    for variant in VARIANTS:
        assert f"`{variant.subprotocol}`" in DOC
        assert f"`{variant.noise_protocol}`" in DOC
    assert VARIANTS[0] is HYBRID, "the hybrid variant is the preferred one"
    offer = ", ".join(v.subprotocol for v in VARIANTS)
    assert f"Sec-WebSocket-Protocol: {offer}" in DOC


def test_constants_match() -> None:
    expected = [
        f"**1 MiB + 64 KiB = {DEFAULT_MAX_FRAME} bytes**",
        f"**16 MiB + 64 KiB = {MAX_SEND_FRAME} bytes**",
        f"by default **{DEFAULT_HANDSHAKE_TIMEOUT:g} s**",
        f"after every {REKEY_INTERVAL} messages",
        f"up to {MAX_FRAGMENT_PAYLOAD} bytes of one frame",
        f"flag (1 byte) ‖ chunk (0..{MAX_FRAGMENT_PAYLOAD} bytes)",
        f"HELLO uses request id **{HELLO_REQUEST_ID}**",
        f"it has sent nothing for {DEFAULT_HEARTBEAT:g} s",
        f"MUST be `{PROTOCOL_VERSION}` (`PROTOCOL_VERSION`)",
        f"<= 16 MiB = {wire_messages.MAX_BLOB_BYTES} bytes",
        f"| PullLimit | int | 1..{wire_messages.MAX_PULL_LIMIT} |",
        f"| device list | array | <= {wire_messages.MAX_DEVICES} items |",
        f"| Name | str | <= {wire_messages.MAX_NAME_CHARS} chars |",
        f"| Text | str | <= {wire_messages.MAX_TEXT_CHARS} chars |",
        f"| push token | str | 1..{wire_messages.MAX_TOKEN_CHARS} chars |",
        f"{OVERHEAD} bytes more than the data",
        f"shorter than {OVERHEAD} bytes",
    ]
    defaults, mobile = KdfParams.default(), KdfParams.mobile()
    expected.append(
        f"| `memory_kib` | {MIN_MEMORY_KIB}..{MAX_MEMORY_KIB} (8 MiB..1 GiB) "
        f"| {defaults.memory_kib} (64 MiB) | {mobile.memory_kib} (19 MiB) |"
    )
    expected.append(
        f"| `iterations` | 1..{MAX_ITERATIONS} | {defaults.iterations} | {mobile.iterations} |"
    )
    expected.append(
        f"| `parallelism` | 1..{MAX_PARALLELISM} | {defaults.parallelism} | {mobile.parallelism} |"
    )
    for text in expected:
        assert text in DOC, text


def test_id_display_example() -> None:
    group_id = GroupKeys(bytes(range(32))).group_id
    assert f"Vector 1 is `{group_id.b32}`" in DOC
    assert f"(`{group_id.short()}`)" in DOC
    assert f"(`{group_id.b64}` for the same id)" in DOC
    assert GroupId.parse(group_id.b64) == GroupId.parse(group_id.b32) == group_id


# -- statements of the document about the handshake and the proof ---------------------------


def test_handshake_payloads_are_rejected() -> None:
    """§3.5/§3.6: bytes after the tokens of a handshake message end the session, silently."""
    handshake = vector("Classic handshake").values

    def relay_after(message: bytes) -> RelaySession:
        static = x25519.X25519PrivateKey.from_private_bytes(handshake["responder_static_private"])
        relay = RelaySession(static, now=0.0, variant=CLASSIC)
        relay.receive(message, 0.0)
        return relay

    assert not relay_after(handshake["message_1"]).closed
    hybrid_first = HandshakeState(
        HYBRID.noise_protocol, initiator=True, prologue=prologue(SUBPROTOCOLS, CLASSIC)
    ).write_message(b"")
    for message in (handshake["message_1"] + b"\x00", hybrid_first):
        relay = relay_after(message)
        assert relay.closed and relay.close_code is None
        assert relay.data_to_send() == []  # no ERROR: there is no channel yet


def test_small_order_auth_key_is_refused() -> None:
    """§7.2: an identity-point auth key with a trivial "signature" does not verify."""
    proof = vector("Membership proof").values
    keys = GroupKeys(proof["root_key"])
    hello = make_hello(keys, proof["handshake_hash"], DeviceId(proof["device_id"]))
    forged = msgspec.structs.replace(hello, auth_key=b"\x01" + bytes(31), proof=b"\x01" + bytes(63))
    with pytest.raises(InvalidProofError):
        verify_hello(forged, proof["handshake_hash"], DeviceId(proof["device_id"]))
    verify_hello(hello, proof["handshake_hash"], DeviceId(proof["device_id"]))
