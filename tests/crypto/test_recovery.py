"""RecoveryKey: BIP-39 words (published vectors), the QR text, typo messages, derived keys."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

import pytest
import segno
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from zerok.crypto.identity import DeviceIdentity
from zerok.crypto.recovery import RecoveryKey
from zerok.crypto.xwing import XWingPrivateKey, encapsulate
from zerok.errors import CryptoError, RecoveryKeyError

# Trezor's BIP-39 vectors (github.com/trezor/python-mnemonic, vectors.json, "english"): the
# 256-bit entropy rows, entropy and words only (the seed column needs a passphrase we do not use).
BIP39_VECTORS = [
    (
        "7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f7f",
        "legal winner thank year wave sausage worth useful legal winner thank year wave "
        "sausage worth useful legal winner thank year wave sausage worth title",
    ),
    (
        "8080808080808080808080808080808080808080808080808080808080808080",
        "letter advice cage absurd amount doctor acoustic avoid letter advice cage absurd "
        "amount doctor acoustic avoid letter advice cage absurd amount doctor acoustic bless",
    ),
    (
        "3edc83b60740d77af3afa2fcb82c2f1bc541ee4e2518ddef4996d32453f54a3c",
        "disagree tomato unique attend aspect runway solid violin witness scrap armed daring "
        "favorite warm decade perfect target kid grant play early wide cigar night",
    ),
]

FIXED_SECRET = bytes(range(32))
# Frozen once from FIXED_SECRET, for the docs.
FIXED_SIGN_PUBLIC = "eacd54c5b76444b0ebaf567456d0bf3c4963f04f51858287063b0bd02d10a98e"
FIXED_WRAP_PUBLIC_SHA256 = "8ec4dc54c64a3c090f0205949688171840d95d47f14773e5509a20cb93a4ee8c"


@pytest.fixture(scope="module")
def key() -> RecoveryKey:
    return RecoveryKey.generate()


@pytest.mark.parametrize(("entropy", "words"), BIP39_VECTORS, ids=["7f", "80", "3e"])
def test_bip39_vectors(entropy: str, words: str) -> None:
    assert RecoveryKey(bytes.fromhex(entropy)).words() == words.split()
    assert RecoveryKey.from_words(words).secret == bytes.fromhex(entropy)


def test_generate_makes_24_words_that_round_trip(key: RecoveryKey) -> None:
    assert len(key.secret) == 32
    assert len(key.words()) == 24
    assert RecoveryKey.from_words(" ".join(key.words())).secret == key.secret
    assert RecoveryKey.generate().secret != key.secret


def test_qr_text_round_trips_and_is_alphanumeric(key: RecoveryKey) -> None:
    text = key.qr_text()
    assert text == "ZEROK-RECOVERY:" + "-".join(key.words()).upper()
    assert RecoveryKey.from_text(text).secret == key.secret
    assert RecoveryKey.from_text(text.lower()).secret == key.secret
    assert segno.make(text, error="m").mode == "alphanumeric"


def test_qr_draws_a_code(key: RecoveryKey) -> None:
    drawing = key.qr()
    assert len(drawing.splitlines()) > 20
    assert "█" in drawing


@pytest.mark.parametrize(
    "form",
    [
        lambda w: "  " + "\n".join(w).upper() + "\n",
        lambda w: "zerok-recovery: " + " ".join(w),
        ", ".join,
        lambda w: " ".join(f"{i}. {word}" for i, word in enumerate(w, start=1)),
        lambda w: "\t".join(word[:4] for word in w),
    ],
    ids=["lines-upper", "prefix-spaces", "commas", "numbered", "four-letters"],
)
def test_from_text_accepts_what_people_type(
    key: RecoveryKey, form: Callable[[list[str]], str]
) -> None:
    assert RecoveryKey.from_text(form(key.words())).secret == key.secret


def test_full_width_letters_are_folded(key: RecoveryKey) -> None:
    wide = " ".join(key.words()).translate({c: c + 0xFEE0 for c in range(ord("a"), ord("z") + 1)})
    assert RecoveryKey.from_words(wide).secret == key.secret


def test_unknown_word_names_its_position_and_a_guess() -> None:
    words = BIP39_VECTORS[0][1].split()
    words[6] = "wurth"
    with pytest.raises(RecoveryKeyError) as info:
        RecoveryKey.from_words(" ".join(words))
    message = str(info.value)
    assert "word 7, 'wurth', is not a recovery word: check its spelling" in message
    assert "did you mean 'worth'?" in message


def test_unknown_word_without_a_guess() -> None:
    with pytest.raises(RecoveryKeyError, match=r"word 1, 'qqqqqqq', .*spelling$"):
        RecoveryKey.from_words("qqqqqqq " + "abandon " * 23)


@pytest.mark.parametrize("count", [12, 23, 25])
def test_wrong_word_count(count: int) -> None:
    with pytest.raises(RecoveryKeyError, match=f"24 words, but {count} were given"):
        RecoveryKey.from_words(" ".join(["abandon"] * count))


@pytest.mark.parametrize("text", ["", "   \n", "zerok-recovery:", "1. 2. 3."])
def test_no_words(text: str) -> None:
    with pytest.raises(RecoveryKeyError, match="no recovery words"):
        RecoveryKey.from_words(text)


def test_checksum_catches_a_wrong_word_and_a_swap() -> None:
    words = BIP39_VECTORS[2][1].split()
    swapped = words[:]
    swapped[0], swapped[1] = swapped[1], swapped[0]
    changed = [*words[:-1], "abandon"]
    for bad in (swapped, changed):
        with pytest.raises(RecoveryKeyError, match="checksum"):
            RecoveryKey.from_words(" ".join(bad))


@pytest.mark.parametrize("size", [0, 16, 31, 33])
def test_bad_secret_size(size: int) -> None:
    with pytest.raises(RecoveryKeyError, match="32 bytes"):
        RecoveryKey(bytes(size))
    assert issubclass(RecoveryKeyError, CryptoError)


def _hkdf_by_hand(ikm: bytes, info: bytes) -> bytes:
    prk = hmac.new(bytes(32), ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def test_derived_keys_fixed_vector() -> None:
    recovery = RecoveryKey(FIXED_SECRET)
    assert recovery.sign_public.hex() == FIXED_SIGN_PUBLIC
    assert hashlib.sha256(recovery.wrap_public).hexdigest() == FIXED_WRAP_PUBLIC_SHA256
    sign_seed = _hkdf_by_hand(FIXED_SECRET, b"0k-sync/v2/recovery-sign")
    expected = ed25519.Ed25519PrivateKey.from_private_bytes(sign_seed).public_key()
    assert recovery.sign_public == expected.public_bytes_raw()
    wrap_seed = _hkdf_by_hand(FIXED_SECRET, b"0k-sync/v2/recovery-wrap")
    assert recovery.wrap_public == XWingPrivateKey.from_seed(wrap_seed).public_bytes()


def test_derived_keys_differ_from_a_device_with_the_same_bytes() -> None:
    recovery = RecoveryKey(FIXED_SECRET)
    device = DeviceIdentity.from_private_bytes(FIXED_SECRET)
    assert recovery.sign_public != device.sign_public
    assert recovery.wrap_public != device.wrap_public


def test_sign_and_unwrap(key: RecoveryKey) -> None:
    signature = key.sign(b"take back")
    public = ed25519.Ed25519PublicKey.from_public_bytes(key.sign_public)
    public.verify(signature, b"take back")
    with pytest.raises(InvalidSignature):
        public.verify(signature, b"take bacK")
    ss, ct = encapsulate(key.wrap_public)
    assert key.wrap_key.decapsulate(ct) == ss


def test_repr_hides_the_secret(key: RecoveryKey) -> None:
    assert key.secret.hex() not in repr(key)
    assert " ".join(key.words()[:2]) not in repr(key)
