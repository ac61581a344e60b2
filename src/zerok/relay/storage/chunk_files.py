"""The bytes of SQLite's chunks: one file each, beside the database.

``<root>/<group hex>/<address hex>`` holds a complete chunk (verified, never changed
again), ``<address hex>.part`` an upload under way. The database row says how much of a
part counts; bytes past that (a write whose row update never committed) are cut off by
the next write. Every write is on disk (fsync) before it is acknowledged; a commit hashes
the part and renames it into place atomically, so a complete file is always whole.

These are blocking calls: the storage runs them on its own small thread pool, one at a
time per chunk (``KeyedLocks``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
from pathlib import Path

from zerok.errors import StorageError, StorageFullError

HASH_PIECE = 1024 * 1024  # bytes read at a time to hash a part
_FULL = (errno.ENOSPC, errno.EDQUOT)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _failure(what: str, exc: OSError) -> StorageError:
    if exc.errno in _FULL:
        return StorageFullError(f"{what}: the chunk store's disk is full ({exc.strerror})")
    return StorageError(f"{what}: {exc}")


class ChunkFiles:
    """Chunk files under ``root`` (created when first needed)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, group_id: bytes, address: bytes) -> Path:
        return self.root / group_id.hex() / address.hex()

    def part(self, group_id: bytes, address: bytes) -> Path:
        return self.root / group_id.hex() / f"{address.hex()}.part"

    def _group_dir(self, group_id: bytes) -> Path:
        directory = self.root / group_id.hex()
        if not directory.is_dir():
            self.root.mkdir(mode=0o700, exist_ok=True)
            directory.mkdir(mode=0o700, exist_ok=True)
            _fsync_dir(self.root)  # the new directory's entry must survive a crash too
        return directory

    def append(self, group_id: bytes, address: bytes, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset`` of the part (anything past ``offset`` dropped
        first), durably. StorageFullError if the disk is full: the part keeps what it had."""
        try:
            self._group_dir(group_id)
            part = self.part(group_id, address)
            fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError as exc:
            raise _failure("cannot store the chunk", exc) from exc
        try:
            os.ftruncate(fd, offset)
            view, at = memoryview(data), offset
            while view:
                written = os.pwrite(fd, view, at)
                view, at = view[written:], at + written
            os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, offset)  # back to what counted
            raise _failure("cannot store the chunk", exc) from exc
        finally:
            os.close(fd)

    def seal(self, group_id: bytes, address: bytes, size: int) -> bool:
        """Make a full part the complete chunk if its bytes hash to ``address`` (True);
        otherwise delete it (False). Idempotent: after a crash between the rename and the
        row's update, the complete file is checked instead."""
        part, final = self.part(group_id, address), self.path(group_id, address)
        source = part if part.exists() else final
        try:
            matched = _digest(source, size) == address
            if not matched:
                source.unlink(missing_ok=True)
            elif source == part:
                os.replace(part, final)
                _fsync_dir(final.parent)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _failure("cannot commit the chunk", exc) from exc
        return matched

    def read(self, group_id: bytes, address: bytes, offset: int, length: int) -> bytes:
        try:
            with self.path(group_id, address).open("rb") as f:
                return os.pread(f.fileno(), length, offset)
        except OSError as exc:
            raise StorageError(f"cannot read chunk {address.hex()[:16]}: {exc}") from exc

    def discard(self, group_id: bytes, address: bytes) -> None:
        for path in (self.part(group_id, address), self.path(group_id, address)):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _digest(path: Path, size: int) -> bytes:
    """SHA-256 of ``path``'s bytes, or b"" when it does not hold exactly ``size``."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        if os.fstat(f.fileno()).st_size != size:
            return b""
        while piece := f.read(HASH_PIECE):
            digest.update(piece)
    return digest.digest()
