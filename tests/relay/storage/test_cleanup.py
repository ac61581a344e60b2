"""Cleanup at scale (issue 10): retention computed per group, delivered blobs deleted (not
tombstoned) in small transactions that let pushes through, their ids remembered apart.
The first tests run on every backend; the SQLite ones check the file it leaves behind.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.relay.storage.support import NOW, Backend, cursors, new_group, push
from zerok.relay.storage import PushOutcome, Storage, common
from zerok.wire import BlobId, DeviceId, GroupId


def delivered_by_the_rule(
    senders: dict[int, DeviceId], acks: dict[DeviceId, int], revoked: set[DeviceId]
) -> set[int]:
    """The retention rule, blob by blob, as the contract states it (the reference)."""
    live = [d for d in acks if d not in revoked]
    done = set()
    for cursor, sender in senders.items():
        others = [d for d in live if d != sender]
        if others and all(acks[d] >= cursor for d in others):
            done.add(cursor)
    return done


def test_per_group_retention_matches_the_rule_blob_by_blob(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random groups (ties, a slowest device that also sends, revoked and unknown senders,
    lone devices), cleaned in windows of 3 cursors so that windows cut through them."""
    monkeypatch.setattr(common, "CLEANUP_BATCH", 3, raising=False)
    rng = random.Random(10)

    async def body(s: Storage) -> None:
        cases: list[tuple[GroupId, set[int], int]] = []
        for _ in range(12):
            devices = [DeviceId.random() for _ in range(rng.randint(1, 4))]
            group = await new_group(s, *devices)
            stranger = DeviceId.random()  # a sender the group never saw
            senders: dict[int, DeviceId] = {}
            for cursor in range(1, rng.randint(2, 14)):
                sender = rng.choice([*devices, stranger])
                assert (await push(s, group, sender=sender)).cursor == cursor
                senders[cursor] = sender
            acks = {d: rng.randint(0, len(senders)) for d in devices}
            for device, acked in acks.items():
                await s.ack(group, device, acked)
            revoked = {d for d in devices if rng.random() < 0.2}
            for device in revoked:
                await s.revoke_device(group, device, devices[0], "lost", NOW)
            gone = delivered_by_the_rule(senders, acks, revoked)
            cases.append((group, set(senders) - gone, len(gone)))
        stats = await s.cleanup(NOW)
        assert stats.acked_blobs == sum(n for _, _, n in cases)
        for group, kept, _ in cases:
            assert await cursors(s, group) == sorted(kept)

    backend.run(body)


def test_delivered_blobs_are_deleted_and_their_ids_still_answer_retries(
    backend: Backend,
) -> None:
    a, b = DeviceId.random(), DeviceId.random()
    ids = [BlobId.random() for _ in range(5)]

    async def body(s: Storage) -> GroupId:
        group = await new_group(s, a, b)
        for blob in ids:
            await push(s, group, b"x" * 1000, blob_id=blob, sender=a)
        await s.ack(group, b, 5)
        assert (await s.cleanup(NOW)).acked_blobs == 5
        # A retry after delivery: its first cursor, nothing stored again.
        assert await push(s, group, blob_id=ids[2], sender=a) == PushOutcome(3, NOW, duplicate=True)
        # The owner's delete of a delivered blob is idempotent; a stranger's is refused.
        assert (await s.delete_blob(group, ids[0], a, force=False)).deleted
        assert not (await s.delete_blob(group, ids[0], b, force=False)).owner
        return group

    group = backend.run(body)
    # Rows gone, not blanked: a tombstone row would keep its pages until the TTL.
    hex_group = group.hex()
    where = f"WHERE group_id = {'X' if backend.name == 'sqlite' else ''}'{hex_group}'"
    if backend.name == "postgresql":
        where = f"WHERE group_id = '\\x{hex_group}'::bytea"
    assert backend.query(f"SELECT COUNT(*) FROM blobs {where}") == [(0,)]
    assert backend.query(f"SELECT COUNT(*) FROM blob_ids {where}") == [(5,)]


def test_withdrawn_blob_is_deleted_and_its_id_remembered(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        a = DeviceId.random()
        group = await new_group(s, a)
        blob = BlobId.random()
        await push(s, group, blob_id=blob, sender=a, expires_at=NOW + 100)
        assert (await s.delete_blob(group, blob, a, force=True)).deleted
        assert await cursors(s, group) == []
        assert (await push(s, group, blob_id=blob, sender=a)).duplicate
        await s.cleanup(NOW + 100)  # its TTL: the id is forgotten
        again = await push(s, group, blob_id=blob, sender=a, now=NOW + 200)
        assert (again.cursor, again.duplicate) == (2, False)

    backend.run(body)


def test_pushes_go_between_cleanup_batches(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cleanup of thousands of delivered blobs takes many short transactions: a push sent
    once it has made progress is answered before it ends (it used to wait for all of it,
    and nothing showed before it ended)."""
    monkeypatch.setattr(common, "CLEANUP_BATCH", 50, raising=False)

    async def body(s: Storage) -> None:
        a, b, silent = DeviceId.random(), DeviceId.random(), DeviceId.random()
        group = await new_group(s, a, b, silent)
        await asyncio.gather(*(push(s, group, sender=silent) for _ in range(2000)))
        await s.ack(group, a, 2000)
        await s.ack(group, b, 2000)  # ``silent`` acks nothing, but sent them all
        cleaning = asyncio.create_task(s.cleanup(NOW))
        while (await s.stats())[1] == 2000:  # until a first batch committed
            assert not cleaning.done()
        await push(s, group, sender=a)
        assert not cleaning.done()
        assert (await cleaning).acked_blobs == 2000
        assert await cursors(s, group) == [2001]

    backend.run(body)
