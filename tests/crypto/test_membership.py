"""Membership proofs: HELLO's Ed25519 signature over the session-bound transcript."""

from __future__ import annotations

import hashlib

import msgspec
import nacl.bindings
import nacl.signing
import pytest

from zerok.crypto.keys import GroupKeys
from zerok.crypto.membership import PROOF_CONTEXT, make_hello, proof_transcript, verify_hello
from zerok.errors import CryptoError, InvalidProofError
from zerok.wire import codec
from zerok.wire.ids import DeviceId, GroupId
from zerok.wire.messages import Hello

KEYS = GroupKeys(bytes(range(32)))
OTHER = GroupKeys(bytes(range(1, 33)))
HH = hashlib.blake2s(b"handshake hash").digest()
DEVICE = DeviceId(bytes(range(64, 96)))


def _hello(**kwargs: object) -> Hello:
    params: dict[str, object] = {
        "device_name": "Laptop ✓",
        "last_cursor": 1234567,
        "client": "zerok-tests/1.0",
    }
    params.update(kwargs)
    return make_hello(KEYS, HH, DEVICE, **params)  # type: ignore[arg-type]


def _flip(data: bytes, position: int) -> bytes:
    buf = bytearray(data)
    buf[position] ^= 0x01
    return bytes(buf)


def test_invalid_proof_error_is_a_crypto_error() -> None:
    assert issubclass(InvalidProofError, CryptoError)


def test_valid_proof_verifies() -> None:
    hello = _hello()
    assert hello.group_id == KEYS.group_id
    assert hello.auth_key == KEYS.auth_public
    assert len(hello.proof) == 64
    assert (hello.device_name, hello.last_cursor, hello.client) == (
        "Laptop ✓",
        1234567,
        "zerok-tests/1.0",
    )
    verify_hello(hello, HH, DEVICE)


def test_defaults_verify() -> None:
    hello = make_hello(KEYS, HH, DEVICE)
    assert (hello.device_name, hello.last_cursor, hello.client) == ("", 0, "")
    verify_hello(hello, HH, DEVICE)


def test_proof_is_an_ed25519_signature_over_the_transcript() -> None:
    hello = _hello()
    transcript = proof_transcript(
        HH,
        DEVICE,
        group_id=KEYS.group_id,
        auth_key=KEYS.auth_public,
        last_cursor=1234567,
        device_name="Laptop ✓",
        client="zerok-tests/1.0",
    )
    # Verified by libsodium, independently of the code under test.
    nacl.signing.VerifyKey(KEYS.auth_public).verify(transcript, hello.proof)
    # Ed25519 is deterministic.
    assert _hello().proof == hello.proof


def test_proof_survives_the_wire() -> None:
    hello = _hello()
    decoded = codec.decode(codec.encode(hello))
    assert isinstance(decoded, Hello)
    verify_hello(decoded, HH, DEVICE)


def test_other_handshake_hash() -> None:
    hello = _hello()
    for position in (0, 15, 31):
        with pytest.raises(InvalidProofError):
            verify_hello(hello, _flip(HH, position), DEVICE)
    with pytest.raises(InvalidProofError):
        verify_hello(hello, bytes(32), DEVICE)


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_handshake_hash_of_wrong_length(size: int) -> None:
    hello = _hello()
    with pytest.raises(InvalidProofError):
        verify_hello(hello, bytes(size), DEVICE)


def test_other_device_id() -> None:
    hello = _hello()
    with pytest.raises(InvalidProofError):
        verify_hello(hello, HH, DeviceId(_flip(DEVICE, 31)))
    with pytest.raises(InvalidProofError):
        verify_hello(hello, HH, DeviceId(bytes(32)))


FIELD_CHANGES: dict[str, dict[str, object]] = {
    "group_id": {"group_id": GroupId(_flip(KEYS.group_id, 0))},
    "group_id-other-group": {"group_id": OTHER.group_id},
    "auth_key-other-group": {"auth_key": OTHER.auth_public},
    "last_cursor+1": {"last_cursor": 1234568},
    "last_cursor-0": {"last_cursor": 0},
    "device_name": {"device_name": "Laptop ✗"},
    "device_name-empty": {"device_name": ""},
    "client": {"client": "zerok-tests/1.1"},
    "client-empty": {"client": ""},
}


@pytest.mark.parametrize("changes", list(FIELD_CHANGES.values()), ids=list(FIELD_CHANGES))
def test_changed_field_is_rejected(changes: dict[str, object]) -> None:
    hello = msgspec.structs.replace(_hello(), **changes)
    with pytest.raises(InvalidProofError):
        verify_hello(hello, HH, DEVICE)


