"""Noise HandshakeState (spec §5.3) running any pattern of ``patterns.py``.

DH is X25519 and the KEM of ``hfs`` patterns is ML-KEM-768, both from pyca/cryptography.
The engine is generic so that it can be checked against the published vectors for every
pattern they cover; 0k-Sync itself uses ``XX`` and ``XXhfs``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from zerok.crypto.noise.patterns import HandshakePattern, pattern_by_name
from zerok.crypto.noise.symmetric import MAX_MESSAGE, TAGLEN, CipherState, SymmetricState
from zerok.errors import DecryptionError, HandshakeError

DHLEN = 32
KEM_PUBLIC_LEN = 1184  # ML-KEM-768 encapsulation key
KEM_CIPHERTEXT_LEN = 1088
PSKLEN = 32

_NAME = re.compile(r"Noise_([A-Za-z0-9+]+)_25519(\+MLKEM768)?_ChaChaPoly_BLAKE2s")


@dataclass(frozen=True)
class HandshakeResult:
    """What a completed handshake leaves: the transport keys and the channel binding."""

    send: CipherState
    receive: CipherState
    handshake_hash: bytes
    remote_static: bytes | None


def _public(key: x25519.X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


class HandshakeState:
    """One side of one Noise handshake. Call write_message/read_message in pattern order."""

    def __init__(
        self,
        protocol_name: str,
        *,
        initiator: bool,
        prologue: bytes = b"",
        static: x25519.X25519PrivateKey | None = None,
        ephemeral: x25519.X25519PrivateKey | None = None,
        remote_static: bytes | None = None,
        remote_ephemeral: bytes | None = None,
        psks: Sequence[bytes] = (),
    ) -> None:
        match = _NAME.fullmatch(protocol_name)
        if match is None:
            raise HandshakeError(
                f"unsupported Noise protocol {protocol_name!r}: only 25519[+MLKEM768], "
                "ChaChaPoly and BLAKE2s are implemented"
            )
        self.pattern: HandshakePattern = pattern_by_name(match.group(1))
        if self.pattern.uses_kem != bool(match.group(2)):
            raise HandshakeError(
                f"{protocol_name}: hfs patterns need the +MLKEM768 KEM and only they"
            )
        if any(len(p) != PSKLEN for p in psks):
            raise HandshakeError("every PSK must be 32 bytes")
        self.protocol_name = protocol_name
        self.initiator = initiator
        self._psks = list(psks)
        self._s = static
        self._preset_e = ephemeral
        self._e: x25519.X25519PrivateKey | None = None
        self._rs = remote_static
        self._re = remote_ephemeral
        self._kem: mlkem.MLKEM768PrivateKey | None = None
        self._rkem: mlkem.MLKEM768PublicKey | None = None
        self._ss = SymmetricState(protocol_name.encode("ascii"))
        self._ss.mix_hash(prologue)
        self._step = 0
        self._result: HandshakeResult | None = None
        self._failed = False
        self._hash_premessages()

    def _hash_premessages(self) -> None:
        for side_is_initiator, tokens in (
            (True, self.pattern.initiator_pre),
            (False, self.pattern.responder_pre),
        ):
            local = side_is_initiator == self.initiator
            for token in tokens:
                if token == "s":
                    key = _public(self._s) if local and self._s else self._rs if not local else None
                    if key is None:
                        raise HandshakeError(
                            f"{self.protocol_name} needs the {token} pre-message key"
                        )
                    self._ss.mix_hash(key)
                elif token == "e":
                    if local:
                        self._e = self._preset_e
                        key = _public(self._e) if self._e else None
                    else:
                        key = self._re
                    if key is None:
                        raise HandshakeError(f"{self.protocol_name} needs the e pre-message key")
                    self._ss.mix_hash(key)
                    if self.pattern.uses_psk:
                        self._ss.mix_key(key)

    # -- state -------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return self._result is not None

    @property
    def result(self) -> HandshakeResult:
        if self._result is None:
            raise HandshakeError("the handshake is not complete")
        return self._result

    @property
    def handshake_hash(self) -> bytes:
        return self._ss.h

    @property
    def remote_static(self) -> bytes | None:
        return self._rs

    def my_turn(self) -> bool:
        """Whether the next handshake message is ours to write."""
        if self.complete or self._failed:
            return False
        return self.pattern.messages[self._step].from_initiator == self.initiator

    def _next_pattern(self, writing: bool) -> tuple[str, ...]:
        if self._failed:
            raise HandshakeError("this handshake already failed; start a new one")
        if self.complete:
            raise HandshakeError("the handshake is already complete")
        msg = self.pattern.messages[self._step]
        if (msg.from_initiator == self.initiator) != writing:
            raise HandshakeError(
                "out of turn: expected to " + ("read" if writing else "write") + " a message"
            )
        self._step += 1
        return msg.tokens

    def _finish_if_done(self) -> None:
        if self._step == len(self.pattern.messages):
            c1, c2 = self._ss.split()
            send, receive = (c1, c2) if self.initiator else (c2, c1)
            self._result = HandshakeResult(send, receive, self._ss.h, self._rs)

    # -- DH and KEM ------------------------------------------------------------------------

    def _dh(self, token: str) -> bytes:
        mine, theirs = token[0], token[1]
        if not self.initiator:
            mine, theirs = theirs, mine
        local = self._e if mine == "e" else self._s
        remote = self._re if theirs == "e" else self._rs
        if local is None or remote is None:
            raise HandshakeError(f"missing key for {token}")
        try:
            return local.exchange(x25519.X25519PublicKey.from_public_bytes(remote))
        except ValueError:
            raise HandshakeError("the peer sent an invalid X25519 public key") from None

    def _psk(self) -> bytes:
        if not self._psks:
            raise HandshakeError(f"{self.protocol_name} needs more PSKs")
        return self._psks.pop(0)

    # -- messages --------------------------------------------------------------------------

    def write_message(self, payload: bytes = b"") -> bytes:
        out = bytearray()
        for token in self._next_pattern(writing=True):
            if token == "e":
                self._e = self._preset_e or x25519.X25519PrivateKey.generate()
                pub = _public(self._e)
                out += pub
                self._ss.mix_hash(pub)
                if self.pattern.uses_psk:
                    self._ss.mix_key(pub)
            elif token == "s":
                if self._s is None:
                    raise HandshakeError(f"{self.protocol_name} needs a local static key")
                out += self._ss.encrypt_and_hash(_public(self._s))
            elif token == "psk":
                self._ss.mix_key_and_hash(self._psk())
            elif token == "e1":
                self._kem = mlkem.MLKEM768PrivateKey.generate()
                out += self._ss.encrypt_and_hash(self._kem.public_key().public_bytes_raw())
            elif token == "ekem1":
                if self._rkem is None:
                    raise HandshakeError("ekem1 before the peer's e1")
                secret, ciphertext = self._rkem.encapsulate()
                out += self._ss.encrypt_and_hash(ciphertext)
                self._ss.mix_key(secret)
            else:
                self._ss.mix_key(self._dh(token))
        out += self._ss.encrypt_and_hash(payload)
        if len(out) > MAX_MESSAGE:
            raise HandshakeError(f"handshake message of {len(out)} bytes exceeds {MAX_MESSAGE}")
        self._finish_if_done()
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        """Process a peer's handshake message and return its payload.

        Raises HandshakeError on any defect; the handshake is then unusable.
        """
        try:
            return self._read(message)
        except (HandshakeError, DecryptionError) as exc:
            self._failed = True
            raise HandshakeError(f"handshake failed: {exc}") from None

    def _take(self, buf: memoryview, pos: int, size: int) -> tuple[bytes, int]:
        if pos + size > len(buf):
            raise HandshakeError("message too short")
        return bytes(buf[pos : pos + size]), pos + size

    def _read(self, message: bytes) -> bytes:
        if len(message) > MAX_MESSAGE:
            raise HandshakeError(f"message of {len(message)} bytes exceeds {MAX_MESSAGE}")
        buf = memoryview(message)
        pos = 0
        tag = TAGLEN if self._ss.cipher.has_key() else 0
        for token in self._next_pattern(writing=False):
            tag = TAGLEN if self._ss.cipher.has_key() else 0
            if token == "e":
                self._re, pos = self._take(buf, pos, DHLEN)
                self._ss.mix_hash(self._re)
                if self.pattern.uses_psk:
                    self._ss.mix_key(self._re)
            elif token == "s":
                chunk, pos = self._take(buf, pos, DHLEN + tag)
                self._rs = self._ss.decrypt_and_hash(chunk)
            elif token == "psk":
                self._ss.mix_key_and_hash(self._psk())
            elif token == "e1":
                chunk, pos = self._take(buf, pos, KEM_PUBLIC_LEN + tag)
                try:
                    self._rkem = mlkem.MLKEM768PublicKey.from_public_bytes(
                        self._ss.decrypt_and_hash(chunk)
                    )
                except ValueError:
                    raise HandshakeError("the peer sent an invalid ML-KEM public key") from None
            elif token == "ekem1":
                chunk, pos = self._take(buf, pos, KEM_CIPHERTEXT_LEN + tag)
                ciphertext = self._ss.decrypt_and_hash(chunk)
                if self._kem is None:
                    raise HandshakeError("ekem1 without our e1")
                try:
                    secret = self._kem.decapsulate(ciphertext)
                except ValueError:
                    raise HandshakeError("the peer sent an invalid ML-KEM ciphertext") from None
                self._ss.mix_key(secret)
            else:
                self._ss.mix_key(self._dh(token))
        payload = self._ss.decrypt_and_hash(bytes(buf[pos:]))
        self._finish_if_done()
        return payload
