"""SQLite storage: WAL mode, one writer thread that groups commits, pooled readers.

Writes are queued to a single thread that runs every queued operation inside one
transaction (each under its own SAVEPOINT, so one failing operation does not undo the
others) and commits once: concurrent PUSHes share a commit, and no caller hears back before
its commit. Reads run on a small thread pool with their own connections, which WAL lets
proceed while the writer works. Automatic WAL checkpoints are off; the writer checkpoints
when it is idle, and under writes that never pause a checkpointer thread copies the WAL
beside it, so the commit path pays only for the last few frames. A full disk (SQLITE_FULL)
is a StorageFullError: a reserve file beside the database is released so that acks,
deletes and cleanup can still write, pushes are refused until there is room again, and
``degraded`` says so.

What each operation does is shared with PostgreSQL (``common``); this module is the I/O,
and the push (the hot path, in plain statements).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from zerok.errors import StorageError, StorageFullError
from zerok.relay.storage.base import LogConflict, LogRecord, PushOutcome, StorageEvent
from zerok.relay.storage.common import Fetch, Proc, log_append, push_outcome
from zerok.relay.storage.schema import migrate
from zerok.relay.storage.sqlite_chunks import SQLiteChunks
from zerok.wire import BlobId, DeviceId, GroupId

T = TypeVar("T")
WriteOp = Callable[[sqlite3.Connection], Any]

MAX_BATCH = 512
CHECKPOINT_WRITES = 4096  # checkpoint after this many writes, when the writer is idle
# Checkpoint once the WAL passes this size even if writes never stop (a WAL that is never
# checkpointed grows without bound and fills the disk). A checkpoint of this much costs
# the writer ~10-30 ms. When the WAL restarts after a checkpoint, SQLite truncates the file
# to WAL_KEEP_BYTES (journal_size_limit), so its high-water mark does not stay on disk.
WAL_CHECKPOINT_BYTES = 8 * 1024 * 1024
WAL_KEEP_BYTES = 1024 * 1024
WRITER_CACHE_KIB = 64 * 1024  # the writer connection's page cache, at most
CHECKPOINT_PASSES = 8  # at most, by the checkpointer thread before the writer finishes
CHECKPOINT_LEFT_FRAMES = 64  # what the writer is left to copy, about (256 KiB)
VACUUM_PAGES = 256  # pages one incremental-vacuum step returns (a few ms of the writer)
# Disk space set aside in a file beside the database and released when the disk fills,
# so that acks, deletes and cleanup (which need WAL space) still work and make room.
RESERVE_BYTES = 16 * 1024 * 1024
_SQLITE_FULL = 13  # primary result code: the disk, or max_page_count, is full
_STOP = object()


class _Checkpointer:
    """A thread with its own connection that runs PASSIVE checkpoints when woken.

    Under writes that never pause, the writer is never idle, so it wakes this thread once
    the WAL passes WAL_CHECKPOINT_BYTES: in WAL mode a checkpoint runs beside the writer (it
    copies frames already committed, and takes no writer lock), so the 10-100 ms it costs
    (copying, then an fsync of the database file) are not spent in the commit path. It
    cannot restart the WAL, though: frames keep arriving while it copies. So once it has
    copied, ``copied`` is set and the writer checkpoints itself, which only has the few
    frames written meanwhile left to copy (milliseconds), and the WAL restarts."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self.wake = threading.Event()
        self.copied = threading.Event()
        self._stopping = False
        self._connect = connect
        self._thread = threading.Thread(target=self._run, name="zerok-db-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                self.wake.wait()
                self.wake.clear()
                if self._stopping:
                    return
                with contextlib.suppress(sqlite3.Error):
                    conn = conn or self._connect()
                    # Again while the writer added much meanwhile: what is left for the
                    # writer to copy must be small, it is a stall of every write.
                    for _ in range(CHECKPOINT_PASSES):
                        _, log, done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                        if log - done <= CHECKPOINT_LEFT_FRAMES:
                            break
                self.copied.set()
        finally:
            if conn is not None:
                conn.close()

    def stop(self) -> None:
        self._stopping = True
        self.wake.set()
        self._thread.join()


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


class SQLiteStorage(SQLiteChunks):
    """One relay per database file (chunks of large content in files beside it, under
    ``chunks/``: see sqlite_chunks.py). ``synchronous``: NORMAL, or FULL to fsync every commit;
    ``vacuum``: ``maintain`` returns free pages to the file system; ``max_pages``: a cap
    on the database's size in pages (a hard limit, also how tests fill the "disk");
    ``reserve_bytes``: the space kept aside for when the disk fills (0: none)."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "NORMAL",
        vacuum: bool = True,
        busy_timeout_ms: int = 5000,
        readers: int = 2,
        max_pages: int | None = None,
        reserve_bytes: int = RESERVE_BYTES,
    ) -> None:
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise StorageError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        self.path = Path(path)
        self.synchronous = synchronous.upper()
        self.vacuum_on_maintain = vacuum
        self.busy_timeout_ms = busy_timeout_ms
        self.max_pages = max_pages
        self.reserve_bytes = reserve_bytes
        self.reserve_path = self.path.with_name(self.path.name + "-reserve")
        # Why new blobs are refused, while the storage is full (set and cleared on the
        # writer thread, read anywhere: one reference assignment, no lock needed).
        self._full: str | None = None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._queue_lock = threading.Lock()
        self._writer: threading.Thread | None = None
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="zerok-db-read")
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.commits = 0  # transactions committed by the writer (for metrics and tests)
        self._open_chunks(self.path.parent / "chunks")

    # -- lifecycle ------------------------------------------------------------------------

    def _create_private(self) -> None:
        """Create the database file 0600 before SQLite opens it: SQLite gives the -wal and
        -shm files the database file's permissions, so the three are private to the
        relay's user. Done once, before any connection: closing a descriptor of the file
        would drop every POSIX lock this process holds on it, and another process's
        SQLite could then delete the WAL the relay is still writing to."""
        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))

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
        await asyncio.to_thread(self._create_private)
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
        await asyncio.to_thread(self._close_chunks)
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
        """Return free pages to the file system, VACUUM_PAGES at a time: each step is a
        transaction of its own, so writes queued meanwhile go between the steps."""

        def step(c: sqlite3.Connection) -> int:
            c.execute(f"PRAGMA incremental_vacuum({VACUUM_PAGES})").fetchall()
            left: int = c.execute("PRAGMA freelist_count").fetchone()[0]
            return left

        while await self._write(step, solo=True):
            pass

    def degraded(self) -> str | None:
        return self._full

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
            # Cleanup and pushes touch index pages all over the file (blob ids are random):
            # a larger page cache keeps them rather than re-reading them from the OS in the
            # middle of a batch, which holds every write. Allocated as pages are used.
            conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
            conn.execute(f"PRAGMA journal_size_limit = {WAL_KEEP_BYTES}")
            if self.max_pages is not None:
                conn.execute(f"PRAGMA max_page_count = {int(self.max_pages)}")
            migrate(conn)
            try:
                self._make_reserve()
            except OSError:  # no room even for the reserve: start full, recover later
                self._release_reserve()
                self._full = "the database's disk is full"
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
        checkpointer = _Checkpointer(self._connect)
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
            if checkpointer.copied.is_set() or (
                writes_since_checkpoint >= CHECKPOINT_WRITES and self._queue.empty()
            ):
                checkpointer.copied.clear()
                writes_since_checkpoint = self._checkpoint(conn)
            elif self._wal_size() >= WAL_CHECKPOINT_BYTES and not checkpointer.wake.is_set():
                checkpointer.wake.set()  # writes never pause: checkpoint beside the writer
        checkpointer.stop()
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Queued]) -> int:
        assert self._loop is not None
        if self._full is not None:
            self._recover_space(conn)
        answers: dict[int, tuple[Any, BaseException | None]] = {}
        pending = list(range(len(batch)))
        # SQLite may roll the whole transaction back when a statement fails for lack of
        # space (the savepoint is then gone). The operation that failed is answered, and the
        # others run again in a fresh transaction: each pass answers at least one operation.
        while pending:
            results, lost = self._try_batch(conn, [batch[i] for i in pending])
            if lost is None or len(pending) == 1:
                answers.update(zip(pending, results, strict=True))
                break
            if lost == len(pending):  # the commit found no room: which one grew? each alone
                for index in pending:
                    answers[index] = self._try_batch(conn, [batch[index]])[0][-1]
                break
            answers[pending[lost]] = results[lost]
            del pending[lost]
        for index, item in enumerate(batch):
            result, error = answers[index]
            self._loop.call_soon_threadsafe(self._resolve, item.future, result, error)
        return len(batch)

    def _try_batch(
        self, conn: sqlite3.Connection, batch: list[_Queued]
    ) -> tuple[list[tuple[Any, BaseException | None]], int | None]:
        """Run ``batch`` in one transaction. Returns the answers, and the index of the
        operation that lost the whole transaction (None if it committed): then only that
        answer, the last one, stands; the others must run again. ``len(batch)``: the
        commit failed for lack of space, every answer is that failure."""
        results: list[tuple[Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for item in batch:
                conn.execute("SAVEPOINT op")
                try:
                    results.append((item.op(conn), None))
                    conn.execute("RELEASE op")
                except Exception as exc:  # one bad operation must not undo the others
                    error = self._storage_error(exc)
                    if not conn.in_transaction:  # SQLite rolled everything back
                        return [*results, (None, error)], len(results)
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    results.append((None, error))
            conn.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            failure = self._storage_error(exc)
            full = isinstance(failure, StorageFullError)
            return [(None, failure)] * len(batch), (len(batch) if full else None)
        return results, None

    def _storage_error(self, exc: BaseException) -> BaseException:
        """The StorageError to answer with; a full disk also releases the reserve."""
        if isinstance(exc, sqlite3.Error) and exc.sqlite_errorcode & 0xFF == _SQLITE_FULL:
            self._full = "the database's disk is full"
            self._release_reserve()
            return StorageFullError(f"database write failed: {exc}")
        if isinstance(exc, sqlite3.Error):
            return StorageError(f"database write failed: {exc}")
        return exc

    def _make_reserve(self) -> None:
        """Set ``reserve_bytes`` aside: allocated, not sparse, so the space is really held."""
        if not self.reserve_bytes:
            return
        with contextlib.suppress(FileNotFoundError):
            if self.reserve_path.stat().st_blocks * 512 >= self.reserve_bytes:
                return
        fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, self.reserve_bytes)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                chunk = bytes(1024 * 1024)  # a file system without fallocate: write it
                for start in range(0, self.reserve_bytes, len(chunk)):
                    os.write(fd, chunk[: self.reserve_bytes - start])
                os.fsync(fd)
        finally:
            os.close(fd)

    def _disk_full(self, why: str) -> None:
        """The chunk files found the disk full: as when the database does."""
        self._full = "the database's disk is full"
        self._release_reserve()

    def _release_reserve(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.reserve_path.unlink()

    def _recover_space(self, conn: sqlite3.Connection) -> None:
        """While full: once the file system (and ``max_pages``) has room for the reserve
        twice over, take the reserve back and let pushes try again (a push that still
        finds no room sets the storage full again)."""
        wanted = 2 * self.reserve_bytes
        try:
            if self.max_pages is not None:
                used = conn.execute(_PAGES_IN_USE).fetchone()
                if (self.max_pages - used[0]) * used[1] < wanted:
                    return
            fs = os.statvfs(self.path.parent)
            if fs.f_bavail * fs.f_frsize < wanted:
                return
            self._make_reserve()
        except sqlite3.Error:
            return
        except OSError:
            self._release_reserve()  # a half-written reserve must not eat the room
            return
        self._full = None

    def _wal_size(self) -> int:
        try:
            return os.stat(f"{self.path}-wal").st_size
        except OSError:
            return 0

    def _run_solo(self, conn: sqlite3.Connection, item: _Queued) -> None:
        """An operation that manages its own transaction (e.g. incremental vacuum)."""
        assert self._loop is not None
        try:
            result, error = item.op(conn), None
        except Exception as exc:
            result, error = None, StorageError(f"database maintenance failed: {exc}")
        self._loop.call_soon_threadsafe(self._resolve, item.future, result, error)

    def _checkpoint(self, conn: sqlite3.Connection) -> int:
        # PASSIVE never waits for readers; a WAL it copied entirely restarts from its start
        # at the next write, truncated to journal_size_limit (WAL_KEEP_BYTES).
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        if self._full is not None:
            self._recover_space(conn)
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

    async def _write_proc(self, make: Callable[[], Proc[T]]) -> T:
        # A fresh procedure on every run: the writer runs an operation again when a full
        # disk rolled back the transaction it shared with the one that failed.
        return await self._write(lambda c: run_proc(c, make()))

    def _log_append_proc(
        self, group_id: GroupId, records: Sequence[LogRecord], now: int
    ) -> Proc[LogRecord | LogConflict]:
        # Checked when the writer runs it, as a push is: the room left on a full disk is
        # for acks and cleanup, which make more.
        if self._full is not None:
            raise StorageFullError(f"database write refused: {self._full}")
        return (yield from log_append(group_id, records, now))

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
        max_group_blobs: int = 0,
        blob_overhead: int = 0,
        repair: bool = False,
    ) -> PushOutcome:
        size = len(ciphertext)
        quota = (blob_overhead, size, max_group_bytes, max_group_blobs, max_group_blobs)

        # The hot path, so plain statements rather than a procedure: the one writer means
        # nobody can store the same blob id between the check and the insert.
        def op(c: sqlite3.Connection) -> PushOutcome:
            if self._full is not None:  # the room that is left is for acks and cleanup
                raise StorageFullError(f"database write refused: {self._full}")
            known = c.execute(_KNOWN_BLOB, (group_id, blob_id)).fetchone()
            if known is None and not repair:
                known = c.execute(_RETIRED_BLOB, (group_id, blob_id)).fetchone()
            if known is not None:
                return push_outcome(
                    group_id, now, cursor=known[0], known_at=known[1], group_exists=True
                )
            bumped = c.execute(_BUMP, (size, group_id, *quota)).fetchone()
            if bumped is None:
                exists = c.execute(_GROUP_EXISTS, (group_id,)).fetchone() is not None
                return push_outcome(group_id, now, cursor=None, known_at=None, group_exists=exists)
            blob = (group_id, bumped[0], blob_id, sender, size, ciphertext, now, expires_at)
            c.execute(_INSERT_BLOB, blob)
            if repair:
                c.execute(_FORGET_RETIRED, (group_id, blob_id))
            return PushOutcome(bumped[0], now)

        return await self._write(op)


_KNOWN_BLOB = "SELECT cursor, created_at FROM blobs WHERE group_id = ? AND blob_id = ?"
_RETIRED_BLOB = "SELECT cursor, created_at FROM blob_ids WHERE group_id = ? AND blob_id = ?"
_FORGET_RETIRED = "DELETE FROM blob_ids WHERE group_id = ? AND blob_id = ?"
_BUMP = (
    "UPDATE groups SET max_cursor = max_cursor + 1,"
    " bytes_stored = bytes_stored + ?, blob_count = blob_count + 1"
    " WHERE group_id = ? AND bytes_stored + (blob_count + 1) * ? + ? <= ?"
    " AND (? = 0 OR blob_count < ?) RETURNING max_cursor"
)
_PAGES_IN_USE = (
    "SELECT p.page_count - f.freelist_count, s.page_size"
    " FROM pragma_page_count() p, pragma_freelist_count() f, pragma_page_size() s"
)
_GROUP_EXISTS = "SELECT 1 FROM groups WHERE group_id = ?"
_INSERT_BLOB = (
    "INSERT INTO blobs (group_id, cursor, blob_id, sender, size, ciphertext,"
    " created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
