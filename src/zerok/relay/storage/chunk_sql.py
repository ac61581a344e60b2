"""Chunks of large content: the bookkeeping both SQL backends share (issue 13).

Each backend keeps the bytes its own way (SQLite: files beside the database,
``chunk_files``; PostgreSQL: rows of pieces, ``chunk_pieces``); what is stored where, the
quota, the references and the collection of unreferenced or idle chunks live here once,
as procedures like those of ``common``.

Locks (PostgreSQL: several relays at once; SQLite's one writer needs none). Whoever needs
both takes the group's row before the chunk's, so that nobody waits in a circle: a begin
(quota) and a commit (which may uncount) lock the group then the chunk, the collector the
group then its chunks in address order. A write locks only its chunk, and ``chunk_refs``
the blob then the chunks, in address order. The collector deletes only what it has
locked, judged by a statement that starts after it holds the locks: a reference
committed before then is seen and the chunk kept; one that comes later waits for the
deletion, and finds the chunk gone (it was idle for a day).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

from zerok.errors import StorageError
from zerok.relay.storage.base import (
    CHUNK_ADDRESS_BYTES,
    CHUNK_IDLE_MS,
    MAX_CHUNK_ADDRESSES,
    MAX_CHUNK_BYTES,
    ChunkState,
)
from zerok.relay.storage.common import (
    Fetch,
    Proc,
    Query,
    Row,
    SQLStorage,
    execute,
    one,
    rows,
)
from zerok.wire import BlobId, GroupId

CHUNK_COLUMNS = "address, size, received, complete"
CHUNK_GC_BATCH = 64  # chunks one collecting transaction deletes, at most
IN_BATCH = 256  # addresses per IN (...) list: far below either database's parameter limit


def state_from_row(r: Row) -> ChunkState:
    return ChunkState(bytes(r[0]), int(r[1]), int(r[2]), bool(r[3]))


def checked_address(address: object) -> bytes:
    if not isinstance(address, bytes) or len(address) != CHUNK_ADDRESS_BYTES:
        shown = f"{len(address)} bytes" if isinstance(address, bytes) else type(address).__name__
        raise StorageError(f"a chunk address must be {CHUNK_ADDRESS_BYTES} bytes, not {shown}")
    return address


def checked_addresses(addresses: Sequence[bytes]) -> list[bytes]:
    """``addresses`` checked, without repeats, in order (a copy: the caller's may change)."""
    if len(addresses) > MAX_CHUNK_ADDRESSES:
        raise StorageError(
            f"at most {MAX_CHUNK_ADDRESSES} chunk addresses at once, not {len(addresses)}"
        )
    return list(dict.fromkeys(checked_address(a) for a in addresses))


def check_size(size: int) -> None:
    if type(size) is not int or not 1 <= size <= MAX_CHUNK_BYTES:
        raise StorageError(f"a chunk's size must be 1 to {MAX_CHUNK_BYTES} bytes, not {size!r}")


def check_write(state: ChunkState | None, offset: int, length: int) -> ChunkState:
    """The upload a write at ``offset`` of ``length`` bytes may extend, or StorageError."""
    name = "the chunk" if state is None else f"chunk {state.address.hex()[:16]}"
    if state is None or state.complete:
        done = "is complete" if state is not None else "has no upload under way"
        raise StorageError(f"cannot write to {name}: it {done}")
    if offset != state.received:
        raise StorageError(
            f"out of order: a write to {name} must start at byte {state.received} (what"
            f" the relay has), not {offset}"
        )
    if offset + length > state.size:
        raise StorageError(
            f"a write of {length} bytes at {offset} passes the end of {name} ({state.size} bytes)"
        )
    return state


def check_read(state: ChunkState | None, offset: int, length: int) -> ChunkState:
    if state is None or not state.complete:
        raise StorageError("cannot read the chunk: the group has no complete chunk there")
    if offset < 0 or length < 0 or offset > state.size:
        raise StorageError(
            f"cannot read {length} bytes at {offset} of a chunk of {state.size} bytes"
        )
    return state


def batches(items: Sequence[Any], size: int = IN_BATCH) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def marks(count: int) -> str:
    return ", ".join(["?"] * count)


# -- procedures -------------------------------------------------------------------------------


def chunk_state(
    group_id: GroupId, address: bytes, *, lock: bool = False
) -> Proc[ChunkState | None]:
    row = yield from one(
        f"SELECT {CHUNK_COLUMNS} FROM chunks WHERE group_id = ? AND address = ?",
        group_id,
        address,
        lock=lock,
    )
    return state_from_row(row) if row else None


def chunk_begin(
    group_id: GroupId, address: bytes, size: int, now: int, *, max_bytes: int, overhead: int
) -> Proc[ChunkState | None]:
    group = yield from one("SELECT 1 FROM groups WHERE group_id = ?", group_id, lock=True)
    if group is None:
        raise StorageError(f"unknown group {group_id}")
    state = yield from chunk_state(group_id, address, lock=True)
    if state is not None:
        if state.size != size:
            raise StorageError(
                f"chunk {address.hex()[:16]} has {state.size} bytes, not {size}: its address"
                " names one content"
            )
        yield from execute(
            "UPDATE chunks SET touched_at = ? WHERE group_id = ? AND address = ?"
            " AND touched_at < ?",
            now,
            group_id,
            address,
            now,
        )
        return state
    counted = yield from execute(
        "UPDATE groups SET bytes_stored = bytes_stored + ?"
        " WHERE group_id = ? AND bytes_stored + blob_count * ? + ? <= ?",
        size,
        group_id,
        overhead,
        size,
        max_bytes,
    )
    if not counted:
        return None
    yield from execute(
        "INSERT INTO chunks (group_id, address, size, touched_at) VALUES (?, ?, ?, ?)",
        group_id,
        address,
        size,
        now,
    )
    return ChunkState(address, size, 0, False)


def chunk_advance(group_id: GroupId, address: bytes, offset: int, end: int) -> Proc[bool]:
    """Move an upload's ``received`` from ``offset`` to ``end``; False if it was not there
    (collected, or another write came first)."""
    moved = yield from execute(
        "UPDATE chunks SET received = ? WHERE group_id = ? AND address = ? AND received = ?"
        " AND complete = 0",
        end,
        group_id,
        address,
        offset,
    )
    return moved == 1


def chunk_settle(group_id: GroupId, address: bytes, matched: bool) -> Proc[ChunkState | None]:
    """Mark a full upload complete (``matched``) or drop and uncount it; the state after,
    or None when there was no full upload to settle (collected meanwhile)."""
    yield from one("SELECT 1 FROM groups WHERE group_id = ?", group_id, lock=True)
    state = yield from chunk_state(group_id, address, lock=True)
    if state is None or state.received != state.size:
        return None
    if state.complete:
        return state
    if matched:
        yield from execute(
            "UPDATE chunks SET complete = 1 WHERE group_id = ? AND address = ?",
            group_id,
            address,
        )
        return ChunkState(address, state.size, state.size, True)
    yield from execute("DELETE FROM chunks WHERE group_id = ? AND address = ?", group_id, address)
    yield from execute(
        "UPDATE groups SET bytes_stored = bytes_stored - ? WHERE group_id = ?",
        state.size,
        group_id,
    )
    return ChunkState(address, state.size, 0, False, mismatch=True)


def chunk_have(group_id: GroupId, addresses: Sequence[bytes]) -> Proc[dict[bytes, ChunkState]]:
    found: dict[bytes, ChunkState] = {}
    for batch in batches(addresses):
        got = yield from rows(
            f"SELECT {CHUNK_COLUMNS} FROM chunks WHERE group_id = ?"
            f" AND address IN ({marks(len(batch))})",
            group_id,
            *batch,
        )
        found.update((bytes(r[0]), state_from_row(r)) for r in got)
    return found


def chunk_refs(group_id: GroupId, blob_id: BlobId, addresses: Sequence[bytes]) -> Proc[None]:
    live = yield from one(
        "SELECT 1 FROM blobs WHERE group_id = ? AND blob_id = ?", group_id, blob_id, lock=True
    )
    if live is None:
        retired = yield from one(
            "SELECT 1 FROM blob_ids WHERE group_id = ? AND blob_id = ?", group_id, blob_id
        )
        if retired is None:
            raise StorageError(f"group {group_id} has no blob {blob_id} to reference chunks")
        return  # a retried push of a blob that is gone: nothing to keep alive
    ordered = sorted(addresses)
    for batch in batches(ordered):
        # The chunks' rows, locked: a collector that holds them has judged them and
        # deletes; one that comes after sees these references.
        yield from lock_chunks(group_id, batch)
        yield from execute(
            "INSERT INTO chunk_refs (group_id, blob_id, address) VALUES "
            + ", ".join(["(?, ?, ?)"] * len(batch))
            + " ON CONFLICT DO NOTHING",
            *(value for a in batch for value in (group_id, blob_id, a)),
        )


def gc_candidates(
    after: tuple[bytes, bytes], stale_before: int, limit: int
) -> Proc[list[tuple[bytes, bytes]]]:
    """Up to ``limit`` (group, address) past ``after`` that look collectable: a read, so
    that the writer is taken only where there is something to delete."""
    found = yield from rows(
        "SELECT group_id, address FROM chunks c WHERE (group_id, address) > (?, ?)"
        " AND touched_at < ? AND (complete = 0 OR NOT EXISTS (SELECT 1 FROM chunk_refs r"
        " WHERE r.group_id = c.group_id AND r.address = c.address))"
        " ORDER BY group_id, address LIMIT ?",
        after[0],
        after[1],
        stale_before,
        limit,
    )
    return [(bytes(r[0]), bytes(r[1])) for r in found]


def gc_delete(group_id: bytes, addresses: Sequence[bytes], stale_before: int) -> Proc[list[bytes]]:
    """Delete those of one group's ``addresses`` that are collectable now; return them."""
    yield from one("SELECT 1 FROM groups WHERE group_id = ?", group_id, lock=True)
    yield from lock_chunks(group_id, addresses)
    gone = yield from rows(
        f"DELETE FROM chunks WHERE group_id = ? AND address IN ({marks(len(addresses))})"
        " AND touched_at < ? AND (complete = 0 OR NOT EXISTS (SELECT 1 FROM chunk_refs r"
        " WHERE r.group_id = chunks.group_id AND r.address = chunks.address))"
        " RETURNING address, size",
        group_id,
        *addresses,
        stale_before,
    )
    if gone:
        yield from execute(
            "UPDATE groups SET bytes_stored = bytes_stored - ? WHERE group_id = ?",
            sum(int(r[1]) for r in gone),
            group_id,
        )
    return [bytes(r[0]) for r in gone]


def lock_chunks(group_id: bytes, addresses: Sequence[bytes]) -> Proc[None]:
    """Lock these chunks' rows until commit (PostgreSQL), in address order."""
    for batch in batches(sorted(addresses)):
        yield Query(
            f"SELECT address FROM chunks WHERE group_id = ? AND address IN"
            f" ({marks(len(batch))}) ORDER BY address",
            (group_id, *batch),
            Fetch.ALL,
            lock=True,
        )


# -- the methods ------------------------------------------------------------------------------


def uncommitted(state: ChunkState | None, address: bytes) -> ChunkState | None:
    """What a commit finds before it verifies: the chunk when it is complete already
    (committing again is harmless), None when it holds all its bytes, to be verified;
    StorageError when there is no upload or it lacks bytes."""
    if state is None:
        raise StorageError(f"cannot commit chunk {address.hex()[:16]}: no upload")
    if state.complete:
        return state
    if state.received != state.size:
        raise StorageError(
            f"cannot commit chunk {address.hex()[:16]}: it has {state.received} of its"
            f" {state.size} bytes"
        )
    return None


class SQLChunkStorage(SQLStorage):
    """SQLStorage with chunks: the bookkeeping is shared, the bytes are the backend's
    (``chunk_write``, ``chunk_commit``, ``chunk_read``, and ``_chunks_collected`` to free
    the bytes of chunks ``chunk_gc`` deleted, if they live outside the rows)."""

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
        """The begin's procedure: a backend wraps it to refuse it (a full disk)."""
        return chunk_begin(group_id, address, size, now, max_bytes=max_bytes, overhead=overhead)

    async def chunk_begin(
        self,
        group_id: GroupId,
        address: bytes,
        size: int,
        now: int,
        *,
        max_group_bytes: int,
        blob_overhead: int = 0,
    ) -> ChunkState | None:
        checked_address(address)
        check_size(size)
        return await self._write_proc(
            lambda: self._chunk_begin_proc(
                group_id, address, size, now, max_bytes=max_group_bytes, overhead=blob_overhead
            )
        )

    @abstractmethod
    async def chunk_write(
        self, group_id: GroupId, address: bytes, offset: int, data: bytes
    ) -> ChunkState: ...

    @abstractmethod
    async def chunk_commit(self, group_id: GroupId, address: bytes) -> ChunkState: ...

    @abstractmethod
    async def chunk_read(
        self, group_id: GroupId, address: bytes, offset: int, length: int
    ) -> bytes: ...

    async def chunk_have(
        self, group_id: GroupId, addresses: Sequence[bytes]
    ) -> dict[bytes, ChunkState]:
        checked = checked_addresses(addresses)
        return await self._read_proc(chunk_have(group_id, checked))

    async def chunk_refs(
        self, group_id: GroupId, blob_id: BlobId, addresses: Sequence[bytes]
    ) -> None:
        checked = checked_addresses(addresses)
        await self._write_proc(lambda: chunk_refs(group_id, blob_id, checked))

    async def chunk_gc(self, now: int, limit: int, *, stale_before: int | None = None) -> int:
        before = now - CHUNK_IDLE_MS if stale_before is None else stale_before
        deleted = 0
        after = (b"", b"")
        while deleted < limit:
            want = min(CHUNK_GC_BATCH, limit - deleted)
            found = await self._read_proc(gc_candidates(after, before, want))
            by_group: dict[bytes, list[bytes]] = {}
            for group_id, address in found:
                by_group.setdefault(group_id, []).append(address)
            for group_id, addresses in by_group.items():
                gone = await self._write_proc(partial(gc_delete, group_id, addresses, before))
                await self._chunks_collected(group_id, gone)
                deleted += len(gone)
            if len(found) < want:
                break
            after = found[-1]
        return deleted

    async def _chunks_collected(self, group_id: bytes, addresses: Sequence[bytes]) -> None:
        """``chunk_gc`` deleted these chunks' rows: free their bytes, if they are not rows."""
