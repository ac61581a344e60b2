"""What the membership log costs (issue 12), in this process, no network: the size of its
entries, the time to verify and apply one, to unwrap a new epoch key, and to replay a log.

Each figure's baseline is the cryptography it cannot do without, measured alike: a size
next to the raw keys, hashes, wrapped keys and signatures the entry holds (the rest is
encoding); a verify+apply next to verifying the entry's Ed25519 signatures with libsodium
(the rest is the rule book, zerok.protocol.membership); an X-Wing unwrap next to the
classic X25519 + ChaCha20-Poly1305 it extends.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Iterable

import msgspec
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl.signing import VerifyKey

from bench.groups import new_group
from bench.harness import QUICK, Figure, scaled
from zerok.crypto.entry import SIG_CONTEXT, TICKET_CONTEXT
from zerok.crypto.epoch import new_epoch_key, unwrap_epoch_key
from zerok.crypto.identity import DeviceIdentity
from zerok.protocol import entries
from zerok.protocol.membership import GroupLog
from zerok.testing import TestGroup
from zerok.wire.log import Enroll, Rotate, decode_body, decode_entry

GROUP = 50  # devices, as issue 12 asks
REPEATS = 1 if QUICK else 5
APPLIES = scaled(200, 3)  # entries applied per sample (each to a fresh copy of the log)
UNWRAPS = scaled(500, 3)
REPLAYS = scaled(20, 1)


def _median_us(run: Callable[[], object], ops: int) -> float:
    """Median over REPEATS of ``run``'s time per operation (it performs ``ops``), in µs."""
    run()  # warm-up
    samples = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        run()
        samples.append((time.perf_counter() - start) / ops * 1e6)
    return statistics.median(samples)


def _raw_bytes(value: object) -> int:
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, dict):
        return sum(_raw_bytes(v) for v in value.values())
    if isinstance(value, list):
        return sum(_raw_bytes(v) for v in value)
    return 0


def raw_size(entry: bytes) -> int:
    """The bytes of keys, hashes, wrapped keys and signatures in ``entry``."""
    signed = decode_entry(entry)
    body = msgspec.to_builtins(decode_body(signed.body), builtin_types=(bytes,))
    return len(signed.sig) + len(signed.ticket_sig) + _raw_bytes(body)


def signatures(entry: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """(public key, signed message, signature) of each signature on ``entry``."""
    signed = decode_entry(entry)
    body = decode_body(signed.body)
    found = [(body.author, SIG_CONTEXT + signed.body, signed.sig)]
    if isinstance(body, Enroll):
        found.append((body.ticket, TICKET_CONTEXT + signed.body, signed.ticket_sig))
    return found


def _verify_all(sigs: Iterable[tuple[bytes, bytes, bytes]]) -> None:
    for key, message, sig in sigs:
        VerifyKey(key).verify(message, sig)


def _apply_us(log: GroupLog, entry: bytes) -> tuple[float, float]:
    """(verify+apply µs, its signatures' verification µs) of ``entry`` on ``log``."""
    copy.deepcopy(log).apply(entry)  # warm-up, as _median_us does for the baseline
    samples = []
    for _ in range(REPEATS):
        copies = [copy.deepcopy(log) for _ in range(APPLIES)]  # apply changes the log
        start = time.perf_counter()
        for each in copies:
            each.apply(entry)
        samples.append((time.perf_counter() - start) / APPLIES * 1e6)
    sigs = signatures(entry)
    return statistics.median(samples), _median_us(lambda: _verify_all(sigs * APPLIES), APPLIES)


def _rotation(group: TestGroup) -> bytes:
    creator = group.creator
    return entries.rotate(
        group.log,
        creator.sign_public,
        creator.sign,
        old_key=group.epoch_key,
        new_key=new_epoch_key(),
        reason="bench",
        now=group.now,
    )


def _unwrap_us(rotation: bytes, device: DeviceIdentity) -> tuple[float, float]:
    """(X-Wing unwrap µs of ``device``'s key in ``rotation``, X25519 + AEAD µs)."""
    body = decode_body(decode_entry(rotation).body)
    assert isinstance(body, Rotate)
    wrapped = next(w.key for w in body.wraps if w.to == device.sign_public)

    def unwrap() -> None:
        for _ in range(UNWRAPS):
            unwrap_epoch_key(
                wrapped, epoch=body.epoch, recipient=device.sign_public, wrap_key=device.wrap_key
            )

    ours, peer = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    peer_public = peer.public_key()
    aead = ChaCha20Poly1305(bytes(32))
    sealed = aead.encrypt(bytes(12), bytes(32), b"")

    def classic() -> None:
        for _ in range(UNWRAPS):
            ours.exchange(peer_public)
            aead.decrypt(bytes(12), sealed, b"")

    return _median_us(unwrap, UNWRAPS), _median_us(classic, UNWRAPS)


def log_figures() -> list[Figure]:
    group, devices = new_group(GROUP - 1)  # genesis, then an invite and an enroll per device
    genesis, enroll = group.entries[0], group.entries[-1]
    rotation = _rotation(group)
    # The last device's enrollment, applied to the log as it was just before it.
    enroll_us, enroll_sig_us = _apply_us(GroupLog.replay(group.entries[:-1]), enroll)
    rotate_us, rotate_sig_us = _apply_us(group.log, rotation)
    unwrap_us, classic_us = _unwrap_us(rotation, devices[0])
    log = [*group.entries, rotation]
    sigs = [each for entry in log for each in signatures(entry)]

    def replay() -> None:
        for _ in range(REPLAYS):
            GroupLog.replay(log)

    def verify() -> None:
        for _ in range(REPLAYS):
            _verify_all(sigs)

    replay_ms, verify_ms = _median_us(replay, REPLAYS) / 1e3, _median_us(verify, REPLAYS) / 1e3
    raw = "raw keys, hashes, wraps, sigs"
    return [
        Figure("log entry: genesis", "B", len(genesis), raw, raw_size(genesis)),
        Figure("log entry: enroll", "B", len(enroll), raw, raw_size(enroll)),
        Figure(
            f"log entry: rotation, {GROUP} devices", "B", len(rotation), raw, raw_size(rotation)
        ),
        Figure(
            f"verify+apply an enroll, device {GROUP}",
            "µs",
            enroll_us,
            "Ed25519 verify of its 2 sigs",
            enroll_sig_us,
        ),
        Figure(
            f"verify+apply a rotation, {GROUP} devices",
            "µs",
            rotate_us,
            "Ed25519 verify of its sig",
            rotate_sig_us,
        ),
        Figure(
            "unwrap the new epoch key (X-Wing)",
            "µs",
            unwrap_us,
            "X25519 + ChaCha20-Poly1305",
            classic_us,
        ),
        Figure(
            f"replay a {len(log)}-entry log ({GROUP} devices)",
            "ms",
            replay_ms,
            f"Ed25519 verify of its {len(sigs)} sigs",
            verify_ms,
        ),
    ]
