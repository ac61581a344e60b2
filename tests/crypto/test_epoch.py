"""Epoch keys: wrapping for a member, sealing the previous key, derived keys, and vectors."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from nacl.bindings import crypto_aead_chacha20poly1305_ietf_encrypt

from zerok.crypto import epoch as ep
from zerok.crypto.epoch import (
    EPOCH_KEY_BYTES,
    WRAPPED_BYTES,
    blob_key,
    content_key,
    new_epoch_key,
    open_previous,
    seal_previous,
    unwrap_epoch_key,
    wrap_epoch_key,
)
from zerok.crypto.xwing import XWingPrivateKey
from zerok.errors import CryptoError, EpochKeyError

# A fixed vector, produced once with this module and frozen so the docs can carry it:
# the recipient's X-Wing seed is 00..1f, its sign public key 20..3f, the epoch 7, and the
# epoch key 40..5f. Unwrapping must give the epoch key back.
WRAP_VECTOR_SEED = bytes(range(32))
WRAP_VECTOR_RECIPIENT = bytes(range(32, 64))
WRAP_VECTOR_EPOCH = 7
WRAP_VECTOR_EPOCH_KEY = bytes(range(64, 96))
WRAP_VECTOR_WRAPPED = bytes.fromhex(
    "d28d1bd4305e3c379d4c8497a9e718e6016a753a12a459c1475690e6fd408ac529e6cd7c57181f8216939177"
    "c733fc3a97f32a3f2ff1846d62167de6bcd97a2d5a619bbb24a85e0351408d99b76523000f9eb6301fd73545"
    "8c080b1d67fe2cad79be07454b197e9c5ab9d90e96771b0d213e8d21ad24b4c132feb5bf141eb0c84b66c0fa"
    "e62e2331e8c55eee7516fd2ddbcb4c8a54df490a1ae272b956d433a8923fec210398d910a2dc9ebb90376016"
    "a2e37960da5646a0d954f2396a46f5178876e7d68dea8a39c121d6fe88a1eb63f368a8c495499e3af7132a01"
    "832534f75726a2e589bb7ce481a745ed42fca1def5fff10c95ce39334b39844036dd6063513940d7f5f4b509"
    "2504f247d66d5d0de552645a2114c7897173049eeb06d1a880e618c5f85df5f1cc4953834a688832d41b39cf"
    "dfebde1d1e63a5c846e3c965626841b043547a20429a6681e8d47d2a0110e4962c105fb58e758e9154a0cc9c"
    "57f6e61311ebd34bdfb35dd933b66f8024328e644422bd2bf69be6bb09bdbd6a1dc560b1d1189ed9c243a9cf"
    "3dc5cdbb229b60fe589afe0b70b12aa3aaf36b64bb12d445a0276e54ec801cdc719913c0a8542a897f3670ed"
    "723ba0aa49adf35b377f7a2f81c6d8e3c7c6d3061674f09ac121ad4c27ae24770c28ade3810f2e88b1687c54"
    "127806bb875a24e8774014f8603735beec3289a5e192a808b8ded51ede90a33376ca37210086605802dbb219"
    "3f15a82950d7cfc325de7242975447b49bb84bd442b7c64104ab74eee56dac3fb9d033492b4e055bf25f38e8"
    "2f24c0019d9caaaa182faff9cd18ececb74e82ca8c1c14c5fe0ddca881de4d20732da1856a0fa935e5dca4cb"
    "40903e1135e57f976c737e1f8b71c4411b5de8b8361b1ffc2e2b4b1edbf0d764b70f7fbe2a8786374edacaa2"
    "9f1b5e7f509feac2410d9d81ed6f6b2049f39835c9b7b6afea750ba49bc40f0ec95264554d4e5ac6e3333c1b"
    "0ff732128710c1760d01a2f2bfffe85c9fd645574299c830ab0a2682499a54daecfc85f2e6e345f4304460d3"
    "f3184e9ea01e983fdcbd6b2b458699bfd00e8ad12a3b0c4f90b5a5b36161fd30e86f55e6433cfb97bf99dc8a"
    "bf800021fa9fe201af85b1a00212353539bc6c29d39a54d46560187335bf92c26af3b2b761513655d28c4049"
    "92dd92884d65dc1164cf8e03b8fc2770fc6a73dea80239bc9daa5c3d9ca629433c805374930e06ee1b2236a0"
    "1f7ad282ea2b132bfcf8b59c37d702307c634d16e6f43058a7b55309ecd1c5c86106fe6e31adb6b5f301a80f"
    "bc3ba0cc37ef76f2cc79a1e06334f181a6337ead7a40be25d917a40835cb0836f65ddfd512b24e2c90c12eeb"
    "b4424f43ef37b44ef1a58ad32a58f4c29ca9cb51456d4d9a44bcddd495d7a985b6b2eda3c4162833f0800b1f"
    "14f312f69bd42ef6873f7c551bc878eb997596ee79000f49ea45e6e382a452bca22406633f1a3936e1c39db7"
    "d2c45cf5ba8277c36b396d40fb577270f26e13f303d5db5fa12262724b5bd6eb964e63e7597e9a67b01ff4e1"
    "9694cbd5216e1fba36aafa5b14e1165faeb77e1f0b202fd9979ba332ada8ad101f072ae45e6738c1c69fb56c"
    "4b287a1872b0257869ec60c00bd328b1df372eeaa15ec62c"
)

# seal_previous is deterministic: old key 60..7f under new key 40..5f (above), epoch 7.
SEAL_VECTOR_OLD_KEY = bytes(range(96, 128))
SEAL_VECTOR = bytes.fromhex(
    "0ea55a810ec4f50b29de87e8840205b6e4438a8bbec4c13a"
    "12e1e70b42b4c97286a6bcf1a7692bca686a79e94e12498a"
)
BLOB_KEY_VECTOR = "b9e64d40aa03bcdb1a5fa4194626d3a915e9be3386b308169e3c9725333f7063"
CONTENT_KEY_VECTOR = "23fb0682d86960b8ccaf3ae58b0915bc3c3b862aab049ae4482bdd1fc23f51a0"


@pytest.fixture(scope="module")
def member() -> XWingPrivateKey:
    return XWingPrivateKey.generate()


RECIPIENT = bytes.fromhex("aa" * 32)


def _hkdf_by_hand(ikm: bytes, info: bytes) -> bytes:
    prk = hmac.new(bytes(32), ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def test_sizes() -> None:
    assert EPOCH_KEY_BYTES == 32
    assert WRAPPED_BYTES == 1120 + 32 + 16
    assert len(new_epoch_key()) == 32
    assert new_epoch_key() != new_epoch_key()


def test_wrap_round_trip(member: XWingPrivateKey) -> None:
    key = new_epoch_key()
    wrapped = wrap_epoch_key(
        key, epoch=3, recipient=RECIPIENT, recipient_wrap_public=member.public_bytes()
    )
    assert len(wrapped) == WRAPPED_BYTES
    assert unwrap_epoch_key(wrapped, epoch=3, recipient=RECIPIENT, wrap_key=member) == key


def test_wrapping_twice_differs(member: XWingPrivateKey) -> None:
    key = new_epoch_key()
    a, b = (
        wrap_epoch_key(
            key, epoch=0, recipient=RECIPIENT, recipient_wrap_public=member.public_bytes()
        )
        for _ in range(2)
    )
    assert a != b


def test_wrap_fixed_vector() -> None:
    wrap_key = XWingPrivateKey.from_seed(WRAP_VECTOR_SEED)
    opened = unwrap_epoch_key(
        WRAP_VECTOR_WRAPPED,
        epoch=WRAP_VECTOR_EPOCH,
        recipient=WRAP_VECTOR_RECIPIENT,
        wrap_key=wrap_key,
    )
    assert opened == WRAP_VECTOR_EPOCH_KEY


def test_wrap_fixed_vector_follows_the_documented_layout() -> None:
    """Rebuild the AEAD part with libsodium and a hand-made HKDF, apart from epoch.py."""
    shared = XWingPrivateKey.from_seed(WRAP_VECTOR_SEED).decapsulate(WRAP_VECTOR_WRAPPED[:1120])
    key = _hkdf_by_hand(shared, b"0k-sync/v2/epoch-wrap")
    ad = b"0k-sync/v2/epoch-key\x00" + (7).to_bytes(4, "big") + WRAP_VECTOR_RECIPIENT
    sealed = crypto_aead_chacha20poly1305_ietf_encrypt(WRAP_VECTOR_EPOCH_KEY, ad, bytes(12), key)
    assert WRAP_VECTOR_WRAPPED[1120:] == sealed


def _open(
    wrapped: bytes, member: XWingPrivateKey, *, epoch: int = 5, recipient: bytes = RECIPIENT
) -> bytes:
    return unwrap_epoch_key(wrapped, epoch=epoch, recipient=recipient, wrap_key=member)


@pytest.fixture(scope="module")
def wrapped(member: XWingPrivateKey) -> bytes:
    return wrap_epoch_key(
        new_epoch_key(), epoch=5, recipient=RECIPIENT, recipient_wrap_public=member.public_bytes()
    )


def test_wrong_recipient(member: XWingPrivateKey, wrapped: bytes) -> None:
    with pytest.raises(EpochKeyError, match="epoch 5 does not unwrap"):
        _open(wrapped, member, recipient=bytes.fromhex("bb" * 32))


def test_wrong_epoch(member: XWingPrivateKey, wrapped: bytes) -> None:
    with pytest.raises(EpochKeyError, match="does not unwrap"):
        _open(wrapped, member, epoch=6)


def test_wrong_wrap_key(wrapped: bytes) -> None:
    with pytest.raises(EpochKeyError, match="does not unwrap"):
        _open(wrapped, XWingPrivateKey.generate())


@pytest.mark.parametrize("position", [0, 1087, 1100, 1120, 1151, 1167])
def test_flipped_byte(member: XWingPrivateKey, wrapped: bytes, position: int) -> None:
    # Positions in the ML-KEM ciphertext, the X25519 share, the sealed key and the tag.
    bad = bytearray(wrapped)
    bad[position] ^= 0x01
    with pytest.raises(EpochKeyError, match="does not unwrap"):
        _open(bytes(bad), member)


def test_forged_low_order_share(member: XWingPrivateKey, wrapped: bytes) -> None:
    with pytest.raises(EpochKeyError, match="does not unwrap"):
        _open(wrapped[:1088] + bytes(32) + wrapped[1120:], member)


@pytest.mark.parametrize("size", [0, 1120, 1167, 1169])
def test_wrapped_of_wrong_size(member: XWingPrivateKey, wrapped: bytes, size: int) -> None:
    with pytest.raises(EpochKeyError, match="1168 bytes"):
        _open((wrapped * 2)[:size], member)


def test_wrap_refuses_bad_arguments(member: XWingPrivateKey) -> None:
    public = member.public_bytes()
    with pytest.raises(CryptoError, match="32 bytes"):
        wrap_epoch_key(bytes(31), epoch=0, recipient=RECIPIENT, recipient_wrap_public=public)
    with pytest.raises(CryptoError, match="32-byte Ed25519"):
        wrap_epoch_key(bytes(32), epoch=0, recipient=bytes(33), recipient_wrap_public=public)
    with pytest.raises(CryptoError, match="1216 bytes"):
        wrap_epoch_key(bytes(32), epoch=0, recipient=RECIPIENT, recipient_wrap_public=public[:-1])
    for epoch in (-1, 2**32):
        with pytest.raises(CryptoError, match="epoch number"):
            wrap_epoch_key(
                bytes(32), epoch=epoch, recipient=RECIPIENT, recipient_wrap_public=public
            )


def test_epoch_bounds_are_accepted(member: XWingPrivateKey) -> None:
    key = new_epoch_key()
    for epoch in (0, 2**32 - 1):
        wrapped = wrap_epoch_key(
            key, epoch=epoch, recipient=RECIPIENT, recipient_wrap_public=member.public_bytes()
        )
        assert _open(wrapped, member, epoch=epoch) == key


def test_seal_previous_round_trip() -> None:
    old, new = new_epoch_key(), new_epoch_key()
    sealed = seal_previous(old, new_key=new, epoch=1)
    assert len(sealed) == 48
    assert open_previous(sealed, new_key=new, epoch=1) == old


def test_seal_previous_fixed_vector() -> None:
    sealed = seal_previous(SEAL_VECTOR_OLD_KEY, new_key=WRAP_VECTOR_EPOCH_KEY, epoch=7)
    assert sealed == SEAL_VECTOR
    key = _hkdf_by_hand(WRAP_VECTOR_EPOCH_KEY, b"0k-sync/v2/prev-key")
    ad = b"0k-sync/v2/prev-key\x00" + (7).to_bytes(4, "big")
    assert (
        crypto_aead_chacha20poly1305_ietf_encrypt(SEAL_VECTOR_OLD_KEY, ad, bytes(12), key) == sealed
    )
    assert open_previous(SEAL_VECTOR, new_key=WRAP_VECTOR_EPOCH_KEY, epoch=7) == SEAL_VECTOR_OLD_KEY


def test_open_previous_refuses_wrong_key_epoch_or_modified() -> None:
    old, new = new_epoch_key(), new_epoch_key()
    sealed = seal_previous(old, new_key=new, epoch=9)
    with pytest.raises(EpochKeyError, match="epoch 8 does not open with the key of epoch 9"):
        open_previous(sealed, new_key=new_epoch_key(), epoch=9)
    with pytest.raises(EpochKeyError, match="does not open"):
        open_previous(sealed, new_key=new, epoch=10)
    with pytest.raises(EpochKeyError, match="does not open"):
        open_previous(bytes([sealed[0] ^ 1]) + sealed[1:], new_key=new, epoch=9)
    with pytest.raises(EpochKeyError, match="48 bytes"):
        open_previous(sealed[:-1], new_key=new, epoch=9)


def test_seal_previous_refuses_bad_arguments() -> None:
    key = new_epoch_key()
    with pytest.raises(CryptoError, match="no previous key"):
        seal_previous(key, new_key=key, epoch=0)
    with pytest.raises(CryptoError, match="no previous key"):
        open_previous(bytes(48), new_key=key, epoch=0)
    with pytest.raises(CryptoError, match="previous epoch key must be 32 bytes"):
        seal_previous(bytes(16), new_key=key, epoch=1)
    with pytest.raises(CryptoError, match="epoch key must be 32 bytes"):
        seal_previous(key, new_key=bytes(33), epoch=1)
    with pytest.raises(CryptoError, match="epoch number"):
        seal_previous(key, new_key=key, epoch=2**32)


def test_derived_keys() -> None:
    assert blob_key(WRAP_VECTOR_EPOCH_KEY).hex() == BLOB_KEY_VECTOR
    assert content_key(WRAP_VECTOR_EPOCH_KEY).hex() == CONTENT_KEY_VECTOR
    by_hand = _hkdf_by_hand(WRAP_VECTOR_EPOCH_KEY, b"0k-sync/v2/blob-key")
    assert by_hand.hex() == BLOB_KEY_VECTOR
    by_hand = _hkdf_by_hand(WRAP_VECTOR_EPOCH_KEY, b"0k-sync/v2/content-key")
    assert by_hand.hex() == CONTENT_KEY_VECTOR
    with pytest.raises(CryptoError, match="32 bytes"):
        blob_key(bytes(31))
    with pytest.raises(CryptoError, match="32 bytes"):
        content_key(b"")


def test_labels_are_distinct() -> None:
    labels = [ep.LABEL_BLOB_KEY, ep.LABEL_CONTENT_KEY, ep.LABEL_EPOCH_WRAP, ep.LABEL_PREV_KEY]
    assert len(set(labels)) == len(labels)
