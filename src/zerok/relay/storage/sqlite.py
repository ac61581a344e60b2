"""SQLite storage: WAL mode, one writer thread that groups commits, pooled readers.

Writes are queued to a single thread that runs every queued operation inside one
transaction (each under its own SAVEPOINT, so one failing operation does not undo the
others) and commits once: concurrent PUSHes share a commit, and no caller hears back before
its commit. Reads run on a small thread pool with their own connections, which WAL lets
proceed while the writer works. Automatic WAL checkpoints are off; the writer checkpoints
when it is idle, so the commit path never pays for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from zerok.errors import StorageError
from zerok.relay.storage.base import (
    BlobStored,
    CleanupStats,
    DeleteOutcome,
    DeviceRecord,
    GroupRecord,
    InviteTake,
    PullPage,
    PushOutcome,
    StorageEvent,
    page_length,
)
from zerok.relay.storage.schema import migrate
from zerok.wire import BlobId, DeviceId, GroupId, StoredBlob

T = TypeVar("T")
WriteOp = Callable[[sqlite3.Connection], Any]

MAX_BATCH = 512
INVITE_TOMBSTONE_MS = 24 * 3600 * 1000  # how long a used or expired invite is remembered
CHECKPOINT_WRITES = 4096  # checkpoint after this many writes, when the writer is idle
_STOP = object()


@dataclass(frozen=True, slots=True)
class _Queued:
    op: WriteOp
    future: asyncio.Future[Any]
    solo: bool  # runs alone, outside the batch transaction


class SQLiteStorage:
    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "NORMAL",
        busy_timeout_ms: int = 5000,
        readers: int = 2,
    ) -> None:
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise StorageError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        self.path = Path(path)
        self.synchronous = synchronous.upper()
        self.busy_timeout_ms = busy_timeout_ms
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._queue_lock = threading.Lock()
        self._writer: threading.Thread | None = None
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="zerok-db-read")
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.commits = 0  # transactions committed by the writer (for metrics and tests)

    # -- lifecycle ------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ready: asyncio.Future[None] = self._loop.create_future()
        writer = threading.Thread(
            target=self._write_loop, args=(ready,), name="zerok-db-write", daemon=True
        )
        writer.start()
        try:
            await ready
        except StorageError:
            await asyncio.to_thread(writer.join)
            raise
        with self._queue_lock:
            self._writer = writer

    async def close(self) -> None:
        """Finish every queued write, checkpoint, and close the connections."""
        with self._queue_lock:
            writer, self._writer = self._writer, None
            if writer is None:
                return
            # Under the lock: nothing can be queued behind the stop marker.
            self._queue.put(_STOP)
        await asyncio.to_thread(writer.join)
        self._readers.shutdown(wait=True)
        with self._reader_lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()

    # -- the writer thread ------------------------------------------------------------------

    def _resolve(self, fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
        if fut.cancelled():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    def _write_loop(self, ready: asyncio.Future[None]) -> None:
        assert self._loop is not None
        loop = self._loop
        conn: sqlite3.Connection | None = None
        try:
            conn = self._connect()
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            migrate(conn)
        except (StorageError, sqlite3.Error) as exc:
            if conn is not None:
                conn.close()
            failure = (
                exc
                if isinstance(exc, StorageError)
                else StorageError(f"cannot open the database {self.path}: {exc}")
            )
            loop.call_soon_threadsafe(self._resolve, ready, None, failure)
            return
        loop.call_soon_threadsafe(self._resolve, ready, None, None)
        writes_since_checkpoint = 0
        while True:
            try:
                item = self._queue.get(timeout=0.5 if writes_since_checkpoint else None)
            except queue.Empty:
                writes_since_checkpoint = self._checkpoint(conn)
                continue
            if item is _STOP:
                break
            batch: list[_Queued] = []
            while item is not None and item is not _STOP and not item.solo:
                batch.append(item)
                item = None
                if len(batch) < MAX_BATCH:
                    with contextlib.suppress(queue.Empty):
                        item = self._queue.get_nowait()
            if batch:
                writes_since_checkpoint += self._run_batch(conn, batch)
            if item is _STOP:
                break
            if item is not None:
                self._run_solo(conn, item)
                writes_since_checkpoint += 1
            if writes_since_checkpoint >= CHECKPOINT_WRITES and self._queue.empty():
                writes_since_checkpoint = self._checkpoint(conn)
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Queued]) -> int:
        assert self._loop is not None
        results: list[tuple[Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for item in batch:
                conn.execute("SAVEPOINT op")
                try:
                    results.append((item.op(conn), None))
                    conn.execute("RELEASE op")
                except Exception as exc:  # one bad operation must not undo the others
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    results.append((None, exc))
            conn.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            failure = StorageError(f"database write failed: {exc}")
            results = [(None, failure)] * len(batch)
        for item, (result, error) in zip(batch, results, strict=True):
            self._loop.call_soon_threadsafe(self._resolve, item.future, result, error)
        return len(batch)

    def _run_solo(self, conn: sqlite3.Connection, item: _Queued) -> None:
        """An operation that manages its own transaction (e.g. incremental vacuum)."""
        assert self._loop is not None
        try:
            result, error = item.op(conn), None
        except Exception as exc:
            result, error = None, StorageError(f"database maintenance failed: {exc}")
        self._loop.call_soon_threadsafe(self._resolve, item.future, result, error)

    def _checkpoint(self, conn: sqlite3.Connection) -> int:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        return 0

    async def _write(self, op: Callable[[sqlite3.Connection], T], *, solo: bool = False) -> T:
        if self._loop is None:
            raise StorageError("the storage is not open")
        fut: asyncio.Future[T] = self._loop.create_future()
        with self._queue_lock:
            if self._writer is None:
                raise StorageError("the storage is not open (or already closed)")
            self._queue.put(_Queued(op, fut, solo))
        return await fut

    # -- readers --------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
            with self._reader_lock:
                self._reader_conns.append(conn)
        return conn

    async def _read(self, op: Callable[[sqlite3.Connection], T]) -> T:
        if self._loop is None or self._writer is None:
            raise StorageError("the storage is not open (or already closed)")

        def run() -> T:
            try:
                return op(self._reader())
            except sqlite3.Error as exc:
                raise StorageError(f"database read failed: {exc}") from exc

        return await self._loop.run_in_executor(self._readers, run)

    # -- groups and devices -----------------------------------------------------------------

    async def get_group(self, group_id: GroupId) -> GroupRecord | None:
        return await self._read(lambda c: _group(c, group_id))

    async def register_group(self, group_id: GroupId, auth_key: bytes, now: int) -> GroupRecord:
        def op(c: sqlite3.Connection) -> GroupRecord:
            c.execute(
                "INSERT OR IGNORE INTO groups (group_id, auth_key, created_at) VALUES (?, ?, ?)",
                (group_id, auth_key, now),
            )
            record = _group(c, group_id)
            assert record is not None
            return record

        return await self._write(op)

    async def touch_device(
        self, group_id: GroupId, device_id: DeviceId, name: str, now: int
    ) -> DeviceRecord:
        def op(c: sqlite3.Connection) -> DeviceRecord:
            c.execute(
                "INSERT INTO devices (group_id, device_id, name, first_seen, last_seen)"
                " VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (group_id, device_id) DO UPDATE SET"
                " last_seen = excluded.last_seen,"
                " name = CASE WHEN excluded.name = '' THEN name ELSE excluded.name END",
                (group_id, device_id, name, now, now),
            )
            record = _device(c, group_id, device_id)
            assert record is not None
            return record

        return await self._write(op)

    async def get_device(self, group_id: GroupId, device_id: DeviceId) -> DeviceRecord | None:
        return await self._read(lambda c: _device(c, group_id, device_id))

    async def list_devices(self, group_id: GroupId) -> list[DeviceRecord]:
        def op(c: sqlite3.Connection) -> list[DeviceRecord]:
            rows = c.execute(
                f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE group_id = ? ORDER BY first_seen",
                (group_id,),
            ).fetchall()
            return [_device_from_row(r) for r in rows]

        return await self._read(op)

    async def revoke_device(
        self, group_id: GroupId, device_id: DeviceId, by: DeviceId, reason: str, now: int
    ) -> DeviceRecord:
        def op(c: sqlite3.Connection) -> DeviceRecord:
            # A device never seen here can still be revoked in advance.
            c.execute(
                "INSERT INTO devices (group_id, device_id, first_seen, last_seen,"
                " revoked_at, revoked_by, revoke_reason) VALUES (?, ?, ?, 0, ?, ?, ?)"
                " ON CONFLICT (group_id, device_id) DO UPDATE SET"
                " revoked_at = COALESCE(revoked_at, excluded.revoked_at),"
                " revoked_by = COALESCE(revoked_by, excluded.revoked_by),"
                " revoke_reason = COALESCE(revoke_reason, excluded.revoke_reason),"
                " push_token = NULL, push_platform = NULL, push_app_id = NULL",
                (group_id, device_id, now, now, by, reason),
            )
            record = _device(c, group_id, device_id)
            assert record is not None
            return record

        return await self._write(op)

    async def set_push_token(
        self,
        group_id: GroupId,
        device_id: DeviceId,
        token: str | None,
        platform: str | None,
        app_id: str | None,
    ) -> None:
        def op(c: sqlite3.Connection) -> None:
            c.execute(
                "UPDATE devices SET push_token = ?, push_platform = ?, push_app_id = ?"
                " WHERE group_id = ? AND device_id = ?",
                (token, platform, app_id, group_id, device_id),
            )

        await self._write(op)

    # -- blobs ----------------------------------------------------------------------------

    async def push(
        self,
        group_id: GroupId,
        blob_id: BlobId,
        sender: DeviceId,
        ciphertext: bytes,
        *,
        now: int,
        expires_at: int,
        max_group_bytes: int,
    ) -> PushOutcome:
        size = len(ciphertext)

        def op(c: sqlite3.Connection) -> PushOutcome:
            known = c.execute(
                "SELECT cursor, created_at FROM blobs WHERE group_id = ? AND blob_id = ?",
                (group_id, blob_id),
            ).fetchone()
            if known is not None:
                return PushOutcome(known[0], known[1], duplicate=True)
            row = c.execute(
                "UPDATE groups SET max_cursor = max_cursor + 1,"
                " bytes_stored = bytes_stored + ?, blob_count = blob_count + 1"
                " WHERE group_id = ? AND bytes_stored + ? <= ? RETURNING max_cursor",
                (size, group_id, size, max_group_bytes),
            ).fetchone()
            if row is None:
                if _group(c, group_id) is None:
                    raise StorageError(f"unknown group {group_id}")
                return PushOutcome(0, now, quota_exceeded=True)
            c.execute(
                "INSERT INTO blobs (group_id, cursor, blob_id, sender, size, ciphertext,"
                " created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (group_id, row[0], blob_id, sender, size, ciphertext, now, expires_at),
            )
            return PushOutcome(row[0], now)

        return await self._write(op)

    async def pull(self, group_id: GroupId, after: int, limit: int, max_bytes: int) -> PullPage:
        def op(c: sqlite3.Connection) -> PullPage:
            # Sizes first, so that a page never loads more ciphertext than it will send.
            sizes = c.execute(
                "SELECT cursor, size FROM blobs"
                " WHERE group_id = ? AND cursor > ? AND ciphertext IS NOT NULL"
                " ORDER BY cursor LIMIT ?",
                (group_id, after, limit + 1),
            ).fetchall()
            take = page_length([size for _, size in sizes], limit, max_bytes)
            group = _group(c, group_id)
            if not take:
                return PullPage([], False, group.max_cursor if group else 0)
            rows = c.execute(
                "SELECT blob_id, cursor, sender, ciphertext, created_at FROM blobs"
                " WHERE group_id = ? AND cursor > ? AND cursor <= ? AND ciphertext IS NOT NULL"
                " ORDER BY cursor",
                (group_id, after, sizes[take - 1][0]),
            ).fetchall()
            blobs = [
                StoredBlob(
                    blob_id=BlobId(r[0]),
                    cursor=r[1],
                    sender=DeviceId(r[2]),
                    ciphertext=r[3],
                    timestamp=r[4],
                )
                for r in rows
            ]
            return PullPage(blobs, len(sizes) > take, group.max_cursor if group else 0)

        return await self._read(op)

    async def ack(self, group_id: GroupId, device_id: DeviceId, cursor: int) -> None:
        def op(c: sqlite3.Connection) -> None:
            c.execute(
                "UPDATE devices SET acked_cursor = MAX(acked_cursor, MIN(?,"
                " (SELECT max_cursor FROM groups WHERE group_id = ?)))"
                " WHERE group_id = ? AND device_id = ?",
                (cursor, group_id, group_id, device_id),
            )

        await self._write(op)

    async def delete_blob(
        self, group_id: GroupId, blob_id: BlobId, device_id: DeviceId, *, force: bool
    ) -> DeleteOutcome:
        def op(c: sqlite3.Connection) -> DeleteOutcome:
            row = c.execute(
                "SELECT cursor, sender, ciphertext IS NOT NULL FROM blobs"
                " WHERE group_id = ? AND blob_id = ?",
                (group_id, blob_id),
            ).fetchone()
            if row is None:
                return DeleteOutcome(found=False, owner=False, deleted=False)
            cursor, sender, live = row
            if sender != device_id:
                return DeleteOutcome(found=True, owner=False, deleted=False)
            if not live:
                return DeleteOutcome(found=True, owner=True, deleted=True)
            if not force and not _tombstone(c, group_id, f"cursor = ? AND {_DELIVERED}", (cursor,)):
                return DeleteOutcome(found=True, owner=True, deleted=False)
            if not force:
                return DeleteOutcome(found=True, owner=True, deleted=True)
            _tombstone(c, group_id, "cursor = ?", (cursor,))
            return DeleteOutcome(found=True, owner=True, deleted=True)

        return await self._write(op)

    async def pending_for(self, group_id: GroupId, device_id: DeviceId) -> int:
        def op(c: sqlite3.Connection) -> int:
            (count,) = c.execute(
                "SELECT COUNT(*) FROM blobs WHERE group_id = ? AND ciphertext IS NOT NULL"
                " AND sender != ? AND cursor > COALESCE((SELECT acked_cursor FROM devices"
                " WHERE group_id = ? AND device_id = ?), 0)",
                (group_id, device_id, group_id, device_id),
            ).fetchone()
            return int(count)

        return await self._read(op)

    # -- invites --------------------------------------------------------------------------

    async def put_invite(self, lookup: bytes, payload: bytes, expires_at: int) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "INSERT OR IGNORE INTO invites (lookup, payload, expires_at) VALUES (?, ?, ?)",
                (lookup, payload, expires_at),
            )
            return cur.rowcount == 1

        return await self._write(op)

    async def take_invite(self, lookup: bytes, now: int) -> InviteTake:
        def op(c: sqlite3.Connection) -> InviteTake:
            row = c.execute(
                "SELECT payload, expires_at, state FROM invites WHERE lookup = ?", (lookup,)
            ).fetchone()
            if row is None:
                return InviteTake("unknown")
            payload, expires_at, state = row
            if state != "open":
                return InviteTake(state)
            status = "ok" if expires_at > now else "expired"
            c.execute(
                "UPDATE invites SET payload = NULL, state = ? WHERE lookup = ?",
                ("used" if status == "ok" else "expired", lookup),
            )
            return InviteTake(status, bytes(payload) if status == "ok" else None)

        return await self._write(op)

    async def delete_invite(self, lookup: bytes) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "UPDATE invites SET payload = NULL, state = 'cancelled'"
                " WHERE lookup = ? AND state = 'open'",
                (lookup,),
            )
            return cur.rowcount == 1

        return await self._write(op)

    # -- housekeeping ---------------------------------------------------------------------

    async def cleanup(self, now: int) -> CleanupStats:
        def op(c: sqlite3.Connection) -> CleanupStats:
            expired = _delete_expired(c, now)
            acked = 0
            for (group_id,) in c.execute("SELECT group_id FROM groups").fetchall():
                acked += _tombstone(c, group_id, _DELIVERED, ())
            invites = c.execute(
                "UPDATE invites SET payload = NULL, state = 'expired'"
                " WHERE state = 'open' AND expires_at <= ?",
                (now,),
            ).rowcount
            c.execute("DELETE FROM invites WHERE expires_at <= ?", (now - INVITE_TOMBSTONE_MS,))
            return CleanupStats(expired, acked, invites)

        return await self._write(op)

    async def vacuum(self) -> None:
        """Return free pages to the file system (runs to completion, outside any batch)."""
        await self._write(lambda c: c.executescript("PRAGMA incremental_vacuum;"), solo=True)

    async def pending_by_device(self, group_id: GroupId) -> dict[DeviceId, int]:
        def op(c: sqlite3.Connection) -> dict[DeviceId, int]:
            rows = c.execute(_PENDING_BY_DEVICE, (group_id,)).fetchall()
            return {DeviceId(r[0]): int(r[1]) for r in rows}

        return await self._read(op)

    async def blobs_after(self, group_id: GroupId, after: int, limit: int) -> list[BlobStored]:
        def op(c: sqlite3.Connection) -> list[BlobStored]:
            rows = c.execute(
                "SELECT blob_id, cursor, sender, created_at, size FROM blobs"
                " WHERE group_id = ? AND cursor > ? AND ciphertext IS NOT NULL"
                " ORDER BY cursor LIMIT ?",
                (group_id, after, limit),
            ).fetchall()
            return [
                BlobStored(group_id, BlobId(r[0]), r[1], DeviceId(r[2]), r[3], r[4]) for r in rows
            ]

        return await self._read(op)

    def subscribe(self, handler: Callable[[StorageEvent], None]) -> None:
        """One SQLite file has one relay: there is nobody else to hear from."""

    async def stats(self) -> tuple[int, int]:
        def op(c: sqlite3.Connection) -> tuple[int, int]:
            groups, blobs = c.execute(
                "SELECT COUNT(*), COALESCE(SUM(blob_count), 0) FROM groups"
            ).fetchone()
            return int(groups), int(blobs)

        return await self._read(op)


_PENDING_BY_DEVICE = (
    "SELECT d.device_id, COUNT(b.cursor) FROM devices d"
    " LEFT JOIN blobs b ON b.group_id = d.group_id AND b.ciphertext IS NOT NULL"
    " AND b.sender != d.device_id AND b.cursor > d.acked_cursor"
    " WHERE d.group_id = ? GROUP BY d.device_id"
)
_DEVICE_COLUMNS = (
    "group_id, device_id, name, last_seen, acked_cursor, revoked_at, revoked_by,"
    " revoke_reason, push_token, push_platform, push_app_id"
)


def _device_from_row(r: tuple[Any, ...]) -> DeviceRecord:
    return DeviceRecord(
        group_id=GroupId(r[0]),
        device_id=DeviceId(r[1]),
        name=r[2],
        last_seen=r[3],
        acked_cursor=r[4],
        revoked_at=r[5],
        revoked_by=DeviceId(r[6]) if r[6] is not None else None,
        revoke_reason=r[7],
        push_token=r[8],
        push_platform=r[9],
        push_app_id=r[10],
    )


def _device(c: sqlite3.Connection, group_id: bytes, device_id: bytes) -> DeviceRecord | None:
    row = c.execute(
        f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE group_id = ? AND device_id = ?",
        (group_id, device_id),
    ).fetchone()
    return _device_from_row(row) if row else None


def _group(c: sqlite3.Connection, group_id: bytes) -> GroupRecord | None:
    row = c.execute(
        "SELECT group_id, auth_key, max_cursor, bytes_stored, created_at FROM groups"
        " WHERE group_id = ?",
        (group_id,),
    ).fetchone()
    if row is None:
        return None
    return GroupRecord(GroupId(row[0]), bytes(row[1]), row[2], row[3], row[4])


# A live blob every device of its group has: at least one device besides its sender is
# known, and every known, non-revoked device besides the sender acknowledged past it (a
# device has its own blobs). A lone device's blobs wait for the devices it will pair.
_DELIVERED = (
    "EXISTS (SELECT 1 FROM devices d WHERE d.group_id = blobs.group_id"
    " AND d.device_id != blobs.sender AND d.revoked_at IS NULL)"
    " AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.group_id = blobs.group_id"
    " AND d.device_id != blobs.sender AND d.revoked_at IS NULL"
    " AND d.acked_cursor < blobs.cursor)"
)


def _tombstone(c: sqlite3.Connection, group_id: bytes, where: str, args: tuple[Any, ...]) -> int:
    """Drop the ciphertext of live blobs matching ``where``; keep the group's totals right."""
    row = c.execute(
        f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs WHERE group_id = ?"
        f" AND ciphertext IS NOT NULL AND {where}",
        (group_id, *args),
    ).fetchone()
    count, size = int(row[0]), int(row[1])
    if count:
        c.execute(
            f"UPDATE blobs SET ciphertext = NULL WHERE group_id = ?"
            f" AND ciphertext IS NOT NULL AND {where}",
            (group_id, *args),
        )
        c.execute(
            "UPDATE groups SET bytes_stored = bytes_stored - ?, blob_count = blob_count - ?"
            " WHERE group_id = ?",
            (size, count, group_id),
        )
    return count


def _delete_expired(c: sqlite3.Connection, now: int) -> int:
    """Delete blobs (live or tombstones) past their TTL; return how many live ones went."""
    live = c.execute(
        "SELECT group_id, COUNT(*), SUM(size) FROM blobs"
        " WHERE expires_at <= ? AND ciphertext IS NOT NULL GROUP BY group_id",
        (now,),
    ).fetchall()
    for group_id, count, size in live:
        c.execute(
            "UPDATE groups SET bytes_stored = bytes_stored - ?, blob_count = blob_count - ?"
            " WHERE group_id = ?",
            (size, count, group_id),
        )
    c.execute("DELETE FROM blobs WHERE expires_at <= ?", (now,))
    return sum(int(r[1]) for r in live)
