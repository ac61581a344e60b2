"""Group keys: the root key (random or Argon2id of a passphrase) and what derives from it.

Every key is HKDF-SHA256(ikm = root key, salt = empty, info = label, 32 bytes) with one
distinct label each, so knowing one derived value (the public group id) tells nothing about
the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from argon2.low_level import Type, hash_secret_raw
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from zerok.errors import CryptoError
from zerok.wire.ids import GroupId

ROOT_KEY_BYTES = 32
SALT_BYTES = 16

LABEL_GROUP_ID = b"0k-sync/v1/group-id"
LABEL_BLOB_KEY = b"0k-sync/v1/blob-key"
LABEL_GROUP_AUTH = b"0k-sync/v1/group-auth"
LABEL_CONTENT_KEY = b"0k-sync/v1/content-key"

# Bounds on parameters that arrive in invites: enough for any sane choice, and small enough
# that a malicious invite cannot make a device spend gigabytes or minutes.
MIN_MEMORY_KIB, MAX_MEMORY_KIB = 8 * 1024, 1024 * 1024
MAX_ITERATIONS = 16
MAX_PARALLELISM = 8


def hkdf_sha256(ikm: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(ikm)


@dataclass(frozen=True)
class KdfParams:
    """Argon2id parameters chosen by a group's creator; they travel with the group."""

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

    @classmethod
    def default(cls) -> KdfParams:
        """64 MiB, t=3, p=1 (docs/protocol.md §8.1)."""
        return cls()

    @classmethod
    def mobile(cls) -> KdfParams:
        """A lighter preset for phones: 19 MiB, t=2, p=1 (OWASP's Argon2id minimum)."""
        return cls(memory_kib=19 * 1024, iterations=2)

    def to_dict(self) -> dict[str, Any]:
        return {
            "algorithm": self.algorithm,
            "salt": self.salt.hex(),
            "memory_kib": self.memory_kib,
            "iterations": self.iterations,
            "parallelism": self.parallelism,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> KdfParams:
        """Parameters from an invite or a stored group; CryptoError if anything is off."""
        try:
            numbers = {k: doc[k] for k in ("memory_kib", "iterations", "parallelism")}
            for key, value in numbers.items():
                if type(value) is not int:
                    raise TypeError(f"{key} must be an integer, not {value!r}")
            return cls(
                salt=bytes.fromhex(doc["salt"]),
                algorithm=str(doc["algorithm"]),
                **numbers,
            )
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise CryptoError(f"invalid KDF parameters: {exc}") from None

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
            hash_len=ROOT_KEY_BYTES,
            type=Type.ID,
        )


class GroupKeys:
    """A group's root key and every key derived from it."""

    def __init__(self, root_key: bytes, kdf: KdfParams | None = None) -> None:
        if len(root_key) != ROOT_KEY_BYTES:
            raise CryptoError(f"a group root key is {ROOT_KEY_BYTES} bytes, got {len(root_key)}")
        self.root_key = bytes(root_key)
        self.kdf = kdf  # set when the root key came from a passphrase
        self.group_id = GroupId(hkdf_sha256(root_key, LABEL_GROUP_ID))
        self.blob_key = hkdf_sha256(root_key, LABEL_BLOB_KEY)
        self.content_key = hkdf_sha256(root_key, LABEL_CONTENT_KEY)
        self.auth_key = ed25519.Ed25519PrivateKey.from_private_bytes(
            hkdf_sha256(root_key, LABEL_GROUP_AUTH)
        )
        self.auth_public = self.auth_key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> GroupKeys:
        return cls(os.urandom(ROOT_KEY_BYTES))

    @classmethod
    def from_passphrase(cls, passphrase: str | bytes, kdf: KdfParams | None = None) -> GroupKeys:
        params = kdf or KdfParams.default()
        return cls(params.derive(passphrase), params)

    def __repr__(self) -> str:
        return f"GroupKeys(group_id={self.group_id.short()}…)"
