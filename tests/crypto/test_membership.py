"""HELLO proofs (protocol 2): an Ed25519 signature, by a key the group's log knows, over a
transcript bound to the Noise session, the device, the group and every HELLO field.

The relay's session no longer checks proofs (it cannot: the key is in the group's log);
the relay's service calls ``verify_hello`` with the key it found. So everything a proof
must not survive (another connection, device, group or key, any field changed after
signing) is checked here, directly on ``verify_hello``.
"""

from __future__ import annotations

import hashlib
import struct

import msgspec
import nacl.bindings
import nacl.signing
import pytest

from zerok.crypto.entry import Signer, TicketKey
from zerok.crypto.identity import DeviceIdentity
from zerok.crypto.membership import (
    PROOF_CONTEXT,
    entries_digest,
    make_hello,
    proof_transcript,
    verify_hello,
)
from zerok.crypto.recovery import RecoveryKey
from zerok.errors import CryptoError, InvalidProofError
from zerok.wire import codec
from zerok.wire.ids import DeviceId, GroupId
from zerok.wire.messages import Hello

IDENTITY = DeviceIdentity.from_private_bytes(bytes(range(32)))
OTHER = DeviceIdentity.from_private_bytes(bytes(range(1, 33)))
DEVICE = IDENTITY.device_id
SIGN = IDENTITY.sign_public
GROUP = GroupId(bytes(range(64, 96)))
OTHER_GROUP = GroupId(bytes(range(96, 128)))
HH = hashlib.blake2s(b"handshake hash").digest()
ENTRIES = [b"the genesis entry", b"an invite", b"this device's enrollment"]
TICKET = TicketKey(bytes(range(128, 160)))
RECOVERY = RecoveryKey(bytes(range(160, 192)))


def _hello(**kwargs: object) -> Hello:
    params: dict[str, object] = {
        "device_name": "Laptop ✓",
        "last_cursor": 1234567,
        "client": "zerok-tests/1.0",
        "entries": ENTRIES,
    }
    params.update(kwargs)
    return make_hello(IDENTITY, HH, GROUP, **params)  # type: ignore[arg-type]


def _flip(data: bytes, position: int) -> bytes:
    buf = bytearray(data)
    buf[position] ^= 0x01
    return bytes(buf)


def test_invalid_proof_error_is_a_crypto_error() -> None:
    assert issubclass(InvalidProofError, CryptoError)


def test_valid_proof_verifies() -> None:
    hello = _hello()
    assert hello.group_id == GROUP
    assert hello.signer == b""  # the device's own key: the relay looks it up in the log
    assert hello.entries == ENTRIES
    assert len(hello.proof) == 64
    assert (hello.device_name, hello.last_cursor, hello.client) == (
        "Laptop ✓",
        1234567,
        "zerok-tests/1.0",
    )
    verify_hello(hello, HH, DEVICE, SIGN)


def test_defaults_verify() -> None:
    hello = make_hello(IDENTITY, HH, GROUP)
    assert (hello.device_name, hello.last_cursor, hello.client) == ("", 0, "")
    assert (hello.signer, hello.entries) == (b"", [])
    verify_hello(hello, HH, DEVICE, SIGN)


def test_proof_is_an_ed25519_signature_over_the_transcript() -> None:
    hello = _hello()
    transcript = proof_transcript(
        HH,
        DEVICE,
        SIGN,
        group_id=GROUP,
        last_cursor=1234567,
        device_name="Laptop ✓",
        client="zerok-tests/1.0",
        entries=ENTRIES,
    )
    # Verified by libsodium, independently of the code under test.
    nacl.signing.VerifyKey(SIGN).verify(transcript, hello.proof)
    # Ed25519 is deterministic.
    assert _hello().proof == hello.proof


def test_proof_survives_the_wire() -> None:
    hello = _hello()
    decoded = codec.decode(codec.encode(hello))
    assert isinstance(decoded, Hello)
    assert decoded == hello
    verify_hello(decoded, HH, DEVICE, SIGN)


