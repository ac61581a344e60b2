"""DeviceIdentity: key generation, the 0600 key file, atomic save and defensive load."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from zerok.crypto.identity import DeviceIdentity
from zerok.crypto.xwing import XWingPrivateKey, encapsulate
from zerok.errors import CryptoError, KeyFileError, SyncError
from zerok.wire.ids import DeviceId


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "device.key"


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _write_doc(path: Path, doc: Any, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    path.chmod(mode)


def _good_doc(identity: DeviceIdentity) -> dict[str, Any]:
    return {
        "version": 1,
        "type": "x25519",
        "private_key": base64.b64encode(identity.private_bytes()).decode(),
        "device_id": str(identity.device_id),
    }


def test_key_file_error_is_a_crypto_error() -> None:
    assert issubclass(KeyFileError, CryptoError)
    assert issubclass(KeyFileError, SyncError)


def test_device_id_is_the_x25519_public_key() -> None:
    identity = DeviceIdentity.generate()
    assert isinstance(identity.device_id, DeviceId)
    assert len(identity.device_id) == 32
    assert bytes(identity.device_id) == identity.private_key.public_key().public_bytes_raw()
    raw = identity.private_bytes()
    assert len(raw) == 32
    expected = x25519.X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes_raw()
    assert bytes(identity.device_id) == expected


def test_generate_gives_distinct_identities() -> None:
    assert DeviceIdentity.generate().device_id != DeviceIdentity.generate().device_id


def test_from_private_bytes() -> None:
    identity = DeviceIdentity.generate()
    again = DeviceIdentity.from_private_bytes(identity.private_bytes())
    assert again.device_id == identity.device_id
    for bad in (b"", bytes(31), bytes(33)):
        with pytest.raises(KeyFileError):
            DeviceIdentity.from_private_bytes(bad)


def test_save_load_round_trip(key_path: Path) -> None:
    identity = DeviceIdentity.generate()
    identity.save(key_path)  # also creates the missing parent directory
    loaded = DeviceIdentity.load(key_path)
    assert loaded.device_id == identity.device_id
    assert loaded.private_bytes() == identity.private_bytes()
    loaded_str = DeviceIdentity.load(str(key_path))
    assert loaded_str.device_id == identity.device_id


def test_key_file_format(key_path: Path) -> None:
    identity = DeviceIdentity.generate()
    identity.save(key_path)
    doc = json.loads(key_path.read_text())
    assert doc["version"] == 1
    assert doc["type"] == "x25519"
    assert base64.b64decode(doc["private_key"], validate=True) == identity.private_bytes()
    assert doc["device_id"] == str(identity.device_id)


@pytest.mark.usefixtures("umask_zero")
def test_file_mode_is_exactly_0600_even_with_umask_zero(key_path: Path) -> None:
    DeviceIdentity.generate().save(key_path)
    assert _mode(key_path) == 0o600


def test_file_mode_is_exactly_0600(key_path: Path) -> None:
    old = os.umask(0o022)
    try:
        DeviceIdentity.generate().save(key_path)
    finally:
        os.umask(old)
    assert _mode(key_path) == 0o600


def test_save_leaves_no_temporary_file(key_path: Path) -> None:
    DeviceIdentity.generate().save(key_path)
    assert sorted(p.name for p in key_path.parent.iterdir()) == [key_path.name]


def test_save_writes_a_complete_private_file_before_renaming(
    key_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Atomic save: the full content goes to a 0600 temporary file, then linked into place."""
    identity = DeviceIdentity.generate()
    seen: list[tuple[str, int, bytes, bool]] = []
    real_link = os.link

    def spy(src: Any, dst: Any) -> None:
        source = Path(src)
        seen.append((source.name, _mode(source), source.read_bytes(), Path(dst).exists()))
        real_link(src, dst)

    monkeypatch.setattr(os, "link", spy)
    identity.save(key_path)
    assert len(seen) == 1
    name, mode, content, target_existed = seen[0]
    assert name != key_path.name
    assert mode == 0o600
    assert not target_existed
    assert content == key_path.read_bytes()
    assert json.loads(content)["private_key"] == _good_doc(identity)["private_key"]


