"""GroupKeys and KdfParams, checked against independent implementations.

HKDF-SHA256 is re-implemented here from RFC 5869 with the standard library, Argon2id is
checked against libsodium (through PyNaCl), and Ed25519 against PyNaCl's signing keys.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import math
from typing import Any

import nacl.bindings
import nacl.signing
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from zerok.crypto import keys
from zerok.crypto.keys import GroupKeys, KdfParams, hkdf_sha256
from zerok.errors import CryptoError
from zerok.wire.ids import GroupId

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


# -- HKDF ------------------------------------------------------------------------------

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


# -- GroupKeys -----------------------------------------------------------------------------

LABELS = {
    "group_id": keys.LABEL_GROUP_ID,
    "blob_key": keys.LABEL_BLOB_KEY,
    "content_key": keys.LABEL_CONTENT_KEY,
    "auth": keys.LABEL_GROUP_AUTH,
}

ROOTS = [bytes(32), bytes(range(32)), b"\xff" * 32, hashlib.sha256(b"root").digest()]


def test_labels_are_distinct_and_versioned() -> None:
    values = list(LABELS.values())
    assert len(set(values)) == len(values)
    assert all(label.startswith(b"0k-sync/v1/") for label in values)
    # None is a prefix of another (so no label's output could be mistaken for another's).
    for a, b in itertools.permutations(values, 2):
        assert not b.startswith(a)
    module_labels = {v for k, v in vars(keys).items() if k.startswith("LABEL_")}
    assert module_labels == set(values)


@pytest.mark.parametrize("root", ROOTS, ids=["zeros", "counting", "ones", "hashed"])
def test_derivations_match_independent_hkdf(root: bytes) -> None:
    gk = GroupKeys(root)
    assert gk.root_key == root
    assert isinstance(gk.group_id, GroupId)
    assert bytes(gk.group_id) == rfc5869_hkdf(root, keys.LABEL_GROUP_ID, 32)
    assert gk.blob_key == rfc5869_hkdf(root, keys.LABEL_BLOB_KEY, 32)
    assert gk.content_key == rfc5869_hkdf(root, keys.LABEL_CONTENT_KEY, 32)
    seed = rfc5869_hkdf(root, keys.LABEL_GROUP_AUTH, 32)
    assert gk.auth_key.private_bytes_raw() == seed
    # Ed25519 public key from the seed, computed by libsodium.
    assert gk.auth_public == bytes(nacl.signing.SigningKey(seed).verify_key)


def test_derived_values_are_distinct() -> None:
    for root in ROOTS:
        gk = GroupKeys(root)
        values = [
            gk.root_key,
            bytes(gk.group_id),
            gk.blob_key,
            gk.content_key,
            gk.auth_key.private_bytes_raw(),
            gk.auth_public,
        ]
        assert len(set(values)) == len(values)


def test_group_id_reveals_nothing_obvious() -> None:
    gk = GroupKeys.generate()
    gid = bytes(gk.group_id)
    for secret in (gk.root_key, gk.blob_key, gk.content_key, gk.auth_key.private_bytes_raw()):
        assert gid != secret
        assert gid[:8] not in secret
        assert hashlib.sha256(secret).digest() != gid
        assert bytes(a ^ b for a, b in zip(gid, secret, strict=True)) != bytes(32)
    # One-bit change of the root changes about half the bits of the group id.
    flipped = bytearray(gk.root_key)
    flipped[0] ^= 1
    other = bytes(GroupKeys(bytes(flipped)).group_id)
    distance = sum(bin(a ^ b).count("1") for a, b in zip(gid, other, strict=True))
    assert 64 <= distance <= 192


def test_auth_key_signs_and_verifies() -> None:
    gk = GroupKeys.generate()
    assert isinstance(gk.auth_key, ed25519.Ed25519PrivateKey)
    assert len(gk.auth_public) == 32
    assert gk.auth_public == gk.auth_key.public_key().public_bytes_raw()
    message = b"transcript to sign"
    signature = gk.auth_key.sign(message)
    assert len(signature) == 64
    public = ed25519.Ed25519PublicKey.from_public_bytes(gk.auth_public)
    public.verify(signature, message)
    nacl.signing.VerifyKey(gk.auth_public).verify(message, signature)
    with pytest.raises(InvalidSignature):
        public.verify(signature, message + b"!")
    other = GroupKeys.generate()
    with pytest.raises(InvalidSignature):
        ed25519.Ed25519PublicKey.from_public_bytes(other.auth_public).verify(signature, message)


def test_generate_is_random() -> None:
    a, b = GroupKeys.generate(), GroupKeys.generate()
    assert a.root_key != b.root_key
    assert a.group_id != b.group_id
    assert a.kdf is None


def test_same_root_same_keys() -> None:
    a, b = GroupKeys(bytes(range(32))), GroupKeys(bytes(range(32)))
    assert (a.group_id, a.blob_key, a.content_key, a.auth_public) == (
        b.group_id,
        b.blob_key,
        b.content_key,
        b.auth_public,
    )


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_root_key_length(size: int) -> None:
    with pytest.raises(CryptoError):
        GroupKeys(bytes(size))


def test_repr_does_not_leak_secrets() -> None:
    gk = GroupKeys(bytes(range(32)))
    text = repr(gk)
    for secret in (gk.root_key, gk.blob_key, gk.content_key):
        assert secret.hex() not in text
        assert secret.hex()[:8] not in text


# -- passphrases and Argon2id --------------------------------------------------------------


def _small(salt: bytes = SALT, iterations: int = 1, memory_kib: int = SMALL_MEMORY) -> KdfParams:
    return KdfParams(salt=salt, memory_kib=memory_kib, iterations=iterations)


def test_from_passphrase_is_deterministic() -> None:
    params = _small()
    a = GroupKeys.from_passphrase("correct horse battery staple", params)
    b = GroupKeys.from_passphrase("correct horse battery staple", KdfParams(**_fields(params)))
    assert a.root_key == b.root_key
    assert a.group_id == b.group_id
    assert a.kdf == params


def _fields(params: KdfParams) -> dict[str, Any]:
    return {
        "salt": params.salt,
        "memory_kib": params.memory_kib,
        "iterations": params.iterations,
        "parallelism": params.parallelism,
        "algorithm": params.algorithm,
    }


def test_from_passphrase_depends_on_every_input() -> None:
    base = GroupKeys.from_passphrase("passphrase", _small()).root_key
    others = [
        GroupKeys.from_passphrase("passphrase!", _small()).root_key,
        GroupKeys.from_passphrase("Passphrase", _small()).root_key,
        GroupKeys.from_passphrase("passphrase", _small(salt=bytes(16))).root_key,
        GroupKeys.from_passphrase("passphrase", _small(iterations=2)).root_key,
        GroupKeys.from_passphrase("passphrase", _small(memory_kib=SMALL_MEMORY + 1024)).root_key,
        GroupKeys.from_passphrase(
            "passphrase",
            KdfParams(salt=SALT, memory_kib=SMALL_MEMORY, iterations=1, parallelism=2),
        ).root_key,
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
    """The one test at full cost: 64 MiB, t=3, p=1 (about 0.1-0.2 s per derivation)."""
    params = KdfParams.default()
    derived = GroupKeys.from_passphrase("the default preset", params).root_key
    assert derived == sodium_argon2id(b"the default preset", params.salt, 3, 64 * 1024)


def test_default_and_mobile_presets() -> None:
    default = KdfParams.default()
    assert (default.memory_kib, default.iterations, default.parallelism) == (64 * 1024, 3, 1)
    assert default.algorithm == "argon2id"
    assert len(default.salt) == 16
    assert KdfParams.default().salt != default.salt  # a fresh random salt per group
    mobile = KdfParams.mobile()
    assert mobile.algorithm == "argon2id"
    assert mobile.parallelism == 1
    assert len(mobile.salt) == 16
    assert mobile.memory_kib < default.memory_kib
    assert mobile.iterations <= default.iterations
    assert mobile.memory_kib * mobile.iterations < default.memory_kib * default.iterations
    assert mobile.memory_kib >= keys.MIN_MEMORY_KIB


@pytest.mark.parametrize("passphrase", ["", b""])
def test_empty_passphrase(passphrase: str | bytes) -> None:
    with pytest.raises(CryptoError):
        _small().derive(passphrase)
    with pytest.raises(CryptoError):
        GroupKeys.from_passphrase(passphrase, _small())


def test_unencodable_passphrase_is_a_crypto_error() -> None:
    """A str that is not valid Unicode text (a lone surrogate, as ``surrogateescape``
    produces from undecodable terminal input) must not escape as UnicodeEncodeError."""
    with pytest.raises(CryptoError):
        _small().derive("pass\udcffword")


# -- KdfParams validation and serialisation --------------------------------------------


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


def test_to_dict_from_dict_round_trip() -> None:
    for params in (
        _small(),
        KdfParams.default(),
        KdfParams.mobile(),
        KdfParams(salt=b"\x00" * 16, memory_kib=100_000, iterations=16, parallelism=8),
    ):
        doc = params.to_dict()
        assert set(doc) == {"algorithm", "salt", "memory_kib", "iterations", "parallelism"}
        assert doc["algorithm"] == "argon2id"
        assert doc["salt"] == params.salt.hex()
        # It survives JSON (how invites carry it).
        again = KdfParams.from_dict(json.loads(json.dumps(doc)))
        assert again == params
        assert again.to_dict() == doc


def _malformed() -> list[tuple[str, Any]]:
    good = _small().to_dict()
    cases: list[tuple[str, Any]] = [
        (f"missing-{key}", {k: v for k, v in good.items() if k != key}) for key in good
    ]
    cases += [
        ("salt-not-hex", {**good, "salt": "zz" * 16}),
        ("salt-odd-length", {**good, "salt": "0" * 31}),
        ("salt-int", {**good, "salt": 5}),
        ("salt-null", {**good, "salt": None}),
        ("salt-short", {**good, "salt": "00" * 8}),
        ("memory-text", {**good, "memory_kib": "lots"}),
        ("memory-null", {**good, "memory_kib": None}),
        ("memory-list", {**good, "memory_kib": [8192]}),
        ("memory-nan", {**good, "memory_kib": math.nan}),
        ("memory-inf", {**good, "memory_kib": math.inf}),
        ("iterations-inf", {**good, "iterations": -math.inf}),
        ("iterations-huge", {**good, "iterations": 10**30}),
        ("memory-too-big", {**good, "memory_kib": 10**9}),
        ("parallelism-dict", {**good, "parallelism": {}}),
        ("algorithm-other", {**good, "algorithm": "pbkdf2"}),
        ("not-a-dict-list", [good]),
        ("not-a-dict-none", None),
        ("not-a-dict-str", "argon2id"),
        ("empty", {}),
    ]
    return cases


@pytest.mark.parametrize(("label", "doc"), _malformed(), ids=[c[0] for c in _malformed()])
def test_from_dict_rejects_malformed(label: str, doc: Any) -> None:
    with pytest.raises(CryptoError):
        KdfParams.from_dict(doc)


def test_json_infinity_in_an_invite_is_a_crypto_error() -> None:
    """Python's json accepts ``Infinity``: an invite carrying it must fail cleanly."""
    text = (
        '{"algorithm": "argon2id", "salt": "SALT", "memory_kib": Infinity, '
        '"iterations": 1, "parallelism": 1}'
    ).replace("SALT", SALT.hex())
    doc = json.loads(text)
    with pytest.raises(CryptoError):
        KdfParams.from_dict(doc)
