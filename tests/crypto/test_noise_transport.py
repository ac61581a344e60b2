"""NoiseTransport: fragmentation of frames into Noise messages, limits, nonces and rekeying."""

from __future__ import annotations

import math
import os

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from zerok.crypto.noise import (
    MAX_FRAGMENT_PAYLOAD,
    CipherState,
    HandshakeResult,
    HandshakeState,
    NoiseTransport,
)
from zerok.crypto.noise.transport import MAX_SEND_FRAME
from zerok.errors import (
    CryptoError,
    DecryptionError,
    FrameTooLargeError,
    LocalProtocolError,
    NonceExhaustedError,
    OversizedFrameError,
    ProtocolError,
    RemoteProtocolError,
    SyncError,
)

XX = "Noise_XX_25519_ChaChaPoly_BLAKE2s"
HYBRID = "Noise_XXhfs_25519+MLKEM768_ChaChaPoly_BLAKE2s"
MAX_NOISE_MESSAGE = 65535
TAG = 16


def _handshake(protocol: str = XX) -> tuple[HandshakeResult, HandshakeResult]:
    i = HandshakeState(protocol, initiator=True, static=x25519.X25519PrivateKey.generate())
    r = HandshakeState(protocol, initiator=False, static=x25519.X25519PrivateKey.generate())
    while not i.complete:
        writer, reader = (i, r) if i.my_turn() else (r, i)
        reader.read_message(writer.write_message(b""))
    return i.result, r.result


def _transports(
    protocol: str = XX, **kwargs: int
) -> tuple[NoiseTransport, NoiseTransport, HandshakeResult, HandshakeResult]:
    ri, rr = _handshake(protocol)
    return NoiseTransport(ri, **kwargs), NoiseTransport(rr, **kwargs), ri, rr


def _fixed_result(send_key: bytes, receive_key: bytes) -> HandshakeResult:
    return HandshakeResult(
        send=CipherState(send_key),
        receive=CipherState(receive_key),
        handshake_hash=bytes(32),
        remote_static=None,
    )


def _deliver(receiver: NoiseTransport, messages: list[bytes]) -> bytes:
    """Feed all messages; only the last may complete the frame."""
    for message in messages[:-1]:
        assert receiver.decrypt_message(message) is None
    frame = receiver.decrypt_message(messages[-1])
    assert frame is not None
    return frame


def test_constants() -> None:
    assert MAX_FRAGMENT_PAYLOAD == 65518
    assert MAX_FRAGMENT_PAYLOAD + 1 + TAG == MAX_NOISE_MESSAGE


@pytest.mark.parametrize("size", [0, 1, 65517, 65518, 65519, 2 * 65518, 2 * 65518 + 1, 200_000])
def test_frames_round_trip(size: int) -> None:
    a, b, ra, _ = _transports()
    assert a.handshake_hash == ra.handshake_hash == b.handshake_hash
    assert a.remote_static == ra.remote_static
    for sender, receiver in ((a, b), (b, a)):
        frame = os.urandom(size)
        messages = sender.encrypt_frame(frame)
        assert len(messages) == max(1, math.ceil(size / MAX_FRAGMENT_PAYLOAD))
        assert all(len(m) <= MAX_NOISE_MESSAGE for m in messages)
        # Every fragment but the last is full; each message is flag + chunk + tag.
        for m in messages[:-1]:
            assert len(m) == MAX_NOISE_MESSAGE
        last_chunk = size - MAX_FRAGMENT_PAYLOAD * (len(messages) - 1)
        assert len(messages[-1]) == 1 + last_chunk + TAG
        assert _deliver(receiver, messages) == frame


def test_hybrid_session_transport() -> None:
    a, b, _, _ = _transports(HYBRID)
    frame = os.urandom(70_000)
    assert _deliver(b, a.encrypt_frame(frame)) == frame
    assert _deliver(a, b.encrypt_frame(b"reply")) == b"reply"


def test_many_frames_interleaved() -> None:
    a, b, _, _ = _transports()
    for i in range(50):
        f1, f2 = os.urandom(i * 997), os.urandom(i * 1499)
        m1, m2 = a.encrypt_frame(f1), b.encrypt_frame(f2)
        assert _deliver(a, m2) == f2
        assert _deliver(b, m1) == f1


