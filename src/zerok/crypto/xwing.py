"""X-Wing: the hybrid KEM X25519 + ML-KEM-768 (draft-connolly-cfrg-xwing-kem; HPKE KEM 0x647A).

The private key is a 32-byte seed, expanded with SHAKE256 into the ML-KEM-768 seed (d ‖ z)
and the X25519 private key. The shared secret is

    SHA3-256(ss_M ‖ ss_X ‖ ct_X ‖ pk_X ‖ "\\.//^\\")

with the label LAST, as in the current draft (early drafts put it first; their vectors
differ). A secret stays safe while either X25519 or ML-KEM-768 does.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from zerok.errors import CryptoError

SEED_BYTES = 32
PUBLIC_KEY_BYTES = 1216
CIPHERTEXT_BYTES = 1120
SHARED_SECRET_BYTES = 32

MLKEM_PUBLIC_KEY_BYTES = 1184
MLKEM_CIPHERTEXT_BYTES = 1088
X25519_BYTES = 32

XWING_LABEL = bytes.fromhex("5c2e2f2f5e5c")  # "\./" "/^\"


def _shake256(data: bytes, length: int) -> bytes:
    digest = hashes.Hash(hashes.SHAKE256(digest_size=length))
    digest.update(data)
    return digest.finalize()


def _combine(ss_m: bytes, ss_x: bytes, ct_x: bytes, pk_x: bytes) -> bytes:
    # pk_X and ct_X go into the hash because ML-KEM's ciphertext is bound by ss_M already,
    # X25519's is not (the X-Wing paper's argument for hashing only these).
    digest = hashes.Hash(hashes.SHA3_256())
    for part in (ss_m, ss_x, ct_x, pk_x, XWING_LABEL):
        digest.update(part)
    return digest.finalize()


def _x25519(private_key: x25519.X25519PrivateKey, public_raw: bytes) -> bytes:
    try:
        return private_key.exchange(x25519.X25519PublicKey.from_public_bytes(public_raw))
    except ValueError:
        # pyca refuses an all-zero result: the peer sent a low-order point.
        raise CryptoError(
            "X-Wing: the X25519 share is a low-order point (all-zero shared secret)"
        ) from None


class XWingPrivateKey:
    """An X-Wing decapsulation key; the 32-byte seed is all there is to store."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_BYTES:
            raise CryptoError(f"an X-Wing private key seed is {SEED_BYTES} bytes, got {len(seed)}")
        self._seed = bytes(seed)
        expanded = _shake256(self._seed, 96)
        self._mlkem = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[0:64])
        self._x25519 = x25519.X25519PrivateKey.from_private_bytes(expanded[64:96])
        self._pk_x = self._x25519.public_key().public_bytes_raw()
        self._public = self._mlkem.public_key().public_bytes_raw() + self._pk_x

    @classmethod
    def from_seed(cls, seed: bytes) -> XWingPrivateKey:
        return cls(seed)

    @classmethod
    def generate(cls) -> XWingPrivateKey:
        return cls(os.urandom(SEED_BYTES))

    def seed_bytes(self) -> bytes:
        """The 32-byte seed: the whole private key, to store it."""
        return self._seed

    def public_bytes(self) -> bytes:
        """pk_M (1184 bytes) ‖ pk_X (32 bytes)."""
        return self._public

    def decapsulate(self, ciphertext: bytes) -> bytes:
        """The 32-byte shared secret. A modified ML-KEM part gives a different secret (implicit
        rejection), never an error; the caller's AEAD is what notices."""
        if len(ciphertext) != CIPHERTEXT_BYTES:
            raise CryptoError(
                f"an X-Wing ciphertext is {CIPHERTEXT_BYTES} bytes, got {len(ciphertext)}"
            )
        ct_m, ct_x = ciphertext[:MLKEM_CIPHERTEXT_BYTES], ciphertext[MLKEM_CIPHERTEXT_BYTES:]
        ss_m = self._mlkem.decapsulate(ct_m)
        ss_x = _x25519(self._x25519, ct_x)
        return _combine(ss_m, ss_x, ct_x, self._pk_x)

    def __repr__(self) -> str:
        return f"XWingPrivateKey(public={self._public[-X25519_BYTES:].hex()[:16]}…)"


def encapsulate(public_key: bytes) -> tuple[bytes, bytes]:
    """(shared secret, ciphertext) for the holder of ``public_key``'s private key."""
    return _encapsulate(public_key, x25519.X25519PrivateKey.generate())


def _encapsulate(public_key: bytes, ephemeral: x25519.X25519PrivateKey) -> tuple[bytes, bytes]:
    # Split out so a test can pin the X25519 half to a published vector's eseed; pyca's
    # ML-KEM encapsulation takes no caller randomness, so that half cannot be pinned.
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise CryptoError(
            f"an X-Wing public key is {PUBLIC_KEY_BYTES} bytes, got {len(public_key)}"
        )
    pk_m, pk_x = public_key[:MLKEM_PUBLIC_KEY_BYTES], public_key[MLKEM_PUBLIC_KEY_BYTES:]
    try:
        # from_public_bytes runs FIPS 203's modulus check on the encapsulation key.
        mlkem_public = mlkem.MLKEM768PublicKey.from_public_bytes(pk_m)
    except ValueError:
        raise CryptoError("X-Wing: the ML-KEM-768 part of the public key is invalid") from None
    ct_x = ephemeral.public_key().public_bytes_raw()
    ss_x = _x25519(ephemeral, pk_x)
    ss_m, ct_m = mlkem_public.encapsulate()
    return _combine(ss_m, ss_x, ct_x, pk_x), ct_m + ct_x
