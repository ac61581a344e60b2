"""Membership log entries: the structures a group's signed, hash-chained log is made of.

An entry travels and is stored as the MessagePack encoding of ``SignedEntry``: the
entry's ``body`` (itself MessagePack of one of the ``Body`` kinds below, as bytes) and the
signatures over those exact bytes. Nobody re-encodes a body: hashes and signatures are
over the bytes as received, so two implementations need not agree on an encoder.

Every size a stranger controls is bounded here; what the entries mean (who may write
which kind, what they change) is ``zerok.protocol.membership``'s business.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import msgspec

from zerok.errors import WireError

LOG_FORMAT = 2
MAX_MEMBERS = 256  # devices in a group, revoked ones included
MAX_ENTRY_BYTES = 512 * 1024  # a rotation in a full group is ~300 KiB
WRAP_PUBLIC_BYTES = 1216  # an X-Wing public key
WRAPPED_KEY_BYTES = 1120 + 32 + 16  # X-Wing ciphertext, then the AEAD-sealed epoch key
PREV_KEY_BYTES = 32 + 16
U32_MAX = 2**32 - 1
I64_MAX = 2**63 - 1

Key32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
Hash = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
Sig = Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]
WrapPublic = Annotated[
    bytes, msgspec.Meta(min_length=WRAP_PUBLIC_BYTES, max_length=WRAP_PUBLIC_BYTES)
]
Wrapped = Annotated[bytes, msgspec.Meta(min_length=WRAPPED_KEY_BYTES, max_length=WRAPPED_KEY_BYTES)]
Millis = Annotated[int, msgspec.Meta(ge=0, le=I64_MAX)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=I64_MAX)]
Epoch = Annotated[int, msgspec.Meta(ge=0, le=U32_MAX)]
Name = Annotated[str, msgspec.Meta(max_length=64)]
Note = Annotated[str, msgspec.Meta(max_length=256)]


class Role(StrEnum):
    ADMIN = "admin"  # may invite, revoke anyone, change roles
    MEMBER = "member"  # may sync, rotate, and revoke itself


class Member(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A device as the log knows it: its three public keys and a display name."""

    device: Key32  # its Noise static key: the device id
    sign: Key32  # Ed25519: signs its entries and its HELLO proofs
    wrap: WrapPublic  # X-Wing: epoch keys are wrapped for it
    name: Name = ""


class Wrap(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An epoch key wrapped for one recipient, named by its signing key."""

    to: Key32
    key: Wrapped


Wraps = Annotated[list[Wrap], msgspec.Meta(max_length=MAX_MEMBERS + 1)]
DeviceIds = Annotated[list[Key32], msgspec.Meta(max_length=MAX_MEMBERS)]


class Body(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    tag_field="kind",
):
    """Fields every entry has. ``author`` is the signing key that signs it (``sig``)."""

    v: int = LOG_FORMAT
    group: Annotated[bytes, msgspec.Meta(max_length=32)] = b""  # empty in the genesis only
    seq: Seq
    prev: Annotated[bytes, msgspec.Meta(max_length=32)] = b""  # empty in the genesis only
    time: Millis  # when the author wrote it (informational, except for ticket expiry)
    author: Key32


class Genesis(Body, frozen=True, kw_only=True, tag="genesis"):
    """Entry 0: the creating device (an admin), the recovery key, the first epoch key."""

    nonce: Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]
    member: Member
    recovery_sign: Key32
    recovery_wrap: WrapPublic
    wraps: Wraps  # epoch 0's key, for the creator and the recovery key


class Invite(Body, frozen=True, kw_only=True, tag="invite"):
    """An admin opens a ticket: one device may enroll with it, with this role, until
    ``expires_at``."""

    ticket: Key32  # Ed25519 public key; its private key travels in the invite
    role: Role = Role.MEMBER
    expires_at: Millis


class Cancel(Body, frozen=True, kw_only=True, tag="cancel"):
    """An admin (or the ticket's issuer) closes an open ticket."""

    ticket: Key32


class Enroll(Body, frozen=True, kw_only=True, tag="enroll"):
    """A new device joins with a ticket; signed by the device and by the ticket's key."""

    ticket: Key32
    member: Member


class Revoke(Body, frozen=True, kw_only=True, tag="revoke"):
    """Devices leave for good, and a new epoch starts whose key they never receive."""

    devices: DeviceIds
    reason: Note = ""
    epoch: Epoch
    wraps: Wraps
    prev_key: Annotated[bytes, msgspec.Meta(min_length=PREV_KEY_BYTES, max_length=PREV_KEY_BYTES)]


class Rotate(Body, frozen=True, kw_only=True, tag="rotate"):
    """A new epoch without a revocation (a suspected leak)."""

    reason: Note = ""
    epoch: Epoch
    wraps: Wraps
    prev_key: Annotated[bytes, msgspec.Meta(min_length=PREV_KEY_BYTES, max_length=PREV_KEY_BYTES)]


class SetRole(Body, frozen=True, kw_only=True, tag="role"):
    """An admin changes a device's role."""

    device: Key32
    role: Role


class Recover(Body, frozen=True, kw_only=True, tag="recover"):
    """Signed by the recovery key: membership becomes exactly ``keep`` (existing devices,
    revoked ones reinstated) plus ``add`` (new devices), all admins; everyone else is
    revoked; a new epoch starts. ``prev_key`` is empty when the recovering party does not
    hold the last epoch's key (a thief rotated it)."""

    keep: DeviceIds
    add: Annotated[list[Member], msgspec.Meta(max_length=MAX_MEMBERS)] = []
    epoch: Epoch
    wraps: Wraps
    prev_key: Annotated[bytes, msgspec.Meta(max_length=PREV_KEY_BYTES)] = b""


AnyBody = Genesis | Invite | Cancel | Enroll | Revoke | Rotate | SetRole | Recover
EPOCH_KINDS = (Genesis, Revoke, Rotate, Recover)


class SignedEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the log stores at one position."""

    body: Annotated[bytes, msgspec.Meta(max_length=MAX_ENTRY_BYTES)]
    sig: Sig  # by body.author
    ticket_sig: Annotated[bytes, msgspec.Meta(max_length=64)] = b""  # enroll: by the ticket key


_body_encoder = msgspec.msgpack.Encoder()
_body_decoder = msgspec.msgpack.Decoder(AnyBody)
_entry_decoder = msgspec.msgpack.Decoder(SignedEntry)


def encode_body(body: AnyBody) -> bytes:
    return _body_encoder.encode(body)


def decode_body(data: bytes) -> AnyBody:
    """WireError if the bytes are not a well-formed body of a known kind and format."""
    try:
        body: AnyBody = _body_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, RecursionError) as exc:
        raise WireError(f"malformed log entry body: {exc}") from None
    if body.v != LOG_FORMAT:
        raise WireError(f"log entry format {body.v}; this zerok reads format {LOG_FORMAT}")
    return body


def encode_entry(entry: SignedEntry) -> bytes:
    return _body_encoder.encode(entry)


def decode_entry(data: bytes) -> SignedEntry:
    if len(data) > MAX_ENTRY_BYTES + 256:
        raise WireError(f"log entry of {len(data)} bytes is over {MAX_ENTRY_BYTES}")
    try:
        return _entry_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, RecursionError) as exc:
        raise WireError(f"malformed log entry: {exc}") from None
