"""Chunks of large content (issue 13), held against every backend: uploads in ranges that
resume, verification against the address, dedupe, the quota, references and collection
(also racing a reference), and SQLite's files and full disk."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from tests.relay.storage.support import BIG, DAY, NOW, Backend, new_group, push, run
from zerok.errors import StorageError, StorageFullError
from zerok.relay.storage import MAX_CHUNK_BYTES, ChunkState, Storage
from zerok.relay.storage.common import Proc
from zerok.relay.storage.sqlite import SQLiteStorage
from zerok.wire import BlobId, DeviceId, GroupId

LATER = NOW + 2 * DAY  # every chunk begun at NOW is idle by then


def chunk(size: int = 1000) -> tuple[bytes, bytes]:
    data = os.urandom(size)
    return hashlib.sha256(data).digest(), data


async def upload(s: Storage, group: GroupId, data: bytes, *, piece: int = 300) -> bytes:
    address = hashlib.sha256(data).digest()
    state = await s.chunk_begin(group, address, len(data), NOW, max_group_bytes=BIG)
    assert state is not None
    for offset in range(state.received, len(data), piece):
        await s.chunk_write(group, address, offset, data[offset : offset + piece])
    assert (await s.chunk_commit(group, address)).complete
    return address


async def bytes_stored(s: Storage, group: GroupId) -> int:
    record = await s.get_group(group)
    assert record is not None
    return record.bytes_stored


async def referencing_blob(s: Storage, group: GroupId, *addresses: bytes) -> BlobId:
    blob = BlobId.random()
    await push(s, group, b"manifest", blob_id=blob)
    await s.chunk_refs(group, blob, list(addresses))
    return blob


def test_upload_in_ranges_then_read_ranges(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        group = await new_group(s)
        address, data = chunk(200_000)
        assert await upload(s, group, data, piece=70_000) == address
        assert await s.chunk_read(group, address, 0, len(data)) == data
        assert await s.chunk_read(group, address, 69_999, 70_002) == data[69_999:140_001]
        assert await s.chunk_read(group, address, 199_990, 100) == data[199_990:]  # short
        assert await s.chunk_read(group, address, len(data), 5) == b""
        assert await s.chunk_have(group, [address]) == {
            address: ChunkState(address, len(data), len(data), True)
        }

    backend.run(body)


def test_an_equal_chunk_is_stored_once_per_group(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        group, other = await new_group(s), await new_group(s)
        address, data = chunk()
        await upload(s, group, data)
        again = await s.chunk_begin(group, address, len(data), NOW + 1, max_group_bytes=BIG)
        assert again == ChunkState(address, len(data), len(data), True)
        assert await bytes_stored(s, group) == len(data)  # counted once
        assert await s.chunk_have(other, [address]) == {}  # per group
        fresh = await s.chunk_begin(other, address, len(data), NOW, max_group_bytes=BIG)
        assert fresh == ChunkState(address, len(data), 0, False)

    backend.run(body)


@pytest.mark.parametrize("cut", [0, 1, 499, 999, 1000])
def test_an_upload_resumes_where_the_relay_is(backend: Backend, cut: int) -> None:
    async def body(s: Storage) -> None:
        group = await new_group(s)
        address, data = chunk()
        await s.chunk_begin(group, address, len(data), NOW, max_group_bytes=BIG)
        if cut:
            state = await s.chunk_write(group, address, 0, data[:cut])
            assert state.received == cut
        # the connection drops; the device comes back later (the same or another relay)
        resumed = await s.chunk_begin(group, address, len(data), NOW + 5, max_group_bytes=BIG)
        assert resumed == ChunkState(address, len(data), cut, False)
        assert await s.chunk_have(group, [address, os.urandom(32)]) == {address: resumed}
        if cut < len(data):
            await s.chunk_write(group, address, cut, data[cut:])
        assert (await s.chunk_commit(group, address)).complete
        assert await s.chunk_read(group, address, 0, len(data)) == data

    backend.run(body)


def test_writes_out_of_order_or_past_the_end_are_refused(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        group = await new_group(s)
        address, data = chunk()
        with pytest.raises(StorageError, match="no upload under way"):
            await s.chunk_write(group, address, 0, data)
        await s.chunk_begin(group, address, len(data), NOW, max_group_bytes=BIG)
        await s.chunk_write(group, address, 0, data[:100])
        for offset in (0, 99, 101):
            with pytest.raises(StorageError, match=r"out of order.*byte 100"):
                await s.chunk_write(group, address, offset, data[offset : offset + 10])
        with pytest.raises(StorageError, match="passes the end"):
            await s.chunk_write(group, address, 100, data[100:] + b"x")
        with pytest.raises(StorageError, match="has 100 of its 1000 bytes"):
            await s.chunk_commit(group, address)
        with pytest.raises(StorageError, match="no complete chunk"):
            await s.chunk_read(group, address, 0, 10)
        assert (await s.chunk_have(group, [address]))[address].received == 100
        await s.chunk_write(group, address, 100, data[100:])
        await s.chunk_commit(group, address)
        with pytest.raises(StorageError, match="is complete"):
            await s.chunk_write(group, address, 1000, b"")
        assert (await s.chunk_commit(group, address)).complete  # again: harmless

    backend.run(body)


def test_malformed_arguments_are_refused(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        group = await new_group(s)
        address, data = chunk()
        with pytest.raises(StorageError, match="32 bytes, not 31 bytes"):
            await s.chunk_begin(group, address[:31], 10, NOW, max_group_bytes=BIG)
        for size in (0, -1, MAX_CHUNK_BYTES + 1):
            with pytest.raises(StorageError, match="size must be 1 to"):
                await s.chunk_begin(group, address, size, NOW, max_group_bytes=BIG)
        with pytest.raises(StorageError, match="unknown group"):
            await s.chunk_begin(GroupId.random(), address, 10, NOW, max_group_bytes=BIG)
        await s.chunk_begin(group, address, len(data), NOW, max_group_bytes=BIG)
        with pytest.raises(StorageError, match="has 1000 bytes, not 999"):
            await s.chunk_begin(group, address, 999, NOW, max_group_bytes=BIG)
        with pytest.raises(StorageError, match="must be bytes"):
            await s.chunk_write(group, address, 0, "text")  # type: ignore[arg-type]
        with pytest.raises(StorageError, match="at most 16384"):
            await s.chunk_have(group, [address] * 16385)
        with pytest.raises(StorageError, match="32 bytes"):
            await s.chunk_have(group, [b"short"])
        await upload(s, group, data)
        with pytest.raises(StorageError, match="cannot read -1 bytes"):
            await s.chunk_read(group, address, 0, -1)
        with pytest.raises(StorageError, match="at 1001 of a chunk"):
            await s.chunk_read(group, address, 1001, 1)
        with pytest.raises(StorageError, match="has no blob"):
            await s.chunk_refs(group, BlobId.random(), [address])

    backend.run(body)


def test_bytes_that_do_not_match_the_address_are_dropped(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        group = await new_group(s)
        address, data = chunk()
        await s.chunk_begin(group, address, len(data), NOW, max_group_bytes=BIG)
        await s.chunk_write(group, address, 0, data[:-1] + bytes([data[-1] ^ 1]))
        assert await bytes_stored(s, group) == len(data)
        refused = await s.chunk_commit(group, address)
        assert refused == ChunkState(address, len(data), 0, False, mismatch=True)
        assert await s.chunk_have(group, [address]) == {}
        assert await bytes_stored(s, group) == 0
        with pytest.raises(StorageError, match="no upload"):
            await s.chunk_commit(group, address)
        assert await upload(s, group, data) == address  # the right bytes, from the start

    backend.run(body)


def test_chunks_and_uploads_count_in_the_group_quota(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        group = await new_group(s)
        quota = 2500
        await push(s, group, b"b" * 500, quota=quota)
        first, second, third = (chunk() for _ in range(3))
        assert await s.chunk_begin(group, first[0], 1000, NOW, max_group_bytes=quota)
        # a partial upload counts whole: the next one would pass the quota
        assert await s.chunk_begin(group, second[0], 1000, NOW, max_group_bytes=quota)
        assert await s.chunk_begin(group, third[0], 1000, NOW, max_group_bytes=quota) is None
        assert await s.chunk_have(group, [third[0]]) == {}
        assert (await push(s, group, b"x", quota=quota)).quota_exceeded
        assert await bytes_stored(s, group) == 2500
        assert (await s.usage())[0] == 2500
        # the per-blob overhead counts, as for pushes
        small = chunk(100)
        assert (
            await s.chunk_begin(group, small[0], 100, NOW, max_group_bytes=2700, blob_overhead=101)
            is None
        )
        # resuming or finding a chunk costs nothing more
        assert await s.chunk_begin(group, first[0], 1000, NOW, max_group_bytes=quota)

    backend.run(body)


def test_gc_frees_unreferenced_chunks_never_referenced_ones(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        owner = DeviceId.random()
        group = await new_group(s, owner)
        (a, data_a), (b, data_b), (c, data_c) = chunk(), chunk(), chunk()
        for data in (data_a, data_b, data_c):
            await upload(s, group, data)
        one = BlobId.random()
        await push(s, group, b"m1", blob_id=one, sender=owner)
        await s.chunk_refs(group, one, [a, b])
        await referencing_blob(s, group, b)
        assert await s.chunk_gc(NOW + 1, 100) == 0  # not idle yet: c may be referenced soon
        assert await s.chunk_gc(LATER, 100) == 1  # c
        assert set(await s.chunk_have(group, [a, b, c])) == {a, b}
        assert await bytes_stored(s, group) == 2000 + len(b"m1manifest")
        await s.delete_blob(group, one, owner, force=True)  # a goes, b is two's too
        assert await s.chunk_gc(LATER, 100) == 1
        assert set(await s.chunk_have(group, [a, b])) == {b}
        assert await s.chunk_read(group, b, 0, 1000) == data_b
        assert (await s.cleanup(NOW + DAY)).expired_blobs == 1  # two expires: b is free
        assert await s.pull(group, 0, 10, BIG) == await s.pull(group, 10, 10, BIG)
        assert await s.chunk_gc(LATER, 100) == 1
        assert await s.chunk_have(group, [b]) == {}
        assert await bytes_stored(s, group) == 0
        with pytest.raises(StorageError, match="no complete chunk"):
            await s.chunk_read(group, b, 0, 10)

    backend.run(body)


def test_gc_keeps_a_chunk_referenced_between_its_scan_and_its_delete(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(s: Storage) -> None:
        group = await new_group(s)
        address = await upload(s, group, chunk()[1])
        blob = BlobId.random()
        await push(s, group, b"manifest", blob_id=blob)
        scanned = s._read_proc  # type: ignore[attr-defined]
        raced: list[object] = []

        async def scan_then_reference(proc: Proc[Any]) -> Any:
            found = await scanned(proc)
            if getattr(proc, "__name__", "") == "gc_candidates" and not raced:
                assert found, "the scan should find the unreferenced chunk"
                raced.append(found)
                await s.chunk_refs(group, blob, [address])  # the push lands now
            return found

        monkeypatch.setattr(s, "_read_proc", scan_then_reference)
        assert await s.chunk_gc(LATER, 100) == 0
        assert raced
        assert (await s.chunk_have(group, [address]))[address].complete

    backend.run(body)


def test_gc_keeps_a_chunk_found_again_by_a_begin(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        group = await new_group(s)
        address, data = chunk()
        await upload(s, group, data)
        # a device about to push a blob that uses it finds it (dedupe): it is fresh again
        await s.chunk_begin(group, address, len(data), LATER, max_group_bytes=BIG)
        assert await s.chunk_gc(LATER + 1, 100) == 0
        assert await s.chunk_gc(LATER + 2 * DAY, 100) == 1

    backend.run(body)


def test_idle_uploads_expire_in_small_steps(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        group = await new_group(s)
        referenced, data = chunk()
        await s.chunk_begin(group, referenced, len(data), NOW, max_group_bytes=BIG)
        await s.chunk_write(group, referenced, 0, data[:10])
        await referencing_blob(s, group, referenced)  # a partial chunk is not kept by refs
        for _ in range(4):
            await s.chunk_begin(group, chunk()[0], 10, NOW, max_group_bytes=BIG)
        recent = chunk()[0]
        await s.chunk_begin(group, recent, 10, NOW + DAY, max_group_bytes=BIG)
        assert await s.chunk_gc(NOW + DAY + 1, 3) == 3  # stale_before: NOW + 1
        assert await s.chunk_gc(NOW + DAY, 100, stale_before=NOW + 1) == 2
        assert set(await s.chunk_have(group, [referenced, recent])) == {recent}
        assert await bytes_stored(s, group) == 10 + len(b"manifest")
        with pytest.raises(StorageError, match="no upload under way"):
            await s.chunk_write(group, referenced, 10, data[10:])

    backend.run(body)


def test_a_retried_push_of_a_retired_blob_references_nothing(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        owner = DeviceId.random()
        group = await new_group(s, owner)
        address = await upload(s, group, chunk()[1])
        blob = BlobId.random()
        await push(s, group, b"m", blob_id=blob, sender=owner)
        await s.delete_blob(group, blob, owner, force=True)
        await s.chunk_refs(group, blob, [address])  # no error: the push was answered
        assert await s.chunk_gc(LATER, 100) == 1

    backend.run(body)


def test_chunks_survive_a_reopen(backend: Backend) -> None:
    address, data = chunk()

    async def first(s: Storage) -> GroupId:
        group = await new_group(s)
        await upload(s, group, data)
        other = chunk()[0]
        await s.chunk_begin(group, other, 1000, NOW, max_group_bytes=BIG)
        await s.chunk_write(group, other, 0, b"p" * 400)
        return group

    group = backend.run(first)

    async def second(s: Storage) -> None:
        assert await s.chunk_read(group, address, 0, 1000) == data
        states = await s.chunk_have(group, [address])
        assert states[address].complete
        assert await bytes_stored(s, group) == 2000

    backend.run(second)


# -- SQLite's files ---------------------------------------------------------------------------


def test_sqlite_keeps_chunks_in_files_beside_the_database(tmp_path: Path) -> None:
    async def main() -> None:
        s = SQLiteStorage(tmp_path / "relay.db")
        await s.open()
        try:
            group = await new_group(s)
            address, data = chunk()
            directory = tmp_path / "chunks" / group.hex()
            await s.chunk_begin(group, address, len(data), NOW, max_group_bytes=BIG)
            await s.chunk_write(group, address, 0, data[:600])
            assert (directory / f"{address.hex()}.part").read_bytes() == data[:600]
            await s.chunk_write(group, address, 600, data[600:])
            await s.chunk_commit(group, address)
            assert sorted(p.name for p in directory.iterdir()) == [address.hex()]
            assert (directory / address.hex()).read_bytes() == data
            assert await s.chunk_gc(LATER, 10) == 1
            assert list(directory.iterdir()) == []
            assert len(s._chunk_locks) == 0  # no lock left behind
        finally:
            await s.close()

    run(main())


def test_sqlite_full_disk_refuses_chunks_and_keeps_nothing_half_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        s = SQLiteStorage(tmp_path / "relay.db", reserve_bytes=0)
        await s.open()
        try:
            group = await new_group(s)
            address, data = chunk()
            await s.chunk_begin(group, address, len(data), NOW, max_group_bytes=BIG)
            await s.chunk_write(group, address, 0, data[:100])

            def no_room(*args: object) -> int:
                raise OSError(errno.ENOSPC, "No space left on device")

            monkeypatch.setattr(os, "pwrite", no_room)
            with pytest.raises(StorageFullError, match="disk is full"):
                await s.chunk_write(group, address, 100, data[100:])
            assert s.degraded() is not None
            part = tmp_path / "chunks" / group.hex() / f"{address.hex()}.part"
            assert part.read_bytes() == data[:100]
            assert (await s.chunk_have(group, [address]))[address].received == 100
            with pytest.raises(StorageFullError, match="refused"):  # not even tried
                await s.chunk_write(group, address, 100, data[100:])
            monkeypatch.undo()  # room again: the relay finds out by itself, as for pushes
            resumed = await s.chunk_begin(group, address, len(data), NOW, max_group_bytes=BIG)
            assert resumed is not None and resumed.received == 100
            assert s.degraded() is None
            await s.chunk_write(group, address, 100, data[100:])
            assert (await s.chunk_commit(group, address)).complete
        finally:
            await s.close()

    run(main())


def test_sqlite_full_database_refuses_a_new_upload(tmp_path: Path) -> None:
    async def main() -> None:
        s = SQLiteStorage(tmp_path / "relay.db", reserve_bytes=0)
        await s.open()
        try:
            group = await new_group(s)
            pages = (await s._read(lambda c: c.execute("PRAGMA page_count").fetchone()))[0]
        finally:
            await s.close()
        s = SQLiteStorage(tmp_path / "relay.db", reserve_bytes=0, max_pages=pages)
        await s.open()
        try:
            begun = 0
            with pytest.raises(StorageFullError):
                for _ in range(2000):  # each row takes room; the file may not grow
                    await s.chunk_begin(group, chunk()[0], 10, NOW, max_group_bytes=BIG)
                    begun += 1
            assert (await s.get_group(group)) is not None
            record = await s.get_group(group)
            assert record is not None and record.bytes_stored == 10 * begun
            assert s.degraded() is not None
        finally:
            await s.close()

    run(main())
