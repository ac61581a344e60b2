"""docs/protocol.md checked against the code, so that the specification cannot drift.

Every ```vector block of §13 is parsed (by its ``### Vector N: title`` heading) and each of
its outputs is recomputed from its inputs with the project's code; where the document gives
a formula (HKDF, the proof transcript, X-Wing's combiner, the wraps, the blob layout, the
chain hash, the short code, PADME, the AEADs, REKEY, chunk sealing, the chunking seed and
cut, the manifest layout and its blob's prefix) the test also recomputes it from the formula
alone, the way an implementation in another language would. The log entries are replayed
through the log's rules, and the message, log-entry and error tables, the constants and the
protocol names are compared with the code as well.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import re
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import msgspec
import pytest
from argon2.low_level import Type, hash_secret_raw
from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from mnemonic import Mnemonic
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from pyfastcdc import FastCDC
from pyfastcdc.py.constants import GEAR
from pyfastcdc.py.fastcdc import FastCDC as ReferenceFastCDC

from tests.crypto import test_content as content_tests
from tests.crypto import test_epoch as epoch_tests
from tests.protocol import test_chunking as chunking_tests
from tests.wire import test_manifest as manifest_tests
from zerok.client import pairing
from zerok.client.content import MANIFEST_MAGIC, manifest_blob_data, manifest_of
from zerok.crypto import content
from zerok.crypto import epoch as epochs
from zerok.crypto.blob import (
    KIND_REPAIR,
    V2_OVERHEAD,
    BlobHeader,
    chain_hash,
    open_blob,
    seal_blob,
    sealed_epoch,
)
from zerok.crypto.entry import HASH_CONTEXT, SIG_CONTEXT, TICKET_CONTEXT, TicketKey, entry_hash
from zerok.crypto.identity import LABEL_DEVICE_SIGN, LABEL_DEVICE_WRAP, DeviceIdentity
from zerok.crypto.membership import (
    PROOF_CONTEXT,
    entries_digest,
    make_hello,
    proof_transcript,
    verify_hello,
)
from zerok.crypto.noise import (
    MAX_FRAGMENT_PAYLOAD,
    CipherState,
    HandshakeResult,
    HandshakeState,
    NoiseTransport,
)
from zerok.crypto.noise.transport import MAX_SEND_FRAME, REKEY_INTERVAL
from zerok.crypto.padding import padme
from zerok.crypto.recovery import (
    LABEL_RECOVERY_SIGN,
    LABEL_RECOVERY_WRAP,
    QR_PREFIX,
    RecoveryKey,
)
from zerok.crypto.xwing import XWING_LABEL, XWingPrivateKey
from zerok.errors import InvalidProofError, WireError
from zerok.protocol.chunking import AVG_CHUNK, MIN_CHUNK, NORMALIZED_CHUNKING, chunks
from zerok.protocol.client import DEFAULT_HEARTBEAT, HELLO_REQUEST_ID
from zerok.protocol.integrity import (
    MAX_REPAIR_RANGES,
    KeepPolicy,
    SenderChains,
    decode_repair,
    encode_repair,
)
from zerok.protocol.membership import MAX_LOG_ENTRIES, GroupLog
from zerok.protocol.relay import RelaySession
from zerok.protocol.session import DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_FRAME
from zerok.protocol.variants import CLASSIC, HYBRID, SUBPROTOCOLS, VARIANTS, Variant, prologue
from zerok.relay import server as relay_server
from zerok.relay.config import RelayConfig
from zerok.relay.storage.base import CHUNK_IDLE_MS
from zerok.wire import (
    ALL_MESSAGES,
    PROTOCOL_VERSION,
    BlobId,
    ChunkBegin,
    ChunkData,
    ChunkGet,
    ChunkHave,
    ChunkInfo,
    ChunkPut,
    ChunkStatus,
    DeviceId,
    DeviceInfo,
    Error,
    ErrorCode,
    FixedId,
    Frame,
    GroupId,
    Limits,
    Message,
    MessageType,
    Presence,
    Push,
    StoredBlob,
    decode_frame,
    encode,
    peek_request_id,
)
from zerok.wire import manifest as manifests
from zerok.wire import messages as wire_messages
from zerok.wire.log import (
    EPOCH_KINDS,
    MAX_ENTRY_BYTES,
    MAX_MEMBERS,
    WRAPPED_KEY_BYTES,
    Body,
    Cancel,
    Enroll,
    Genesis,
    Invite,
    Member,
    Recover,
    Revoke,
    Rotate,
    SetRole,
    SignedEntry,
    Wrap,
    decode_body,
    encode_body,
    encode_entry,
)

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
DOC = DOC_PATH.read_text(encoding="utf-8")
XWING_VECTORS = Path(__file__).resolve().parent / "crypto" / "xwing-vectors.json"

_VECTOR_HEADING = re.compile(r"^### Vector (\d+): (.+?)\s*$", re.MULTILINE)
_VECTOR_BLOCK = re.compile(r"^```vector\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
_ANY_HEADING = re.compile(r"^#{1,4} ", re.MULTILINE)
_LINE = re.compile(r"^([A-Za-z0-9_.\[\]]+): ((?:[0-9a-f]{2})*)$")

MESSAGE_CLASSES: dict[MessageType, type[Message]] = {cls.TYPE: cls for cls in ALL_MESSAGES}
NESTED: tuple[type[msgspec.Struct], ...] = (Limits, StoredBlob, DeviceInfo, ChunkInfo)
BODY_KINDS: tuple[type[Body], ...] = (
    Genesis,
    Invite,
    Cancel,
    Enroll,
    Revoke,
    Rotate,
    SetRole,
    Recover,
)
ZERO_NONCE = bytes(12)


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
FLAT_DOC = " ".join(DOC.split())


def vector(title: str) -> Vector:
    """A fresh copy of the vector with this title (for cross-checks)."""
    found = [v for v in VECTORS if v.title == title]
    assert len(found) == 1, f"expected one vector titled {title!r}"
    return Vector(found[0].number, found[0].title, dict(found[0].values))


def in_doc(text: str) -> bool:
    """Whether the document says ``text``, however its lines are wrapped."""
    return " ".join(text.split()) in FLAT_DOC


def number_of(title: str) -> int:
    return vector(title).number


# -- the formulas of the document, written from the text alone -----------------------------


def doc_hkdf(ikm: bytes, label: bytes) -> bytes:
    prk = hmac.new(bytes(32), ikm, hashlib.sha256).digest()
    return hmac.new(prk, label + b"\x01", hashlib.sha256).digest()


def doc_padme(length: int) -> int:
    if length < 2:
        return length
    e = length.bit_length() - 1
    s = e.bit_length()
    mask = (1 << (e - s)) - 1
    return (length + mask) & ~mask


def doc_text(value: str) -> bytes:
    raw = value.encode("utf-8")
    return struct.pack(">H", len(raw)) + raw


def doc_entries_digest(entries: list[bytes]) -> bytes:
    data = struct.pack(">I", len(entries))
    for entry in entries:
        data += struct.pack(">I", len(entry)) + entry
    return hashlib.sha256(data).digest()


def doc_transcript(v: Vector, signer_key: bytes, entries: list[bytes]) -> bytes:
    return (
        b"0k-sync/v2/hello-proof\x00"
        + v["handshake_hash"]
        + v["group_id"]
        + v["device_id"]
        + signer_key
        + v["last_cursor"].rjust(8, b"\x00")
        + doc_text(v.text("device_name"))
        + doc_text(v.text("client"))
        + doc_entries_digest(entries)
    )


def doc_xwing(seed: bytes, ciphertext: bytes) -> tuple[bytes, bytes]:
    """(public key, shared secret) by §9.3, from pyca's ML-KEM-768 and X25519 alone."""
    expanded = hashlib.shake_256(seed).digest(96)
    kem = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[0:64])
    dh = x25519.X25519PrivateKey.from_private_bytes(expanded[64:96])
    pk_x = dh.public_key().public_bytes_raw()
    ct_m, ct_x = ciphertext[:1088], ciphertext[1088:]
    ss_m = kem.decapsulate(ct_m)
    ss_x = dh.exchange(x25519.X25519PublicKey.from_public_bytes(ct_x))
    combined = hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + bytes.fromhex("5c2e2f2f5e5c"))
    return kem.public_key().public_bytes_raw() + pk_x, combined.digest()


def doc_luhn32(values: list[int]) -> int:
    total = 0
    for i, value in enumerate(reversed(values)):
        product = value * (2 if i % 2 == 0 else 1)
        total += product // 32 + product % 32
    return (32 - total % 32) % 32


