"""SQLite and its disk (issue 10): delivered blobs give their space back, the WAL stays
bounded under writes that never pause, a full disk refuses pushes (StorageFullError) while
acks, deletes and cleanup go on, and the relay recovers by itself; files are private.

The disk is made "full" with ``max_pages`` (SQLite's max_page_count): the same SQLITE_FULL
a full file system gives, deterministic and without root.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from tests.relay.storage.support import BIG, DAY, NOW, new_group, run
from zerok.errors import StorageError, StorageFullError
from zerok.relay.storage import sqlite as sqlite_module
from zerok.relay.storage.schema import MIGRATIONS
from zerok.relay.storage.sqlite import SQLiteStorage
from zerok.wire import BlobId, DeviceId, GroupId

KIB = b"k" * 1024


async def fill(s: SQLiteStorage, group: GroupId, sender: DeviceId, count: int) -> None:
    for start in range(0, count, 500):  # concurrent, so they share commits
        await asyncio.gather(
            *(
                s.push(
                    group,
                    BlobId.random(),
                    sender,
                    KIB,
                    now=NOW,
                    expires_at=NOW + DAY,
                    max_group_bytes=BIG,
                )
                for _ in range(min(500, count - start))
            )
        )


def pages(path: Path) -> tuple[int, int]:
    """(page_count, freelist_count) as a fresh connection sees them."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return (
            conn.execute("PRAGMA page_count").fetchone()[0],
            conn.execute("PRAGMA freelist_count").fetchone()[0],
        )


def test_delivered_blobs_give_their_pages_back(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"

    async def main() -> tuple[int, int]:
        s = SQLiteStorage(path)
        await s.open()
        try:
            a, b = DeviceId.random(), DeviceId.random()
            group = await new_group(s, a, b)
            await fill(s, group, a, 3000)
            full, _ = await asyncio.to_thread(pages, path)
            await s.ack(group, b, 3000)
            assert (await s.cleanup(NOW)).acked_blobs == 3000
            await s.maintain()
            return full, 0
        finally:
            await s.close()  # checkpoints: the file now has the shrunken size

    full, _ = run(main())
    count, free = pages(path)
    assert free == 0
    # 3 MiB of ciphertext pushed; what stays is the schema and 3000 remembered ids.
    assert count < full // 5, (count, full)


def test_the_wal_is_checkpointed_and_truncated_under_steady_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = 256 * 1024
    monkeypatch.setattr(sqlite_module, "WAL_CHECKPOINT_BYTES", limit, raising=False)
    monkeypatch.setattr(sqlite_module, "WAL_KEEP_BYTES", limit, raising=False)
    path = tmp_path / "relay.db"
    wal = Path(f"{path}-wal")

    async def main() -> None:
        s = SQLiteStorage(path)
        await s.open()
        try:
            group = await new_group(s)
            # 4 MiB queued at once: the writer is never idle until the last batch.
            await fill(s, group, DeviceId.random(), 4000)
            # About the limit plus what was written while the checkpoint ran (a few
            # batches); before, the whole 4 MiB and more stayed in the WAL.
            assert wal.stat().st_size < limit + 2 * 1024 * 1024, wal.stat().st_size
        finally:
            await s.close()

    run(main())


def test_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "relay.db"

    async def main() -> None:
        s = SQLiteStorage(path)
        await s.open()
        try:
            await new_group(s)
            for name in ("relay.db", "relay.db-wal", "relay.db-shm", "relay.db-reserve"):
                mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
                assert mode == 0o600, (name, oct(mode))
        finally:
            await s.close()

    old = os.umask(0o022)  # the usual umask, whatever the test runner's
    try:
        run(main())
    finally:
        os.umask(old)


def test_a_full_disk_refuses_pushes_keeps_acks_and_cleanup_and_recovers(
    tmp_path: Path,
) -> None:
    path = tmp_path / "relay.db"
    reserve = tmp_path / "relay.db-reserve"

    async def main() -> None:
        s = SQLiteStorage(path, max_pages=300, reserve_bytes=64 * 1024)
        await s.open()
        try:
            assert reserve.exists()
            assert s.degraded() is None
            a, b = DeviceId.random(), DeviceId.random()
            group = await new_group(s, a, b)
            stored = 0
            with pytest.raises(StorageFullError):
                for _ in range(2000):  # 300 pages of 4 KiB hold far fewer
                    await fill(s, group, a, 1)
                    stored += 1
            assert 0 < stored < 2000
            assert s.degraded() is not None
            assert not reserve.exists()  # released for the writes that make room

            # A push failing in a batch does not take the others down with it.
            outcomes = await asyncio.gather(
                fill(s, group, a, 1), s.ack(group, b, stored), return_exceptions=True
            )
            assert isinstance(outcomes[0], StorageFullError)
            assert outcomes[1] is None
            assert (await s.get_device(group, b)) is not None

            assert (await s.cleanup(NOW)).acked_blobs == stored
            await fill(s, group, a, 10)  # room again: pushes work, without a restart
            assert s.degraded() is None
            assert reserve.exists()
            acked = await s.get_device(group, b)
            assert acked is not None and acked.acked_cursor == stored
        finally:
            await s.close()

    run(main())


def test_full_is_a_storage_error() -> None:
    """Code that handles StorageError (cleanup loop, request handlers) handles it too."""
    assert issubclass(StorageFullError, StorageError)


def test_tombstones_of_an_older_database_become_remembered_ids(tmp_path: Path) -> None:
    """Schema 3 moves the tombstones (ciphertext NULL) of schema 2 out of ``blobs``: their
    ids still answer retries, their rows no longer hold pages."""
    path = tmp_path / "relay.db"
    group, sender = GroupId.random(), DeviceId.random()
    gone, live = BlobId.random(), BlobId.random()
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for version, script in enumerate(MIGRATIONS[:2]):
            conn.executescript(f"BEGIN; {script} PRAGMA user_version = {version + 1}; COMMIT;")
        conn.execute(
            "INSERT INTO groups (group_id, auth_key, max_cursor, bytes_stored, blob_count,"
            " created_at) VALUES (?, ?, 2, 4, 1, ?)",
            (group, b"k" * 32, NOW),
        )
        conn.executemany(
            "INSERT INTO blobs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (group, 1, gone, sender, 4, None, NOW, NOW + DAY),
                (group, 2, live, sender, 4, b"live", NOW + 1, NOW + DAY),
            ],
        )

    async def main() -> None:
        s = SQLiteStorage(path)
        await s.open()
        try:
            retried = await s.push(
                group, gone, sender, b"x", now=NOW + 5, expires_at=NOW + DAY, max_group_bytes=BIG
            )
            assert (retried.cursor, retried.timestamp, retried.duplicate) == (1, NOW, True)
            page = await s.pull(group, 0, 10, BIG)
            assert [b.blob_id for b in page.blobs] == [live]
        finally:
            await s.close()

    run(main())
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT cursor FROM blobs").fetchall() == [(2,)]
        assert conn.execute("SELECT cursor FROM blob_ids").fetchall() == [(1,)]
