"""Identifiers: fixed-length byte strings with a base32 display form.

Ids are ``bytes`` subclasses so they compare, hash and store like bytes; ``str(id)`` gives
the canonical lowercase, unpadded RFC 4648 base32 form, and ``parse`` also accepts
base64url (the two encodings have different lengths for every id size, so it is unambiguous).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from typing import ClassVar, Self

from zerok.errors import WireError

_B32 = re.compile(r"[A-Za-z2-7]*")
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


def _b32encode(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def _b32decode(text: str) -> bytes:
    padded = text.upper() + "=" * (-len(text) % 8)
    return base64.b32decode(padded)


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class FixedId(bytes):
    """A fixed-length identifier; subclasses set SIZE."""

    SIZE: ClassVar[int] = 0

    def __new__(cls, value: bytes) -> Self:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise WireError(f"{cls.__name__} must be bytes, not {type(value).__name__}")
        raw = bytes(value)
        if len(raw) != cls.SIZE:
            raise WireError(f"{cls.__name__} must be {cls.SIZE} bytes, got {len(raw)}")
        return super().__new__(cls, raw)

    @classmethod
    def random(cls) -> Self:
        return cls(os.urandom(cls.SIZE))

    @classmethod
    def parse(cls, text: str) -> Self:
        """Parse the base32 (canonical) or base64url form; raise WireError if neither fits."""
        text = text.strip()
        b32_len = len(_b32encode(bytes(cls.SIZE)))
        b64_len = len(base64.urlsafe_b64encode(bytes(cls.SIZE)).rstrip(b"="))
        try:
            if len(text) == b32_len and _B32.fullmatch(text):
                return cls(_b32decode(text))
            if len(text) == b64_len and _B64URL.fullmatch(text):
                return cls(_b64url_decode(text))
        except (binascii.Error, ValueError) as exc:
            raise WireError(f"not a valid {cls.__name__}: {text!r}") from exc
        raise WireError(
            f"not a valid {cls.__name__}: expected {b32_len} base32 or {b64_len} base64url "
            f"characters, got {text!r}"
        )

    @property
    def b32(self) -> str:
        return _b32encode(self)

    @property
    def b64(self) -> str:
        return base64.urlsafe_b64encode(self).decode("ascii").rstrip("=")

    def short(self) -> str:
        """First 8 base32 characters: enough for people to tell devices apart."""
        return self.b32[:8]

    def __str__(self) -> str:
        return self.b32

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.b32!r})"


class DeviceId(FixedId):
    """A device's X25519 public key (its Noise static key)."""

    SIZE = 32


class GroupId(FixedId):
    """Public identifier of a sync group: the hash of its log's first entry (its genesis)."""

    SIZE = 32


class BlobId(FixedId):
    """Client-made random identifier of one blob; makes PUSH idempotent."""

    SIZE = 16
