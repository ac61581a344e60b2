"""Foundation figures: Noise handshakes, transport, wire codec, blob sealing, sessions."""

from __future__ import annotations

import msgspec
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from noise.connection import Keypair, NoiseConnection

from bench.harness import Figure, rate, scaled
from zerok.crypto.blob import KIND_DATA, NO_LINK, BlobHeader, open_blob, seal_blob
from zerok.crypto.epoch import blob_key, new_epoch_key
from zerok.crypto.noise import HandshakeState, NoiseTransport
from zerok.protocol import CLASSIC, HYBRID, ClientSession, RelaySession, Variant
from zerok.protocol.events import HelloReceived, RequestReceived, ResponseReceived
from zerok.testing import TestGroup
from zerok.wire import (
    PROTOCOL_VERSION,
    BlobId,
    DeviceId,
    GroupId,
    Limits,
    Push,
    PushAck,
    Welcome,
    decode_frame,
    encode,
)

KIB = b"\xa5" * 1024
CLASSIC_NAME = "Noise_XX_25519_ChaChaPoly_BLAKE2s"
HYBRID_NAME = "Noise_XXhfs_25519+MLKEM768_ChaChaPoly_BLAKE2s"
N_HANDSHAKES = scaled(200, 3)


def _our_handshakes(name: str) -> None:
    s_i, s_r = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    for _ in range(N_HANDSHAKES):
        i = HandshakeState(name, initiator=True, static=s_i)
        r = HandshakeState(name, initiator=False, static=s_r)
        r.read_message(i.write_message())
        i.read_message(r.write_message())
        r.read_message(i.write_message())


def _baseline_handshakes() -> None:
    s_i = x25519.X25519PrivateKey.generate().private_bytes_raw()
    s_r = x25519.X25519PrivateKey.generate().private_bytes_raw()
    for _ in range(N_HANDSHAKES):
        i = NoiseConnection.from_name(CLASSIC_NAME.encode())
        r = NoiseConnection.from_name(CLASSIC_NAME.encode())
        i.set_as_initiator()
        r.set_as_responder()
        i.set_keypair_from_private_bytes(Keypair.STATIC, s_i)
        r.set_keypair_from_private_bytes(Keypair.STATIC, s_r)
        i.start_handshake()
        r.start_handshake()
        r.read_message(i.write_message())
        i.read_message(r.write_message())
        r.read_message(i.write_message())


def handshake_figures() -> list[Figure]:
    baseline = rate(_baseline_handshakes, ops=N_HANDSHAKES)
    classic = rate(lambda: _our_handshakes(CLASSIC_NAME), ops=N_HANDSHAKES)
    hybrid = rate(lambda: _our_handshakes(HYBRID_NAME), ops=N_HANDSHAKES)
    base = "noiseprotocol XX (same process)"
    return [
        Figure("Noise XX handshakes (classic)", "/s", classic, base, baseline),
        Figure("Noise XXhfs handshakes (hybrid ML-KEM)", "/s", hybrid, base, baseline),
    ]


def _transport_pair() -> tuple[NoiseTransport, NoiseTransport]:
    i = HandshakeState(CLASSIC_NAME, initiator=True, static=x25519.X25519PrivateKey.generate())
    r = HandshakeState(CLASSIC_NAME, initiator=False, static=x25519.X25519PrivateKey.generate())
    r.read_message(i.write_message())
    i.read_message(r.write_message())
    r.read_message(i.write_message())
    return NoiseTransport(i.result), NoiseTransport(r.result)


def transport_figures() -> list[Figure]:
    n = scaled(20_000, 20)
    a, b = _transport_pair()

    def ours() -> None:
        for _ in range(n):
            for m in a.encrypt_frame(KIB):
                b.decrypt_message(m)

    aead = ChaCha20Poly1305(bytes(32))
    nonce = bytes(12)

    def raw() -> None:
        for _ in range(n):
            aead.decrypt(nonce, aead.encrypt(nonce, KIB, b""), b"")

    return [
        Figure(
            "Noise transport 1 KiB frame enc+dec",
            "/s",
            rate(ours, ops=n),
            "raw ChaCha20-Poly1305 enc+dec",
            rate(raw, ops=n),
        )
    ]


