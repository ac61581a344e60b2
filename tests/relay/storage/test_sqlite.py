"""SQLiteStorage against real database files: schema, cursors, group commit, retention.

Every test opens its own file under ``tmp_path``; nothing about the database is mocked.
Async bodies run under ``asyncio.run`` (no pytest-asyncio). Timestamps are passed in, so
time is explicit: ``NOW`` plus some milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from zerok.relay.storage import (
    SCHEMA_VERSION,
    CleanupStats,
    DeleteOutcome,
    InviteTake,
    PushOutcome,
    SQLiteStorage,
    StorageError,
)
from zerok.wire import BlobId, DeviceId, GroupId
from zerok.wire.messages import STORED_BLOB_OVERHEAD

T = TypeVar("T")

NOW = 1_700_000_000_000
DAY = 86_400_000
BIG = 1 << 40  # a group quota nothing reaches
AUTH = b"\x11" * 32


def run(path: Path, body: Callable[[SQLiteStorage], Awaitable[T]], **options: Any) -> T:
    """Open a SQLiteStorage on ``path``, run ``body`` with it, always close it."""

    async def main() -> T:
        storage = SQLiteStorage(path, **options)
        await storage.open()
        try:
            return await body(storage)
        finally:
            await storage.close()

    return asyncio.run(main())


def inspect(path: Path, sql: str) -> Any:
    """One value from a separate, plain sqlite3 connection to the file."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


async def new_group(s: SQLiteStorage, *devices: DeviceId) -> GroupId:
    group = GroupId.random()
    await s.register_group(group, AUTH, NOW)
    for device in devices:
        await s.touch_device(group, device, "", NOW)
    return group


async def push(
    s: SQLiteStorage,
    group: GroupId,
    data: bytes = b"ciphertext",
    *,
    sender: DeviceId | None = None,
    blob_id: BlobId | None = None,
    now: int = NOW,
    expires_at: int = NOW + DAY,
    quota: int = BIG,
) -> PushOutcome:
    return await s.push(
        group,
        blob_id or BlobId.random(),
        sender or DeviceId.random(),
        data,
        now=now,
        expires_at=expires_at,
        max_group_bytes=quota,
    )


async def cursors(s: SQLiteStorage, group: GroupId) -> list[int]:
    page = await s.pull(group, 0, 1000, BIG)
    return [b.cursor for b in page.blobs]


class WriterGate:
    """Holds the writer thread inside a write so that the next writes queue up behind it
    and are guaranteed to run as one batch once the gate opens."""

    def __init__(self, s: SQLiteStorage) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

        def hold(_: sqlite3.Connection) -> None:
            self.entered.set()
            self.release.wait(10)

        self.task = asyncio.ensure_future(s._write(hold))

    async def wait_entered(self) -> None:
        await asyncio.to_thread(self.entered.wait, 10)
        assert self.entered.is_set()

    async def open(self) -> None:
        self.release.set()
        await self.task


# -- opening, schema, pragmas -----------------------------------------------------------


