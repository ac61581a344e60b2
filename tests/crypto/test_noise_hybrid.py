"""The hybrid handshake ``Noise_XXhfs_25519+MLKEM768_ChaChaPoly_BLAKE2s`` and the hfs rules.

There are no published vectors for XXhfs with ML-KEM-768, so besides round trips, sizes and
tampering, the engine is checked against a small reference written here directly from the
Noise spec (§5) and the HFS extension, using only the primitives.
"""

from __future__ import annotations

import hashlib
import hmac
import random
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from zerok.crypto.noise import HandshakePattern, HandshakeState, pattern_by_name
from zerok.crypto.noise.patterns import MessagePattern
from zerok.errors import DecryptionError, HandshakeError

HYBRID = "Noise_XXhfs_25519+MLKEM768_ChaChaPoly_BLAKE2s"
CLASSIC = "Noise_XX_25519_ChaChaPoly_BLAKE2s"
PROLOGUE = b"0k-sync/v1 hybrid test"

KEM_PUB = 1184
KEM_CT = 1088
TAG = 16
DH = 32


def _pub(key: x25519.X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def _pair(
    protocol: str = HYBRID,
    *,
    prologue: bytes = PROLOGUE,
    resp_protocol: str | None = None,
    resp_prologue: bytes | None = None,
) -> tuple[HandshakeState, HandshakeState]:
    initiator = HandshakeState(
        protocol,
        initiator=True,
        prologue=prologue,
        static=x25519.X25519PrivateKey.generate(),
    )
    responder = HandshakeState(
        resp_protocol or protocol,
        initiator=False,
        prologue=prologue if resp_prologue is None else resp_prologue,
        static=x25519.X25519PrivateKey.generate(),
    )
    return initiator, responder


Tamper = Callable[[int, bytes], bytes]


def _run(
    initiator: HandshakeState,
    responder: HandshakeState,
    payloads: list[bytes],
    tamper: Tamper | None = None,
    *,
    check_payloads: bool = True,
) -> list[bytes]:
    """Run the handshake, passing each message through ``tamper(index, message)``.

    Returns the messages as written (before tampering). Checks payloads on the way unless
    tampering or told not to.
    """
    written: list[bytes] = []
    for index, payload in enumerate(payloads):
        writer, reader = (initiator, responder) if initiator.my_turn() else (responder, initiator)
        message = writer.write_message(payload)
        written.append(message)
        delivered = tamper(index, message) if tamper else message
        received = reader.read_message(delivered)
        if tamper is None and check_payloads:
            assert received == payload
    return written


def _flip(position: int, bit: int = 0) -> Callable[[bytes], bytes]:
    def apply(message: bytes) -> bytes:
        buf = bytearray(message)
        buf[position % len(buf)] ^= 1 << bit
        return bytes(buf)

    return apply


def _only(target: int, change: Callable[[bytes], bytes]) -> Tamper:
    return lambda index, message: change(message) if index == target else message


# -- pattern ----------------------------------------------------------------------------


def _render(pattern: HandshakePattern) -> str:
    pre = []
    if pattern.initiator_pre:
        pre.append("-> " + ", ".join(pattern.initiator_pre))
    if pattern.responder_pre:
        pre.append("<- " + ", ".join(pattern.responder_pre))
    body = [("-> " if m.from_initiator else "<- ") + ", ".join(m.tokens) for m in pattern.messages]
    return " | ".join([*pre, "...", *body] if pre else body)


def test_xxhfs_tokens_are_exact() -> None:
    pattern = pattern_by_name("XXhfs")
    assert pattern.name == "XXhfs"
    assert pattern.initiator_pre == ()
    assert pattern.responder_pre == ()
    assert pattern.messages == (
        MessagePattern(True, ("e", "e1")),
        MessagePattern(False, ("e", "ee", "ekem1", "s", "es")),
        MessagePattern(True, ("s", "se")),
    )
    assert pattern.uses_kem
    assert not pattern.uses_psk
    assert not pattern.one_way
    assert not pattern_by_name("XX").uses_kem


# The HFS extension's table of the fundamental patterns with the "hfs" modifier
# (ext_hybrid_forward_secrecy.md §5; e1 follows the first "e" unless that message has a DH,
# then it follows the DH; ekem1 follows the first "ee").
HFS_TABLE = {
    "NNhfs": "-> e, e1 | <- e, ee, ekem1",
    "NKhfs": "<- s | ... | -> e, es, e1 | <- e, ee, ekem1",
    "NXhfs": "-> e, e1 | <- e, ee, ekem1, s, es",
    "XNhfs": "-> e, e1 | <- e, ee, ekem1 | -> s, se",
    "XKhfs": "<- s | ... | -> e, es, e1 | <- e, ee, ekem1 | -> s, se",
    "XXhfs": "-> e, e1 | <- e, ee, ekem1, s, es | -> s, se",
    "KNhfs": "-> s | ... | -> e, e1 | <- e, ee, ekem1, se",
    "KKhfs": "-> s | <- s | ... | -> e, es, e1, ss | <- e, ee, ekem1, se",
    "KXhfs": "-> s | ... | -> e, e1 | <- e, ee, ekem1, se, s, es",
    "INhfs": "-> e, e1, s | <- e, ee, ekem1, se",
    "IKhfs": "<- s | ... | -> e, es, e1, s, ss | <- e, ee, ekem1, se",
    "IXhfs": "-> e, e1, s | <- e, ee, ekem1, se, s, es",
    # Deferred patterns and combinations with psk.
    "NK1hfs": "<- s | ... | -> e, e1 | <- e, ee, ekem1, es",
    "XXpsk3+hfs": "-> e, e1 | <- e, ee, ekem1, s, es | -> s, se, psk",
    "NNpsk0+hfs": "-> psk, e, e1 | <- e, ee, ekem1",
    "NNpsk2+hfs": "-> e, e1 | <- e, ee, ekem1, psk",
}


@pytest.mark.parametrize(("name", "expected"), list(HFS_TABLE.items()))
def test_hfs_transformation(name: str, expected: str) -> None:
    pattern = pattern_by_name(name)
    assert _render(pattern) == expected
    assert pattern.name == name
    base = pattern_by_name(name.replace("+hfs", "").replace("hfs", ""))
    assert pattern.initiator_pre == base.initiator_pre
    assert pattern.responder_pre == base.responder_pre
    # hfs only adds tokens: removing e1/ekem1 gives back the base pattern.
    stripped = tuple(
        MessagePattern(m.from_initiator, tuple(t for t in m.tokens if t not in ("e1", "ekem1")))
        for m in pattern.messages
    )
    assert stripped == base.messages


@pytest.mark.parametrize("name", ["Nhfs", "Khfs", "Xhfs", "Npsk0+hfs"])
def test_hfs_rejects_one_way_patterns(name: str) -> None:
    with pytest.raises(HandshakeError):
        pattern_by_name(name)


@pytest.mark.parametrize("name", ["XXhfs2", "XXHFS", "YYhfs", "XX+hfs", "hfs", ""])
def test_bad_pattern_names(name: str) -> None:
    with pytest.raises(HandshakeError):
        pattern_by_name(name)


def test_kem_and_hfs_must_go_together() -> None:
    with pytest.raises(HandshakeError):
        HandshakeState("Noise_XXhfs_25519_ChaChaPoly_BLAKE2s", initiator=True)
    with pytest.raises(HandshakeError):
        HandshakeState("Noise_XX_25519+MLKEM768_ChaChaPoly_BLAKE2s", initiator=True)
    with pytest.raises(HandshakeError):
        HandshakeState("Noise_XXhfs_25519+Kyber1024_ChaChaPoly_BLAKE2s", initiator=True)


# -- round trip and sizes ---------------------------------------------------------------


@pytest.mark.parametrize("payload_sizes", [(0, 0, 0), (5, 17, 33), (1000, 2000, 3000)])
def test_xxhfs_round_trip_and_sizes(payload_sizes: tuple[int, int, int]) -> None:
    s_i, s_r = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    initiator = HandshakeState(HYBRID, initiator=True, prologue=PROLOGUE, static=s_i)
    responder = HandshakeState(HYBRID, initiator=False, prologue=PROLOGUE, static=s_r)
    payloads = [bytes([i + 1]) * n for i, n in enumerate(payload_sizes)]
    msg1, msg2, msg3 = _run(initiator, responder, payloads)
    p1, p2, p3 = payload_sizes
    assert len(msg1) == DH + KEM_PUB + p1
    assert len(msg2) == DH + (KEM_CT + TAG) + (DH + TAG) + p2 + TAG
    assert len(msg3) == (DH + TAG) + p3 + TAG
    # Message 1 has no key yet: the KEM public key and the payload travel in clear.
    assert msg1[DH + KEM_PUB :] == payloads[0]
    assert initiator.complete and responder.complete
    assert initiator.result.handshake_hash == responder.result.handshake_hash
    assert initiator.result.remote_static == _pub(s_r)
    assert responder.result.remote_static == _pub(s_i)
    # Transport keys match crosswise and differ between directions.
    assert responder.result.receive.decrypt_with_ad(
        b"", initiator.result.send.encrypt_with_ad(b"", b"to responder")
    ) == (b"to responder")
    assert initiator.result.receive.decrypt_with_ad(
        b"", responder.result.send.encrypt_with_ad(b"", b"to initiator")
    ) == (b"to initiator")
    a = initiator.result.send.encrypt_with_ad(b"", bytes(32))
    b = initiator.result.receive
    with pytest.raises(DecryptionError):
        b.decrypt_with_ad(b"", a)  # our own send key is not our receive key


def test_hybrid_and_classic_hashes_differ() -> None:
    s_i = x25519.X25519PrivateKey.generate()
    s_r = x25519.X25519PrivateKey.generate()
    hashes = []
    for protocol in (HYBRID, CLASSIC):
        i = HandshakeState(protocol, initiator=True, prologue=PROLOGUE, static=s_i)
        r = HandshakeState(protocol, initiator=False, prologue=PROLOGUE, static=s_r)
        _run(i, r, [b"a", b"b", b"c"])
        assert i.result.handshake_hash == r.result.handshake_hash
        hashes.append(i.result.handshake_hash)
    assert hashes[0] != hashes[1]


def test_two_hybrid_handshakes_give_different_keys() -> None:
    i1, r1 = _pair()
    i2, r2 = _pair()
    _run(i1, r1, [b"", b"", b""])
    _run(i2, r2, [b"", b"", b""])
    assert i1.result.handshake_hash != i2.result.handshake_hash
    assert i1.result.send.encrypt_with_ad(b"", b"x") != i2.result.send.encrypt_with_ad(b"", b"x")


@pytest.mark.parametrize("name", ["NNhfs", "NKhfs", "KKhfs", "IKhfs", "IXhfs", "XXpsk3+hfs"])
def test_other_hfs_patterns_round_trip(name: str) -> None:
    protocol = f"Noise_{name}_25519+MLKEM768_ChaChaPoly_BLAKE2s"
    pattern = pattern_by_name(name)
    s_i = x25519.X25519PrivateKey.generate()
    s_r = x25519.X25519PrivateKey.generate()
    psks = [bytes(range(32))] * name.count("psk")
    i = HandshakeState(
        protocol,
        initiator=True,
        prologue=PROLOGUE,
        static=s_i,
        remote_static=_pub(s_r) if "s" in pattern.responder_pre else None,
        psks=psks,
    )
    r = HandshakeState(
        protocol,
        initiator=False,
        prologue=PROLOGUE,
        static=s_r,
        remote_static=_pub(s_i) if "s" in pattern.initiator_pre else None,
        psks=psks,
    )
    payloads = [f"{name} #{n}".encode() for n in range(len(pattern.messages))]
    _run(i, r, payloads)
    assert i.result.handshake_hash == r.result.handshake_hash
    assert r.result.receive.decrypt_with_ad(b"", i.result.send.encrypt_with_ad(b"", b"t")) == b"t"
    if name == "NNhfs":
        assert i.result.remote_static is None and r.result.remote_static is None


def test_nnhfs_sizes() -> None:
    i = HandshakeState("Noise_NNhfs_25519+MLKEM768_ChaChaPoly_BLAKE2s", initiator=True)
    r = HandshakeState("Noise_NNhfs_25519+MLKEM768_ChaChaPoly_BLAKE2s", initiator=False)
    msg1, msg2 = _run(i, r, [b"abc", b"defg"])
    assert len(msg1) == DH + KEM_PUB + 3
    assert len(msg2) == DH + KEM_CT + TAG + 4 + TAG


def test_nkhfs_encrypts_the_kem_public_key() -> None:
    """In NKhfs, e1 follows es, so the KEM public key is encrypted (it carries a tag)."""
    s_r = x25519.X25519PrivateKey.generate()
    protocol = "Noise_NKhfs_25519+MLKEM768_ChaChaPoly_BLAKE2s"
    i = HandshakeState(protocol, initiator=True, remote_static=_pub(s_r))
    r = HandshakeState(protocol, initiator=False, static=s_r)
    msg1, msg2 = _run(i, r, [b"", b""])
    assert len(msg1) == DH + KEM_PUB + TAG + TAG
    assert len(msg2) == DH + KEM_CT + TAG + TAG


# -- an independent reference for XXhfs --------------------------------------------------


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2s).digest()