def test_failed_save_leaves_nothing_behind(key_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises((OSError, KeyFileError)):
        DeviceIdentity.generate().save(key_path)
    monkeypatch.undo()
    assert not key_path.exists()
    assert list(key_path.parent.iterdir()) == []
    # A later save works.
    identity = DeviceIdentity.generate()
    identity.save(key_path)
    assert DeviceIdentity.load(key_path).device_id == identity.device_id


def test_save_survives_a_stale_temporary_file(key_path: Path) -> None:
    """A crash between creating the temporary file and renaming it leaves that file behind;
    a process with the same pid (PID 1 in every container start) must still be able to save."""
    key_path.parent.mkdir(parents=True)
    stale = key_path.with_name(f".{key_path.name}.{os.getpid()}.tmp")
    stale.write_bytes(b'{"version": 1, "type": "x25')  # half-written by the crashed run
    identity = DeviceIdentity.generate()
    identity.save(key_path)
    assert DeviceIdentity.load(key_path).device_id == identity.device_id


def test_save_error_is_a_key_file_error(tmp_path: Path) -> None:
    """Errors of our own API derive from SyncError: a key path that cannot be created."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a regular file")
    with pytest.raises(KeyFileError):
        DeviceIdentity.generate().save(blocker / "device.key")


def test_save_refuses_to_replace_another_key(key_path: Path) -> None:
    first = DeviceIdentity.generate()
    first.save(key_path)
    before = key_path.read_bytes()
    with pytest.raises(KeyFileError, match="another device key"):
        DeviceIdentity.generate().save(key_path)
    assert key_path.read_bytes() == before
    assert DeviceIdentity.load(key_path).device_id == first.device_id


def test_save_never_overwrites_a_key_created_concurrently(
    key_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "Never overwrites a different key" must hold when another process (a second
    ``load_or_create``) writes its key between our existence check and our rename."""
    ours, theirs = DeviceIdentity.generate(), DeviceIdentity.generate()
    real_fsync = os.fsync

    def racing_fsync(fd: int) -> None:
        real_fsync(fd)
        if not key_path.exists():
            _write_doc(key_path, _good_doc(theirs))

    monkeypatch.setattr(os, "fsync", racing_fsync)
    with pytest.raises(KeyFileError):
        ours.save(key_path)
    monkeypatch.undo()
    assert DeviceIdentity.load(key_path).device_id == theirs.device_id


def test_save_same_key_twice_is_harmless(key_path: Path) -> None:
    identity = DeviceIdentity.generate()
    identity.save(key_path)
    before = key_path.read_bytes()
    identity.save(key_path)
    assert key_path.read_bytes() == before
    assert _mode(key_path) == 0o600


def test_save_refuses_to_replace_a_corrupt_file(key_path: Path) -> None:
    key_path.parent.mkdir(parents=True)
    key_path.write_text("not json")
    key_path.chmod(0o600)
    with pytest.raises(KeyFileError):
        DeviceIdentity.generate().save(key_path)
    assert key_path.read_text() == "not json"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o666, 0o610, 0o601, 0o620, 0o602])
def test_load_refuses_group_or_other_access(key_path: Path, mode: int) -> None:
    DeviceIdentity.generate().save(key_path)
    key_path.chmod(mode)
    with pytest.raises(KeyFileError, match="chmod 600") as info:
        DeviceIdentity.load(key_path)
    assert str(key_path) in str(info.value)


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_load_accepts_owner_only_modes(key_path: Path, mode: int) -> None:
    identity = DeviceIdentity.generate()
    identity.save(key_path)
    key_path.chmod(mode)
    assert DeviceIdentity.load(key_path).device_id == identity.device_id


def test_load_missing_file_mentions_zerok_init(key_path: Path) -> None:
    with pytest.raises(KeyFileError, match="zerok init"):
        DeviceIdentity.load(key_path)


def test_load_a_directory(tmp_path: Path) -> None:
    directory = tmp_path / "dir"
    directory.mkdir(mode=0o700)
    with pytest.raises(KeyFileError):
        DeviceIdentity.load(directory)


def _bad_docs() -> list[tuple[str, Any]]:
    good = _good_doc(DeviceIdentity.generate())
    return [
        ("version-2", {**good, "version": 2}),
        ("version-string", {**good, "version": "1"}),
        ("version-missing", {k: v for k, v in good.items() if k != "version"}),
        ("type-ed25519", {**good, "type": "ed25519"}),
        ("type-missing", {k: v for k, v in good.items() if k != "type"}),
        ("key-missing", {k: v for k, v in good.items() if k != "private_key"}),
        ("key-not-base64", {**good, "private_key": "!!!not base64!!!"}),
        ("key-bad-padding", {**good, "private_key": good["private_key"].rstrip("=")}),
        ("key-urlsafe-chars", {**good, "private_key": "-_" * 22}),
        ("key-int", {**good, "private_key": 12345}),
        ("key-null", {**good, "private_key": None}),
        ("key-31-bytes", {**good, "private_key": base64.b64encode(bytes(31)).decode()}),
        ("key-33-bytes", {**good, "private_key": base64.b64encode(bytes(33)).decode()}),
        ("key-empty", {**good, "private_key": ""}),
        ("list", [good]),
        ("string", "x25519"),
        ("null", None),
        ("number", 1),
    ]


