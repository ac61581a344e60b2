"""Hashing and signing membership log entries.

An entry's hash, which the next entry names as ``prev`` (and which, for the genesis, is
the group id), and its signatures are over the body's bytes as received, each prefixed by
its own context string so that no signature made for one purpose verifies for another:

    hash        = SHA-256("0k-sync/v2/entry" ‖ 0x00 ‖ body)
    sig         = Ed25519(author,     "0k-sync/v2/entry-sig" ‖ 0x00 ‖ body)
    ticket_sig  = Ed25519(ticket key, "0k-sync/v2/ticket-sig" ‖ 0x00 ‖ body)   (enroll only)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import ed25519
from nacl.exceptions import BadSignatureError
from nacl.exceptions import ValueError as NaclValueError
from nacl.signing import VerifyKey

from zerok.wire.log import SignedEntry

HASH_CONTEXT = b"0k-sync/v2/entry\x00"
SIG_CONTEXT = b"0k-sync/v2/entry-sig\x00"
TICKET_CONTEXT = b"0k-sync/v2/ticket-sig\x00"

Signer = Callable[[bytes], bytes]


def entry_hash(body: bytes) -> bytes:
    return hashlib.sha256(HASH_CONTEXT + body).digest()


def sign_entry(body: bytes, author: Signer, *, ticket: Signer | None = None) -> SignedEntry:
    """Sign ``body`` (encoded) with the author's key, and the ticket's for an enrollment."""
    return SignedEntry(
        body=body,
        sig=author(SIG_CONTEXT + body),
        ticket_sig=ticket(TICKET_CONTEXT + body) if ticket is not None else b"",
    )


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Ed25519 with libsodium's rules, which refuse small-order public keys: with one of
    those a forged signature would verify for any message (OpenSSL accepts them)."""
    try:
        VerifyKey(bytes(public_key)).verify(message, bytes(signature))
    except (BadSignatureError, NaclValueError, ValueError):
        return False
    return True


def author_signed(entry: SignedEntry, author: bytes) -> bool:
    return verify(author, SIG_CONTEXT + entry.body, entry.sig)


def ticket_signed(entry: SignedEntry, ticket: bytes) -> bool:
    return len(entry.ticket_sig) == 64 and verify(
        ticket, TICKET_CONTEXT + entry.body, entry.ticket_sig
    )


class TicketKey:
    """The one-use key an invite carries: whoever holds its seed may enroll one device."""

    def __init__(self, seed: bytes) -> None:
        self.seed = bytes(seed)
        self._key = ed25519.Ed25519PrivateKey.from_private_bytes(self.seed)
        self.public = self._key.public_key().public_bytes_raw()

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)