def doc_bip39(secret: bytes) -> list[str]:
    bits = int.from_bytes(secret + hashlib.sha256(secret).digest()[:1], "big")
    words = Mnemonic("english").wordlist
    return [words[(bits >> (11 * (23 - i))) & 0x7FF] for i in range(24)]


def chachapoly_nonce(n: int) -> bytes:
    return bytes(4) + n.to_bytes(8, "little")


def ed25519_public(seed: bytes) -> bytes:
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()


def ed25519_sign(seed: bytes, message: bytes) -> bytes:
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed).sign(message)


def transport_with(send_key: bytes, receive_key: bytes, *, n: int = 0) -> NoiseTransport:
    send, receive = CipherState(send_key), CipherState(receive_key)
    send.n = receive.n = n
    return NoiseTransport(HandshakeResult(send, receive, bytes(32), None))


def same_key(state: CipherState, key: bytes) -> bool:
    """Whether ``state`` holds ``key``: both encrypt a probe identically at its nonce."""
    probe = CipherState(key)
    probe.n = state.n
    return state.encrypt_with_ad(b"probe", b"") == probe.encrypt_with_ad(b"probe", b"")


# -- keys the vectors share ------------------------------------------------------------------


@dataclass(frozen=True)
class Holder:
    """A signing key of the story (a device or the recovery key) and its wrap seed."""

    sign_seed: bytes
    wrap_seed: bytes


@cache
def holders() -> dict[bytes, Holder]:
    """Signing public key -> seeds, from the device and recovery key vectors."""
    found: dict[bytes, Holder] = {}
    for title in ("Device keys of the creating device", "Device keys of the joining device"):
        v = vector(title).values
        found[v["sign_public"]] = Holder(v["sign_seed"], v["wrap_seed"])
    recovery = vector("Recovery key").values
    found[recovery["sign_public"]] = Holder(recovery["sign_seed"], recovery["wrap_seed"])
    return found


def log_vectors() -> list[Vector]:
    found = [v for v in VECTORS if v.title.startswith("Log entry ")]
    assert [v.title.split(":")[0] for v in found] == [f"Log entry {i}" for i in range(9)]
    return [vector(v.title) for v in found]


def signed_entry(v: Vector) -> bytes:
    ticket_sig = v.values.get("ticket_sig", b"")
    return encode_entry(
        SignedEntry(body=v.values["body"], sig=v.values["sig"], ticket_sig=ticket_sig)
    )


@cache
def story_log() -> tuple[bytes, ...]:
    """The encoded entries of Vectors 'Log entry 0..8', in order."""
    return tuple(signed_entry(v) for v in log_vectors())


def group_id() -> bytes:
    return vector("Log entry 0: genesis").values["hash"]


# -- one checker per kind of vector --------------------------------------------------------


def check_padme(v: Vector) -> None:
    def numbers(raw: bytes) -> list[int]:
        assert len(raw) % 4 == 0
        return [int.from_bytes(raw[i : i + 4], "big") for i in range(0, len(raw), 4)]

    lengths, padded = numbers(v["lengths"]), numbers(v["padded"])
    assert len(lengths) == len(padded)
    assert [padme(n) for n in lengths] == padded
    assert [doc_padme(n) for n in lengths] == padded