@pytest.mark.parametrize(("label", "doc"), _bad_docs(), ids=[label for label, _ in _bad_docs()])
def test_load_rejects_malformed_documents(key_path: Path, label: str, doc: Any) -> None:
    _write_doc(key_path, doc)
    with pytest.raises(KeyFileError):
        DeviceIdentity.load(key_path)


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"not json at all", b"\xff\xfe\x00garbage", b'{"version": 1,}', b"\x00" * 64],
)
def test_load_rejects_corrupt_json(key_path: Path, raw: bytes) -> None:
    key_path.parent.mkdir(parents=True)
    key_path.write_bytes(raw)
    key_path.chmod(0o600)
    with pytest.raises(KeyFileError, match="corrupt"):
        DeviceIdentity.load(key_path)


def test_load_or_create_creates_once_then_loads(key_path: Path) -> None:
    assert not key_path.exists()
    created = DeviceIdentity.load_or_create(key_path)
    assert key_path.exists()
    assert _mode(key_path) == 0o600
    content = key_path.read_bytes()
    loaded = DeviceIdentity.load_or_create(key_path)
    assert loaded.device_id == created.device_id
    assert loaded.private_bytes() == created.private_bytes()
    assert key_path.read_bytes() == content


def test_load_or_create_refuses_an_unsafe_existing_file(key_path: Path) -> None:
    DeviceIdentity.generate().save(key_path)
    key_path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        DeviceIdentity.load_or_create(key_path)


# -- v2 keys derived from the X25519 key ------------------------------------------------------

FIXED_X25519 = bytes(range(32))
# Frozen once from FIXED_X25519, so the docs can carry them and a change shows up here.
FIXED_SIGN_PUBLIC = "7f29d93d28a1ecdb540c620735031923f91c4b30c3523b7578d33c540830ba9c"
FIXED_WRAP_PUBLIC_SHA256 = "6ab771fe4cb3974d1a6bcb17e805b39183a442d27c6c372c3b832da46b0607a1"


def _hkdf_by_hand(ikm: bytes, info: bytes) -> bytes:
    """RFC 5869 with an empty salt and one output block, apart from the code under test."""
    prk = hmac.new(bytes(32), ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def test_v2_keys_fixed_vector() -> None:
    identity = DeviceIdentity.from_private_bytes(FIXED_X25519)
    assert identity.sign_public.hex() == FIXED_SIGN_PUBLIC
    assert hashlib.sha256(identity.wrap_public).hexdigest() == FIXED_WRAP_PUBLIC_SHA256


def test_v2_keys_follow_the_documented_derivation() -> None:
    identity = DeviceIdentity.from_private_bytes(FIXED_X25519)
    sign_seed = _hkdf_by_hand(FIXED_X25519, b"0k-sync/v2/device-sign")
    expected = ed25519.Ed25519PrivateKey.from_private_bytes(sign_seed).public_key()
    assert identity.sign_public == expected.public_bytes_raw()
    wrap_seed = _hkdf_by_hand(FIXED_X25519, b"0k-sync/v2/device-wrap")
    assert identity.wrap_key.seed_bytes() == wrap_seed
    assert identity.wrap_public == XWingPrivateKey.from_seed(wrap_seed).public_bytes()


def test_v2_keys_sizes_and_signature() -> None:
    identity = DeviceIdentity.generate()
    assert len(identity.sign_public) == 32
    assert len(identity.wrap_public) == 1216
    signature = identity.sign(b"entry")
    assert len(signature) == 64
    public = ed25519.Ed25519PublicKey.from_public_bytes(identity.sign_public)
    public.verify(signature, b"entry")
    with pytest.raises(InvalidSignature):
        public.verify(signature, b"entrY")


def test_v2_keys_survive_save_and_load(key_path: Path) -> None:
    identity = DeviceIdentity.generate()
    identity.save(key_path)
    loaded = DeviceIdentity.load(key_path)
    assert loaded.sign_public == identity.sign_public
    assert loaded.wrap_public == identity.wrap_public
    assert set(json.loads(key_path.read_text())) == {"version", "type", "private_key", "device_id"}


def test_v2_keys_differ_between_devices_and_from_each_other() -> None:
    a, b = DeviceIdentity.generate(), DeviceIdentity.generate()
    assert a.sign_public != b.sign_public
    assert a.wrap_public != b.wrap_public
    assert a.wrap_key.seed_bytes() != a.sign_key.private_bytes_raw()
    assert a.sign_public != bytes(a.device_id)


def test_v2_wrap_key_decapsulates_for_its_public_key() -> None:
    identity = DeviceIdentity.generate()
    ss, ct = encapsulate(identity.wrap_public)
    assert identity.wrap_key.decapsulate(ct) == ss
