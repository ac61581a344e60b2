"""Interoperability with an independent Noise implementation: the ``noiseprotocol`` package.

Our HandshakeState/CipherState must talk to noiseprotocol's NoiseConnection in both roles:
handshake payloads arrive intact, both ends agree on the handshake hash and on each other's
static keys, and transport messages flow both ways.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from noise.connection import Keypair, NoiseConnection

from zerok.crypto.noise import HandshakeResult, HandshakeState, pattern_by_name
from zerok.errors import DecryptionError, HandshakeError

XX = "Noise_XX_25519_ChaChaPoly_BLAKE2s"
PROLOGUE = b"0k-sync interop prologue"


def _pub(key: x25519.X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


@dataclass
class Peers:
    ours: HandshakeState
    theirs: Any  # noise.connection.NoiseConnection
    their_handshake_state: Any  # kept to read the remote static after the handshake
    our_static: x25519.X25519PrivateKey
    their_static: x25519.X25519PrivateKey


def _setup(
    protocol: str,
    *,
    we_initiate: bool,
    prologue: bytes = PROLOGUE,
    their_prologue: bytes | None = None,
    psks: tuple[bytes, ...] = (),
) -> Peers:
    pattern = pattern_by_name(protocol.split("_")[1])
    our_static = x25519.X25519PrivateKey.generate()
    their_static = x25519.X25519PrivateKey.generate()
    # Pre-messages: the initiator knows the responder's static for "<- s", and vice versa.
    init_knows_resp = "s" in pattern.responder_pre
    resp_knows_init = "s" in pattern.initiator_pre

    conn = NoiseConnection.from_name(protocol.encode("ascii"))
    if we_initiate:
        conn.set_as_responder()
    else:
        conn.set_as_initiator()
    conn.set_prologue(prologue if their_prologue is None else their_prologue)
    conn.set_keypair_from_private_bytes(Keypair.STATIC, their_static.private_bytes_raw())
    if psks:
        conn.set_psks(psks=list(psks))
    they_know_ours = resp_knows_init if we_initiate else init_knows_resp
    if they_know_ours:
        conn.set_keypair_from_public_bytes(Keypair.REMOTE_STATIC, _pub(our_static))
    conn.start_handshake()

    we_know_theirs = init_knows_resp if we_initiate else resp_knows_init
    ours = HandshakeState(
        protocol,
        initiator=we_initiate,
        prologue=prologue,
        static=our_static,
        remote_static=_pub(their_static) if we_know_theirs else None,
        psks=psks,
    )
    return Peers(ours, conn, conn.noise_protocol.handshake_state, our_static, their_static)


def _handshake(peers: Peers, payloads: list[bytes]) -> HandshakeResult:
    """Run the handshake with one payload per message; check each arrives intact."""
    ours, theirs = peers.ours, peers.theirs
    for index, payload in enumerate(payloads):
        assert not ours.complete
        if ours.my_turn():
            received = bytes(theirs.read_message(ours.write_message(payload)))
        else:
            received = ours.read_message(bytes(theirs.write_message(payload)))
        assert received == payload, f"handshake payload {index}"
    assert ours.complete
    assert theirs.handshake_finished
    return ours.result


def _exchange(result: HandshakeResult, theirs: Any, *, one_way_from_us: bool | None = None) -> None:
    """Several transport messages in each direction (or one direction for one-way patterns)."""
    messages = [b"", b"a", b"hello relay", os.urandom(1000), os.urandom(65535 - 16)]
    if one_way_from_us is not False:
        for m in messages:
            assert theirs.decrypt(result.send.encrypt_with_ad(b"", m)) == m
    if one_way_from_us is not True:
        for m in messages:
            assert result.receive.decrypt_with_ad(b"", theirs.encrypt(m)) == m
    if one_way_from_us is None:
        # Interleaved, as a real session would.
        for i in range(10):
            mine, yours = f"ours {i}".encode(), f"theirs {i}".encode() * i
            assert theirs.decrypt(result.send.encrypt_with_ad(b"", mine)) == mine
            assert result.receive.decrypt_with_ad(b"", theirs.encrypt(yours)) == yours


# -- XX in detail, both roles ----------------------------------------------------------


XX_PAYLOADS = [b"first: who are you?", b"second: the relay", b"third: a device \x00\xff"]


def test_xx_our_initiator_their_responder() -> None:
    peers = _setup(XX, we_initiate=True)
    result = _handshake(peers, XX_PAYLOADS)
    assert result.handshake_hash == bytes(peers.theirs.get_handshake_hash())
    assert len(result.handshake_hash) == 32
    assert result.remote_static == _pub(peers.their_static)
    assert peers.their_handshake_state.rs.public_bytes == _pub(peers.our_static)
    _exchange(result, peers.theirs)


def test_xx_their_initiator_our_responder() -> None:
    peers = _setup(XX, we_initiate=False)
    result = _handshake(peers, XX_PAYLOADS)
    assert result.handshake_hash == bytes(peers.theirs.get_handshake_hash())
    assert result.remote_static == _pub(peers.their_static)
    assert peers.their_handshake_state.rs.public_bytes == _pub(peers.our_static)
    _exchange(result, peers.theirs)


@pytest.mark.parametrize("we_initiate", [True, False], ids=["ours-initiates", "theirs-initiates"])
def test_xx_large_payloads(we_initiate: bool) -> None:
    # The largest payload each XX message can carry inside 65535 bytes.
    sizes = [65535 - 32, 65535 - 32 - 48 - 16, 65535 - 48 - 16]
    peers = _setup(XX, we_initiate=we_initiate)
    result = _handshake(peers, [os.urandom(n) for n in sizes])
    assert result.handshake_hash == bytes(peers.theirs.get_handshake_hash())


@pytest.mark.parametrize("we_initiate", [True, False], ids=["ours-initiates", "theirs-initiates"])
def test_xx_rekey_interoperates(we_initiate: bool) -> None:
    """Our REKEY (spec §4.2) computes the same new key as noiseprotocol's."""
    peers = _setup(XX, we_initiate=we_initiate)
    result = _handshake(peers, [b"", b"", b""])
    for _ in range(3):
        result.send.rekey()
        peers.theirs.rekey_inbound_cipher()
        assert peers.theirs.decrypt(result.send.encrypt_with_ad(b"", b"after rekey")) == (
            b"after rekey"
        )
        peers.theirs.rekey_outbound_cipher()
        result.receive.rekey()
        assert result.receive.decrypt_with_ad(b"", peers.theirs.encrypt(b"back")) == b"back"


