"""X-Wing against the draft's published vectors, plus round trips and malformed input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from zerok.crypto import xwing
from zerok.crypto.xwing import (
    CIPHERTEXT_BYTES,
    PUBLIC_KEY_BYTES,
    SEED_BYTES,
    XWingPrivateKey,
    encapsulate,
)
from zerok.errors import CryptoError

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "xwing-vectors.json").read_text()
)["vectors"]
IDS = [v["seed"][:8] for v in VECTORS]
LABEL = b"\\.//^\\"


def _b(vector: dict[str, Any], name: str) -> bytes:
    return bytes.fromhex(vector[name])


def test_sizes() -> None:
    assert (PUBLIC_KEY_BYTES, CIPHERTEXT_BYTES, SEED_BYTES) == (1216, 1120, 32)
    assert LABEL.hex() == "5c2e2f2f5e5c" == xwing.XWING_LABEL.hex()


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_key_generation_matches_vector(vector: dict[str, Any]) -> None:
    key = XWingPrivateKey.from_seed(_b(vector, "seed"))
    assert key.public_bytes() == _b(vector, "pk")
    assert key.seed_bytes() == _b(vector, "seed")


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_decapsulation_matches_vector(vector: dict[str, Any]) -> None:
    key = XWingPrivateKey.from_seed(_b(vector, "seed"))
    assert key.decapsulate(_b(vector, "ct")) == _b(vector, "ss")


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_encapsulation_x25519_half_matches_vector(vector: dict[str, Any]) -> None:
    # The draft takes ek_X from eseed[32:64]; ML-KEM's half cannot be pinned with pyca.
    ephemeral = x25519.X25519PrivateKey.from_private_bytes(_b(vector, "eseed")[32:64])
    ss, ct = xwing._encapsulate(_b(vector, "pk"), ephemeral)
    assert ct[1088:] == _b(vector, "ct")[1088:]
    assert XWingPrivateKey.from_seed(_b(vector, "seed")).decapsulate(ct) == ss


@pytest.mark.parametrize("vector", VECTORS, ids=IDS)
def test_vector_follows_the_draft_formula(vector: dict[str, Any]) -> None:
    """Recompute ss from the draft's text with hashlib, apart from the module's code: this
    pins SHAKE256 key expansion and the label-last combiner."""
    expanded = hashlib.shake_256(_b(vector, "seed")).digest(96)
    ct = _b(vector, "ct")
    ss_m = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64]).decapsulate(ct[:1088])
    sk_x = x25519.X25519PrivateKey.from_private_bytes(expanded[64:])
    pk_x = sk_x.public_key().public_bytes_raw()
    ss_x = sk_x.exchange(x25519.X25519PublicKey.from_public_bytes(ct[1088:]))
    assert hashlib.sha3_256(ss_m + ss_x + ct[1088:] + pk_x + LABEL).digest() == _b(vector, "ss")
    assert hashlib.sha3_256(LABEL + ss_m + ss_x + ct[1088:] + pk_x).digest() != _b(vector, "ss")


def test_round_trip() -> None:
    key = XWingPrivateKey.generate()
    ss, ct = encapsulate(key.public_bytes())
    assert len(ss) == 32 and len(ct) == CIPHERTEXT_BYTES
    assert key.decapsulate(ct) == ss
    ss2, ct2 = encapsulate(key.public_bytes())
    assert ss2 != ss and ct2 != ct


def test_other_key_gets_another_secret() -> None:
    ss, ct = encapsulate(XWingPrivateKey.generate().public_bytes())
    assert XWingPrivateKey.generate().decapsulate(ct) != ss


def test_seed_is_the_whole_key() -> None:
    key = XWingPrivateKey.generate()
    again = XWingPrivateKey.from_seed(key.seed_bytes())
    assert again.public_bytes() == key.public_bytes()
    assert key.seed_bytes().hex() not in repr(key)


def test_modified_mlkem_ciphertext_changes_the_secret_silently() -> None:
    key = XWingPrivateKey.generate()
    ss, ct = encapsulate(key.public_bytes())
    assert key.decapsulate(bytes([ct[0] ^ 1]) + ct[1:]) != ss


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_bad_seed_size(size: int) -> None:
    with pytest.raises(CryptoError, match="32 bytes"):
        XWingPrivateKey.from_seed(bytes(size))


@pytest.mark.parametrize("size", [0, 1184, 1215, 1217])
def test_bad_public_key_size(size: int) -> None:
    with pytest.raises(CryptoError, match="1216 bytes"):
        encapsulate(bytes(size))


@pytest.mark.parametrize("size", [0, 1088, 1119, 1121])
def test_bad_ciphertext_size(size: int) -> None:
    with pytest.raises(CryptoError, match="1120 bytes"):
        XWingPrivateKey.generate().decapsulate(bytes(size))


def test_mlkem_key_out_of_range_is_refused() -> None:
    # Coefficients 0xfff > q: fails FIPS 203's modulus check.
    pk = b"\xff" * 1184 + XWingPrivateKey.generate().public_bytes()[1184:]
    with pytest.raises(CryptoError, match="ML-KEM"):
        encapsulate(pk)


def test_low_order_x25519_public_key_is_refused() -> None:
    pk = XWingPrivateKey.generate().public_bytes()[:1184] + bytes(32)
    with pytest.raises(CryptoError, match="low-order"):
        encapsulate(pk)


def test_low_order_x25519_ciphertext_is_refused() -> None:
    key = XWingPrivateKey.generate()
    _, ct = encapsulate(key.public_bytes())
    with pytest.raises(CryptoError, match="low-order"):
        key.decapsulate(ct[:1088] + bytes(32))
