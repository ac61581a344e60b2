"""Noise CipherState and SymmetricState (spec §5.1–5.2) for ChaChaPoly and BLAKE2s.

The primitives are pyca/cryptography's ChaCha20-Poly1305 and the standard library's BLAKE2s
and HMAC; this module only arranges them as the Noise spec prescribes.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from zerok.errors import DecryptionError, NonceExhaustedError

HASHLEN = 32
TAGLEN = 16
MAX_NONCE = 2**64 - 1  # reserved by the spec: never used for a message
MAX_MESSAGE = 65535


def noise_hash(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def noise_hkdf(chaining_key: bytes, ikm: bytes, outputs: int) -> tuple[bytes, ...]:
    """HKDF as defined in Noise §4.3 (HMAC-BLAKE2s, 2 or 3 outputs)."""
    temp_key = _hmac(chaining_key, ikm)
    out1 = _hmac(temp_key, b"\x01")
    out2 = _hmac(temp_key, out1 + b"\x02")
    if outputs == 2:
        return out1, out2
    return out1, out2, _hmac(temp_key, out2 + b"\x03")


def _nonce(n: int) -> bytes:
    return b"\x00\x00\x00\x00" + n.to_bytes(8, "little")


class CipherState:
    """A key and a 64-bit nonce counter; encrypts with ChaCha20-Poly1305."""

    __slots__ = ("_aead", "_key", "n")

    def __init__(self, key: bytes | None = None) -> None:
        self._key: bytes | None = None
        self._aead: ChaCha20Poly1305 | None = None
        self.n = 0
        self.initialize_key(key)

    def initialize_key(self, key: bytes | None) -> None:
        self._key = key
        self._aead = ChaCha20Poly1305(key) if key is not None else None
        self.n = 0

    def has_key(self) -> bool:
        return self._aead is not None

    def _next_nonce(self) -> int:
        if self.n >= MAX_NONCE:
            raise NonceExhaustedError("Noise nonce exhausted: reconnect to start a new session")
        return self.n

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self._aead is None:
            return plaintext
        out = self._aead.encrypt(_nonce(self._next_nonce()), plaintext, ad)
        self.n += 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self._aead is None:
            return ciphertext
        try:
            out = self._aead.decrypt(_nonce(self._next_nonce()), ciphertext, ad)
        except InvalidTag:
            raise DecryptionError("Noise message failed authentication") from None
        self.n += 1
        return out

    def rekey(self) -> None:
        """REKEY(k) = ENCRYPT(k, maxnonce, zerolen, zeros)[:32] (spec §4.2); n is kept."""
        if self._aead is None:
            raise NonceExhaustedError("cannot rekey a cipher state without a key")
        n = self.n
        self.initialize_key(self._aead.encrypt(_nonce(MAX_NONCE), bytes(32), b"")[:32])
        self.n = n


class SymmetricState:
    """Chaining key, handshake hash and the handshake's CipherState."""

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASHLEN:
            self.h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            self.h = noise_hash(protocol_name)
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = noise_hkdf(self.ck, ikm, 2)
        self.cipher.initialize_key(temp_k)

    def mix_hash(self, data: bytes) -> None:
        self.h = noise_hash(self.h + data)

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, temp_h, temp_k = noise_hkdf(self.ck, ikm, 3)
        self.mix_hash(temp_h)
        self.cipher.initialize_key(temp_k)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        k1, k2 = noise_hkdf(self.ck, b"", 2)
        return CipherState(k1), CipherState(k2)