def test_other_handshake_hash() -> None:
    hello = _hello()
    for position in (0, 15, 31):
        with pytest.raises(InvalidProofError):
            verify_hello(hello, _flip(HH, position), DEVICE, SIGN)
    with pytest.raises(InvalidProofError):
        verify_hello(hello, bytes(32), DEVICE, SIGN)


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_handshake_hash_of_wrong_length(size: int) -> None:
    hello = _hello()
    with pytest.raises(InvalidProofError):
        verify_hello(hello, bytes(size), DEVICE, SIGN)
    with pytest.raises(InvalidProofError):
        make_hello(IDENTITY, bytes(size), GROUP)


def test_other_device_id() -> None:
    """The device that ran the handshake is bound: a proof another device made (with its own
    key) cannot be presented on our connection, nor ours on its."""
    hello = _hello()
    with pytest.raises(InvalidProofError):
        verify_hello(hello, HH, DeviceId(_flip(DEVICE, 31)), SIGN)
    with pytest.raises(InvalidProofError):
        verify_hello(hello, HH, DeviceId(bytes(32)), SIGN)
    with pytest.raises(InvalidProofError):
        verify_hello(hello, HH, OTHER.device_id, SIGN)


def test_other_key() -> None:
    """The relay verifies with the key the group's log has for the device (or the ticket or
    recovery key HELLO names): a proof by any other key fails."""
    hello = _hello()
    for key in (OTHER.sign_public, TICKET.public, RECOVERY.sign_public, _flip(SIGN, 0)):
        with pytest.raises(InvalidProofError):
            verify_hello(hello, HH, DEVICE, key)


def test_other_devices_hello_verifies_only_as_that_device() -> None:
    hello = make_hello(OTHER, HH, GROUP)
    verify_hello(hello, HH, OTHER.device_id, OTHER.sign_public)
    with pytest.raises(InvalidProofError):
        verify_hello(hello, HH, DEVICE, OTHER.sign_public)
    with pytest.raises(InvalidProofError):
        verify_hello(hello, HH, OTHER.device_id, SIGN)


FIELD_CHANGES: dict[str, dict[str, object]] = {
    "group_id": {"group_id": GroupId(_flip(GROUP, 0))},
    "group_id-other-group": {"group_id": OTHER_GROUP},
    "last_cursor+1": {"last_cursor": 1234568},
    "last_cursor-0": {"last_cursor": 0},
    "device_name": {"device_name": "Laptop ✗"},
    "device_name-empty": {"device_name": ""},
    "client": {"client": "zerok-tests/1.1"},
    "client-empty": {"client": ""},
    "entries-none": {"entries": []},
    "entries-one-dropped": {"entries": ENTRIES[:-1]},
    "entries-one-added": {"entries": [*ENTRIES, b"a revoke"]},
    "entries-reordered": {"entries": [ENTRIES[1], ENTRIES[0], ENTRIES[2]]},
    "entries-byte-flipped": {"entries": [ENTRIES[0], _flip(ENTRIES[1], 3), ENTRIES[2]]},
    "entries-one-replaced": {"entries": [ENTRIES[0], ENTRIES[1], b"another enrollment"]},
}


@pytest.mark.parametrize("changes", list(FIELD_CHANGES.values()), ids=list(FIELD_CHANGES))
def test_changed_field_is_rejected(changes: dict[str, object]) -> None:
    hello = msgspec.structs.replace(_hello(), **changes)
    with pytest.raises(InvalidProofError):
        verify_hello(hello, HH, DEVICE, SIGN)


@pytest.mark.parametrize("position", [0, 1, 31, 32, 33, 62, 63])
def test_flipped_proof_byte_is_rejected(position: int) -> None:
    hello = _hello()
    bad = msgspec.structs.replace(hello, proof=_flip(hello.proof, position))
    with pytest.raises(InvalidProofError):
        verify_hello(bad, HH, DEVICE, SIGN)


@pytest.mark.parametrize("size", [0, 63, 65])
def test_proof_of_wrong_length_is_rejected(size: int) -> None:
    hello = _hello()
    proof = (hello.proof * 2)[:size]
    with pytest.raises(InvalidProofError):
        verify_hello(msgspec.structs.replace(hello, proof=proof), HH, DEVICE, SIGN)


def test_name_and_client_cannot_trade_bytes() -> None:
    """Length prefixes keep ("ab", "c") and ("a", "bc") apart."""
    hello = _hello(device_name="ab", client="c")
    swapped = msgspec.structs.replace(hello, device_name="a", client="bc")
    with pytest.raises(InvalidProofError):
        verify_hello(swapped, HH, DEVICE, SIGN)