@settings(max_examples=40)
@given(size=st.integers(min_value=0, max_value=3 * MAX_FRAGMENT_PAYLOAD + 5), seed=st.binary())
def test_frame_round_trip_property(size: int, seed: bytes) -> None:
    a, b, _, _ = _transports()
    frame = (seed or b"\x00") * (size // max(1, len(seed)) + 1)
    frame = frame[:size]
    messages = a.encrypt_frame(frame)
    assert len(messages) == max(1, math.ceil(size / MAX_FRAGMENT_PAYLOAD))
    assert all(len(m) <= MAX_NOISE_MESSAGE for m in messages)
    assert _deliver(b, messages) == frame


# -- max_frame ---------------------------------------------------------------------------


def test_send_limit_on_encrypt() -> None:
    """encrypt_frame refuses frames above MAX_SEND_FRAME (the wire's cap), before encrypting
    anything; ``max_frame`` bounds only what is received (the sender checks the peer's limit
    itself)."""
    assert MAX_SEND_FRAME == 16 * 1024 * 1024 + 64 * 1024
    ri, rr = _handshake()
    sender = NoiseTransport(ri, max_frame=1000)
    receiver = NoiseTransport(rr, max_frame=MAX_SEND_FRAME)
    # max_frame does not limit sending.
    assert _deliver(receiver, sender.encrypt_frame(bytes(1001))) == bytes(1001)
    n = ri.send.n
    with pytest.raises(FrameTooLargeError):
        sender.encrypt_frame(bytes(MAX_SEND_FRAME + 1))
    assert ri.send.n == n  # nothing was encrypted: no nonce used
    # The session goes on, and the largest frame passes.
    assert _deliver(receiver, sender.encrypt_frame(b"after")) == b"after"
    largest = os.urandom(MAX_SEND_FRAME)
    messages = sender.encrypt_frame(largest)
    assert len(messages) == math.ceil(MAX_SEND_FRAME / MAX_FRAGMENT_PAYLOAD)
    assert all(len(m) <= MAX_NOISE_MESSAGE for m in messages)
    assert _deliver(receiver, messages) == largest


def test_frame_too_large_is_a_protocol_error() -> None:
    assert issubclass(FrameTooLargeError, ProtocolError)
    assert issubclass(FrameTooLargeError, SyncError)
    # Ours to send, or the peer's: the two are told apart by type.
    assert issubclass(FrameTooLargeError, LocalProtocolError)
    assert issubclass(OversizedFrameError, RemoteProtocolError)
    assert not issubclass(OversizedFrameError, LocalProtocolError)


def test_max_frame_on_receive_skips_the_rest_of_the_frame() -> None:
    ri, rr = _handshake()
    sender = NoiseTransport(ri, max_frame=1_000_000)
    receiver = NoiseTransport(rr, max_frame=100_000)
    frame = os.urandom(200_000)
    messages = sender.encrypt_frame(frame)
    assert len(messages) == 4
    assert receiver.decrypt_message(messages[0]) is None  # 65518 so far
    with pytest.raises(OversizedFrameError) as info:
        receiver.decrypt_message(messages[1])  # 131036 > 100000
    assert info.value.head == frame[:16]  # enough to find the frame's request id
    # Raised once: the remaining fragments of that frame are skipped silently.
    assert receiver.decrypt_message(messages[2]) is None
    assert receiver.decrypt_message(messages[3]) is None
    # The following frames decrypt fine, including a multi-fragment one.
    assert _deliver(receiver, sender.encrypt_frame(b"next frame")) == b"next frame"
    frame = os.urandom(99_000)
    assert _deliver(receiver, sender.encrypt_frame(frame)) == frame


def test_max_frame_exceeded_on_the_last_fragment() -> None:
    ri, rr = _handshake()
    sender = NoiseTransport(ri)
    receiver = NoiseTransport(rr, max_frame=MAX_FRAGMENT_PAYLOAD + 10)
    messages = sender.encrypt_frame(bytes(MAX_FRAGMENT_PAYLOAD + 11))
    assert len(messages) == 2
    assert receiver.decrypt_message(messages[0]) is None
    with pytest.raises(OversizedFrameError):
        receiver.decrypt_message(messages[1])
    assert _deliver(receiver, sender.encrypt_frame(b"ok")) == b"ok"
    exact = bytes(MAX_FRAGMENT_PAYLOAD + 10)
    assert _deliver(receiver, sender.encrypt_frame(exact)) == exact


def test_max_frame_smaller_than_one_fragment() -> None:
    ri, rr = _handshake()
    sender = NoiseTransport(ri)
    receiver = NoiseTransport(rr, max_frame=10)
    with pytest.raises(OversizedFrameError) as info:
        receiver.decrypt_message(sender.encrypt_frame(b"0123456789A")[0])
    assert info.value.head == b"0123456789A"
    assert receiver.decrypt_message(sender.encrypt_frame(bytes(10))[0]) == bytes(10)


# -- malformed and tampered messages --------------------------------------------------


@pytest.mark.parametrize("position", [0, 1, 17, -17, -1])
def test_tampered_message_is_rejected(position: int) -> None:
    a, b, _, _ = _transports()
    message = bytearray(a.encrypt_frame(b"some frame content")[0])
    message[position] ^= 0x04
    with pytest.raises(DecryptionError):
        b.decrypt_message(bytes(message))


def test_truncated_and_empty_messages_are_rejected() -> None:
    a, b, _, _ = _transports()
    message = a.encrypt_frame(b"some frame content")[0]
    for broken in (message[:-1], message[:TAG], b""):
        with pytest.raises(DecryptionError):
            b.decrypt_message(broken)


def test_message_from_another_session_is_rejected() -> None:
    a, _, _, _ = _transports()
    _, b2, _, _ = _transports()
    with pytest.raises(DecryptionError):
        b2.decrypt_message(a.encrypt_frame(b"x")[0])


def test_own_message_cannot_be_read_back() -> None:
    a, _, _, _ = _transports()
    with pytest.raises(DecryptionError):
        a.decrypt_message(a.encrypt_frame(b"x")[0])


@pytest.mark.parametrize("plaintext", [b"\x02", b"\x02frame", b"\xff", b"\x80abc", b""])
def test_bad_fragment_flag_is_a_protocol_error(plaintext: bytes) -> None:
    _, b, ra, _ = _transports()
    crafted = ra.send.encrypt_with_ad(b"", plaintext)  # the transport's own cipher state
    with pytest.raises(ProtocolError):
        b.decrypt_message(crafted)


def test_oversized_noise_message_is_a_protocol_error() -> None:
    _, b, _, _ = _transports()
    with pytest.raises(ProtocolError):
        b.decrypt_message(bytes(MAX_NOISE_MESSAGE + 1))


def test_out_of_order_messages_fail() -> None:
    a, b, _, _ = _transports()
    a.encrypt_frame(b"first")  # sent, but lost or delayed
    second = a.encrypt_frame(b"second")
    with pytest.raises(DecryptionError):
        b.decrypt_message(second[0])


def test_out_of_order_fragments_fail() -> None:
    a, b, _, _ = _transports()
    messages = a.encrypt_frame(os.urandom(3 * MAX_FRAGMENT_PAYLOAD))
    assert b.decrypt_message(messages[0]) is None
    with pytest.raises(DecryptionError):
        b.decrypt_message(messages[2])


def test_replayed_message_fails() -> None:
    a, b, _, _ = _transports()
    message = a.encrypt_frame(b"once")[0]
    assert b.decrypt_message(message) == b"once"
    with pytest.raises(DecryptionError):
        b.decrypt_message(message)


def test_rekey_interval_must_be_positive() -> None:
    ri, _ = _handshake()
    with pytest.raises(ValueError, match="rekey_interval"):
        NoiseTransport(ri, rekey_interval=0)


# -- nonces --------------------------------------------------------------------------------

LAST_USABLE = 2**64 - 2


def test_cipher_state_nonce_exhaustion_on_encrypt() -> None:
    c = CipherState(os.urandom(32))
    c.n = LAST_USABLE
    c.encrypt_with_ad(b"", b"last one")
    assert c.n == 2**64 - 1
    with pytest.raises(NonceExhaustedError):
        c.encrypt_with_ad(b"", b"one too many")
    with pytest.raises(NonceExhaustedError):
        c.encrypt_with_ad(b"", b"still")


def test_cipher_state_nonce_exhaustion_on_decrypt() -> None:
    key = os.urandom(32)
    sender, receiver = CipherState(key), CipherState(key)
    sender.n = receiver.n = LAST_USABLE
    assert receiver.decrypt_with_ad(b"", sender.encrypt_with_ad(b"", b"last")) == b"last"
    with pytest.raises(NonceExhaustedError):
        receiver.decrypt_with_ad(b"", bytes(32))


def test_nonce_exhausted_is_a_crypto_error() -> None:
    assert issubclass(NonceExhaustedError, CryptoError)


def test_transport_nonce_exhaustion() -> None:
    a, b, ra, rb = _transports()
    ra.send.n = LAST_USABLE
    rb.receive.n = LAST_USABLE
    assert _deliver(b, a.encrypt_frame(b"last frame")) == b"last frame"
    with pytest.raises(NonceExhaustedError):
        a.encrypt_frame(b"one too many")
    with pytest.raises(NonceExhaustedError):
        b.decrypt_message(bytes(40))


def test_nonce_is_little_endian_in_the_last_8_bytes() -> None:
    key = os.urandom(32)
    c = CipherState(key)
    c.n = 0x0102030405060708
    ciphertext = c.encrypt_with_ad(b"ad", b"data")
    nonce = bytes(4) + (0x0102030405060708).to_bytes(8, "little")
    assert ChaCha20Poly1305(key).decrypt(nonce, ciphertext, b"ad") == b"data"


# -- rekey -------------------------------------------------------------------------------


def _rekeyed(key: bytes) -> bytes:
    """REKEY(k) = ENCRYPT(k, 2^64-1, empty ad, 32 zero bytes)[:32]  (Noise §4.2)."""
    nonce = bytes(4) + (2**64 - 1).to_bytes(8, "little")
    return ChaCha20Poly1305(key).encrypt(nonce, bytes(32), b"")[:32]


def test_cipher_state_rekey_changes_the_key_and_keeps_n() -> None:
    key = os.urandom(32)
    rekeyed, plain = CipherState(key), CipherState(key)
    for c in (rekeyed, plain):
        c.encrypt_with_ad(b"", b"advance")
        c.encrypt_with_ad(b"", b"advance")
    rekeyed.rekey()
    assert rekeyed.n == plain.n == 2
    a = rekeyed.encrypt_with_ad(b"", b"same plaintext")
    b = plain.encrypt_with_ad(b"", b"same plaintext")
    assert a != b
    nonce = bytes(4) + (2).to_bytes(8, "little")
    assert ChaCha20Poly1305(_rekeyed(key)).decrypt(nonce, a, b"") == b"same plaintext"


def test_rekey_without_a_key_fails() -> None:
    with pytest.raises(NonceExhaustedError):
        CipherState().rekey()


def test_transport_rekey_stays_in_sync() -> None:
    a, b, _, _ = _transports(rekey_interval=3)
    for i in range(20):
        fa = f"a->b {i}".encode() * (i + 1)
        fb = f"b->a {i}".encode() * (i + 2)
        assert _deliver(b, a.encrypt_frame(fa)) == fa
        assert _deliver(a, b.encrypt_frame(fb)) == fb
    # Multi-fragment frames cross rekey boundaries too.
    big = os.urandom(5 * MAX_FRAGMENT_PAYLOAD)
    assert _deliver(b, a.encrypt_frame(big)) == big
    assert _deliver(a, b.encrypt_frame(big)) == big


def test_transport_rekey_schedule_matches_the_spec() -> None:
    """With rekey_interval=3, messages 0-2 use k, 3-5 REKEY(k), 6-8 REKEY(REKEY(k)), ..."""
    send_key, receive_key = os.urandom(32), os.urandom(32)
    sender = NoiseTransport(_fixed_result(send_key, receive_key), rekey_interval=3)
    key = send_key
    for n in range(12):
        if n and n % 3 == 0:
            key = _rekeyed(key)
        message = sender.encrypt_frame(f"frame {n}".encode())[0]
        nonce = bytes(4) + n.to_bytes(8, "little")
        assert ChaCha20Poly1305(key).decrypt(nonce, message, b"") == b"\x00" + f"frame {n}".encode()


def test_transport_rekey_really_changes_the_key() -> None:
    """A receiver that does not rekey fails on the first message after the rekey."""
    send_key, receive_key = os.urandom(32), os.urandom(32)
    sender = NoiseTransport(_fixed_result(send_key, receive_key), rekey_interval=3)
    rekeying = NoiseTransport(_fixed_result(receive_key, send_key), rekey_interval=3)
    not_rekeying = NoiseTransport(_fixed_result(receive_key, send_key), rekey_interval=1000)
    for n in range(3):
        message = sender.encrypt_frame(bytes([n]))[0]
        assert rekeying.decrypt_message(message) == bytes([n])
        assert not_rekeying.decrypt_message(message) == bytes([n])
    message = sender.encrypt_frame(b"after rekey")[0]
    assert rekeying.decrypt_message(message) == b"after rekey"
    with pytest.raises(DecryptionError):
        not_rekeying.decrypt_message(message)


def test_default_rekey_interval() -> None:
    a, _, _, _ = _transports()
    assert a.rekey_interval == 2**16
