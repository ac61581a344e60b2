"""Key derivation: HKDF-SHA256 (every derived key of device, recovery and epoch keys), and
Argon2id with bounded parameters (the stretching of invite short codes).

Every derived key is HKDF-SHA256(ikm, salt = empty, info = label, 32 bytes) with one
distinct label each, so knowing one derived value tells nothing about the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from argon2.low_level import Type, hash_secret_raw
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from zerok.errors import CryptoError

KEY_BYTES = 32
SALT_BYTES = 16


# Bounds on parameters that arrive in invites: enough for any sane choice, and small enough
# that a malicious invite cannot make a device spend gigabytes or minutes.
MIN_MEMORY_KIB, MAX_MEMORY_KIB = 8 * 1024, 1024 * 1024
MAX_ITERATIONS = 16
MAX_PARALLELISM = 8


def hkdf_sha256(ikm: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(ikm)


@dataclass(frozen=True)
class KdfParams:
    """Argon2id parameters, bounded: they may come from a peer, and must not make a device
    spend gigabytes or minutes."""

    salt: bytes = field(default_factory=lambda: os.urandom(SALT_BYTES))
    memory_kib: int = 64 * 1024
    iterations: int = 3
    parallelism: int = 1
    algorithm: str = "argon2id"

    def __post_init__(self) -> None:
        if self.algorithm != "argon2id":
            raise CryptoError(f"unsupported KDF {self.algorithm!r}; only argon2id is known")
        if len(self.salt) != SALT_BYTES:
            raise CryptoError(f"KDF salt must be {SALT_BYTES} bytes")
        if not MIN_MEMORY_KIB <= self.memory_kib <= MAX_MEMORY_KIB:
            raise CryptoError(f"Argon2id memory must be {MIN_MEMORY_KIB}..{MAX_MEMORY_KIB} KiB")
        if not 1 <= self.iterations <= MAX_ITERATIONS:
            raise CryptoError(f"Argon2id iterations must be 1..{MAX_ITERATIONS}")
        if not 1 <= self.parallelism <= MAX_PARALLELISM:
            raise CryptoError(f"Argon2id parallelism must be 1..{MAX_PARALLELISM}")

    def derive(self, passphrase: str | bytes) -> bytes:
        try:
            secret = passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
        except UnicodeEncodeError:
            raise CryptoError(
                "the passphrase is not valid text (it cannot be UTF-8 encoded)"
            ) from None
        if not secret:
            raise CryptoError("the passphrase is empty")
        return hash_secret_raw(
            secret,
            self.salt,
            time_cost=self.iterations,
            memory_cost=self.memory_kib,
            parallelism=self.parallelism,
            hash_len=KEY_BYTES,
            type=Type.ID,
        )