def test_open_creates_schema_in_wal_with_incremental_auto_vacuum(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "relay.db"

    async def body(s: SQLiteStorage) -> None:
        assert await s.stats() == (0, 0)

    run(db, body)
    assert db.exists()
    assert inspect(db, "PRAGMA user_version") == SCHEMA_VERSION
    assert inspect(db, "PRAGMA journal_mode") == "wal"
    assert inspect(db, "PRAGMA auto_vacuum") == 2  # INCREMENTAL
    tables = {
        row[0]
        for row in sqlite3.connect(db).execute("SELECT name FROM sqlite_master WHERE type='table'")
    }
    assert {"groups", "devices", "blobs", "invites"} <= tables


def test_reopen_keeps_data(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    device = DeviceId.random()

    async def first(s: SQLiteStorage) -> tuple[GroupId, BlobId]:
        group = await new_group(s, device)
        blob = BlobId.random()
        await push(s, group, b"kept", blob_id=blob, sender=device)
        return group, blob

    group, blob = run(db, first)

    async def second(s: SQLiteStorage) -> None:
        record = await s.get_group(group)
        assert record is not None
        assert record.auth_key == AUTH
        assert record.max_cursor == 1
        page = await s.pull(group, 0, 10, BIG)
        assert [(b.blob_id, b.cursor, b.ciphertext) for b in page.blobs] == [(blob, 1, b"kept")]
        assert await s.get_device(group, device) is not None
        outcome = await push(s, group)
        assert outcome.cursor == 2

    run(db, second)
    assert inspect(db, "PRAGMA user_version") == SCHEMA_VERSION


def test_newer_schema_version_is_refused_with_clear_message(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()

    async def main() -> None:
        s = SQLiteStorage(db)
        try:
            with pytest.raises(StorageError, match="newer") as info:
                await s.open()
        finally:
            await s.close()
        message = str(info.value)
        assert str(SCHEMA_VERSION + 1) in message
        assert str(SCHEMA_VERSION) in message

    asyncio.run(main())
    assert inspect(db, "PRAGMA user_version") == SCHEMA_VERSION + 1  # left untouched


def test_write_after_failed_open_raises_instead_of_hanging(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()

    async def main() -> None:
        s = SQLiteStorage(db)
        try:
            with pytest.raises(StorageError):
                await s.open()
            try:
                await asyncio.wait_for(s.register_group(GroupId.random(), AUTH, NOW), 1.0)
            except StorageError:
                return
            except TimeoutError:
                pytest.fail("register_group after a failed open() hung")
            pytest.fail("register_group after a failed open() succeeded")
        finally:
            await s.close()

    asyncio.run(main())


@pytest.mark.parametrize(("mode", "expected"), [("NORMAL", 1), ("FULL", 2), ("full", 2)])
def test_synchronous_setting_applies_to_connections(
    tmp_path: Path, mode: str, expected: int
) -> None:
    async def body(s: SQLiteStorage) -> int:
        value: int = await s._read(lambda c: c.execute("PRAGMA synchronous").fetchone()[0])
        return value

    assert run(tmp_path / "relay.db", body, synchronous=mode) == expected


def test_synchronous_defaults_to_normal(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> int:
        value: int = await s._read(lambda c: c.execute("PRAGMA synchronous").fetchone()[0])
        return value

    assert SQLiteStorage(tmp_path / "x.db").synchronous == "NORMAL"
    assert run(tmp_path / "relay.db", body) == 1


@pytest.mark.parametrize("mode", ["OFF", "EXTRA", "", "fast"])
def test_invalid_synchronous_is_refused(tmp_path: Path, mode: str) -> None:
    with pytest.raises(StorageError, match="synchronous"):
        SQLiteStorage(tmp_path / "relay.db", synchronous=mode)


# -- groups and devices ---------------------------------------------------------------------


def test_register_group_is_idempotent_and_keeps_first_auth_key(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        group = GroupId.random()
        assert await s.get_group(group) is None
        first = await s.register_group(group, b"\x01" * 32, NOW)
        assert (first.group_id, first.auth_key, first.max_cursor, first.bytes_stored) == (
            group,
            b"\x01" * 32,
            0,
            0,
        )
        assert first.created_at == NOW
        await push(s, group, b"abc")
        again = await s.register_group(group, b"\x02" * 32, NOW + 5)
        assert again.auth_key == b"\x01" * 32
        assert again.created_at == NOW
        assert again.max_cursor == 1
        assert again.bytes_stored == 3
        assert await s.get_group(group) == again
        assert await s.stats() == (1, 1)

    run(tmp_path / "relay.db", body)


def test_touch_device_creates_then_updates_name_and_last_seen(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        group = await new_group(s)
        device = DeviceId.random()
        assert await s.get_device(group, device) is None
        created = await s.touch_device(group, device, "laptop", NOW)
        assert (created.name, created.last_seen, created.acked_cursor) == ("laptop", NOW, 0)
        assert not created.revoked
        assert created.push_token is None

        kept = await s.touch_device(group, device, "", NOW + 10)
        assert (kept.name, kept.last_seen) == ("laptop", NOW + 10)

        renamed = await s.touch_device(group, device, "work laptop", NOW + 20)
        assert (renamed.name, renamed.last_seen) == ("work laptop", NOW + 20)
        assert await s.get_device(group, device) == renamed

        other = DeviceId.random()
        await s.touch_device(group, other, "", NOW + 30)
        listed = await s.list_devices(group)
        assert [d.device_id for d in listed] == [device, other]
        assert listed[1].name == ""
        assert await s.list_devices(GroupId.random()) == []

    run(tmp_path / "relay.db", body)


def test_revoke_unknown_device_creates_revoked_record(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        group = await new_group(s)
        admin, stranger = DeviceId.random(), DeviceId.random()
        record = await s.revoke_device(group, stranger, admin, "lost", NOW)
        assert record.revoked
        assert (record.revoked_at, record.revoked_by, record.revoke_reason) == (
            NOW,
            admin,
            "lost",
        )
        stored = await s.get_device(group, stranger)
        assert stored == record

    run(tmp_path / "relay.db", body)


def test_revoke_twice_keeps_first_revoker_and_reason(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        device, first, second = DeviceId.random(), DeviceId.random(), DeviceId.random()
        group = await new_group(s, device)
        await s.revoke_device(group, device, first, "stolen", NOW + 1)
        again = await s.revoke_device(group, device, second, "other reason", NOW + 2)
        assert (again.revoked_at, again.revoked_by, again.revoke_reason) == (
            NOW + 1,
            first,
            "stolen",
        )

    run(tmp_path / "relay.db", body)


def test_push_token_set_cleared_and_dropped_on_revoke(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        device = DeviceId.random()
        group = await new_group(s, device)
        await s.set_push_token(group, device, "tok-123", "apns", "com.example")
        record = await s.get_device(group, device)
        assert record is not None
        assert (record.push_token, record.push_platform, record.push_app_id) == (
            "tok-123",
            "apns",
            "com.example",
        )

        await s.set_push_token(group, device, None, None, None)
        record = await s.get_device(group, device)
        assert record is not None
        assert (record.push_token, record.push_platform, record.push_app_id) == (None,) * 3

        await s.set_push_token(group, device, "tok-456", "fcm", "app")
        revoked = await s.revoke_device(group, device, DeviceId.random(), "gone", NOW)
        assert (revoked.push_token, revoked.push_platform, revoked.push_app_id) == (None,) * 3
        record = await s.get_device(group, device)
        assert record is not None
        assert record.push_token is None

    run(tmp_path / "relay.db", body)


# -- push -------------------------------------------------------------------------------------


def test_push_assigns_gap_free_cursors_per_group(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        a, b = await new_group(s), await new_group(s)
        got_a = [(await push(s, a, now=NOW + i)).cursor for i in range(5)]
        got_b = [(await push(s, b)).cursor for _ in range(3)]
        got_a.append((await push(s, a)).cursor)
        assert got_a == [1, 2, 3, 4, 5, 6]
        assert got_b == [1, 2, 3]
        outcome = await push(s, a, now=NOW + 99)
        assert outcome == PushOutcome(7, NOW + 99)
        record_a, record_b = await s.get_group(a), await s.get_group(b)
        assert record_a is not None and record_b is not None
        assert (record_a.max_cursor, record_b.max_cursor) == (7, 3)
        assert await cursors(s, a) == [1, 2, 3, 4, 5, 6, 7]
        assert await s.stats() == (2, 10)

    run(tmp_path / "relay.db", body)


def test_concurrent_pushes_get_cursors_1_to_500_with_group_commit(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        group = await new_group(s)
        before = s.commits
        outcomes = await asyncio.gather(*(push(s, group, b"x%d" % i) for i in range(500)))
        commits = s.commits - before
        assert sorted(o.cursor for o in outcomes) == list(range(1, 501))
        assert not any(o.duplicate or o.quota_exceeded for o in outcomes)
        assert 1 <= commits < 500
        assert await cursors(s, group) == list(range(1, 501))
        record = await s.get_group(group)
        assert record is not None
        assert record.max_cursor == 500

    run(tmp_path / "relay.db", body)


def test_duplicate_blob_id_returns_original_cursor_and_stores_nothing(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        group = await new_group(s)
        blob, sender = BlobId.random(), DeviceId.random()
        first = await push(s, group, b"original", blob_id=blob, sender=sender, now=NOW)
        await push(s, group, b"between")
        again = await push(s, group, b"retry-bytes", blob_id=blob, sender=sender, now=NOW + 50)
        assert first == PushOutcome(1, NOW)
        assert again == PushOutcome(1, NOW, duplicate=True)
        page = await s.pull(group, 0, 10, BIG)
        assert [(b.blob_id, b.ciphertext) for b in page.blobs if b.blob_id == blob] == [
            (blob, b"original")
        ]
        assert len(page.blobs) == 2
        record = await s.get_group(group)
        assert record is not None
        assert (record.max_cursor, record.bytes_stored) == (2, len(b"original") + len(b"between"))
        assert await s.stats() == (1, 2)
        # The same blob id in another group is a different blob.
        other = await new_group(s)
        assert await push(s, other, b"z", blob_id=blob) == PushOutcome(1, NOW)

    run(tmp_path / "relay.db", body)


def test_quota_exceeded_stores_nothing_and_consumes_no_cursor(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        group = await new_group(s)
        first = await push(s, group, b"a" * 60, quota=100)
        refused = await push(s, group, b"b" * 41, quota=100)
        assert first.cursor == 1
        assert refused.quota_exceeded
        assert not refused.duplicate
        assert refused.cursor == 0
        record = await s.get_group(group)
        assert record is not None
        assert (record.max_cursor, record.bytes_stored) == (1, 60)
        exact = await push(s, group, b"c" * 40, quota=100)  # exactly reaches the quota
        assert (exact.cursor, exact.quota_exceeded) == (2, False)
        full = await push(s, group, b"d", quota=100)
        assert full.quota_exceeded
        assert await cursors(s, group) == [1, 2]
        assert await s.stats() == (1, 2)
        # A larger quota lets the next push in, with the next cursor: no gap.
        assert (await push(s, group, b"e", quota=1000)).cursor == 3

    run(tmp_path / "relay.db", body)


def test_push_to_unknown_group_raises(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        with pytest.raises(StorageError, match="unknown group"):
            await push(s, GroupId.random())
        assert await s.stats() == (0, 0)

    run(tmp_path / "relay.db", body)


def test_failing_operation_in_a_batch_does_not_undo_the_others(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        group = await new_group(s)
        gate = WriterGate(s)
        await gate.wait_entered()
        before = s.commits
        calls: list[Awaitable[PushOutcome]] = [push(s, group, b"ok") for _ in range(10)]
        calls.insert(5, push(s, GroupId.random(), b"bad"))
        gathered = asyncio.gather(*calls, return_exceptions=True)
        await asyncio.sleep(0.05)  # let every push reach the queue behind the gate
        await gate.open()
        results = await gathered
        assert s.commits - before <= 2  # the gate's batch, then everything else in one
        assert isinstance(results[5], StorageError)
        good = [r for i, r in enumerate(results) if i != 5]
        assert all(isinstance(r, PushOutcome) for r in good)
        assert sorted(r.cursor for r in good if isinstance(r, PushOutcome)) == list(range(1, 11))
        assert await cursors(s, group) == list(range(1, 11))
        assert await s.stats() == (1, 10)

    run(tmp_path / "relay.db", body)


# -- pull, ack, pending ----------------------------------------------------------------


def test_pull_after_limit_has_more_and_max_cursor(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        group = await new_group(s)
        sender = DeviceId.random()
        ids = [BlobId.random() for _ in range(5)]
        for i, blob in enumerate(ids):
            await push(s, group, b"blob%d" % i, blob_id=blob, sender=sender, now=NOW + i)

        page = await s.pull(group, 0, 2, BIG)
        assert [b.cursor for b in page.blobs] == [1, 2]
        assert page.has_more
        assert page.max_cursor == 5
        first = page.blobs[0]
        assert (first.blob_id, first.sender, first.ciphertext, first.timestamp) == (
            ids[0],
            sender,
            b"blob0",
            NOW,
        )

        page = await s.pull(group, 2, 3, BIG)
        assert [b.cursor for b in page.blobs] == [3, 4, 5]
        assert not page.has_more

        page = await s.pull(group, 5, 10, BIG)
        assert (list(page.blobs), page.has_more, page.max_cursor) == ([], False, 5)

        page = await s.pull(group, 3, 10, BIG)
        assert [b.cursor for b in page.blobs] == [4, 5]
        assert not page.has_more

        empty = await s.pull(GroupId.random(), 0, 10, BIG)
        assert (list(empty.blobs), empty.has_more, empty.max_cursor) == ([], False, 0)

    run(tmp_path / "relay.db", body)


def test_pull_max_bytes_always_includes_first_blob_then_stops(tmp_path: Path) -> None:
    """Each blob counts its ciphertext plus STORED_BLOB_OVERHEAD against max_bytes."""
    o = STORED_BLOB_OVERHEAD

    async def body(s: SQLiteStorage) -> None:
        group = await new_group(s)
        for size in (100, 30, 30, 30, 5):
            await push(s, group, b"x" * size)

        page = await s.pull(group, 0, 10, 50)  # first blob alone is over the cap
        assert [b.cursor for b in page.blobs] == [1]
        assert page.has_more

        page = await s.pull(group, 1, 10, 2 * (30 + o))  # two fit, a third would not
        assert [b.cursor for b in page.blobs] == [2, 3]
        assert page.has_more

        page = await s.pull(group, 1, 10, 2 * (30 + o) - 1)
        assert [b.cursor for b in page.blobs] == [2]
        assert page.has_more

        page = await s.pull(group, 3, 10, 35 + 2 * o)  # exactly enough
        assert [b.cursor for b in page.blobs] == [4, 5]
        assert not page.has_more

    run(tmp_path / "relay.db", body)


def test_pull_skips_tombstones(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        owner = DeviceId.random()
        group = await new_group(s, owner)
        blobs = [BlobId.random() for _ in range(4)]
        for blob in blobs:
            await push(s, group, b"data", blob_id=blob, sender=owner)
        for blob in (blobs[1], blobs[2]):
            outcome = await s.delete_blob(group, blob, owner, force=True)
            assert outcome.deleted
        page = await s.pull(group, 0, 2, BIG)
        assert [b.cursor for b in page.blobs] == [1, 4]
        assert not page.has_more
        assert page.max_cursor == 4
        page = await s.pull(group, 1, 1, BIG)
        assert [b.cursor for b in page.blobs] == [4]
        assert not page.has_more

    run(tmp_path / "relay.db", body)


def test_ack_never_moves_backwards_and_is_capped_at_max_cursor(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        device = DeviceId.random()
        group = await new_group(s, device)
        for _ in range(3):
            await push(s, group)

        async def acked() -> int:
            record = await s.get_device(group, device)
            assert record is not None
            return record.acked_cursor

        await s.ack(group, device, 2)
        assert await acked() == 2
        await s.ack(group, device, 1)
        assert await acked() == 2
        await s.ack(group, device, 1_000)
        assert await acked() == 3
        await push(s, group)
        await s.ack(group, device, 3)
        assert await acked() == 3
        await s.ack(group, device, 4)
        assert await acked() == 4

    run(tmp_path / "relay.db", body)


def test_pending_for_counts_live_blobs_above_the_ack(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        device, owner = DeviceId.random(), DeviceId.random()
        group = await new_group(s, device, owner)
        ids = [BlobId.random() for _ in range(5)]
        for blob in ids:
            await push(s, group, blob_id=blob, sender=owner)
        assert await s.pending_for(group, device) == 5
        await s.ack(group, device, 2)
        assert await s.pending_for(group, device) == 3
        await s.delete_blob(group, ids[4], owner, force=True)
        assert await s.pending_for(group, device) == 2
        # A device the relay has never seen has everything pending.
        assert await s.pending_for(group, DeviceId.random()) == 4
        await s.ack(group, device, 5)
        assert await s.pending_for(group, device) == 0

    run(tmp_path / "relay.db", body)


# -- cleanup ------------------------------------------------------------------------------


def test_cleanup_deletes_expired_blobs_and_corrects_totals(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        group = await new_group(s, DeviceId.random())  # a device that never acks
        await push(s, group, b"a" * 10, expires_at=NOW + 100)
        await push(s, group, b"b" * 20, expires_at=NOW + 200)
        await push(s, group, b"c" * 30, expires_at=NOW + DAY)
        assert await s.stats() == (1, 3)

        assert await s.cleanup(NOW + 99) == CleanupStats()
        stats = await s.cleanup(NOW + 200)  # expires_at <= now is expired
        assert stats == CleanupStats(expired_blobs=2, acked_blobs=0, expired_invites=0)
        assert await s.stats() == (1, 1)
        record = await s.get_group(group)
        assert record is not None
        assert (record.bytes_stored, record.max_cursor) == (30, 3)
        assert await cursors(s, group) == [3]
        assert (await push(s, group)).cursor == 4  # cursors keep counting

    run(tmp_path / "relay.db", body)


def test_cleanup_tombstones_fully_acked_blobs_but_remembers_their_ids(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        a, b = DeviceId.random(), DeviceId.random()
        group = await new_group(s, a, b)
        ids = [BlobId.random() for _ in range(4)]
        for i, blob in enumerate(ids):
            await push(s, group, b"x" * 10, blob_id=blob, sender=a, now=NOW + i)
        await s.ack(group, a, 4)
        await s.ack(group, b, 2)

        stats = await s.cleanup(NOW + 1000)
        assert stats == CleanupStats(expired_blobs=0, acked_blobs=2, expired_invites=0)
        assert await s.stats() == (1, 2)
        record = await s.get_group(group)
        assert record is not None
        assert record.bytes_stored == 20
        assert await cursors(s, group) == [3, 4]

        retried = await push(s, group, b"x" * 10, blob_id=ids[0], sender=a, now=NOW + 2000)
        assert retried == PushOutcome(1, NOW, duplicate=True)
        assert await cursors(s, group) == [3, 4]
        assert await s.stats() == (1, 2)

        assert await s.cleanup(NOW + 1001) == CleanupStats()  # nothing more to do

    run(tmp_path / "relay.db", body)


def test_revoked_device_does_not_hold_back_ack_cleanup(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        a, b, lost = DeviceId.random(), DeviceId.random(), DeviceId.random()
        group = await new_group(s, a, b, lost)
        for _ in range(3):
            await push(s, group, sender=a)
        await s.ack(group, b, 3)
        assert (await s.cleanup(NOW)).acked_blobs == 0  # ``lost`` has acked nothing
        await s.revoke_device(group, lost, a, "lost", NOW)
        assert (await s.cleanup(NOW)).acked_blobs == 3
        assert await cursors(s, group) == []
        assert await s.stats() == (1, 0)

    run(tmp_path / "relay.db", body)


def test_a_lone_devices_blobs_wait_for_the_devices_it_pairs(tmp_path: Path) -> None:
    """A sender has its own blobs, but with no other device they are kept (until TTL)
    for the devices it will pair; its own ack does not count for them."""

    async def body(s: SQLiteStorage) -> None:
        a = DeviceId.random()
        group = await new_group(s, a)
        await push(s, group, sender=a)
        await s.ack(group, a, 1)
        assert (await s.cleanup(NOW)).acked_blobs == 0
        b = DeviceId.random()
        await s.touch_device(group, b, "new", NOW)
        assert await s.pending_for(group, b) == 1
        assert await s.pending_for(group, a) == 0  # its own blob is not pending for it
        await s.ack(group, b, 1)
        assert (await s.cleanup(NOW)).acked_blobs == 1

    run(tmp_path / "relay.db", body)


def test_cleanup_without_devices_keeps_blobs(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        group = await new_group(s)
        await push(s, group)
        assert await s.cleanup(NOW) == CleanupStats()
        assert await cursors(s, group) == [1]

    run(tmp_path / "relay.db", body)


def test_expired_tombstone_is_removed_and_blob_id_forgotten(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        a, b = DeviceId.random(), DeviceId.random()
        group = await new_group(s, a, b)
        blob = BlobId.random()
        await push(s, group, blob_id=blob, sender=a, expires_at=NOW + 100)
        await s.ack(group, b, 1)
        assert (await s.cleanup(NOW)).acked_blobs == 1
        stats = await s.cleanup(NOW + 100)
        assert stats.expired_blobs == 0  # it was already a tombstone: no live blob expired
        assert await s.stats() == (1, 0)
        again = await push(s, group, blob_id=blob, sender=a, now=NOW + 200)
        assert (again.cursor, again.duplicate) == (2, False)

    run(tmp_path / "relay.db", body)


# -- delete_blob ----------------------------------------------------------------------


def test_delete_blob_outcomes(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        owner, other = DeviceId.random(), DeviceId.random()
        group = await new_group(s, owner, other)
        first, second = BlobId.random(), BlobId.random()
        await push(s, group, b"one", blob_id=first, sender=owner)
        await push(s, group, b"two", blob_id=second, sender=owner)

        missing = await s.delete_blob(group, BlobId.random(), owner, force=True)
        assert missing == DeleteOutcome(found=False, owner=False, deleted=False)
        elsewhere = await s.delete_blob(GroupId.random(), first, owner, force=True)
        assert elsewhere == DeleteOutcome(found=False, owner=False, deleted=False)

        stranger = await s.delete_blob(group, first, other, force=True)
        assert stranger == DeleteOutcome(found=True, owner=False, deleted=False)
        assert await cursors(s, group) == [1, 2]

        # ``other`` has not acked: a polite delete waits.
        polite = await s.delete_blob(group, first, owner, force=False)
        assert polite == DeleteOutcome(found=True, owner=True, deleted=False)
        assert await cursors(s, group) == [1, 2]
        assert await s.stats() == (1, 2)

        forced = await s.delete_blob(group, first, owner, force=True)
        assert forced == DeleteOutcome(found=True, owner=True, deleted=True)
        assert await cursors(s, group) == [2]
        assert await s.stats() == (1, 1)
        record = await s.get_group(group)
        assert record is not None
        assert record.bytes_stored == len(b"two")

        again = await s.delete_blob(group, first, owner, force=False)
        assert again == DeleteOutcome(found=True, owner=True, deleted=True)
        assert await s.stats() == (1, 1)

    run(tmp_path / "relay.db", body)


def test_delete_blob_without_force_once_everyone_acked(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        owner, other = DeviceId.random(), DeviceId.random()
        group = await new_group(s, owner, other)
        blob = BlobId.random()
        await push(s, group, blob_id=blob, sender=owner)
        await push(s, group, sender=owner)
        await s.ack(group, owner, 2)
        await s.ack(group, other, 1)
        outcome = await s.delete_blob(group, blob, owner, force=False)
        assert outcome == DeleteOutcome(found=True, owner=True, deleted=True)
        assert await cursors(s, group) == [2]

    run(tmp_path / "relay.db", body)


# -- invites ------------------------------------------------------------------------------


def test_invites_put_take_once_expire_and_delete(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        assert await s.put_invite(b"lookup-1", b"payload-1", NOW + 600_000)
        assert not await s.put_invite(b"lookup-1", b"other", NOW + 600_000)
        assert await s.take_invite(b"lookup-1", NOW) == InviteTake("ok", b"payload-1")
        assert await s.take_invite(b"lookup-1", NOW) == InviteTake("used")

        assert await s.put_invite(b"lookup-2", b"payload-2", NOW + 10)
        assert await s.take_invite(b"lookup-2", NOW + 10) == InviteTake("expired")
        assert await s.take_invite(b"lookup-2", NOW) == InviteTake("expired")

        assert await s.take_invite(b"never", NOW) == InviteTake("unknown")

        assert await s.put_invite(b"lookup-3", b"payload-3", NOW + 600_000)
        assert await s.delete_invite(b"lookup-3")
        assert not await s.delete_invite(b"lookup-3")
        assert await s.take_invite(b"lookup-3", NOW) == InviteTake("cancelled")
        assert not await s.put_invite(b"lookup-3", b"again", NOW + 600_000)  # still taken

    run(tmp_path / "relay.db", body)


def test_used_invites_keep_no_payload(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"

    async def body(s: SQLiteStorage) -> None:
        await s.put_invite(b"lookup-1", b"secret-payload", NOW + 600_000)
        await s.take_invite(b"lookup-1", NOW)

    run(db, body)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT payload, state FROM invites").fetchall()
    assert rows == [(None, "used")]


def test_cleanup_expires_invites_and_forgets_them_a_day_later(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        await s.put_invite(b"old", b"1", NOW + 10)
        await s.put_invite(b"also-old", b"2", NOW + 20)
        await s.put_invite(b"fresh", b"3", NOW + 600_000)
        stats = await s.cleanup(NOW + 20)
        assert stats == CleanupStats(expired_blobs=0, acked_blobs=0, expired_invites=2)
        assert await s.take_invite(b"old", NOW + 20) == InviteTake("expired")
        assert await s.take_invite(b"fresh", NOW + 20) == InviteTake("ok", b"3")
        await s.cleanup(NOW + 20 + 24 * 3600 * 1000)
        assert await s.take_invite(b"old", NOW) == InviteTake("unknown")
        assert await s.put_invite(b"old", b"4", NOW + 600_000)

    run(tmp_path / "relay.db", body)


# -- stats, vacuum, close -----------------------------------------------------------------


def test_stats_counts_groups_and_live_blobs(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        assert await s.stats() == (0, 0)
        a, b = await new_group(s), await new_group(s)
        await new_group(s)
        for _ in range(3):
            await push(s, a)
        await push(s, b, expires_at=NOW + 1)
        assert await s.stats() == (3, 4)
        await s.cleanup(NOW + 1)
        assert await s.stats() == (3, 3)

    run(tmp_path / "relay.db", body)


def test_vacuum_runs_on_a_file_without_free_pages(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        group = await new_group(s)
        await push(s, group)
        await s.vacuum()
        assert await cursors(s, group) == [1]

    run(tmp_path / "relay.db", body)


VACUUM_BUG = (
    "BUG: vacuum() runs `PRAGMA incremental_vacuum` with a single execute() step, so when "
    "there are free pages the statement is still in progress at `RELEASE op`; SQLite "
    "refuses ('cannot release savepoint - SQL statements in progress') and the whole "
    "batch is rolled back with StorageError"
)


def test_vacuum_after_cleanup_returns_freed_pages(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"

    async def body(s: SQLiteStorage) -> None:
        group = await new_group(s)
        for _ in range(50):
            await push(s, group, b"\x00" * 8192, expires_at=NOW + 1)
        assert (await s.cleanup(NOW + 1)).expired_blobs == 50
        await s.vacuum()
        assert await s.stats() == (1, 0)

    run(db, body)
    assert inspect(db, "PRAGMA freelist_count") < 50  # freed pages were given back
    assert inspect(db, "PRAGMA integrity_check") == "ok"


def test_vacuum_does_not_fail_pushes_in_the_same_batch(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        group = await new_group(s)
        for _ in range(50):
            await push(s, group, b"\x00" * 8192, expires_at=NOW + 1)
        await s.cleanup(NOW + 1)
        gate = WriterGate(s)
        await gate.wait_entered()
        gathered = asyncio.gather(
            push(s, group), s.vacuum(), push(s, group), return_exceptions=True
        )
        await asyncio.sleep(0.05)
        await gate.open()
        first, _, second = await gathered
        assert isinstance(first, PushOutcome)
        assert isinstance(second, PushOutcome)
        assert sorted([first.cursor, second.cursor]) == [51, 52]

    run(tmp_path / "relay.db", body)


def test_close_finishes_queued_writes(tmp_path: Path) -> None:
    db = tmp_path / "relay.db"

    async def main() -> GroupId:
        s = SQLiteStorage(db)
        await s.open()
        group = await new_group(s)
        tasks = [asyncio.ensure_future(push(s, group, b"%d" % i)) for i in range(100)]
        await asyncio.sleep(0)  # every push has queued its write; none has been answered
        assert not any(t.done() for t in tasks)
        await s.close()
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert sorted(o.cursor for o in outcomes) == list(range(1, 101))
        return group

    group = asyncio.run(main())

    async def check(s: SQLiteStorage) -> None:
        assert await cursors(s, group) == list(range(1, 101))

    run(db, check)
    assert inspect(db, "SELECT COUNT(*) FROM blobs") == 100


def test_writes_after_close_raise(tmp_path: Path) -> None:
    async def main() -> None:
        s = SQLiteStorage(tmp_path / "relay.db")
        await s.open()
        group = await new_group(s)
        await s.close()
        with pytest.raises(StorageError):
            await push(s, group)
        with pytest.raises(StorageError):
            await s.register_group(GroupId.random(), AUTH, NOW)
        with pytest.raises(StorageError):
            await s.cleanup(NOW)
        await s.close()  # a second close is harmless

    asyncio.run(main())


def test_methods_before_open_raise(tmp_path: Path) -> None:
    async def main() -> None:
        s = SQLiteStorage(tmp_path / "relay.db")
        with pytest.raises(StorageError):
            await s.register_group(GroupId.random(), AUTH, NOW)
        with pytest.raises(StorageError):
            await s.stats()
        await s.close()

    asyncio.run(main())


def test_reads_after_close_raise_storage_error(tmp_path: Path) -> None:
    async def main() -> None:
        s = SQLiteStorage(tmp_path / "relay.db")
        await s.open()
        group = await new_group(s)
        await s.close()
        with pytest.raises(StorageError):
            await s.get_group(group)
        with pytest.raises(StorageError):
            await s.pull(group, 0, 10, BIG)
        with pytest.raises(StorageError):
            await s.stats()

    asyncio.run(main())


def test_write_racing_close_does_not_hang(tmp_path: Path) -> None:
    async def main() -> None:
        s = SQLiteStorage(tmp_path / "relay.db")
        await s.open()
        group = await new_group(s)
        writer = s._writer
        assert writer is not None
        closing = asyncio.ensure_future(s.close())
        await asyncio.sleep(0)  # close() has queued its stop marker and waits for the join
        deadline = time.monotonic() + 5
        while writer.is_alive() and time.monotonic() < deadline:
            time.sleep(0.005)  # block the loop: close() cannot resume in between
        assert not writer.is_alive()
        try:
            try:
                await asyncio.wait_for(push(s, group), 1.0)
            except StorageError:
                return  # refused: fine
            except TimeoutError:
                pytest.fail("a push submitted during close() never completed")
            # Completed: then it must be durable. (This branch is not taken today.)
        finally:
            await closing

    asyncio.run(main())


def test_pending_by_device_matches_pending_for_each_device(tmp_path: Path) -> None:
    async def body(s: SQLiteStorage) -> None:
        a, b, c = DeviceId.random(), DeviceId.random(), DeviceId.random()
        group = await new_group(s, a, b, c)
        for sender in (a, a, b, a, c):
            await push(s, group, sender=sender)
        await s.ack(group, b, 2)
        counts = await s.pending_by_device(group)
        assert counts == {d: await s.pending_for(group, d) for d in (a, b, c)}
        assert counts == {a: 2, b: 2, c: 4}
        assert await s.pending_by_device(GroupId.random()) == {}

    run(tmp_path / "relay.db", body)
