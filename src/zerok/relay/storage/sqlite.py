"""SQLite storage: WAL mode, one writer thread that groups commits, pooled readers.

Writes are queued to a single thread that runs every queued operation inside one
transaction (each under its own SAVEPOINT, so one failing operation does not undo the
others) and commits once: concurrent PUSHes share a commit, and no caller hears back before
its commit. Reads run on a small thread pool with their own connections, which WAL lets
proceed while the writer works. Automatic WAL checkpoints are off; the writer checkpoints
when it is idle, so the commit path never pays for one.

What each operation does is shared with PostgreSQL (``common``); this module is the I/O,
and the push (the hot path, in plain statements).
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
from zerok.relay.storage.base import PushOutcome, StorageEvent
from zerok.relay.storage.common import Fetch, Proc, SQLStorage, push_outcome
from zerok.relay.storage.schema import migrate
from zerok.wire import BlobId, DeviceId, GroupId

T = TypeVar("T")
WriteOp = Callable[[sqlite3.Connection], Any]

MAX_BATCH = 512
CHECKPOINT_WRITES = 4096  # checkpoint after this many writes, when the writer is idle
_STOP = object()


@dataclass(frozen=True, slots=True)
class _Queued:
    op: WriteOp
    future: asyncio.Future[Any]
    solo: bool  # runs alone, outside the batch transaction


def run_proc(conn: sqlite3.Connection, proc: Proc[T]) -> T:
    """Run a shared procedure to its end on ``conn``."""
    value: Any = None
    one, every = Fetch.ONE, Fetch.ALL
    while True:
        try:
            query = proc.send(value)
        except StopIteration as done:
            result: T = done.value
            return result
        cur = conn.execute(query.sql, query.args)
        if query.fetch is one:
            value = cur.fetchone()
            cur.close()  # a statement still stepping would block RELEASE of the savepoint
        elif query.fetch is every:
            value = cur.fetchall()
        else:
            value = cur.rowcount


class SQLiteStorage(SQLStorage):
    """One relay per database file. ``synchronous``: NORMAL, or FULL to fsync every commit;
    ``vacuum``: ``maintain`` returns free pages to the file system."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "NORMAL",
        vacuum: bool = True,
        busy_timeout_ms: int = 5000,
        readers: int = 2,
    ) -> None:
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise StorageError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        self.path = Path(path)
        self.synchronous = synchronous.upper()
        self.vacuum_on_maintain = vacuum
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

    def subscribe(self, handler: Callable[[StorageEvent], None]) -> None:
        """One SQLite file has one relay: there is nobody else to hear from."""

    async def maintain(self) -> None:
        if self.vacuum_on_maintain:
            await self.vacuum()

    async def vacuum(self) -> None:
        """Return free pages to the file system (runs to completion, outside any batch)."""
        await self._write(lambda c: c.executescript("PRAGMA incremental_vacuum;"), solo=True)

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
                    if isinstance(exc, sqlite3.Error):
                        exc = StorageError(f"database write failed: {exc}")
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

    async def _read_proc(self, proc: Proc[T]) -> T:
        return await self._read(lambda c: run_proc(c, proc))

    async def _write_proc(self, proc: Proc[T]) -> T:
        return await self._write(lambda c: run_proc(c, proc))

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

        # The hot path, so plain statements rather than a procedure: the one writer means
        # nobody can store the same blob id between the check and the insert.
        def op(c: sqlite3.Connection) -> PushOutcome:
            known = c.execute(_KNOWN_BLOB, (group_id, blob_id)).fetchone()
            if known is not None:
                return push_outcome(
                    group_id, now, cursor=known[0], known_at=known[1], group_exists=True
                )
            bumped = c.execute(_BUMP, (size, group_id, size, max_group_bytes)).fetchone()
            if bumped is None:
                exists = c.execute(_GROUP_EXISTS, (group_id,)).fetchone() is not None
                return push_outcome(group_id, now, cursor=None, known_at=None, group_exists=exists)
            blob = (group_id, bumped[0], blob_id, sender, size, ciphertext, now, expires_at)
            c.execute(_INSERT_BLOB, blob)
            return PushOutcome(bumped[0], now)

        return await self._write(op)


_KNOWN_BLOB = "SELECT cursor, created_at FROM blobs WHERE group_id = ? AND blob_id = ?"
_BUMP = (
    "UPDATE groups SET max_cursor = max_cursor + 1,"
    " bytes_stored = bytes_stored + ?, blob_count = blob_count + 1"
    " WHERE group_id = ? AND bytes_stored + ? <= ? RETURNING max_cursor"
)
_GROUP_EXISTS = "SELECT 1 FROM groups WHERE group_id = ?"
_INSERT_BLOB = (
    "INSERT INTO blobs (group_id, cursor, blob_id, sender, size, ciphertext,"
    " created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