def classic_handshake(v: Vector) -> tuple[list[bytes], HandshakeState, HandshakeState]:
    def key(name: str) -> x25519.X25519PrivateKey:
        return x25519.X25519PrivateKey.from_private_bytes(v[name])

    name, prologue_bytes = v.text("protocol_name"), v["prologue"]
    initiator = HandshakeState(
        name,
        initiator=True,
        prologue=prologue_bytes,
        static=key("initiator_static_private"),
        ephemeral=key("initiator_ephemeral_private"),
    )
    responder = HandshakeState(
        name,
        initiator=False,
        prologue=prologue_bytes,
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
        b"0k-sync prologue v2\noffered: 0k-sync.v2.hfs,0k-sync.v2.xx\nchosen: 0k-sync.v2.xx"
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


def check_device_keys(v: Vector) -> None:
    noise = v["noise_private"]
    identity = DeviceIdentity.from_private_bytes(noise)
    public = x25519.X25519PrivateKey.from_private_bytes(noise).public_key().public_bytes_raw()
    assert v["device_id"] == bytes(identity.device_id) == public
    assert v["sign_seed"] == doc_hkdf(noise, b"0k-sync/v2/device-sign")
    assert v["sign_public"] == identity.sign_public == ed25519_public(v["sign_seed"])
    assert v["wrap_seed"] == doc_hkdf(noise, b"0k-sync/v2/device-wrap")
    assert v["wrap_public"] == identity.wrap_public
    assert v["wrap_public"] == XWingPrivateKey.from_seed(v["wrap_seed"]).public_bytes()


def check_recovery_key(v: Vector) -> None:
    secret = v["secret"]
    key = RecoveryKey(secret)
    words = v.text("words")
    assert words.split(" ") == key.words() == doc_bip39(secret)
    assert f"\n    {words}\n" in DOC, "the recovery words are shown in the vector's text"
    assert v.text("qr_text") == key.qr_text() == "ZEROK-RECOVERY:" + words.replace(" ", "-").upper()
    assert f"QR text is `{key.qr_text()}`" in DOC
    for text in (
        words,
        v.text("qr_text"),
        " ".join(f"{i}. {w[:4]}" for i, w in enumerate(words.split(), 1)),
    ):
        assert RecoveryKey.from_words(text).secret == secret
    assert v["sign_seed"] == doc_hkdf(secret, b"0k-sync/v2/recovery-sign")
    assert v["sign_public"] == key.sign_public == ed25519_public(v["sign_seed"])
    assert v["wrap_seed"] == doc_hkdf(secret, b"0k-sync/v2/recovery-wrap")
    assert v["wrap_public"] == key.wrap_public
    assert v["wrap_public"] == XWingPrivateKey.from_seed(v["wrap_seed"]).public_bytes()


def check_xwing(v: Vector) -> None:
    seed, ciphertext = v["seed"], v["ciphertext"]
    assert v["expanded"] == hashlib.shake_256(seed).digest(96)
    key = XWingPrivateKey.from_seed(seed)
    assert v["public_key"] == key.public_bytes()
    assert v["shared_secret"] == key.decapsulate(ciphertext)
    assert doc_xwing(seed, ciphertext) == (v["public_key"], v["shared_secret"])
    # It is the draft's own first vector, as kept in tests/crypto.
    draft = json.loads(XWING_VECTORS.read_text())["vectors"][0]
    assert (seed.hex(), ciphertext.hex()) == (draft["seed"], draft["ct"])
    assert (v["public_key"].hex(), v["shared_secret"].hex()) == (draft["pk"], draft["ss"])


def check_wrapped_epoch_key(v: Vector) -> None:
    wrap_key = XWingPrivateKey.from_seed(v["recipient_wrap_seed"])
    wrapped, recipient, epoch = v["wrapped"], v["recipient"], v.uint("epoch")
    assert len(wrapped) == epochs.WRAPPED_BYTES == WRAPPED_KEY_BYTES == 1168
    key = epochs.unwrap_epoch_key(wrapped, epoch=epoch, recipient=recipient, wrap_key=wrap_key)
    assert v["epoch_key"] == key
    assert v["shared_secret"] == wrap_key.decapsulate(wrapped[:1120])
    assert v["aead_key"] == doc_hkdf(v["shared_secret"], b"0k-sync/v2/epoch-wrap")
    ad = b"0k-sync/v2/epoch-key\x00" + struct.pack(">I", epoch) + recipient
    assert v["associated_data"] == ad
    assert ChaCha20Poly1305(v["aead_key"]).decrypt(ZERO_NONCE, wrapped[1120:], ad) == key
    # The frozen value of tests/crypto/test_epoch.py.
    assert wrapped == epoch_tests.WRAP_VECTOR_WRAPPED
    assert (v["recipient_wrap_seed"], recipient) == (
        epoch_tests.WRAP_VECTOR_SEED,
        epoch_tests.WRAP_VECTOR_RECIPIENT,
    )


def check_epoch_chain(v: Vector) -> None:
    key, old, epoch = v["epoch_key"], v["previous_key"], v.uint("epoch")
    assert v["blob_key"] == epochs.blob_key(key) == doc_hkdf(key, b"0k-sync/v2/blob-key")
    assert v["content_key"] == epochs.content_key(key) == doc_hkdf(key, b"0k-sync/v2/content-key")
    assert v["prev_aead_key"] == doc_hkdf(key, b"0k-sync/v2/prev-key")
    ad = b"0k-sync/v2/prev-key\x00" + struct.pack(">I", epoch)
    assert v["prev_associated_data"] == ad
    sealed = ChaCha20Poly1305(v["prev_aead_key"]).encrypt(ZERO_NONCE, old, ad)
    assert v["prev_key"] == sealed == epochs.seal_previous(old, new_key=key, epoch=epoch)
    assert epochs.open_previous(sealed, new_key=key, epoch=epoch) == old


def check_log_entry(v: Vector) -> None:
    """Recompute the entry from its body: zerok's encoding of it, the fields the story
    fixes, the signatures, the wraps and prev_key, the hash and the encoded entry."""
    seq = int(v.title.split(":")[0].removeprefix("Log entry "))
    raw = v["body"]
    body = decode_body(raw)
    assert v.title.endswith(f": {tag_of(type(body))}")
    assert encode_body(body) == raw, "the body is zerok's encoding of itself"
    assert body.seq == seq
    if seq == 0:
        assert (body.group, body.prev) == (b"", b"")
    else:
        before = log_vectors()[seq - 1].values
        assert (body.group, body.prev) == (group_id(), before["hash"])
    author = holders()[body.author]
    assert v["sig"] == ed25519_sign(author.sign_seed, b"0k-sync/v2/entry-sig\x00" + raw)
    ticket_sig = b""
    if isinstance(body, Enroll):
        seed = vector("Invite payload and URL").values["ticket"]
        assert body.ticket == TicketKey(seed).public
        ticket_sig = ed25519_sign(seed, b"0k-sync/v2/ticket-sig\x00" + raw)
        assert v["ticket_sig"] == ticket_sig
    if isinstance(body, EPOCH_KINDS):
        check_wraps(v, body)
    if isinstance(body, Revoke | Rotate | Recover):
        opened = epochs.open_previous(body.prev_key, new_key=v["epoch_key"], epoch=body.epoch)
        assert opened == v["previous_key"]
    entry = encode_entry(SignedEntry(body=raw, sig=v["sig"], ticket_sig=ticket_sig))
    if v.has("entry"):
        assert v["entry"] == entry
    else:
        assert len(entry) > 2048, "small entries are given whole"
        assert v.uint("entry_length") == len(entry)
        assert v["entry_sha256"] == hashlib.sha256(entry).digest()
    assert v["hash"] == entry_hash(raw) == hashlib.sha256(b"0k-sync/v2/entry\x00" + raw).digest()
    assert story_log()[seq] == entry


def check_wraps(v: Vector, body: Genesis | Revoke | Rotate | Recover) -> None:
    epoch = 0 if isinstance(body, Genesis) else body.epoch
    for wrap in body.wraps:
        wrap_key = XWingPrivateKey.from_seed(holders()[wrap.to].wrap_seed)
        key = epochs.unwrap_epoch_key(wrap.key, epoch=epoch, recipient=wrap.to, wrap_key=wrap_key)
        assert key == v["epoch_key"]


def check_hello_proof(v: Vector) -> None:
    """A ticket's proof (``signer`` given) by the joining device, or the creating device's
    own proof carrying the genesis."""
    device = DeviceId(v["device_id"])
    handshake_hash, gid = v["handshake_hash"], GroupId(v["group_id"])
    name, client, last_cursor = v.text("device_name"), v.text("client"), v.uint("last_cursor")
    signer: tuple[bytes, Callable[[bytes], bytes]] | None = None
    if v.has("signer"):
        ticket = TicketKey(v["ticket_seed"])
        signer = (ticket.public, ticket.sign)
        identity, key, entries = joining_device(), v["signer"], []
        assert key == ticket.public
    else:
        identity, key, entries = creating_device(), v["sign_public"], [story_log()[0]]
        assert key == identity.sign_public
        genesis = vector("Log entry 0: genesis")
        assert genesis.uint("entry_length") == len(entries[0])
        assert genesis["entry_sha256"] == hashlib.sha256(entries[0]).digest()
    assert bytes(identity.device_id) == bytes(device)
    assert v["entries_digest"] == entries_digest(entries) == doc_entries_digest(entries)
    transcript = proof_transcript(
        handshake_hash,
        device,
        key,
        group_id=gid,
        last_cursor=last_cursor,
        device_name=name,
        client=client,
        entries=entries,
    )
    assert v["transcript"] == transcript == doc_transcript(v, key, entries)
    hello = make_hello(
        identity,
        handshake_hash,
        gid,
        device_name=name,
        last_cursor=last_cursor,
        client=client,
        entries=entries,
        signer=signer,
    )
    assert v["proof"] == hello.proof
    ed25519.Ed25519PublicKey.from_public_bytes(key).verify(v["proof"], transcript)
    verify_hello(hello, handshake_hash, device, key)


def creating_device() -> DeviceIdentity:
    return DeviceIdentity.from_private_bytes(
        vector("Device keys of the creating device").values["noise_private"]
    )


def joining_device() -> DeviceIdentity:
    return DeviceIdentity.from_private_bytes(
        vector("Device keys of the joining device").values["noise_private"]
    )


def check_blob(v: Vector) -> None:
    key, gid = v["blob_key"], GroupId(v["group_id"])
    blob_id, sender, nonce = BlobId(v["blob_id"]), DeviceId(v["sender"]), v["nonce"]
    assert (
        key == epochs.blob_key(v["epoch_key"]) == doc_hkdf(v["epoch_key"], b"0k-sync/v2/blob-key")
    )
    header = BlobHeader(
        epoch=v.uint("epoch"), kind=v.uint("kind"), seq=v.uint("seq"), link=v["link"]
    )
    data, pad = v["plaintext"], v.flag("pad")
    sealed = seal_blob(
        data,
        key=key,
        group_id=gid,
        blob_id=blob_id,
        sender=sender,
        header=header,
        pad=pad,
        nonce=nonce,
    )
    assert v["sealed"] == sealed
    opened = open_blob(sealed, key=key, group_id=gid, blob_id=blob_id, sender=sender)
    assert (opened.header, opened.data) == (header, data)
    assert sealed_epoch(sealed) == header.epoch
    # The layout of §10.1, checked with libsodium directly.
    prefix = b"\x02" + struct.pack(">I", header.epoch)
    ad = prefix + bytes(gid) + bytes(blob_id) + bytes(sender)
    assert v["associated_data"] == ad
    unpadded = 41 + len(data) + 1
    zeros = doc_padme(unpadded) - unpadded if pad else 0
    inner = (
        struct.pack(">BQ", header.kind, header.seq) + header.link + data + b"\x80" + bytes(zeros)
    )
    assert v["inner_plaintext"] == inner
    assert sealed[:29] == prefix + nonce
    assert crypto_aead_xchacha20poly1305_ietf_decrypt(sealed[29:], ad, nonce, key) == inner
    assert len(sealed) == V2_OVERHEAD + len(data) + zeros
    link_input = (
        bytes(blob_id) + struct.pack(">QB", header.seq, header.kind) + hashlib.sha256(data).digest()
    )
    expected = hashlib.sha256(b"0k-sync/v2/link\x00" + link_input).digest()
    assert v["chain_hash"] == expected == chain_hash(blob_id, header.seq, header.kind, data)
    assert opened.record_hash == expected
    if header.kind == KIND_REPAIR:
        missing, ranges = decode_repair(data)
        assert encode_repair(missing, ranges) == data
        assert msgspec.msgpack.decode(data) == {
            "sender": bytes(missing),
            "ranges": [list(r) for r in ranges],
        }


def invite_payload(v: Vector) -> bytes:
    """The payload of §11.1 from its fields, in the documented order."""
    fields: dict[str, Any] = {
        "v": 2,
        "relays": [v.text("relays[0]")],
        "group": v["group"],
        "ticket": v["ticket"],
        "epoch": v.uint("epoch"),
        "key": v["key"],
        "expires_at": v.uint("expires_at"),
        "inviter": v["inviter"],
    }
    return msgspec.msgpack.encode(fields)


def check_invite(v: Vector) -> None:
    payload = invite_payload(v)
    assert v["payload"] == payload
    assert v["ticket_public"] == TicketKey(v["ticket"]).public
    url = "zerok://sync?invite=" + base64.urlsafe_b64encode(payload).decode().rstrip("=")
    assert v.text("url") == url
    assert f"\n    {url}\n" in DOC, "the URL is shown in the vector's text"
    check_invite_with_pairing(v, url)


def pairing_speaks_v2() -> bool:
    return int(getattr(pairing, "INVITE_VERSION", 0)) == 2


def check_invite_with_pairing(v: Vector, url: str) -> None:
    """The client's pairing module reads the documented payload the same way."""
    if not pairing_speaks_v2():
        pytest.skip("zerok.client.pairing does not make version 2 invites yet")
    decoded = pairing.parse_url(url, now_ms=v.uint("expires_at") - 1)
    expected = msgspec.msgpack.decode(v["payload"])
    assert msgspec.structs.asdict(decoded) == expected
    assert pairing.encode_payload(decoded) == v["payload"]
    assert pairing.invite_url(decoded) == url


@cache
def code_key(canonical: bytes, salt: bytes) -> bytes:
    # Argon2id at 64 MiB costs tens of milliseconds: once per input is enough.
    return hash_secret_raw(
        canonical, salt, time_cost=3, memory_cost=65536, parallelism=1, hash_len=32, type=Type.ID
    )


def check_short_code(v: Vector) -> None:
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    typed = v.text("code")
    canonical = typed.replace("-", "").upper().translate(str.maketrans("OIL", "011"))
    assert v.text("canonical") == canonical and len(canonical) == 16
    values = [alphabet.index(c) for c in canonical]
    assert doc_luhn32(values[:15]) == values[15]
    lookup = canonical[:8]
    assert v.text("lookup") == lookup
    salt = hashlib.sha256(b"0k-sync/v1/invite-salt" + lookup.encode()).digest()[:16]
    assert v["salt"] == salt
    key = code_key(canonical.encode(), salt)
    assert v["key"] == key
    ad = b"0k-sync/v1/invite" + lookup.encode()
    assert v["associated_data"] == ad
    nonce, sealed = v["nonce"], v["mailbox_payload"]
    assert sealed == nonce + crypto_aead_xchacha20poly1305_ietf_encrypt(
        v["plaintext"], ad, nonce, key
    )
    assert (
        crypto_aead_xchacha20poly1305_ietf_decrypt(sealed[24:], ad, sealed[:24], key)
        == v["plaintext"]
    )
    assert v["plaintext"] == vector("Invite payload and URL").values["payload"]
    assert in_doc(f"short code `{typed}`")
    check_code_with_pairing(v, typed, sealed)


def check_code_with_pairing(v: Vector, code: str, sealed: bytes) -> None:
    assert pairing.normalize_code(code.lower().replace("1", "l")) == v.text("canonical")
    assert pairing.code_lookup(code) == v.text("lookup")
    if not pairing_speaks_v2():
        pytest.skip("zerok.client.pairing does not make version 2 invites yet")
    expires = msgspec.msgpack.decode(v["plaintext"])["expires_at"]
    opened = pairing.open_with_code(code, sealed, now_ms=expires - 1)
    assert pairing.encode_payload(opened) == v["plaintext"]


def scalar(kind: msgspec.inspect.Type, raw: bytes) -> Any:
    """A field value from its vector form (§13)."""
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
            items: list[Any] = []
            if isinstance(item, msgspec.inspect.StructType):
                while any(k.startswith(f"{name}[{len(items)}].") for k in v.values):
                    items.append(build(item.cls, v, f"{name}[{len(items)}]."))
            else:
                while v.has(f"{name}[{len(items)}]"):
                    items.append(scalar(item, v[f"{name}[{len(items)}]"]))
            if items or f.required:
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
    push = Push(
        blob_id=BlobId(v["blob_id"]),
        ciphertext=bytes(i % 256 for i in range(size)),
        epoch=v.uint("epoch"),
    )
    frame = encode(push, request_id=v.uint("request_id"))
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


def check_chunk(v: Vector) -> None:
    """§10.8 from the formula alone (HKDF by hand, pyca's AEAD), then with zerok."""
    epoch_key, gid, plaintext = v["epoch_key"], GroupId(v["group_id"]), v["plaintext"]
    content_key = v["content_key"]
    assert content_key == epochs.content_key(epoch_key)
    assert content_key == doc_hkdf(epoch_key, b"0k-sync/v2/content-key")
    digest = hashlib.sha256(plaintext).digest()
    assert v["plaintext_sha256"] == digest
    key = doc_hkdf(content_key, b"0k-sync/v2/chunk-key\x00" + digest)
    assert v["chunk_key"] == key == content.chunk_key(content_key, plaintext)
    ad = b"0k-sync/v2/chunk\x00" + bytes(gid)
    assert v["associated_data"] == ad
    sealed = b"\x01" + ChaCha20Poly1305(key).encrypt(ZERO_NONCE, plaintext, ad)
    assert v["sealed"] == sealed
    assert len(sealed) == len(plaintext) + manifests.CHUNK_OVERHEAD
    assert v["address"] == hashlib.sha256(sealed).digest()
    ref = manifests.ChunkRef(address=v["address"], key=key, size=len(plaintext))
    assert content.seal_chunk(plaintext, content_key=content_key, group_id=gid) == (sealed, ref)
    assert content.open_chunk(sealed, ref, group_id=gid) == plaintext
    raw = int.from_bytes(doc_hkdf(content_key, b"0k-sync/v2/chunk-seed")[:8], "big") >> 1
    assert v.uint("seed") == (raw or 1) == content.chunking_seed(content_key)
    # The frozen values of tests/crypto/test_content.py.
    assert (sealed, v.uint("seed")) == (content_tests.SEALED, content_tests.SEED)


def u32_list(raw: bytes) -> list[int]:
    assert len(raw) % 4 == 0
    return [int.from_bytes(raw[i : i + 4], "big") for i in range(0, len(raw), 4)]


def check_chunk_boundaries(v: Vector) -> None:
    data = hashlib.shake_128(v["input_label"]).digest(v.uint("input_length"))
    assert v["input_sha256"] == hashlib.sha256(data).digest()
    gear = b"".join(value.to_bytes(8, "big") for value in GEAR)
    assert v["gear_sha256"] == hashlib.sha256(gear).digest()
    seed = v.uint("seed")
    assert seed == vector("Chunk sealing").uint("seed")
    for name, key in (("sizes_unkeyed", 0), ("sizes_keyed", seed)):
        sizes = [len(piece) for piece in chunks(io.BytesIO(data), seed=key)]
        assert u32_list(v[name]) == sizes == chunking_tests.VECTOR_SIZES[key], name


def manifest_refs(v: Vector) -> list[manifests.ChunkRef]:
    refs: list[manifests.ChunkRef] = []
    while v.has(f"chunks[{len(refs)}].address"):
        i = len(refs)
        key, size = v[f"chunks[{i}].key"], v.uint(f"chunks[{i}].size")
        refs.append(manifests.ChunkRef(address=v[f"chunks[{i}].address"], key=key, size=size))
    return refs


def check_manifest(v: Vector) -> None:
    refs, raw = manifest_refs(v), v["manifest"]
    name, media_type = v.text("name"), v.text("media_type")
    size, epoch = v.uint("size"), v.uint("epoch")
    # §10.10's layout from the table alone: a plain map, in the table's order.
    fields = {"v": 1, "name": name, "media_type": media_type, "size": size, "epoch": epoch}
    fields["chunks"] = [[ref.address, ref.key, ref.size] for ref in refs]
    assert msgspec.msgpack.encode(fields) == raw
    manifest = manifests.Manifest(
        name=name, media_type=media_type, size=size, epoch=epoch, chunks=tuple(refs)
    )
    assert manifests.encode_manifest(manifest) == raw
    assert manifests.decode_manifest(raw) == manifest
    assert raw == manifest_tests.VECTOR_BYTES
    assert [ref for _, ref in fox_chunks()] == refs


def fox_chunks() -> list[tuple[bytes, manifests.ChunkRef]]:
    """The chunks of the manifest vector's text: the plaintext of Vector "Chunk sealing" cut
    after 20 bytes, each part sealed like it."""
    sealing = vector("Chunk sealing").values
    plaintext, key = sealing["plaintext"], sealing["content_key"]
    gid = GroupId(sealing["group_id"])
    parts = (plaintext[:20], plaintext[20:])
    return [content.seal_chunk(part, content_key=key, group_id=gid) for part in parts]


# §10.10's manifest prefix, as the text spells it.
DOC_MANIFEST_PREFIX = b"0k-sync/manifest" + b"\x00"


def check_manifest_blob(v: Vector) -> None:
    check_blob(v)
    raw = vector("Manifest").values["manifest"]
    data = v["plaintext"]
    assert data == DOC_MANIFEST_PREFIX + raw == MANIFEST_MAGIC + raw
    manifest = manifests.decode_manifest(data[len(DOC_MANIFEST_PREFIX) :])
    assert manifest_of(data) == manifest and manifest_blob_data(manifest) == data
    addresses = [ref.address for ref in manifest.chunks]
    assert [v["chunks[0]"], v["chunks[1]"]] == addresses
    push = Push(
        blob_id=BlobId(v["blob_id"]),
        ciphertext=v["sealed"],
        epoch=v.uint("epoch"),
        chunks=addresses,
    )
    request_id = v.uint("request_id")
    assert encode(push, request_id=request_id) == v["frame"]
    assert decode_frame(v["frame"]) == Frame(request_id, push)


CHECKERS: dict[str, Callable[[Vector], None]] = {
    "PADME sizes": check_padme,
    "Classic handshake": check_classic_handshake,
    "Handshake message sizes": check_sizes,
    "Device keys of the creating device": check_device_keys,
    "Device keys of the joining device": check_device_keys,
    "Recovery key": check_recovery_key,
    "X-Wing decapsulation": check_xwing,
    "Wrapped epoch key": check_wrapped_epoch_key,
    "Epoch key chain": check_epoch_chain,
    "HELLO proof of a new group": check_hello_proof,
    "HELLO proof with a ticket": check_hello_proof,
    "Blob sealing": check_blob,
    "Blob sealing with PADME padding": check_blob,
    "Repair request": check_blob,
    "Chunk sealing": check_chunk,
    "Chunk boundaries": check_chunk_boundaries,
    "Manifest": check_manifest,
    "Manifest blob": check_manifest_blob,
    "Invite payload and URL": check_invite,
    "Short code": check_short_code,
    "First transport messages": check_first_transport,
    "Fragmentation": check_fragmentation,
    "Rekey": check_rekey,
}


def checker(title: str) -> Callable[[Vector], None]:
    if title.startswith("Frame "):
        name = title.removeprefix("Frame ")
        return lambda v: check_frame(v, name)
    if title.startswith("Log entry "):
        return check_log_entry
    assert title in CHECKERS, f"no check for a vector titled {title!r}"
    return CHECKERS[title]


# -- the vectors ---------------------------------------------------------------------------


def test_vector_blocks_are_all_found() -> None:
    assert len(VECTORS) >= 40
    assert DOC.count("```vector\n") == len(VECTORS), "a vector block without its heading"
    assert [v.number for v in VECTORS] == list(range(1, len(VECTORS) + 1))
    assert len({v.title for v in VECTORS}) == len(VECTORS)
    frames = {v.title.removeprefix("Frame ") for v in VECTORS if v.title.startswith("Frame ")}
    assert frames == {t.name for t in MessageType}, "one frame vector per message type"
    kinds = {v.title.split(": ")[-1] for v in VECTORS if v.title.startswith("Log entry ")}
    assert kinds == {tag_of(kind) for kind in BODY_KINDS}, "every entry kind"
    for reference in re.findall(r"Vectors? (\d+)", DOC):
        assert 1 <= int(reference) <= len(VECTORS)


@pytest.mark.parametrize("v", VECTORS, ids=lambda v: f"{v.number}-{v.title.replace(' ', '_')}")
def test_vector(v: Vector) -> None:
    checked = Vector(v.number, v.title, dict(v.values))
    checker(v.title)(checked)
    assert not checked.unused(), f"lines not checked: {checked.unused()}"


def test_the_log_vectors_are_one_valid_log() -> None:
    """The entries of Vectors 'Log entry 0..8' pass the rules, in order, and end where
    their texts say."""
    log = GroupLog.replay(story_log(), group_id=group_id())
    creating, joining = creating_device(), joining_device()
    assert log.head_seq == 8 and log.head_hash == vector("Log entry 8: recover").values["hash"]
    assert log.epoch == 3
    assert [m.device for m in log.active()] == [creating.device_id]
    assert log.admission(joining.device_id) == "revoked"
    assert not log.open_tickets()
    assert log.recovery_sign == vector("Recovery key").values["sign_public"]


def test_vectors_tell_one_story() -> None:
    """The vectors reuse each other's values, as their texts say."""
    handshake = vector("Classic handshake").values
    joining = vector("Device keys of the joining device").values
    creating = vector("Device keys of the creating device").values
    assert joining["noise_private"] == handshake["initiator_static_private"]
    assert joining["device_id"] == handshake["initiator_static_public"]
    gid, invite = group_id(), vector("Invite payload and URL").values
    assert (invite["group"], invite["inviter"]) == (gid, creating["device_id"])
    invite_entry = decode_body(vector("Log entry 1: invite").values["body"])
    assert isinstance(invite_entry, Invite)
    assert (invite["ticket_public"], invite["expires_at"]) == (
        invite_entry.ticket,
        invite_entry.expires_at.to_bytes(8, "big"),
    )
    assert invite["key"] == vector("Log entry 0: genesis").values["epoch_key"]
    ticket_proof = vector("HELLO proof with a ticket").values
    assert ticket_proof["handshake_hash"] == handshake["handshake_hash"]
    assert (ticket_proof["group_id"], ticket_proof["ticket_seed"]) == (gid, invite["ticket"])
    assert vector("HELLO proof of a new group").values["group_id"] == gid
    hello, welcome = vector("Frame HELLO").values, vector("Frame WELCOME").values
    for name in ("group_id", "proof", "signer", "device_name", "client"):
        assert hello[name] == ticket_proof[name], name
    assert welcome["relay_id"] == handshake["responder_static_public"]
    assert welcome["log_hash"] == vector("Log entry 1: invite").values["hash"]
    for title in ("Blob sealing", "Blob sealing with PADME padding", "Repair request"):
        blob = vector(title).values
        assert (blob["group_id"], blob["sender"]) == (gid, joining["device_id"])
        assert blob["epoch_key"] == vector("Log entry 6: rotate").values["epoch_key"]
    first, second = vector("Blob sealing").values, vector("Blob sealing with PADME padding").values
    repair = vector("Repair request").values
    assert (first["link"], second["link"], repair["link"]) == (
        bytes(32),
        first["chain_hash"],
        second["chain_hash"],
    )
    assert decode_repair(repair["plaintext"])[0] == DeviceId(creating["device_id"])
    push = vector("Frame PUSH").values
    assert (push["ciphertext"], push["epoch"][-1:]) == (first["sealed"], b"\x01")
    enroll = vector("Log entry 2: enroll").values
    assert vector("Frame LOG_APPEND").values["entries[0]"] == enroll["entry"]
    assert vector("Frame LOG_APPENDED").values["head_hash"] == enroll["hash"]
    assert vector("Frame MEMBERSHIP").values["entries[0]"] == enroll["entry"]
    log_page = vector("Frame LOG").values
    assert log_page["entries[0]"] == vector("Log entry 4: invite").values["entry"]
    assert log_page["entries[1]"] == vector("Log entry 5: cancel").values["entry"]
    transport = vector("First transport messages").values
    assert (transport["k1"], transport["k2"]) == (handshake["k1"], handshake["k2"])
    assert transport["client_plaintext"] == b"\x00" + hello["frame"]
    assert transport["relay_plaintext"] == b"\x00" + welcome["frame"]
    assert vector("Fragmentation").values["key"] == handshake["k1"]
    rekey = vector("Rekey").values
    assert rekey["plaintext"] == b"\x00" + vector("Frame PRESENCE").values["frame"]


def test_the_chunk_vectors_tell_one_story() -> None:
    """Vectors "Chunk sealing" to "Manifest blob" and the chunk frames: one file, uploaded
    by the joining device and downloaded by the creating device, as their texts say."""
    sealing, blob = vector("Chunk sealing").values, vector("Manifest blob").values
    assert sealing["plaintext"] == vector("Blob sealing").values["plaintext"]
    assert sealing["epoch_key"] == vector("Log entry 6: rotate").values["epoch_key"]
    assert sealing["group_id"] == group_id() == blob["group_id"]
    assert blob["link"] == vector("Repair request").values["chain_hash"]
    assert blob["sender"] == vector("Device keys of the joining device").values["device_id"]
    (first, first_ref), (second, second_ref) = fox_chunks()
    a1, a2 = first_ref.address, second_ref.address
    assert [blob["chunks[0]"], blob["chunks[1]"]] == [a1, a2]
    partial = ChunkInfo(address=a2, size=len(second), received=16)
    expected = {
        "CHUNK_HAVE": Frame(11, ChunkHave(addresses=[a1, a2])),
        "CHUNK_STATUS": Frame(
            11,
            ChunkStatus(
                chunks=[
                    ChunkInfo(address=a1, size=len(first), received=len(first), complete=True),
                    partial,
                ]
            ),
        ),
        "CHUNK_BEGIN": Frame(12, ChunkBegin(address=a2, size=len(second))),
        "CHUNK_PUT": Frame(13, ChunkPut(address=a2, offset=partial.received, data=second[16:])),
        "CHUNK_GET": Frame(14, ChunkGet(address=a1, length=len(first))),
        "CHUNK_DATA": Frame(14, ChunkData(address=a1, offset=0, data=first)),
    }
    for name, frame in expected.items():
        assert decode_frame(vector(f"Frame {name}").values["frame"]) == frame, name
    assert len(first) <= wire_messages.MAX_CHUNK_PIECE  # one CHUNK_GET reads it whole


def test_references_name_the_right_vectors() -> None:
    """Where the text points at a vector by number, it is the vector it means."""
    references = {
        "The PUSH_ACK of Vector {}": "Frame PUSH_ACK",
        "the group id of\nVector {} is": "Log entry 0: genesis",
        "is two (Vector {})": "Fragmentation",
        "and so on (Vector {})": "Rekey",
        "Vector {} lists sample sizes": "PADME sizes",
        "(Vector {} below)": "Classic handshake",
        "Vector {} is the draft's first test vector": "X-Wing decapsulation",
        "Vector {} is a repair request": "Repair request",
        "The plaintext of Vector {} sealed as one chunk": "Blob sealing",
        "Vector {} gives the chunk sizes": "Chunk boundaries",
        "into two chunks, each sealed as in Vector {}": "Chunk sealing",
        "The joining device's fourth blob, after Vector {}": "Repair request",
        "the manifest of Vector {} as its data": "Manifest",
        "uploads the chunks of Vector {}": "Manifest",
        "before it pushes Vector {}": "Manifest blob",
        "body, Vector {} with request id 2": "Frame PRESENCE",
        "scan from paper. It is read back like the words. Vector {}": "Recovery key",
    }
    for phrase, title in references.items():
        assert in_doc(phrase.format(number_of(title))), phrase
    devices = (
        number_of("Device keys of the creating device"),
        number_of("Device keys of the joining device"),
    )
    assert in_doc("Vectors {} and {} are worked examples".format(*devices))
    first, last = number_of("Log entry 0: genesis"), number_of("Log entry 8: recover")
    assert in_doc(f"Vectors {first}–{last} are one group's log")
    proofs = number_of("HELLO proof of a new group"), number_of("HELLO proof with a ticket")
    assert in_doc("Vectors {} and {} are worked\nexamples".format(*proofs))
    manifest, blob = number_of("Manifest"), number_of("Manifest blob")
    assert in_doc(f"Vector {manifest} is a manifest; Vector {blob} seals it")
    for title, sentence in (
        ("Wrapped epoch key", "Vector {} is a worked example."),
        ("Chunk sealing", "Vector {} is a worked example."),
        ("Epoch key chain", "Vector {} is\na worked example."),
        ("Invite payload and URL", "Vector {} is an\nexample."),
        ("Short code", "Vector {} is an example."),
    ):
        assert in_doc(sentence.format(number_of(title))), title


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


def render_bytes(kind: msgspec.inspect.BytesType) -> str:
    if kind.min_length == kind.max_length:
        return f"exactly {kind.max_length} bytes"
    if kind.min_length:
        return f"{kind.min_length}..{kind.max_length} bytes"
    return f"<= {kind.max_length} bytes"


def render_count(kind: msgspec.inspect.ListType | msgspec.inspect.VarTupleType) -> str:
    if kind.min_length:
        return f"{kind.min_length}..{kind.max_length} items"
    return f"<= {kind.max_length} items"


def expected_type(kind: msgspec.inspect.Type) -> tuple[str, str]:
    """The Type and Bounds cells that the document must show for a field of this kind."""
    inspect = msgspec.inspect
    if isinstance(kind, inspect.IntType):
        if kind.ge is None and kind.le is None:
            return "int", "-"
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
        return "bin", render_bytes(kind)
    if isinstance(kind, inspect.CustomType):
        assert issubclass(kind.cls, FixedId)
        return "bin", f"exactly {kind.cls.SIZE} bytes ({kind.cls.__name__})"
    if isinstance(kind, inspect.ListType | inspect.VarTupleType):  # tuples: the manifest's
        item = kind.item_type
        if isinstance(item, inspect.StructType):
            return "array", f"{render_count(kind)} of {item.cls.__name__}"
        assert isinstance(item, inspect.BytesType)
        return "array", f"{render_count(kind)} of bin {render_bytes(item)}"
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
    if f.default_factory is list or f.default in (b"", ()):
        return "empty"
    return str(f.default)


def fields_of(cls: type[msgspec.Struct]) -> list[msgspec.inspect.Field]:
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    return list(info.fields)


def tag_of(cls: type[Body]) -> str:
    """The ``kind`` value of a log entry body."""
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType) and isinstance(info.tag, str)
    return info.tag