def _hkdf(ck: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    temp = _hmac(ck, ikm)
    out1 = _hmac(temp, b"\x01")
    return out1, _hmac(temp, out1 + b"\x02")


class _RefSymmetric:
    def __init__(self, name: bytes, prologue: bytes) -> None:
        self.h = name.ljust(32, b"\x00") if len(name) <= 32 else hashlib.blake2s(name).digest()
        self.ck = self.h
        self.k: bytes | None = None
        self.n = 0
        self.mix_hash(prologue)

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.blake2s(self.h + data).digest()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, self.k = _hkdf(self.ck, ikm)
        self.n = 0

    def _nonce(self) -> bytes:
        return bytes(4) + self.n.to_bytes(8, "little")

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        out = plaintext
        if self.k is not None:
            out = ChaCha20Poly1305(self.k).encrypt(self._nonce(), plaintext, self.h)
            self.n += 1
        self.mix_hash(out)
        return out

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        out = ciphertext
        if self.k is not None:
            out = ChaCha20Poly1305(self.k).decrypt(self._nonce(), ciphertext, self.h)
            self.n += 1
        self.mix_hash(ciphertext)
        return out

    def split(self) -> tuple[bytes, bytes]:
        return _hkdf(self.ck, b"")


class _RefInitiator:
    def __init__(self, static: x25519.X25519PrivateKey) -> None:
        self.ss = _RefSymmetric(HYBRID.encode(), PROLOGUE)
        self.s = static
        self.e = x25519.X25519PrivateKey.generate()
        self.kem = mlkem.MLKEM768PrivateKey.generate()

    def write1(self, payload: bytes) -> bytes:  # -> e, e1
        e_pub = _pub(self.e)
        self.ss.mix_hash(e_pub)
        out = e_pub + self.ss.encrypt_and_hash(self.kem.public_key().public_bytes_raw())
        return out + self.ss.encrypt_and_hash(payload)

    def read2(self, msg: bytes) -> bytes:  # <- e, ee, ekem1, s, es
        self.re = x25519.X25519PublicKey.from_public_bytes(msg[:DH])
        self.ss.mix_hash(msg[:DH])
        self.ss.mix_key(self.e.exchange(self.re))
        pos = DH + KEM_CT + TAG
        kem_ct = self.ss.decrypt_and_hash(msg[DH:pos])
        self.ss.mix_key(self.kem.decapsulate(kem_ct))
        self.rs = self.ss.decrypt_and_hash(msg[pos : pos + DH + TAG])
        self.ss.mix_key(self.e.exchange(x25519.X25519PublicKey.from_public_bytes(self.rs)))
        return self.ss.decrypt_and_hash(msg[pos + DH + TAG :])

    def write3(self, payload: bytes) -> bytes:  # -> s, se
        out = self.ss.encrypt_and_hash(_pub(self.s))
        self.ss.mix_key(self.s.exchange(self.re))
        return out + self.ss.encrypt_and_hash(payload)


class _RefResponder:
    def __init__(self, static: x25519.X25519PrivateKey) -> None:
        self.ss = _RefSymmetric(HYBRID.encode(), PROLOGUE)
        self.s = static
        self.e = x25519.X25519PrivateKey.generate()

    def read1(self, msg: bytes) -> bytes:
        self.re = x25519.X25519PublicKey.from_public_bytes(msg[:DH])
        self.ss.mix_hash(msg[:DH])
        kem_pub = self.ss.decrypt_and_hash(msg[DH : DH + KEM_PUB])
        self.rkem = mlkem.MLKEM768PublicKey.from_public_bytes(kem_pub)
        return self.ss.decrypt_and_hash(msg[DH + KEM_PUB :])

    def write2(self, payload: bytes) -> bytes:
        e_pub = _pub(self.e)
        self.ss.mix_hash(e_pub)
        self.ss.mix_key(self.e.exchange(self.re))
        secret, kem_ct = self.rkem.encapsulate()
        out = e_pub + self.ss.encrypt_and_hash(kem_ct)
        self.ss.mix_key(secret)
        out += self.ss.encrypt_and_hash(_pub(self.s))
        self.ss.mix_key(self.s.exchange(self.re))
        return out + self.ss.encrypt_and_hash(payload)

    def read3(self, msg: bytes) -> bytes:
        self.rs = self.ss.decrypt_and_hash(msg[: DH + TAG])
        self.ss.mix_key(self.e.exchange(x25519.X25519PublicKey.from_public_bytes(self.rs)))
        return self.ss.decrypt_and_hash(msg[DH + TAG :])


def test_our_initiator_against_reference_responder() -> None:
    s_i, s_r = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    ours = HandshakeState(HYBRID, initiator=True, prologue=PROLOGUE, static=s_i)
    ref = _RefResponder(s_r)
    assert ref.read1(ours.write_message(b"one")) == b"one"
    assert ours.read_message(ref.write2(b"two")) == b"two"
    assert ref.read3(ours.write_message(b"three")) == b"three"
    assert ours.result.handshake_hash == ref.ss.h
    assert ours.result.remote_static == _pub(s_r)
    assert ref.rs == _pub(s_i)
    k1, k2 = ref.ss.split()
    ct = ours.result.send.encrypt_with_ad(b"", b"transport")
    assert ChaCha20Poly1305(k1).decrypt(bytes(12), ct, b"") == b"transport"
    back = ChaCha20Poly1305(k2).encrypt(bytes(12), b"reply", b"")
    assert ours.result.receive.decrypt_with_ad(b"", back) == b"reply"


def test_reference_initiator_against_our_responder() -> None:
    s_i, s_r = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    ref = _RefInitiator(s_i)
    ours = HandshakeState(HYBRID, initiator=False, prologue=PROLOGUE, static=s_r)
    assert ours.read_message(ref.write1(b"one")) == b"one"
    assert ref.read2(ours.write_message(b"two")) == b"two"
    assert ours.read_message(ref.write3(b"three")) == b"three"
    assert ours.result.handshake_hash == ref.ss.h
    assert ours.result.remote_static == _pub(s_i)
    assert ref.rs == _pub(s_r)
    k1, k2 = ref.ss.split()
    ct = ChaCha20Poly1305(k1).encrypt(bytes(12), b"transport", b"")
    assert ours.result.receive.decrypt_with_ad(b"", ct) == b"transport"
    back = ours.result.send.encrypt_with_ad(b"", b"reply")
    assert ChaCha20Poly1305(k2).decrypt(bytes(12), back, b"") == b"reply"


# -- tampering --------------------------------------------------------------------------

PAYLOADS = [b"payload one", b"payload two", b"payload three"]
MSG1_LEN = DH + KEM_PUB + len(PAYLOADS[0])
MSG2_LEN = DH + KEM_CT + TAG + DH + TAG + len(PAYLOADS[1]) + TAG
MSG3_LEN = DH + TAG + len(PAYLOADS[2]) + TAG


def _positions(length: int, boundaries: list[int], seed: int) -> list[int]:
    rng = random.Random(seed)
    picks = {0, length // 2, length - 1, *boundaries}
    picks.update(rng.randrange(length) for _ in range(5))
    return sorted(p for p in picks if 0 <= p < length)


MSG1_POSITIONS = _positions(MSG1_LEN, [DH - 1, DH, DH + KEM_PUB - 1, DH + KEM_PUB], 1)
MSG2_POSITIONS = _positions(
    MSG2_LEN, [DH - 1, DH, DH + KEM_CT + TAG - 1, DH + KEM_CT + TAG, MSG2_LEN - TAG], 2
)
MSG3_POSITIONS = _positions(MSG3_LEN, [DH + TAG - 1, DH + TAG, MSG3_LEN - TAG], 3)


def _assert_handshake_fails(tamper: Tamper) -> None:
    initiator, responder = _pair()
    with pytest.raises(HandshakeError):
        _run(initiator, responder, PAYLOADS, tamper)
    assert not (initiator.complete and responder.complete)


@pytest.mark.parametrize("position", MSG1_POSITIONS)
def test_flipped_bit_in_message_1_fails_the_handshake(position: int) -> None:
    """Message 1 is not authenticated when it arrives, but it is hashed: a later read fails."""
    _assert_handshake_fails(_only(0, _flip(position)))


def test_flipped_ignored_bit_of_ephemeral_still_fails() -> None:
    """X25519 ignores the top bit of a public key, but the transcript hash does not."""
    _assert_handshake_fails(_only(0, _flip(DH - 1, bit=7)))


@pytest.mark.parametrize("position", MSG2_POSITIONS)
def test_flipped_bit_in_message_2_is_rejected(position: int) -> None:
    initiator, responder = _pair()
    tamper = _only(1, _flip(position))
    with pytest.raises(HandshakeError):
        _run(initiator, responder, PAYLOADS, tamper)
    assert not initiator.complete


@pytest.mark.parametrize("position", MSG3_POSITIONS)
def test_flipped_bit_in_message_3_is_rejected(position: int) -> None:
    initiator, responder = _pair()
    tamper = _only(2, _flip(position, bit=position % 8))
    with pytest.raises(HandshakeError):
        _run(initiator, responder, PAYLOADS, tamper)
    assert not responder.complete


@pytest.mark.parametrize(
    ("index", "length"),
    [
        (0, 0),
        (0, DH - 1),
        (0, DH),
        (0, DH + KEM_PUB - 1),
        (1, 0),
        (1, DH),
        (1, DH + KEM_CT + TAG),
        (1, MSG2_LEN - TAG - 1),
        (1, MSG2_LEN - TAG),
        (1, MSG2_LEN - 1),
        (2, 0),
        (2, DH + TAG),
        (2, MSG3_LEN - TAG),
        (2, MSG3_LEN - 1),
    ],
)
def test_truncated_message_is_rejected(index: int, length: int) -> None:
    initiator, responder = _pair()
    with pytest.raises(HandshakeError):
        _run(initiator, responder, PAYLOADS, _only(index, lambda m: m[:length]))


def test_truncated_message_1_payload_fails_later() -> None:
    _assert_handshake_fails(_only(0, lambda m: m[:-1]))


@pytest.mark.parametrize("index", [0, 1, 2])
def test_extended_message_fails(index: int) -> None:
    _assert_handshake_fails(_only(index, lambda m: m + b"\x00"))


def test_prologue_mismatch() -> None:
    initiator, responder = _pair(resp_prologue=b"another prologue")
    with pytest.raises(HandshakeError):
        _run(initiator, responder, PAYLOADS)
    assert not initiator.complete


def test_failed_handshake_stays_failed() -> None:
    initiator, responder = _pair()
    initiator_msg1 = initiator.write_message(b"")
    responder.read_message(initiator_msg1)
    msg2 = responder.write_message(b"")
    with pytest.raises(HandshakeError):
        initiator.read_message(_flip(100)(msg2))
    assert not initiator.my_turn()
    with pytest.raises(HandshakeError):
        initiator.read_message(msg2)  # even the genuine message is refused now
    with pytest.raises(HandshakeError):
        initiator.write_message(b"")
    with pytest.raises(HandshakeError):
        _ = initiator.result


def test_out_of_turn_and_early_result() -> None:
    initiator, responder = _pair()
    with pytest.raises(HandshakeError):
        responder.write_message(b"")
    with pytest.raises(HandshakeError):
        _ = initiator.result
    msg1 = initiator.write_message(b"")
    with pytest.raises(HandshakeError):
        initiator.write_message(b"")
    responder.read_message(msg1)
    initiator.read_message(responder.write_message(b""))
    responder.read_message(initiator.write_message(b""))
    with pytest.raises(HandshakeError):
        initiator.write_message(b"")
    with pytest.raises(HandshakeError):
        responder.read_message(b"\x00" * 64)


def test_oversized_messages() -> None:
    initiator, responder = _pair()
    with pytest.raises(HandshakeError):
        initiator.write_message(bytes(65535 - DH - KEM_PUB + 1))
    initiator, responder = _pair()
    assert len(initiator.write_message(bytes(65535 - DH - KEM_PUB))) == 65535
    with pytest.raises(HandshakeError):
        responder.read_message(bytes(65536))


@pytest.mark.parametrize("payload_len", [0, 2000])
def test_hybrid_initiator_against_classic_responder(payload_len: int) -> None:
    initiator, responder = _pair(HYBRID, resp_protocol=CLASSIC)
    with pytest.raises(HandshakeError):
        _run(
            initiator,
            responder,
            [bytes(payload_len), bytes(payload_len), b""],
            check_payloads=False,
        )
    assert not initiator.complete


@pytest.mark.parametrize("payload_len", [0, 2000])
def test_classic_initiator_against_hybrid_responder(payload_len: int) -> None:
    initiator, responder = _pair(CLASSIC, resp_protocol=HYBRID)
    with pytest.raises(HandshakeError):
        _run(
            initiator,
            responder,
            [bytes(payload_len), bytes(payload_len), b""],
            check_payloads=False,
        )
    assert not (initiator.complete or responder.complete)


def test_invalid_kem_public_key_is_a_handshake_error() -> None:
    """A KEM public key whose coefficients are out of range must not escape as ValueError."""
    initiator, responder = _pair()
    msg1 = initiator.write_message(b"")
    bad = msg1[:DH] + b"\xff" * KEM_PUB + msg1[DH + KEM_PUB :]
    with pytest.raises(HandshakeError):
        responder.read_message(bad)


def test_low_order_ephemeral_is_a_handshake_error() -> None:
    """An all-zero X25519 point gives an all-zero DH: rejected as a HandshakeError."""
    initiator, responder = _pair()
    responder.read_message(initiator.write_message(b""))
    msg2 = responder.write_message(b"")
    with pytest.raises(HandshakeError):
        initiator.read_message(bytes(DH) + msg2[DH:])


# -- fuzz: nothing but HandshakeError comes out of read_message ------------------------


@settings(max_examples=60)
@given(data=st.binary(max_size=2 * (DH + KEM_PUB)))
def test_random_message_1(data: bytes) -> None:
    """Message 1 is unauthenticated: random bytes are accepted or refused, never crash."""
    for protocol in (HYBRID, CLASSIC):
        responder = HandshakeState(
            protocol, initiator=False, static=x25519.X25519PrivateKey.generate()
        )
        try:
            responder.read_message(data)
        except HandshakeError:
            continue
        minimum = DH + KEM_PUB if protocol == HYBRID else DH
        assert len(data) >= minimum


@settings(max_examples=60)
@given(data=st.binary(max_size=MSG2_LEN + 64), stage=st.sampled_from([1, 2]))
def test_random_later_message_is_a_handshake_error(data: bytes, stage: int) -> None:
    initiator, responder = _pair()
    responder.read_message(initiator.write_message(b""))
    if stage == 1:
        with pytest.raises(HandshakeError):
            initiator.read_message(data)
    else:
        initiator.read_message(responder.write_message(b""))
        with pytest.raises(HandshakeError):
            responder.read_message(data)