@pytest.mark.parametrize("position", [0, 1, 31, 32, 33, 62, 63])
def test_flipped_proof_byte_is_rejected(position: int) -> None:
    hello = _hello()
    bad = msgspec.structs.replace(hello, proof=_flip(hello.proof, position))
    with pytest.raises(InvalidProofError):
        verify_hello(bad, HH, DEVICE)


@pytest.mark.parametrize("size", [0, 63, 65])
def test_proof_of_wrong_length_is_rejected(size: int) -> None:
    hello = _hello()
    proof = (hello.proof * 2)[:size]
    with pytest.raises(InvalidProofError):
        verify_hello(msgspec.structs.replace(hello, proof=proof), HH, DEVICE)


def test_name_and_client_cannot_trade_bytes() -> None:
    """Length prefixes keep ("ab", "c") and ("a", "bc") apart."""
    hello = _hello(device_name="ab", client="c")
    swapped = msgspec.structs.replace(hello, device_name="a", client="bc")
    with pytest.raises(InvalidProofError):
        verify_hello(swapped, HH, DEVICE)


def test_other_groups_hello_with_its_own_key_verifies() -> None:
    """verify_hello checks the proof against HELLO's own key; registration is the relay's."""
    hello = make_hello(OTHER, HH, DEVICE)
    verify_hello(hello, HH, DEVICE)
    # ...but not with our group's id and its key.
    with pytest.raises(InvalidProofError):
        verify_hello(msgspec.structs.replace(hello, group_id=KEYS.group_id), HH, DEVICE)


def test_replay_on_another_connection_fails() -> None:
    hello = _hello()
    other_connection = hashlib.blake2s(b"another session").digest()
    with pytest.raises(InvalidProofError):
        verify_hello(hello, other_connection, DEVICE)


# -- invalid auth keys -------------------------------------------------------------------

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
    "auth_key",
    [INVALID_POINT, b"\xff" * 32, b"\xff" * 31 + b"\x7f", bytes(31), bytes(33), b""],
    ids=["not-on-curve", "all-ff", "y-ge-p", "31-bytes", "33-bytes", "empty"],
)
def test_invalid_auth_public_key(auth_key: bytes) -> None:
    hello = msgspec.structs.replace(_hello(), auth_key=auth_key)
    with pytest.raises(InvalidProofError):
        verify_hello(hello, HH, DEVICE)


def test_small_order_auth_key_cannot_make_a_replayable_proof() -> None:
    """With the identity point as auth key, the "signature" R = identity, S = 0 satisfies the
    Ed25519 equation for every message. Such a proof is bound to no connection: it verifies
    for any handshake hash, contradicting the module's promise that a proof cannot be replayed
    on another connection. libsodium rejects small-order keys; so must verify_hello."""
    identity = (1).to_bytes(32, "little")
    forged = msgspec.structs.replace(_hello(), auth_key=identity, proof=identity + bytes(32))
    with pytest.raises(InvalidProofError):
        verify_hello(forged, HH, DEVICE)
    with pytest.raises(InvalidProofError):
        verify_hello(forged, hashlib.blake2s(b"another session").digest(), DEVICE)


# -- transcript layout -------------------------------------------------------------------


def test_transcript_layout_byte_for_byte() -> None:
    hh = bytes([0x11]) * 32
    group_id = bytes([0x22]) * 32
    auth_key = bytes([0x33]) * 32
    device = DeviceId(bytes([0x44]) * 32)
    transcript = proof_transcript(
        hh,
        device,
        group_id=group_id,
        auth_key=auth_key,
        last_cursor=0x0102030405060708,
        device_name="Pixel ✓",  # 7 characters, 9 UTF-8 bytes
        client="zk/1",
    )
    expected = (
        b"0k-sync/v1/hello-proof"
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
    )
    assert transcript == expected
    assert len(transcript) == 23 + 4 * 32 + 8 + 2 + 9 + 2 + 4
    assert PROOF_CONTEXT == b"0k-sync/v1/hello-proof\x00"


def test_transcript_with_empty_strings_and_zero_cursor() -> None:
    transcript = proof_transcript(
        bytes(32),
        DeviceId(bytes(32)),
        group_id=bytes(32),
        auth_key=bytes(32),
        last_cursor=0,
        device_name="",
        client="",
    )
    assert transcript == PROOF_CONTEXT + bytes(4 * 32) + bytes(8) + b"\x00\x00" + b"\x00\x00"


def test_transcript_max_cursor() -> None:
    transcript = proof_transcript(
        bytes(32),
        DEVICE,
        group_id=bytes(32),
        auth_key=bytes(32),
        last_cursor=2**63 - 1,
        device_name="",
        client="",
    )
    offset = len(PROOF_CONTEXT) + 4 * 32
    assert transcript[offset : offset + 8] == bytes.fromhex("7fffffffffffffff")
