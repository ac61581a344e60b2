"""Device identity: an X25519 key pair whose public key is the device id.

The key file is JSON (format version, key type, base64 private key), written atomically
with mode 0600; loading refuses a file that others can read, since it would let them
impersonate the device.

Protocol v2's keys (an Ed25519 signing key for the membership log, an X-Wing key that epoch
keys are wrapped for) are derived from the X25519 private key with HKDF, so the key file
stays as it is and a v1 device gains them without a migration.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import x25519

from zerok.crypto.member_keys import MemberKeys
from zerok.errors import KeyFileError
from zerok.wire.ids import DeviceId

KEY_FILE_VERSION = 1


LABEL_DEVICE_SIGN = b"0k-sync/v2/device-sign"
LABEL_DEVICE_WRAP = b"0k-sync/v2/device-wrap"


class DeviceIdentity(MemberKeys):
    """A device's static key pair (its Noise static key and its id)."""

    SIGN_LABEL = LABEL_DEVICE_SIGN
    WRAP_LABEL = LABEL_DEVICE_WRAP

    def __init__(self, private_key: x25519.X25519PrivateKey) -> None:
        self.private_key = private_key
        self.device_id = DeviceId(private_key.public_key().public_bytes_raw())

    @classmethod
    def generate(cls) -> DeviceIdentity:
        return cls(x25519.X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> DeviceIdentity:
        if len(raw) != 32:
            raise KeyFileError(f"an X25519 private key is 32 bytes, got {len(raw)}")
        return cls(x25519.X25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        return self.private_key.private_bytes_raw()

    def member_secret(self) -> bytes:
        return self.private_bytes()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key file with mode 0600, atomically; never overwrites a different key."""
        target = Path(path)
        try:
            self._save(target)
        except OSError as exc:
            raise KeyFileError(f"cannot write device key {target}: {exc.strerror or exc}") from None

    def _save(self, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            self._check_same(target)
            return
        body = json.dumps(
            {
                "version": KEY_FILE_VERSION,
                "type": "x25519",
                "private_key": base64.b64encode(self.private_bytes()).decode("ascii"),
                "device_id": str(self.device_id),
            }
        ).encode()
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        tmp = Path(tmp_name)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            # link() fails if the target appeared meanwhile, where rename() would replace it.
            os.link(tmp, target)
        except FileExistsError:
            self._check_same(target)
        finally:
            tmp.unlink(missing_ok=True)

    def _check_same(self, target: Path) -> None:
        if DeviceIdentity.load(target).device_id != self.device_id:
            raise KeyFileError(f"{target} already holds another device key; refusing to replace it")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> DeviceIdentity:
        target = Path(path)
        try:
            mode = target.stat().st_mode
            raw = target.read_bytes()
        except FileNotFoundError:
            raise KeyFileError(
                f"no device key at {target}; run `zerok init` to create one"
            ) from None
        except OSError as exc:
            raise KeyFileError(f"cannot read device key {target}: {exc.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"device key {target} is accessible by other users (mode {stat.S_IMODE(mode):o}); "
                f"run `chmod 600 {target}`"
            )
        try:
            doc = json.loads(raw)
            if doc.get("version") != KEY_FILE_VERSION or doc.get("type") != "x25519":
                raise ValueError("unknown key file version or type")
            key = base64.b64decode(doc["private_key"], validate=True)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KeyFileError(f"device key {target} is corrupt: {exc}") from None
        return cls.from_private_bytes(key)

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> DeviceIdentity:
        if Path(path).exists():
            return cls.load(path)
        identity = cls.generate()
        identity.save(path)
        return identity
