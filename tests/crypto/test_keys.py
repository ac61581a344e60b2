"""hkdf_sha256 and KdfParams, checked against independent implementations.

HKDF-SHA256 (every protocol-2 key derivation: device, recovery and epoch keys) is
re-implemented here from RFC 5869 with the standard library; Argon2id (what stretches an
invite's short code) is checked against libsodium, through PyNaCl.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
from typing import Any

import nacl.bindings
import pytest

from zerok.crypto import epoch, identity, keys, recovery
from zerok.crypto.keys import KdfParams, hkdf_sha256
from zerok.errors import CryptoError

SMALL_MEMORY = 8 * 1024  # KiB: the minimum the bounds allow, fast enough for tests
SALT = bytes(range(16))


def rfc5869_hkdf(ikm: bytes, info: bytes, length: int, salt: bytes = b"") -> bytes:
    """HKDF-SHA256 straight from RFC 5869 §2.2-2.3 (an absent salt is HashLen zeros)."""
    prk = hmac.new(salt if salt else bytes(32), ikm, hashlib.sha256).digest()
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    return okm[:length]


def sodium_argon2id(passphrase: bytes, salt: bytes, iterations: int, memory_kib: int) -> bytes:
    return nacl.bindings.crypto_pwhash_alg(
        32,
        passphrase,
        salt,
        iterations,
        memory_kib * 1024,
        nacl.bindings.crypto_pwhash_ALG_ARGON2ID13,
    )


# -- HKDF --------------------------------------------------------------------------------

RFC_IKM = bytes([0x0B] * 22)


def test_rfc5869_case_1_independent_implementation() -> None:
    salt = bytes(range(0x0D))
    info = bytes(range(0xF0, 0xFA))
    expected = bytes.fromhex(
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )
    assert rfc5869_hkdf(RFC_IKM, info, 42, salt) == expected


def test_rfc5869_case_3_both_implementations() -> None:
    """Test case 3 has an empty salt and empty info: the case hkdf_sha256 (salt=None) covers."""
    expected = bytes.fromhex(
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    )
    assert rfc5869_hkdf(RFC_IKM, b"", 42) == expected
    assert rfc5869_hkdf(RFC_IKM, b"", 42, salt=bytes(32)) == expected
    assert hkdf_sha256(RFC_IKM, b"", 42) == expected


@pytest.mark.parametrize("length", [1, 16, 32, 33, 64, 100])
def test_hkdf_sha256_matches_the_independent_one(length: int) -> None:
    for ikm, info in itertools.product([bytes(32), b"\x01" * 32, RFC_IKM], [b"", b"label"]):
        assert hkdf_sha256(ikm, info, length) == rfc5869_hkdf(ikm, info, length)


def test_hkdf_sha256_gives_32_bytes_by_default() -> None:
    assert hkdf_sha256(RFC_IKM, b"label") == rfc5869_hkdf(RFC_IKM, b"label", 32)


HKDF_LABELS = [
    identity.LABEL_DEVICE_SIGN,
    identity.LABEL_DEVICE_WRAP,
    recovery.LABEL_RECOVERY_SIGN,
    recovery.LABEL_RECOVERY_WRAP,
    epoch.LABEL_BLOB_KEY,
    epoch.LABEL_CONTENT_KEY,
    epoch.LABEL_EPOCH_WRAP,
    epoch.LABEL_PREV_KEY,
]


def test_hkdf_labels_are_distinct_and_versioned() -> None:
    """Every key protocol 2 derives with hkdf_sha256 has its own label, so that no derived
    value could be mistaken for (or reveal) another, even from the same input key."""
    assert len(set(HKDF_LABELS)) == len(HKDF_LABELS)
    assert all(label.startswith(b"0k-sync/v2/") for label in HKDF_LABELS)
    for a, b in itertools.permutations(HKDF_LABELS, 2):
        assert not b.startswith(a)


# -- Argon2id (short codes) --------------------------------------------------------------


def _small(salt: bytes = SALT, iterations: int = 1, memory_kib: int = SMALL_MEMORY) -> KdfParams:
    return KdfParams(salt=salt, memory_kib=memory_kib, iterations=iterations)


def test_derive_is_deterministic() -> None:
    params = _small()
    a = params.derive("correct horse battery staple")
    b = KdfParams(**_fields(params)).derive("correct horse battery staple")
    assert a == b
    assert len(a) == 32


def _fields(params: KdfParams) -> dict[str, Any]:
    return {
        "salt": params.salt,
        "memory_kib": params.memory_kib,
        "iterations": params.iterations,
        "parallelism": params.parallelism,
        "algorithm": params.algorithm,
    }


def test_derive_depends_on_every_input() -> None:
    base = _small().derive("passphrase")
    others = [
        _small().derive("passphrase!"),
        _small().derive("Passphrase"),
        _small(salt=bytes(16)).derive("passphrase"),
        _small(iterations=2).derive("passphrase"),
        _small(memory_kib=SMALL_MEMORY + 1024).derive("passphrase"),
        KdfParams(salt=SALT, memory_kib=SMALL_MEMORY, iterations=1, parallelism=2).derive(
            "passphrase"
        ),
    ]
    assert len({base, *others}) == len(others) + 1


def test_str_passphrase_is_utf8() -> None:
    params = _small()
    assert params.derive("pässwörd ✓") == params.derive("pässwörd ✓".encode())


@pytest.mark.parametrize(
    ("passphrase", "salt", "iterations", "memory_kib"),
    [
        (b"password", SALT, 1, SMALL_MEMORY),
        (b"correct horse battery staple", bytes(16), 2, SMALL_MEMORY),
        ("pässwörd ✓".encode(), b"\xff" * 16, 3, SMALL_MEMORY),
        (b"x", bytes(range(100, 116)), 1, 12 * 1024),
        (b"a much longer passphrase " * 10, SALT, 4, SMALL_MEMORY),
    ],
    ids=["t1", "t2-zero-salt", "t3-utf8", "t1-12MiB", "t4-long"],
)
def test_derive_matches_libsodium(
    passphrase: bytes, salt: bytes, iterations: int, memory_kib: int
) -> None:
    params = KdfParams(salt=salt, memory_kib=memory_kib, iterations=iterations, parallelism=1)
    derived = params.derive(passphrase)
    assert len(derived) == 32
    assert derived == sodium_argon2id(passphrase, salt, iterations, memory_kib)


def test_default_params_derive_matches_libsodium() -> None:
    """The one test at full cost: 64 MiB, t=3, p=1 (about 0.1-0.2 s per derivation), the
    parameters that stretch an invite's short code."""
    params = KdfParams()
    derived = params.derive("the default preset")
    assert derived == sodium_argon2id(b"the default preset", params.salt, 3, 64 * 1024)