def check_field_table(
    cls: type[msgspec.Struct], text: str, fields: list[msgspec.inspect.Field] | None = None
) -> None:
    fields = fields_of(cls) if fields is None else fields
    rows = {m.group(1): m.groups()[1:] for m in _FIELD_ROW.finditer(text)}
    assert list(rows) == [f.name for f in fields], f"fields of {cls.__name__}"
    for f in fields:
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


@pytest.mark.parametrize("cls", [SignedEntry, Body, Member, Wrap], ids=lambda c: c.__name__)
def test_log_map_documented(cls: type[msgspec.Struct]) -> None:
    check_field_table(cls, section(re.compile(rf"^#### {cls.__name__}$", re.MULTILINE)))


@pytest.mark.parametrize("cls", BODY_KINDS, ids=lambda c: c.__name__)
def test_log_entry_kind_documented(cls: type[Body]) -> None:
    common = {f.name for f in fields_of(Body)}
    own = [f for f in fields_of(cls) if f.name not in common]
    check_field_table(cls, section(re.compile(rf"^#### `{tag_of(cls)}`$", re.MULTILINE)), own)
    assert f"`{tag_of(cls)}`" in section(re.compile(r"^#### Body$", re.MULTILINE))


def test_error_codes_documented() -> None:
    text = section(re.compile(r"^## 12\. Error codes$", re.MULTILINE))
    rows = re.findall(r"^\| (\d+) \| (\w+) \| (yes|no) \|", text, re.MULTILINE)
    documented = {int(code): (name, fatal == "yes") for code, name, fatal in rows}
    assert documented == {int(c): (c.name, c.fatal) for c in ErrorCode}