@pytest.mark.parametrize(
    ("signed", "presented"),
    [
        ([b"ab", b"c"], [b"a", b"bc"]),
        ([b"abc"], [b"ab", b"c"]),
        ([b""], []),
        ([b"", b""], [b""]),
    ],
    ids=["shifted", "split", "one-empty-vs-none", "two-empty-vs-one"],
)
def test_entries_cannot_trade_bytes(signed: list[bytes], presented: list[bytes]) -> None:
    """The entries digest counts the entries and prefixes each with its length."""
    hello = _hello(entries=signed)
    verify_hello(hello, HH, DEVICE, SIGN)
    with pytest.raises(InvalidProofError):
        verify_hello(msgspec.structs.replace(hello, entries=presented), HH, DEVICE, SIGN)
    assert entries_digest(signed) != entries_digest(presented)


def test_replay_on_another_connection_fails() -> None:
    hello = _hello()
    other_connection = hashlib.blake2s(b"another session").digest()
    with pytest.raises(InvalidProofError):
        verify_hello(hello, other_connection, DEVICE, SIGN)


# -- proofs by a ticket or the recovery key ---------------------------------------------------


@pytest.mark.parametrize(
    ("public", "sign"),
    [(TICKET.public, TICKET.sign), (RECOVERY.sign_public, RECOVERY.sign)],
    ids=["ticket", "recovery"],
)
def test_proof_by_another_signer(public: bytes, sign: Signer) -> None:
    """A device enrolling with an invite (or recovering) signs with the ticket's (or the
    recovery) key and names it in HELLO; the proof stays bound to this device and session."""
    hello = make_hello(IDENTITY, HH, GROUP, entries=ENTRIES, signer=(public, sign))
    assert hello.signer == public
    verify_hello(hello, HH, DEVICE, public)
    with pytest.raises(InvalidProofError):  # not by the device's own key
        verify_hello(hello, HH, DEVICE, SIGN)
    with pytest.raises(InvalidProofError):  # a stolen proof does not enroll another device
        verify_hello(hello, HH, OTHER.device_id, public)
    with pytest.raises(InvalidProofError):
        verify_hello(hello, _flip(HH, 0), DEVICE, public)
    with pytest.raises(InvalidProofError):
        verify_hello(msgspec.structs.replace(hello, entries=[]), HH, DEVICE, public)


def test_signer_key_is_in_the_transcript() -> None:
    """The same signature cannot be claimed for another key, even one that would verify it:
    the transcript names the key."""
    own = proof_transcript(
        HH, DEVICE, SIGN, group_id=GROUP, last_cursor=0, device_name="", client=""
    )
    ticket = proof_transcript(
        HH, DEVICE, TICKET.public, group_id=GROUP, last_cursor=0, device_name="", client=""
    )
    assert own != ticket
    assert own.replace(SIGN, TICKET.public) == ticket


# -- invalid signing keys ------------------------------------------------------------------

P = 2**255 - 19
D = (-121665 * pow(121666, -1, P)) % P


