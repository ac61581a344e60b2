"""HELLO's proof: a key the group's log knows signs this connection: the device's own
signing key, or (``signer`` in HELLO) an open ticket's key or the group's recovery key.

The signed transcript binds the proof to one Noise session (its handshake hash), to the
device that ran the handshake and to every HELLO field, so a proof cannot be replayed on
another connection or with other fields:

    "0k-sync/v2/hello-proof" ‖ 0x00 ‖ handshake hash (32) ‖ group id (32) ‖ device id (32) ‖
    signer's public key (32) ‖ last cursor (u64 BE) ‖ len(device name) (u16 BE) ‖ device name ‖
    len(client) (u16 BE) ‖ client ‖ entries digest (32)

    entries digest = SHA-256(u32be(n) ‖ u32be(len(entry 1)) ‖ entry 1 ‖ ...)
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from zerok.crypto.entry import Signer, verify
from zerok.crypto.identity import DeviceIdentity
from zerok.errors import InvalidProofError
from zerok.wire.ids import DeviceId, GroupId
from zerok.wire.messages import Hello

PROOF_CONTEXT = b"0k-sync/v2/hello-proof\x00"


def _text(value: str) -> bytes:
    raw = value.encode("utf-8")
    return struct.pack(">H", len(raw)) + raw


def entries_digest(entries: Sequence[bytes]) -> bytes:
    digest = hashlib.sha256(struct.pack(">I", len(entries)))
    for entry in entries:
        digest.update(struct.pack(">I", len(entry)))
        digest.update(entry)
    return digest.digest()


def proof_transcript(
    handshake_hash: bytes,
    device_id: DeviceId,
    sign_key: bytes,
    *,
    group_id: bytes,
    last_cursor: int,
    device_name: str,
    client: str,
    entries: Sequence[bytes] = (),
) -> bytes:
    if len(handshake_hash) != 32:
        raise InvalidProofError("handshake hash must be 32 bytes")
    return b"".join(
        (
            PROOF_CONTEXT,
            handshake_hash,
            bytes(group_id),
            bytes(device_id),
            bytes(sign_key),
            struct.pack(">Q", last_cursor),
            _text(device_name),
            _text(client),
            entries_digest(entries),
        )
    )


def make_hello(
    identity: DeviceIdentity,
    handshake_hash: bytes,
    group_id: GroupId,
    *,
    device_name: str = "",
    last_cursor: int = 0,
    client: str = "",
    entries: Sequence[bytes] = (),
    signer: tuple[bytes, Signer] | None = None,
) -> Hello:
    """Build a HELLO proving, for this session, that this device holds its signing key, or
    the key of ``signer`` (public key, signing function): a ticket or the recovery key."""
    public, sign = (identity.sign_public, identity.sign) if signer is None else signer
    transcript = proof_transcript(
        handshake_hash,
        identity.device_id,
        public,
        group_id=group_id,
        last_cursor=last_cursor,
        device_name=device_name,
        client=client,
        entries=entries,
    )
    return Hello(
        group_id=group_id,
        proof=sign(transcript),
        signer=b"" if signer is None else public,
        device_name=device_name,
        last_cursor=last_cursor,
        client=client,
        entries=list(entries),
    )


def verify_hello(hello: Hello, handshake_hash: bytes, device_id: DeviceId, sign_key: bytes) -> None:
    """Check that HELLO's proof was made with ``sign_key`` (the device's from the group's
    log, or HELLO's ``signer`` once the relay found it acceptable) for this very
    connection; InvalidProofError if not."""
    transcript = proof_transcript(
        handshake_hash,
        device_id,
        sign_key,
        group_id=hello.group_id,
        last_cursor=hello.last_cursor,
        device_name=hello.device_name,
        client=hello.client,
        entries=hello.entries,
    )
    if not verify(sign_key, transcript, hello.proof):
        raise InvalidProofError("the HELLO proof does not verify with the device's signing key")