def test_xx_prologue_mismatch_is_detected() -> None:
    peers = _setup(XX, we_initiate=True, their_prologue=b"another prologue")
    msg1 = peers.ours.write_message(b"")
    peers.theirs.read_message(msg1)  # message 1 carries nothing authenticated
    with pytest.raises(HandshakeError):
        peers.ours.read_message(bytes(peers.theirs.write_message(b"")))


def test_xx_tampered_message_from_them_is_rejected() -> None:
    peers = _setup(XX, we_initiate=True)
    peers.theirs.read_message(peers.ours.write_message(b""))
    msg2 = bytearray(peers.theirs.write_message(b"payload"))
    msg2[40] ^= 0x01
    with pytest.raises(HandshakeError):
        peers.ours.read_message(bytes(msg2))


def test_xx_tampered_transport_from_them_is_rejected() -> None:
    peers = _setup(XX, we_initiate=False)
    result = _handshake(peers, [b"", b"", b""])
    ciphertext = bytearray(peers.theirs.encrypt(b"transport"))
    ciphertext[0] ^= 0x80
    with pytest.raises(DecryptionError):
        result.receive.decrypt_with_ad(b"", bytes(ciphertext))


# -- other patterns noiseprotocol supports ---------------------------------------------

INTERACTIVE = [
    "NN",
    "NK",
    "NX",
    "XN",
    "XK",
    "XX",
    "KN",
    "KK",
    "KX",
    "IN",
    "IK",
    "IX",
    "NNpsk0",
    "NNpsk2",
    "XXpsk3",
    "IKpsk2",
    "KKpsk0",
]


@pytest.mark.parametrize("we_initiate", [True, False], ids=["ours-initiates", "theirs-initiates"])
@pytest.mark.parametrize("pattern", INTERACTIVE)
def test_interactive_pattern_interop(pattern: str, we_initiate: bool) -> None:
    protocol = f"Noise_{pattern}_25519_ChaChaPoly_BLAKE2s"
    psk_count = pattern.count("psk")
    psks = tuple(os.urandom(32) for _ in range(psk_count))
    peers = _setup(protocol, we_initiate=we_initiate, psks=psks)
    count = len(peers.ours.pattern.messages)
    payloads = [f"{pattern} message {i}".encode() for i in range(count)]
    result = _handshake(peers, payloads)
    assert result.handshake_hash == bytes(peers.theirs.get_handshake_hash())
    uses_our_static = any(
        ("s" in m.tokens and m.from_initiator == we_initiate) for m in peers.ours.pattern.messages
    )
    if uses_our_static:
        assert peers.their_handshake_state.rs.public_bytes == _pub(peers.our_static)
    if result.remote_static is not None:
        assert result.remote_static == _pub(peers.their_static)
    _exchange(result, peers.theirs)


@pytest.mark.parametrize("we_initiate", [True, False], ids=["ours-initiates", "theirs-initiates"])
def test_ik_interop_knows_static_up_front(we_initiate: bool) -> None:
    peers = _setup(
        "Noise_IK_25519_ChaChaPoly_BLAKE2s", we_initiate=we_initiate, prologue=b"IK prologue"
    )
    result = _handshake(peers, [b"zero-RTT payload", b"reply"])
    assert result.handshake_hash == bytes(peers.theirs.get_handshake_hash())
    assert result.remote_static == _pub(peers.their_static)
    assert peers.their_handshake_state.rs.public_bytes == _pub(peers.our_static)
    _exchange(result, peers.theirs)


@pytest.mark.parametrize("we_initiate", [True, False], ids=["ours-initiates", "theirs-initiates"])
def test_nn_interop(we_initiate: bool) -> None:
    peers = _setup("Noise_NN_25519_ChaChaPoly_BLAKE2s", we_initiate=we_initiate)
    result = _handshake(peers, [b"ping", b"pong"])
    assert result.handshake_hash == bytes(peers.theirs.get_handshake_hash())
    assert result.remote_static is None
    _exchange(result, peers.theirs)


@pytest.mark.parametrize("we_initiate", [True, False], ids=["ours-initiates", "theirs-initiates"])
@pytest.mark.parametrize("pattern", ["N", "K", "X", "Npsk0", "Xpsk1"])
def test_one_way_pattern_interop(pattern: str, we_initiate: bool) -> None:
    protocol = f"Noise_{pattern}_25519_ChaChaPoly_BLAKE2s"
    psks = tuple(os.urandom(32) for _ in range(pattern.count("psk")))
    peers = _setup(protocol, we_initiate=we_initiate, psks=psks)
    result = _handshake(peers, [b"one-way payload"])
    assert result.handshake_hash == bytes(peers.theirs.get_handshake_hash())
    _exchange(result, peers.theirs, one_way_from_us=we_initiate)