def _not_on_curve() -> bytes:
    """The smallest y whose x^2 = (y^2 - 1) / (d y^2 + 1) has no square root mod p."""
    for y in range(2, 1000):
        u = (y * y - 1) % P
        v = (D * y * y + 1) % P
        x2 = u * pow(v, -1, P) % P
        if x2 != 0 and pow(x2, (P - 1) // 2, P) == P - 1:
            return y.to_bytes(32, "little")
    raise AssertionError("no invalid encoding found")


INVALID_POINT = _not_on_curve()


def test_found_encoding_is_not_a_point() -> None:
    assert not nacl.bindings.crypto_core_ed25519_is_valid_point(INVALID_POINT)


@pytest.mark.parametrize(
    "sign_key",
    [INVALID_POINT, b"\xff" * 32, b"\xff" * 31 + b"\x7f", bytes(31), bytes(33), b""],
    ids=["not-on-curve", "all-ff", "y-ge-p", "31-bytes", "33-bytes", "empty"],
)
def test_invalid_signing_key(sign_key: bytes) -> None:
    with pytest.raises(InvalidProofError):
        verify_hello(_hello(), HH, DEVICE, sign_key)


def test_small_order_key_cannot_make_a_replayable_proof() -> None:
    """With the identity point as the key, the "signature" R = identity, S = 0 satisfies the
    Ed25519 equation for every message. Such a proof is bound to no connection: it verifies
    for any handshake hash, contradicting the module's promise that a proof cannot be replayed
    on another connection. A ticket key comes from the log, where anyone with an admin's key
    may have put it; libsodium rejects small-order keys, and so must verify_hello."""
    identity = (1).to_bytes(32, "little")
    forged = msgspec.structs.replace(_hello(), signer=identity, proof=identity + bytes(32))
    with pytest.raises(InvalidProofError):
        verify_hello(forged, HH, DEVICE, identity)
    with pytest.raises(InvalidProofError):
        verify_hello(forged, hashlib.blake2s(b"another session").digest(), DEVICE, identity)


# -- transcript layout -------------------------------------------------------------------


def _spec_entries_digest(entries: list[bytes]) -> bytes:
    """SHA-256(u32be(n) ‖ u32be(len(e1)) ‖ e1 ‖ ...), written out from the docstring."""
    data = len(entries).to_bytes(4, "big")
    for entry in entries:
        data += len(entry).to_bytes(4, "big") + entry
    return hashlib.sha256(data).digest()


@pytest.mark.parametrize(
    "entries",
    [[], [b""], [b"abc"], [b"ab", b"c"], ENTRIES, [bytes(70_000)]],
    ids=["none", "one-empty", "one", "two", "three", "large"],
)
def test_entries_digest_matches_the_spec(entries: list[bytes]) -> None:
    assert entries_digest(entries) == _spec_entries_digest(entries)


def test_entries_digest_of_no_entries() -> None:
    assert entries_digest([]) == hashlib.sha256(b"\x00\x00\x00\x00").digest()
    assert entries_digest(()) == entries_digest([])


def test_transcript_layout_byte_for_byte() -> None:
    hh = bytes([0x11]) * 32
    group_id = bytes([0x22]) * 32
    device = DeviceId(bytes([0x33]) * 32)
    sign_key = bytes([0x44]) * 32
    entries = [b"\x55" * 3, b""]
    transcript = proof_transcript(
        hh,
        device,
        sign_key,
        group_id=group_id,
        last_cursor=0x0102030405060708,
        device_name="Pixel ✓",  # 7 characters, 9 UTF-8 bytes
        client="zk/1",
        entries=entries,
    )
    digest = hashlib.sha256(
        bytes.fromhex("00000002") + bytes.fromhex("00000003") + b"\x55" * 3 + bytes(4)
    ).digest()
    expected = (
        b"0k-sync/v2/hello-proof"
        + b"\x00"
        + b"\x11" * 32
        + b"\x22" * 32
        + b"\x33" * 32
        + b"\x44" * 32
        + bytes.fromhex("0102030405060708")
        + bytes.fromhex("0009")
        + b"Pixel \xe2\x9c\x93"
        + bytes.fromhex("0004")
        + b"zk/1"
        + digest
    )
    assert transcript == expected
    assert len(transcript) == 23 + 4 * 32 + 8 + 2 + 9 + 2 + 4 + 32
    assert PROOF_CONTEXT == b"0k-sync/v2/hello-proof\x00"


def test_transcript_with_empty_strings_zero_cursor_and_no_entries() -> None:
    transcript = proof_transcript(
        bytes(32),
        DeviceId(bytes(32)),
        bytes(32),
        group_id=bytes(32),
        last_cursor=0,
        device_name="",
        client="",
    )
    assert transcript == (
        PROOF_CONTEXT
        + bytes(4 * 32)
        + bytes(8)
        + b"\x00\x00"
        + b"\x00\x00"
        + hashlib.sha256(bytes(4)).digest()
    )


def test_transcript_max_cursor() -> None:
    transcript = proof_transcript(
        bytes(32),
        DEVICE,
        bytes(32),
        group_id=bytes(32),
        last_cursor=2**63 - 1,
        device_name="",
        client="",
    )
    offset = len(PROOF_CONTEXT) + 4 * 32
    assert transcript[offset : offset + 8] == bytes.fromhex("7fffffffffffffff")
    assert struct.unpack_from(">Q", transcript, offset)[0] == 2**63 - 1