def test_manifest_documented() -> None:
    text = section(re.compile(r"^### 10\.10 Manifests$", re.MULTILINE))
    check_field_table(manifests.Manifest, text.split("\n#### ", 1)[0])
    ref = section(re.compile(r"^#### ChunkRef$", re.MULTILINE))
    check_field_table(manifests.ChunkRef, ref)
    assert manifests.ChunkRef.__struct_config__.array_like, "the text says: an array"
    assert f"`{manifests.DEFAULT_MEDIA_TYPE}`" not in text  # the default is shown as a str
    assert f'`"{manifests.DEFAULT_MEDIA_TYPE}"`' in text


def test_manifest_prefix_documented() -> None:
    """§10.10 spells the client's prefix, in text and hex, and its sizes in Vector 27 add up."""
    text = section(re.compile(r"^### 10\.10 Manifests$", re.MULTILINE))
    assert MANIFEST_MAGIC == DOC_MANIFEST_PREFIX and len(MANIFEST_MAGIC) == 17
    assert f'"{MANIFEST_MAGIC[:-1].decode("ascii")}" ‖ 0x00' in text
    assert f"(hex {MANIFEST_MAGIC.hex()})" in text
    assert in_doc(f"**manifest prefix**, the {len(MANIFEST_MAGIC)} bytes")
    data = vector("Manifest blob").values["plaintext"]
    manifest_len = len(data) - len(MANIFEST_MAGIC)
    unpadded = 41 + len(data) + 1
    assert in_doc(
        f"after the {len(MANIFEST_MAGIC)}-byte prefix of §10.10 ({len(MANIFEST_MAGIC)} + "
        f"{manifest_len} = {len(data)} bytes), with padding (41 + {len(data)} + 1 = "
        f"{unpadded} bytes, padme({unpadded}) = {doc_padme(unpadded)})"
    )
    sealed = vector("Manifest blob").values["sealed"]
    assert in_doc(f"h'{sealed[:4].hex()}…{sealed[-2:].hex()}' ({len(sealed)} bytes)")


