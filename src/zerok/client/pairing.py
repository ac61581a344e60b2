"""Pairing: invite URLs (for QR codes) and short codes with the relay's invite mailbox.

An invite (payload version 2) carries what a new device needs to join: the relay URLs, the
group id, the seed of a one-use ticket key (whose public key an admin put in the group's
log with an Invite entry, with a role and an expiry), the epoch current when the invite
was made and that epoch's key, the expiry and the inviting device's id. The new device
enrolls itself with the ticket (an Enroll entry signed by it and by the ticket) and reads
the group's history by walking back from the epoch key.

- URL: ``zerok://sync?invite=<base64url, no padding, of the MessagePack payload>``. It
  holds an epoch key and the ticket, so it is shown only as a QR code or passed over a
  trusted channel; cancelling the invite (a Cancel entry) makes the ticket worthless, and
  so does any key rotation.
- Short code ``XXXX-XXXX-XXXX-XXXX`` (Crockford base32, 75 random bits and a Luhn mod 32
  check character): the first 8 characters are the mailbox lookup key sent to the relay;
  the whole code, stretched with Argon2id, is the key that seals the invite in the
  mailbox. The relay hands the sealed invite out once, and not after its expiry (at
  most 600 s from now in this client; a relay may keep it less, its ``invite_ttl``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import os
import secrets
import time
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import parse_qs, urlsplit

import msgspec
import segno
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError as NaclCryptoError

from zerok.crypto.keys import KdfParams
from zerok.errors import InviteError

INVITE_VERSION = 2
URL_PREFIX = "zerok://sync?invite="
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford: no I, L, O, U
_DECODE = {c: i for i, c in enumerate(ALPHABET)} | {"O": 0, "I": 1, "L": 1}
CODE_CHARS = 16
LOOKUP_CHARS = 8
# Stretching of the short code: 35 secret bits cost an attacker who holds the sealed invite
# 2^35 Argon2id evaluations of 64 MiB each.
CODE_KDF = {"memory_kib": 64 * 1024, "iterations": 3, "parallelism": 1}
_CODE_SALT = b"0k-sync/v1/invite-salt"
_CODE_AAD = b"0k-sync/v1/invite"


Bytes32 = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]
MAX_RELAYS = 16


class InvitePayload(msgspec.Struct, frozen=True, kw_only=True):
    v: int
    relays: Annotated[
        list[Annotated[str, msgspec.Meta(max_length=2048)]], msgspec.Meta(max_length=MAX_RELAYS)
    ]
    group: Bytes32  # the group id (the hash of its genesis entry)
    ticket: Bytes32  # the ticket key's Ed25519 seed
    epoch: Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
    key: Bytes32  # that epoch's key
    expires_at: Annotated[int, msgspec.Meta(ge=0)]  # milliseconds since the Unix epoch
    inviter: Bytes32  # the device id of the admin who made it


class _Version(msgspec.Struct):
    v: int


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(InvitePayload)
_version_decoder = msgspec.msgpack.Decoder(_Version)


def encode_payload(payload: InvitePayload) -> bytes:
    return _encoder.encode(payload)


def decode_payload(data: bytes, *, now_ms: int | None = None) -> InvitePayload:
    """Decode and check an invite; InviteError if it is malformed, of another version or
    expired."""
    try:
        version = _version_decoder.decode(data).v
    except (msgspec.DecodeError, ValueError, RecursionError) as exc:
        raise InviteError("invalid", f"the invite is damaged: {exc}") from None
    if version != INVITE_VERSION:
        made = "zerok 0.1 (protocol 1)" if version == 1 else f"invite version {version}"
        raise InviteError(
            "invalid",
            f"the invite was made by {made}; this zerok reads invite version "
            f"{INVITE_VERSION}: ask for an invite from an up-to-date device",
        )
    try:
        payload = _decoder.decode(data)
    except (msgspec.DecodeError, ValueError, RecursionError) as exc:
        raise InviteError("invalid", f"the invite is damaged: {exc}") from None
    if not payload.relays:
        raise InviteError("invalid", "the invite names no relay")
    now = int(time.time() * 1000) if now_ms is None else now_ms
    if payload.expires_at <= now:
        raise InviteError("expired", "the invite has expired: ask for a new one")
    return payload


# -- URLs ------------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def invite_url(payload: InvitePayload) -> str:
    return URL_PREFIX + _b64url(encode_payload(payload))


def is_url(text: str) -> bool:
    return "://" in text


def parse_url(url: str, *, now_ms: int | None = None) -> InvitePayload:
    parts = urlsplit(url.strip())
    if parts.scheme != "zerok" or parts.netloc != "sync":
        raise InviteError("invalid", f"not a 0k-Sync invite URL (expected {URL_PREFIX}...)")
    values = parse_qs(parts.query).get("invite")
    if not values:
        raise InviteError("invalid", "the invite URL has no invite= parameter")
    try:
        raw = _unb64url(values[0])
    except (binascii.Error, ValueError):
        raise InviteError("mistyped", "the invite URL is damaged (bad base64)") from None
    return decode_payload(raw, now_ms=now_ms)


# -- short codes -----------------------------------------------------------------------------


def _luhn_check(values: list[int]) -> int:
    """Luhn mod N check value for N = 32: detects every single wrong character."""
    total = 0
    factor = 2
    for value in reversed(values):
        addend = factor * value
        total += addend // 32 + addend % 32
        factor = 3 - factor
    return (32 - total % 32) % 32


def new_short_code() -> str:
    values = [secrets.randbelow(32) for _ in range(CODE_CHARS - 1)]
    values.append(_luhn_check(values))
    text = "".join(ALPHABET[v] for v in values)
    return "-".join(text[i : i + 4] for i in range(0, CODE_CHARS, 4))


def normalize_code(code: str) -> str:
    """The canonical 16 characters of a short code; InviteError('mistyped') if it is not one."""
    text = "".join(code.split()).replace("-", "").upper()
    if len(text) != CODE_CHARS:
        raise InviteError(
            "mistyped",
            f"a short code has {CODE_CHARS} characters (XXXX-XXXX-XXXX-XXXX); got {len(text)}",
        )
    bad = sorted({c for c in text if c not in _DECODE})
    if bad:
        raise InviteError("mistyped", f"a short code cannot contain {', '.join(bad)}")
    values = [_DECODE[c] for c in text]
    if _luhn_check(values[:-1]) != values[-1]:
        raise InviteError("mistyped", "the short code is mistyped: check each character")
    return "".join(ALPHABET[v] for v in values)


def code_lookup(code: str) -> str:
    return normalize_code(code)[:LOOKUP_CHARS]


def _code_key(canonical: str) -> bytes:
    salt = hashlib.sha256(_CODE_SALT + canonical[:LOOKUP_CHARS].encode()).digest()[:16]
    params = KdfParams(salt=salt, **CODE_KDF)  # type: ignore[arg-type]
    return params.derive(canonical)


def seal_for_code(code: str, payload: InvitePayload) -> bytes:
    canonical = normalize_code(code)
    nonce = os.urandom(24)
    aad = _CODE_AAD + canonical[:LOOKUP_CHARS].encode()
    sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(
        encode_payload(payload), aad, nonce, _code_key(canonical)
    )
    return nonce + sealed


def open_with_code(code: str, sealed: bytes, *, now_ms: int | None = None) -> InvitePayload:
    canonical = normalize_code(code)
    aad = _CODE_AAD + canonical[:LOOKUP_CHARS].encode()
    try:
        plain = crypto_aead_xchacha20poly1305_ietf_decrypt(
            sealed[24:], aad, sealed[:24], _code_key(canonical)
        )
    except (NaclCryptoError, ValueError):
        raise InviteError(
            "wrong", "the short code is wrong: its last characters do not open the invite"
        ) from None
    return decode_payload(plain, now_ms=now_ms)


@dataclass(frozen=True)
class Invite:
    """An invite made by ``SyncClient.create_invite``."""

    url: str
    short_code: str
    expires_at: float  # seconds since the Unix epoch
    relay: str  # the relay whose mailbox holds the short code's sealed invite
    ticket: bytes = b""  # the ticket's public key, as in the log's Invite entry (to cancel)

    def qr(self) -> str:
        """The URL as a QR code drawn with block characters, for a terminal."""
        out = io.StringIO()
        segno.make(self.url, error="m").terminal(out=out, compact=True, border=2)
        return out.getvalue()

    def qr_png(self, path: str | os.PathLike[str], *, scale: int = 8) -> None:
        segno.make(self.url, error="m").save(os.fspath(path), kind="png", scale=scale)

    def qr_svg(self, path: str | os.PathLike[str], *, scale: int = 8) -> None:
        segno.make(self.url, error="m").save(os.fspath(path), kind="svg", scale=scale)
