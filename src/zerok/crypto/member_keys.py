"""The two keys a member of a group's log has: an Ed25519 signing key (its entries, its
HELLO proofs) and an X-Wing key that epoch keys are wrapped for. Devices and the recovery
key both derive them from one secret with HKDF, each with its own labels, so no file holds
more than that secret."""

from __future__ import annotations

from functools import cached_property
from typing import ClassVar

from cryptography.hazmat.primitives.asymmetric import ed25519

from zerok.crypto.keys import hkdf_sha256
from zerok.crypto.xwing import XWingPrivateKey


class MemberKeys:
    """Mixed into a holder of a secret; SIGN_LABEL and WRAP_LABEL say whose keys these are.
    Derived on first use and kept."""

    SIGN_LABEL: ClassVar[bytes]
    WRAP_LABEL: ClassVar[bytes]

    def member_secret(self) -> bytes:
        raise NotImplementedError

    @cached_property
    def sign_key(self) -> ed25519.Ed25519PrivateKey:
        """The Ed25519 key that signs log entries and HELLO proofs."""
        seed = hkdf_sha256(self.member_secret(), self.SIGN_LABEL)
        return ed25519.Ed25519PrivateKey.from_private_bytes(seed)

    @cached_property
    def sign_public(self) -> bytes:
        return self.sign_key.public_key().public_bytes_raw()

    @cached_property
    def wrap_key(self) -> XWingPrivateKey:
        """The X-Wing key that epoch keys are wrapped for."""
        return XWingPrivateKey.from_seed(hkdf_sha256(self.member_secret(), self.WRAP_LABEL))

    @cached_property
    def wrap_public(self) -> bytes:
        return self.wrap_key.public_bytes()

    def sign(self, message: bytes) -> bytes:
        """A 64-byte Ed25519 signature of ``message``."""
        return self.sign_key.sign(message)