@pytest.mark.parametrize(
    "data",
    [b"", b"app data", DOC_MANIFEST_PREFIX[:-1], b"\x00" + DOC_MANIFEST_PREFIX],
    ids=["empty", "app", "prefix-without-zero", "prefix-not-first"],
)
def test_data_without_the_prefix_is_the_apps(data: bytes) -> None:
    """§10.10: data not starting with the 17 bytes is the application's own."""
    raw = vector("Manifest").values["manifest"]
    assert manifest_of(data) is None
    assert manifest_of(data + raw) is None


# What may follow the prefix instead of one valid manifest, made from Vector 26's.
NOT_A_MANIFEST: dict[str, Callable[[bytes], bytes]] = {
    "nothing": lambda raw: b"",
    "empty-map": lambda raw: b"\x80",
    "garbage": lambda raw: b"not msgpack",
    "truncated": lambda raw: raw[:-1],
    "bytes-after-it": lambda raw: raw + b"\x00",
    "two-manifests": lambda raw: raw + raw,
}


@pytest.mark.parametrize("case", NOT_A_MANIFEST)
def test_data_with_the_prefix_must_be_a_manifest(case: str) -> None:
    """§10.10: after the prefix, one manifest and nothing else, or an error."""
    raw = vector("Manifest").values["manifest"]
    with pytest.raises(WireError):
        manifest_of(DOC_MANIFEST_PREFIX + NOT_A_MANIFEST[case](raw))