def wire_figures() -> list[Figure]:
    n = scaled(100_000, 20)
    push = Push(blob_id=BlobId(bytes(16)), ciphertext=KIB, epoch=3)

    def ours() -> None:
        for _ in range(n):
            decode_frame(encode(push, request_id=7))

    untyped = [PROTOCOL_VERSION, 0x10, 7, {"blob_id": bytes(16), "ciphertext": KIB, "epoch": 3}]
    enc, dec = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder()

    def raw() -> None:
        for _ in range(n):
            dec.decode(enc.encode(untyped))

    return [
        Figure(
            "wire PUSH 1 KiB encode+strict decode",
            "/s",
            rate(ours, ops=n),
            "untyped msgspec encode+decode",
            rate(raw, ops=n),
        )
    ]


def blob_figures() -> list[Figure]:
    n = scaled(20_000, 20)
    key = blob_key(new_epoch_key())
    group_id, blob_id, sender = GroupId(bytes(32)), BlobId(bytes(16)), DeviceId(bytes(32))
    header = BlobHeader(epoch=0, kind=KIND_DATA, seq=1, link=NO_LINK)

    def ours() -> None:
        for _ in range(n):
            sealed = seal_blob(
                KIB, key=key, group_id=group_id, blob_id=blob_id, sender=sender, header=header
            )
            open_blob(sealed, key=key, group_id=group_id, blob_id=blob_id, sender=sender)

    nonce, ad = bytes(24), bytes(85)  # v2's associated data: format, epoch and three ids

    def raw() -> None:
        for _ in range(n):
            crypto_aead_xchacha20poly1305_ietf_decrypt(
                crypto_aead_xchacha20poly1305_ietf_encrypt(KIB, ad, nonce, key), ad, nonce, key
            )

    return [
        Figure(
            "blob seal+open 1 KiB (format 2)",
            "/s",
            rate(ours, ops=n),
            "raw libsodium XChaCha20 enc+dec",
            rate(raw, ops=n),
        )
    ]


def _open_pair(variant: Variant) -> tuple[ClientSession, RelaySession]:
    group = TestGroup()
    client = ClientSession(
        group.creator, group.group_id, now=0, entries=group.entries, variant=variant
    )
    relay_key = x25519.X25519PrivateKey.generate()
    relay = RelaySession(relay_key, now=0, variant=variant)
    relay_id = relay_key.public_key().public_bytes_raw()
    limits = Limits(
        max_blob_size=1 << 20,
        max_group_storage=100 << 20,
        messages_per_minute=0,
        max_frame_size=1 << 20,
        default_ttl=604800,
        max_ttl=604800,
    )
    for _ in range(2):
        for m in client.data_to_send():
            for ev in relay.receive(m, 0):
                if isinstance(ev, HelloReceived):
                    welcome = Welcome(
                        relay_id=relay_id,
                        max_cursor=0,
                        pending=0,
                        limits=limits,
                        log_seq=group.log.head_seq,
                        log_hash=group.log.head_hash,
                        epoch=group.epoch,
                    )
                    relay.accept(welcome)
        for m in relay.data_to_send():
            client.receive(m, 0)
    return client, relay


def session_figures() -> list[Figure]:
    n = scaled(10_000, 20)
    client, relay = _open_pair(CLASSIC)
    a, b = _transport_pair()

    def ours() -> None:
        for i in range(n):
            client.send_request(Push(blob_id=BlobId(i.to_bytes(16, "big")), ciphertext=KIB), 0)
            for m in client.data_to_send():
                for ev in relay.receive(m, 0):
                    assert isinstance(ev, RequestReceived)
                    msg = ev.message
                    assert isinstance(msg, Push)
                    relay.send(
                        PushAck(blob_id=msg.blob_id, cursor=i + 1, timestamp=0), ev.request_id
                    )
            for m in relay.data_to_send():
                for resp in client.receive(m, 0):
                    assert isinstance(resp, ResponseReceived)

    push = encode(Push(blob_id=BlobId(bytes(16)), ciphertext=KIB), request_id=2)
    ack = encode(PushAck(blob_id=BlobId(bytes(16)), cursor=1, timestamp=0), request_id=2)

    def raw() -> None:
        for _ in range(n):
            for m in a.encrypt_frame(push):
                b.decrypt_message(m)
            for m in b.encrypt_frame(ack):
                a.decrypt_message(m)

    return [
        Figure(
            "sans-I/O PUSH→PUSH_ACK round trip",
            "/s",
            rate(ours, ops=n),
            "transport-only round trip",
            rate(raw, ops=n),
        )
    ]


def all_figures() -> list[Figure]:
    _ = HYBRID  # the hybrid variant is measured through handshake_figures
    return (
        handshake_figures()
        + transport_figures()
        + wire_figures()
        + blob_figures()
        + session_figures()
    )
