"""SQLite's chunks: rows in the database (``chunk_sql``), bytes in files beside it
(``chunk_files``), ``<db dir>/chunks/<group hex>/<address hex>``.

The two are kept in step by order and by one lock per chunk (one relay per database
file, so an asyncio lock is enough): bytes are on disk before the row counts them, a part
is renamed into place before its row says complete, and a collected chunk's files go only
after its row did, and only if no new upload began there meanwhile. A crash between two
steps leaves bytes that no row counts (cut off by the next write, or an orphan file),
never a row that counts bytes the files lack.

File I/O runs on a small thread pool of its own, so that a 4 MiB fsync holds neither the
event loop nor the writer thread (and so the pushes of others).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

from zerok.errors import StorageError, StorageFullError
from zerok.relay.locks import KeyedLocks
from zerok.relay.storage.base import ChunkState
from zerok.relay.storage.chunk_files import ChunkFiles
from zerok.relay.storage.chunk_sql import (
    SQLChunkStorage,
    check_read,
    check_write,
    checked_address,
    chunk_advance,
    chunk_settle,
    chunk_state,
    uncommitted,
)
from zerok.relay.storage.common import Proc
from zerok.wire import GroupId

T = TypeVar("T")

CHUNK_IO_THREADS = 4  # chunk file operations at once, at most (each up to 4 MiB)


class SQLiteChunks(SQLChunkStorage):
    """The chunk methods of SQLiteStorage, which calls ``_open_chunks`` from its
    constructor and ``_close_chunks`` once its writer has stopped."""

    _full: str | None  # SQLiteStorage's: why new data is refused (the disk is full)

    def _open_chunks(self, root: Path) -> None:
        self.chunk_files = ChunkFiles(root)
        self._chunk_locks: KeyedLocks[tuple[bytes, bytes]] = KeyedLocks()
        self._chunk_pool = ThreadPoolExecutor(CHUNK_IO_THREADS, thread_name_prefix="zerok-chunk")

    def _close_chunks(self) -> None:
        self._chunk_pool.shutdown(wait=True)

    def _disk_full(self, why: str) -> None:
        """The chunk files' disk is full: refuse new data as for a full database."""

    async def _chunk_io(self, fn: Callable[..., T], *args: object) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._chunk_pool, partial(fn, *args)
            )
        except RuntimeError as exc:  # the pool was shut down: the storage is closed
            raise StorageError("the storage is not open (or already closed)") from exc
        except StorageFullError as exc:
            self._disk_full(str(exc))
            raise

    def _chunk_begin_proc(
        self,
        group_id: GroupId,
        address: bytes,
        size: int,
        now: int,
        *,
        max_bytes: int,
        overhead: int,
    ) -> Proc[ChunkState | None]:
        if self._full is not None:  # checked when the writer runs it, as for a push
            raise StorageFullError(f"database write refused: {self._full}")
        return (
            yield from super()._chunk_begin_proc(
                group_id, address, size, now, max_bytes=max_bytes, overhead=overhead
            )
        )

    async def chunk_write(
        self, group_id: GroupId, address: bytes, offset: int, data: bytes
    ) -> ChunkState:
        checked_address(address)
        if not isinstance(data, bytes):
            raise StorageError(f"chunk data must be bytes, not {type(data).__name__}")
        key = (bytes(group_id), address)
        async with self._chunk_locks.hold(key):
            found = await self._read_proc(chunk_state(group_id, address))
            state = check_write(found, offset, len(data))
            if self._full is not None:
                raise StorageFullError(f"chunk write refused: {self._full}")
            await self._chunk_io(self.chunk_files.append, *key, offset, data)
            end = offset + len(data)
            if not await self._write_proc(lambda: chunk_advance(group_id, address, offset, end)):
                raise StorageError(f"the upload of chunk {address.hex()[:16]} was dropped")
            return ChunkState(address, state.size, end, False)

    async def chunk_commit(self, group_id: GroupId, address: bytes) -> ChunkState:
        checked_address(address)
        key = (bytes(group_id), address)
        async with self._chunk_locks.hold(key):
            state = await self._read_proc(chunk_state(group_id, address))
            done = uncommitted(state, address)
            if done is not None:
                return done
            assert state is not None
            matched = await self._chunk_io(self.chunk_files.seal, *key, state.size)
            settled = await self._write_proc(lambda: chunk_settle(group_id, address, matched))
        if settled is None:  # collected meanwhile: the collector removes the files
            raise StorageError(f"the upload of chunk {address.hex()[:16]} was dropped")
        return settled

    async def chunk_read(
        self, group_id: GroupId, address: bytes, offset: int, length: int
    ) -> bytes:
        checked_address(address)
        state = check_read(await self._read_proc(chunk_state(group_id, address)), offset, length)
        length = min(length, state.size - offset)
        return await self._chunk_io(self.chunk_files.read, bytes(group_id), address, offset, length)

    async def _chunks_collected(self, group_id: bytes, addresses: Sequence[bytes]) -> None:
        for address in addresses:
            async with self._chunk_locks.hold((group_id, address)):
                # A new upload may have begun there since the row went: its part stays.
                if await self._read_proc(chunk_state(GroupId(group_id), address)) is None:
                    await self._chunk_io(self.chunk_files.discard, group_id, address)