def test_defaults() -> None:
    default = KdfParams()
    assert (default.memory_kib, default.iterations, default.parallelism) == (64 * 1024, 3, 1)
    assert default.algorithm == "argon2id"
    assert len(default.salt) == 16
    assert KdfParams().salt != default.salt  # a fresh random salt unless one is given


@pytest.mark.parametrize("passphrase", ["", b""])
def test_empty_passphrase(passphrase: str | bytes) -> None:
    with pytest.raises(CryptoError, match="empty"):
        _small().derive(passphrase)


def test_unencodable_passphrase_is_a_crypto_error() -> None:
    """A str that is not valid Unicode text (a lone surrogate, as ``surrogateescape``
    produces from undecodable terminal input) must not escape as UnicodeEncodeError."""
    with pytest.raises(CryptoError):
        _small().derive("pass\udcffword")


# -- KdfParams validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"memory_kib": keys.MIN_MEMORY_KIB - 1},
        {"memory_kib": 0},
        {"memory_kib": -1},
        {"memory_kib": keys.MAX_MEMORY_KIB + 1},
        {"iterations": 0},
        {"iterations": -3},
        {"iterations": keys.MAX_ITERATIONS + 1},
        {"parallelism": 0},
        {"parallelism": keys.MAX_PARALLELISM + 1},
        {"salt": b""},
        {"salt": bytes(15)},
        {"salt": bytes(17)},
        {"salt": bytes(32)},
        {"algorithm": "argon2i"},
        {"algorithm": "argon2d"},
        {"algorithm": "ARGON2ID"},
        {"algorithm": "scrypt"},
        {"algorithm": ""},
    ],
    ids=lambda c: "-".join(f"{k}={v!r}"[:30] for k, v in c.items()),
)
def test_kdf_params_bounds(changes: dict[str, Any]) -> None:
    fields = {**_fields(_small()), **changes}
    with pytest.raises(CryptoError):
        KdfParams(**fields)


@pytest.mark.parametrize(
    "changes",
    [
        {"memory_kib": keys.MIN_MEMORY_KIB},
        {"memory_kib": keys.MAX_MEMORY_KIB},
        {"iterations": 1},
        {"iterations": keys.MAX_ITERATIONS},
        {"parallelism": 1},
        {"parallelism": keys.MAX_PARALLELISM},
    ],
)
def test_kdf_params_bounds_are_inclusive(changes: dict[str, Any]) -> None:
    KdfParams(**{**_fields(_small()), **changes})


def test_documented_bounds() -> None:
    assert keys.MIN_MEMORY_KIB == 8 * 1024
    assert keys.MAX_MEMORY_KIB == 1024 * 1024
    assert keys.SALT_BYTES == 16
    assert (keys.MAX_ITERATIONS, keys.MAX_PARALLELISM) == (16, 8)
