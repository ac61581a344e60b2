"""The group quota's per-blob overhead and blob-count limit, and ``usage``, held against
every backend (issue 10, item 5: 0-byte blobs were free and uncounted)."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.relay.storage import support
from tests.relay.storage.support import Backend, cursors, new_group
from zerok.relay.storage import PushOutcome, Storage
from zerok.wire import BlobId, DeviceId, GroupId

OVERHEAD = 128


async def push(s: Storage, group: GroupId, data: bytes = b"", **options: Any) -> PushOutcome:
    """Every push here counts the per-blob overhead (``options``: as support.push's)."""
    return await support.push(s, group, data, overhead=OVERHEAD, **options)


def test_empty_blobs_cost_their_overhead(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        group = await new_group(s)
        quota = 10 * OVERHEAD  # ten 0-byte blobs, no more
        outcomes = [await push(s, group, quota=quota) for _ in range(12)]
        assert [o.quota_exceeded for o in outcomes] == [False] * 10 + [True] * 2
        assert await cursors(s, group) == list(range(1, 11))
        record = await s.get_group(group)
        assert record is not None
        assert (record.max_cursor, record.bytes_stored) == (10, 0)  # refusals take no cursor

    backend.run(body)


def test_overhead_and_ciphertext_add_up_exactly(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        group = await new_group(s)
        quota = 2 * OVERHEAD + 100
        assert not (await push(s, group, b"a" * 60, quota=quota)).quota_exceeded
        assert (await push(s, group, b"b" * 41, quota=quota)).quota_exceeded
        exact = await push(s, group, b"c" * 40, quota=quota)  # exactly reaches the quota
        assert (exact.cursor, exact.quota_exceeded) == (2, False)
        assert (await push(s, group, quota=quota)).quota_exceeded

    backend.run(body)


def test_blob_count_limit_counts_live_blobs(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        owner = DeviceId.random()
        group = await new_group(s, owner)
        first = BlobId.random()
        await push(s, group, b"x", blobs=3, blob_id=first, sender=owner)
        assert [(await push(s, group, b"x", blobs=3)).cursor for _ in range(2)] == [2, 3]
        refused = await push(s, group, b"x", blobs=3)
        assert (refused.quota_exceeded, refused.cursor) == (True, 0)
        # A retry of a stored blob is still answered with its cursor, full or not.
        again = await push(s, group, b"x", blobs=3, blob_id=first, sender=owner)
        assert (again.duplicate, again.cursor) == (True, 1)
        await s.delete_blob(group, first, owner, force=True)
        assert (await push(s, group, b"x", blobs=3)).cursor == 4
        # 0 means no count limit.
        assert not (await push(s, group, b"x", blobs=0)).quota_exceeded

    backend.run(body)


def test_concurrent_pushes_cannot_pass_the_blob_limit_together(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        group = await new_group(s)
        outcomes = await asyncio.gather(*(push(s, group, b"x", blobs=25) for _ in range(60)))
        assert sum(not o.quota_exceeded for o in outcomes) == 25
        assert await cursors(s, group) == list(range(1, 26))

    backend.run(body)


def test_usage_sums_live_bytes_and_blobs_over_groups(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        assert await s.usage() == (0, 0)
        owner = DeviceId.random()
        one, two = await new_group(s, owner), await new_group(s)
        blob = BlobId.random()
        await push(s, one, b"a" * 10, blob_id=blob, sender=owner)
        await push(s, one, b"b" * 20)
        await push(s, two, b"")
        assert await s.usage() == (30, 3)
        await s.delete_blob(one, blob, owner, force=True)
        assert await s.usage() == (20, 2)

    backend.run(body)