def doc_cut(buf: bytes, p: dict[str, int]) -> int:
    """The length of the chunk at the start of ``buf``, by §10.9's pseudo-code alone."""
    mask64, n = 2**64 - 1, len(buf)
    gear = [g ^ p["seed"] for g in GEAR]
    gear_ls = [((g << 1) & mask64) ^ ((p["seed"] << 1) & mask64) for g in GEAR]
    mask_s, mask_l = p["mask_s"], p["mask_l"]
    mask_s_ls, mask_l_ls = (mask_s << 1) & mask64, (mask_l << 1) & mask64
    if n <= p["min"]:
        return n
    center, end = p["avg"], n
    if n > p["max"]:
        end = p["max"]
    elif n < p["avg"]:
        center = n
    h = 0
    loops = ((p["min"] // 2 * 2, center // 2 * 2, mask_s_ls, mask_s),
             (center // 2 * 2, end // 2 * 2, mask_l_ls, mask_l))  # fmt: skip
    for first, stop, mask_ls, mask in loops:
        for i in range(first, stop, 2):
            h = ((h << 2) + gear_ls[buf[i]]) & mask64
            if h & mask_ls == 0:
                return i
            h = (h + gear[buf[i + 1]]) & mask64
            if h & mask == 0:
                return i + 1
    return end


def test_the_chunking_pseudo_code_is_fastcdcs() -> None:
    """§10.9's cut, run by hand on small parameters (the real ones need megabytes), cuts
    where pyfastcdc does; its masks and keyed gear table are pyfastcdc's for zerok's."""
    seed = vector("Chunk sealing").uint("seed")
    small = {"min": 64, "avg": 256, "max": 1024, "seed": seed}
    reference = ReferenceFastCDC(256, min_size=64, max_size=1024, normalized_chunking=1, seed=seed)
    small |= {"mask_s": reference.config.mask_s, "mask_l": reference.config.mask_l}
    data = hashlib.shake_256(b"doc cut").digest(20_000) + bytes(3000) + b"\x01" * 700
    sizes, rest = [], data
    while rest:
        sizes.append(doc_cut(rest, small))
        rest = rest[sizes[-1] :]
    cdc = FastCDC(256, min_size=64, max_size=1024, normalized_chunking=1, seed=seed)
    assert sizes == [chunk.length for chunk in cdc.cut_buf(data)]
    assert 1024 in sizes and len(set(sizes)) > 20  # both loops and the maximum were reached
    real = ReferenceFastCDC(
        AVG_CHUNK,
        min_size=MIN_CHUNK,
        max_size=manifests.MAX_CHUNK,
        normalized_chunking=NORMALIZED_CHUNKING,
        seed=seed,
    ).config
    masks = f"`mask_s` = `0x{real.mask_s:016x}`, `mask_l` = `0x{real.mask_l:016x}`"
    assert in_doc(masks)
    mask64 = 2**64 - 1
    assert list(real.gear) == [g ^ seed for g in GEAR]
    assert list(real.gear_ls) == [((g << 1) & mask64) ^ ((seed << 1) & mask64) for g in GEAR]


def test_names_appear_verbatim() -> None:
    labels = (
        LABEL_DEVICE_SIGN,
        LABEL_DEVICE_WRAP,
        LABEL_RECOVERY_SIGN,
        LABEL_RECOVERY_WRAP,
        epochs.LABEL_BLOB_KEY,
        epochs.LABEL_CONTENT_KEY,
        epochs.LABEL_EPOCH_WRAP,
        epochs.LABEL_PREV_KEY,
        content.LABEL_CHUNK_SEED,
    )
    for label in labels:
        assert f"`{label.decode('ascii')}`" in DOC, label
    contexts = {
        PROOF_CONTEXT: '"0k-sync/v2/hello-proof" ‖ 0x00',
        HASH_CONTEXT: 'SHA-256("0k-sync/v2/entry" ‖ 0x00 ‖ body)',
        SIG_CONTEXT: '"0k-sync/v2/entry-sig" ‖ 0x00 ‖ body',
        TICKET_CONTEXT: '"0k-sync/v2/ticket-sig" ‖ 0x00 ‖ body',
        epochs.AD_EPOCH_KEY: '"0k-sync/v2/epoch-key" ‖ 0x00 ‖ u32be(epoch)',
        epochs.AD_PREV_KEY: '"0k-sync/v2/prev-key" ‖ 0x00 ‖ u32be(new epoch)',
        content.LABEL_CHUNK_KEY: 'HKDF(content key, "0k-sync/v2/chunk-key" ‖ 0x00 ‖ h)',
        content.AD_CHUNK: 'AD = "0k-sync/v2/chunk" ‖ 0x00 ‖ group_id (32)',
    }
    for context, text in contexts.items():
        assert context.endswith(b"\x00") and f'"{context[:-1].decode()}" ‖ 0x00' in text
        assert in_doc(text), text
    assert f"XWingLabel  = {XWING_LABEL.hex()}" in DOC
    assert f"`{QR_PREFIX}`" in DOC
    for variant in VARIANTS:
        assert f"`{variant.subprotocol}`" in DOC
        assert f"`{variant.noise_protocol}`" in DOC
    assert VARIANTS[0] is HYBRID, "the hybrid variant is the preferred one"
    offer = ", ".join(v.subprotocol for v in VARIANTS)
    assert f"Sec-WebSocket-Protocol: {offer}" in DOC
    assert f"`{pairing.ALPHABET}`" in DOC
    assert f"The **URL** is `{pairing.URL_PREFIX}` followed by" in DOC


def test_constants_match() -> None:
    keep, chains, relay = KeepPolicy(), SenderChains(), RelayConfig()
    biggest_ref = manifests.ChunkRef(address=bytes(32), key=bytes(32), size=manifests.MAX_CHUNK)
    kdf = pairing.CODE_KDF
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
        f"[version = {PROTOCOL_VERSION}, type, request_id, body]",
        f"<= 16 MiB = {wire_messages.MAX_BLOB_BYTES} bytes",
        f"| PullLimit | int | 1..{wire_messages.MAX_PULL_LIMIT} |",
        f"| LogLimit | int | 1..{wire_messages.MAX_LOG_PAGE} |",
        f"| device list | array | <= {wire_messages.MAX_DEVICES} items |",
        f"| Name | str | <= {wire_messages.MAX_NAME_CHARS} chars |",
        f"| Text | str | <= {wire_messages.MAX_TEXT_CHARS} chars |",
        f"| push token | str | 1..{wire_messages.MAX_TOKEN_CHARS} chars |",
        f"| LogEntry | bin | <= {MAX_ENTRY_BYTES + 256} bytes |",
        f"HELLO <= {wire_messages.MAX_HELLO_ENTRIES}, LOG <= {wire_messages.MAX_LOG_PAGE}, "
        f"LOG_APPEND 1..{wire_messages.MAX_APPEND_ENTRIES}, "
        f"MEMBERSHIP <= {wire_messages.MAX_APPEND_ENTRIES} items",
        f"a body is at most {MAX_ENTRY_BYTES} bytes",
        f"a signed entry at most {MAX_ENTRY_BYTES + 256}",
        f"at most\n{MAX_MEMBERS} devices",
        f"log at most {MAX_LOG_ENTRIES} entries",
        f"At most {MAX_MEMBERS} devices in a group",
        f"and {MAX_LOG_ENTRIES}\nentries in a log",
        f"{V2_OVERHEAD} bytes more than the data",
        f"shorter than {V2_OVERHEAD} bytes",
        f"| 1..{MAX_REPAIR_RANGES} items, each an array of 2 ints |",
        f"{keep.max_age_ms // 86_400_000} days, at most {keep.max_count} blobs and "
        f"{keep.max_bytes // 2**20} MiB",
        f"with at most {chains.max_ranges_per_sender}\ngaps per sender",
        f"{chains.recent_per_sender} recent chain hashes per sender and\n"
        f"{chains.max_senders} senders",
        f"t = {kdf['iterations']},\n                     m = {kdf['memory_kib']} KiB (64 MiB), "
        f"p = {kdf['parallelism']}",
        f"{pairing.CODE_CHARS} characters of the Crockford base32 alphabet",
        f"The first {pairing.LOOKUP_CHARS} canonical characters are the **lookup**",
        f"(`max_log_entries`, {relay.max_log_entries} entries, and `max_log_bytes`, "
        f"{relay.max_log_bytes // 2**20} MiB, by default; ERROR 1005 beyond)",
        f"*zerok:* {relay.invite_ttl / 60:g} minutes by default",
        f"*zerok:* over {relay.invite_max_size // 1024} KiB decoded",
        f"*zerok:* {relay.invites_per_minute} requests a minute",
        f"| ChunkSize | int | 1..{manifests.MAX_SEALED_CHUNK} |",
        f"| ChunkOffset | int | 0..{manifests.MAX_SEALED_CHUNK} |",
        f"<= 512 KiB = {wire_messages.MAX_CHUNK_PIECE} bytes",
        f"CHUNK_GET `length` is 1..{wire_messages.MAX_CHUNK_PIECE}",
        f"PUSH `chunks` <= {manifests.MAX_CHUNKS}, "
        f"CHUNK_HAVE 1..{wire_messages.MAX_CHUNK_QUERY} items",
        f"| chunk list | array | <= {wire_messages.MAX_CHUNK_QUERY} items |",
        f"plaintext: 1..{manifests.MAX_CHUNK} bytes (4 MiB)",
        f"A sealed chunk is {content.CHUNK_OVERHEAD} bytes longer than its plaintext: at most "
        f"{manifests.MAX_SEALED_CHUNK} bytes",
        f"`0x{content.CHUNK_FORMAT:02x}` is the chunk format",
        f"| minimum size `min` | {MIN_CHUNK} bytes (256 KiB) |",
        f"| average size `avg` | {AVG_CHUNK} bytes (1 MiB) |",
        f"| maximum size `max` | {manifests.MAX_CHUNK} bytes (4 MiB) |",
        f"| normalized chunking | level {NORMALIZED_CHUNKING}:",
        f"more than {manifests.MAX_MANIFEST_BYTES} bytes in all",
        f"A manifest takes at most {len(msgspec.msgpack.encode(biggest_ref))} bytes a chunk "
        f"(and its PUSH {len(msgspec.msgpack.encode(biggest_ref.address))} more",
        f"no CHUNK_BEGIN for it in the last {CHUNK_IDLE_MS // 3_600_000} hours",
    ]
    for text in expected:
        assert in_doc(text), text


def test_id_display_example() -> None:
    gid = GroupId(group_id())
    assert in_doc(f"Vector {number_of('Log entry 0: genesis')} is `{gid.b32}`")
    assert f"(`{gid.short()}`)" in DOC
    assert f"(`{gid.b64}` for the same id)" in DOC
    assert GroupId.parse(gid.b64) == GroupId.parse(gid.b32) == gid


def test_invite_payload_table_is_the_clients() -> None:
    """§11.1 lists the fields of zerok.client.pairing.InvitePayload, in its order."""
    text = section(re.compile(r"^### 11\.1 The invite payload and URL$", re.MULTILINE))
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \|", text, re.MULTILINE)
    fields = fields_of(pairing.InvitePayload)
    assert [name for name, _ in rows] == [f.name for f in fields]
    relays = next(f.type for f in fields if f.name == "relays")
    assert isinstance(relays, msgspec.inspect.ListType)
    assert isinstance(relays.item_type, msgspec.inspect.StrType)
    cell = f"array of str, 1..{relays.max_length} items of <= {relays.item_type.max_length} chars"
    assert dict(rows)["relays"].strip() == cell
    assert f"| `v` | int | `{pairing.INVITE_VERSION}`, the invite format. |" in text


def test_annotated_frame_is_the_push_ack_vector() -> None:
    text = section(re.compile(r"^### 5\.6 An annotated frame$", re.MULTILINE))
    cells = re.findall(r"^\| `([0-9a-f]+)` \|", text, re.MULTILINE)
    assert bytes.fromhex("".join(cells)) == vector("Frame PUSH_ACK").values["frame"]


# -- statements of the document about the handshake, the proof and other versions -----------


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


def test_small_order_signer_is_refused() -> None:
    """§7.2: an identity-point signing key with a trivial "signature" does not verify."""
    proof = vector("HELLO proof with a ticket").values
    device, handshake_hash = DeviceId(proof["device_id"]), proof["handshake_hash"]
    ticket = TicketKey(proof["ticket_seed"])
    hello = make_hello(
        joining_device(),
        handshake_hash,
        GroupId(proof["group_id"]),
        signer=(ticket.public, ticket.sign),
    )
    identity_point = b"\x01" + bytes(31)
    forged = msgspec.structs.replace(hello, signer=identity_point, proof=b"\x01" + bytes(63))
    with pytest.raises(InvalidProofError):
        verify_hello(forged, handshake_hash, device, identity_point)
    verify_hello(hello, handshake_hash, device, ticket.public)


def test_a_version_1_frame_gets_error_1000_naming_its_version() -> None:
    """§2.1: after the handshake, a frame of version 1 is refused with ERROR 1000 naming it."""
    handshake = vector("Classic handshake").values
    static = x25519.X25519PrivateKey.from_private_bytes(handshake["responder_static_private"])
    relay = RelaySession(static, now=0.0, variant=CLASSIC, offered=list(SUBPROTOCOLS))
    client = HandshakeState(
        CLASSIC.noise_protocol,
        initiator=True,
        prologue=prologue(SUBPROTOCOLS, CLASSIC),
        static=x25519.X25519PrivateKey.generate(),
    )
    relay.receive(client.write_message(b""), 0.0)
    (second,) = relay.data_to_send()
    client.read_message(second)
    relay.receive(client.write_message(b""), 0.0)
    channel = NoiseTransport(client.result)
    v1_frame = msgspec.msgpack.encode([1, int(MessageType.PRESENCE), 0, {}])
    for message in channel.encrypt_frame(v1_frame):
        relay.receive(message, 0.0)
    assert relay.closed and relay.close_code == ErrorCode.INVALID_MESSAGE
    (answer,) = relay.data_to_send()
    frame = channel.decrypt_message(answer)
    assert frame is not None
    error = decode_frame(frame).message
    assert isinstance(error, Error) and error.code == ErrorCode.INVALID_MESSAGE
    assert "version 1" in error.message and f"speaks {PROTOCOL_VERSION}" in error.message
    assert in_doc(f"`{error.message}`")


def test_version_1_subprotocols_get_http_400_naming_the_versions() -> None:
    """§2.1: the relay's refusal text, as the document quotes it."""
    text = relay_server._unsupported(["0k-sync.v1.hfs", "0k-sync.v1.xx"]).strip()
    assert "version 2" in text and "v1" in text
    assert in_doc(f"`{text}`")


def test_presence_frame_is_the_heartbeat_of_the_text() -> None:
    frame = vector("Frame PRESENCE").values["frame"]
    assert decode_frame(frame) == Frame(0, Presence())
