"""The published Noise test vectors (cacophony, 25519/ChaChaPoly/BLAKE2s) against our engine.

Every handshake message, the handshake hash and every transport message must match the
vectors byte for byte. In the cacophony format the ``messages`` list alternates between the
parties over its whole length for interactive patterns (message ``k`` is written by the
initiator iff ``k`` is even), so the first transport message comes from the initiator after a
two-message handshake and from the responder after a three-message one. For one-way patterns
every message goes initiator → responder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519

from zerok.crypto.noise import CipherState, HandshakeState

VECTOR_FILE = Path(__file__).with_name("noise-vectors-25519-chachapoly-blake2s.json")
EXPECTED_VECTOR_COUNT = 59

_DOC: dict[str, Any] = json.loads(VECTOR_FILE.read_text())
VECTORS: list[dict[str, Any]] = _DOC["vectors"]


def _private(vector: dict[str, Any], key: str) -> x25519.X25519PrivateKey | None:
    value = vector.get(key)
    return (
        None if value is None else x25519.X25519PrivateKey.from_private_bytes(bytes.fromhex(value))
    )


def _public_bytes(vector: dict[str, Any], key: str) -> bytes | None:
    value = vector.get(key)
    return None if value is None else bytes.fromhex(value)


def _psks(vector: dict[str, Any], key: str) -> list[bytes]:
    return [bytes.fromhex(p) for p in vector.get(key, [])]


def _party(vector: dict[str, Any], *, initiator: bool) -> HandshakeState:
    side = "init" if initiator else "resp"
    return HandshakeState(
        vector["protocol_name"],
        initiator=initiator,
        prologue=bytes.fromhex(vector[f"{side}_prologue"]),
        static=_private(vector, f"{side}_static"),
        ephemeral=_private(vector, f"{side}_ephemeral"),
        remote_static=_public_bytes(vector, f"{side}_remote_static"),
        psks=_psks(vector, f"{side}_psks"),
    )


def _static_public(vector: dict[str, Any], key: str) -> bytes | None:
    private = _private(vector, key)
    return None if private is None else private.public_key().public_bytes_raw()


def run_vector(vector: dict[str, Any]) -> None:
    """Run one vector end to end; any mismatch raises AssertionError."""
    initiator = _party(vector, initiator=True)
    responder = _party(vector, initiator=False)
    messages: list[dict[str, str]] = vector["messages"]
    one_way = initiator.pattern.one_way

    # Handshake phase: exact bytes, exact payloads, strict alternation.
    index = 0
    while not initiator.complete:
        assert index < len(messages), "the vector ran out of messages before the handshake ended"
        initiator_writes = initiator.my_turn()
        assert initiator_writes == (index % 2 == 0)
        assert responder.my_turn() == (not initiator_writes)
        writer, reader = (initiator, responder) if initiator_writes else (responder, initiator)
        payload = bytes.fromhex(messages[index]["payload"])
        expected = bytes.fromhex(messages[index]["ciphertext"])
        ciphertext = writer.write_message(payload)
        assert ciphertext == expected, f"handshake message {index}"
        assert reader.read_message(ciphertext) == payload, f"handshake message {index}"
        index += 1
    assert responder.complete
    assert index == len(initiator.pattern.messages)

    # Handshake hash (the channel binding) on both sides.
    expected_hash = bytes.fromhex(vector["handshake_hash"])
    assert initiator.result.handshake_hash == expected_hash
    assert responder.result.handshake_hash == expected_hash
    assert initiator.handshake_hash == expected_hash

    # Each side learnt the other's static key (when the pattern has one).
    assert initiator.result.remote_static == _static_public(vector, "resp_static")
    assert responder.result.remote_static == _static_public(vector, "init_static")

    # Transport phase.
    transport = messages[index:]
    assert transport, "every vector has transport messages"
    for offset, message in enumerate(transport):
        position = index + offset
        from_initiator = one_way or position % 2 == 0
        send: CipherState = initiator.result.send if from_initiator else responder.result.send
        receive: CipherState = (
            responder.result.receive if from_initiator else initiator.result.receive
        )
        payload = bytes.fromhex(message["payload"])
        expected = bytes.fromhex(message["ciphertext"])
        ciphertext = send.encrypt_with_ad(b"", payload)
        assert ciphertext == expected, f"transport message {position}"
        assert receive.decrypt_with_ad(b"", ciphertext) == payload, f"transport message {position}"


@pytest.mark.parametrize("vector", VECTORS, ids=[v["protocol_name"] for v in VECTORS])
def test_vector(vector: dict[str, Any]) -> None:
    run_vector(vector)


def test_every_vector_in_the_file_is_covered() -> None:
    """All 59 vectors are in the file, distinct, and every one of them passes."""
    names = [v["protocol_name"] for v in VECTORS]
    assert len(VECTORS) == EXPECTED_VECTOR_COUNT
    assert len(set(names)) == EXPECTED_VECTOR_COUNT
    assert all(n.startswith("Noise_") and n.endswith("_25519_ChaChaPoly_BLAKE2s") for n in names)
    passed = 0
    for vector in VECTORS:
        run_vector(vector)
        passed += 1
    assert passed == EXPECTED_VECTOR_COUNT
