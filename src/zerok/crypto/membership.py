"""Membership proof: the group authentication key (Ed25519) signs this connection.

The signed transcript binds the proof to one Noise session (its handshake hash) and to the
HELLO fields, so a proof cannot be replayed on another connection or with other fields:

    "0k-sync/v1/hello-proof" ‖ 0x00 ‖ handshake hash (32) ‖ group id (32) ‖
    auth public key (32) ‖ device id (32) ‖ last cursor (u64 BE) ‖
    len(device name) (u16 BE) ‖ device name (UTF-8) ‖ len(client) (u16 BE) ‖ client (UTF-8)
"""

from __future__ import annotations

import struct

from nacl.exceptions import BadSignatureError
from nacl.exceptions import ValueError as NaclValueError
from nacl.signing import VerifyKey

from zerok.crypto.keys import GroupKeys
from zerok.errors import InvalidProofError
from zerok.wire.ids import DeviceId
from zerok.wire.messages import Hello

PROOF_CONTEXT = b"0k-sync/v1/hello-proof\x00"


def _text(value: str) -> bytes:
    raw = value.encode("utf-8")
    return struct.pack(">H", len(raw)) + raw


def proof_transcript(
    handshake_hash: bytes,
    device_id: DeviceId,
    *,
    group_id: bytes,
    auth_key: bytes,
    last_cursor: int,
    device_name: str,
    client: str,
) -> bytes:
    if len(handshake_hash) != 32:
        raise InvalidProofError("handshake hash must be 32 bytes")
    return b"".join(
        (
            PROOF_CONTEXT,
            handshake_hash,
            bytes(group_id),
            bytes(auth_key),
            bytes(device_id),
            struct.pack(">Q", last_cursor),
            _text(device_name),
            _text(client),
        )
    )


def make_hello(
    keys: GroupKeys,
    handshake_hash: bytes,
    device_id: DeviceId,
    *,
    device_name: str = "",
    last_cursor: int = 0,
    client: str = "",
) -> Hello:
    """Build a HELLO carrying a proof that this device holds the group's key."""
    transcript = proof_transcript(
        handshake_hash,
        device_id,
        group_id=keys.group_id,
        auth_key=keys.auth_public,
        last_cursor=last_cursor,
        device_name=device_name,
        client=client,
    )
    return Hello(
        group_id=keys.group_id,
        auth_key=keys.auth_public,
        proof=keys.auth_key.sign(transcript),
        device_name=device_name,
        last_cursor=last_cursor,
        client=client,
    )


def verify_hello(hello: Hello, handshake_hash: bytes, device_id: DeviceId) -> None:
    """Check that HELLO's proof was made with HELLO's auth key for this very connection.

    Whether that auth key is the one registered for the group is the relay's decision.
    """
    transcript = proof_transcript(
        handshake_hash,
        device_id,
        group_id=hello.group_id,
        auth_key=hello.auth_key,
        last_cursor=hello.last_cursor,
        device_name=hello.device_name,
        client=hello.client,
    )
    # libsodium's verifier rejects small-order public keys: with one of those, a forged
    # "signature" would verify for any transcript (pyca/OpenSSL accepts them).
    try:
        VerifyKey(bytes(hello.auth_key)).verify(transcript, bytes(hello.proof))
    except (BadSignatureError, NaclValueError, ValueError):
        raise InvalidProofError("membership proof does not verify") from None
