"""The storage contract (``zerok.relay.storage.base.Storage``), held against every backend.

Each test runs once per backend, on a database of its own; nothing is mocked. Retention,
invites and events are in test_contract_retention.py.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.relay.storage.support import (
    AUTH,
    BIG,
    DAY,
    NOW,
    Backend,
    cursors,
    new_group,
    push,
    run,
)
from zerok.relay.storage import PushOutcome, Storage, StorageError
from zerok.wire import BlobId, DeviceId, GroupId
from zerok.wire.messages import STORED_BLOB_OVERHEAD

# -- lifecycle --------------------------------------------------------------------------------


def test_a_new_database_is_empty_and_data_survives_reopening(backend: Backend) -> None:
    device = DeviceId.random()

    async def first(s: Storage) -> tuple[GroupId, BlobId]:
        assert await s.stats() == (0, 0)
        group = await new_group(s, device)
        blob = BlobId.random()
        await push(s, group, b"kept", blob_id=blob, sender=device)
        return group, blob

    group, blob = backend.run(first)

    async def second(s: Storage) -> None:
        record = await s.get_group(group)
        assert record is not None
        assert record.auth_key == AUTH
        assert record.max_cursor == 1
        page = await s.pull(group, 0, 10, BIG)
        assert [(b.blob_id, b.cursor, b.ciphertext) for b in page.blobs] == [(blob, 1, b"kept")]
        assert await s.get_device(group, device) is not None
        outcome = await push(s, group)
        assert outcome.cursor == 2

    backend.run(second)


def test_close_lets_submitted_writes_finish(backend: Backend) -> None:
    async def main() -> GroupId:
        s = backend.make()
        await s.open()
        group = await new_group(s)
        tasks = [asyncio.ensure_future(push(s, group, b"%d" % i)) for i in range(100)]
        await asyncio.sleep(0)  # every push has been submitted; none has been answered
        assert not any(t.done() for t in tasks)
        await s.close()
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert sorted(o.cursor for o in outcomes) == list(range(1, 101))
        return group

    group = run(main())

    async def check(s: Storage) -> None:
        assert await cursors(s, group) == list(range(1, 101))

    backend.run(check)
    assert backend.query("SELECT COUNT(*) FROM blobs") == [(100,)]


def test_methods_before_open_raise(backend: Backend) -> None:
    async def main() -> None:
        s = backend.make()
        with pytest.raises(StorageError):
            await s.register_group(GroupId.random(), AUTH, NOW)
        with pytest.raises(StorageError):
            await s.stats()
        await s.close()

    run(main())


def test_writes_and_reads_after_close_raise(backend: Backend) -> None:
    async def main() -> None:
        s = backend.make()
        await s.open()
        await s.ping()  # an open database answers
        group = await new_group(s)
        await s.close()
        with pytest.raises(StorageError):
            await s.ping()
        with pytest.raises(StorageError):
            await push(s, group)
        with pytest.raises(StorageError):
            await s.register_group(GroupId.random(), AUTH, NOW)
        with pytest.raises(StorageError):
            await s.cleanup(NOW)
        with pytest.raises(StorageError):
            await s.get_group(group)
        with pytest.raises(StorageError):
            await s.pull(group, 0, 10, BIG)
        with pytest.raises(StorageError):
            await s.stats()
        await s.close()  # a second close is harmless

    run(main())


def test_maintain_changes_nothing_visible(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        group = await new_group(s, DeviceId.random())
        for _ in range(20):
            await push(s, group, b"\x00" * 4096, expires_at=NOW + 1)
        await push(s, group, b"stays")
        await s.cleanup(NOW + 1)
        await s.maintain()
        assert await cursors(s, group) == [21]
        assert await s.stats() == (1, 1)
        await s.maintain()  # as often as the relay likes

    backend.run(body)


# -- groups and devices -----------------------------------------------------------------------


def test_register_group_is_idempotent_and_keeps_first_auth_key(backend: Backend) -> None:
    async def body(s: Storage) -> None:
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

    backend.run(body)


def test_concurrent_registrations_agree_on_the_first(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        group = GroupId.random()
        records = await asyncio.gather(
            *(s.register_group(group, bytes([i]) * 32, NOW + i) for i in range(10))
        )
        assert len(set(records)) == 1
        assert await s.get_group(group) == records[0]
        assert await s.stats() == (1, 0)

    backend.run(body)


def test_touch_device_creates_then_updates_name_and_last_seen(backend: Backend) -> None:
    async def body(s: Storage) -> None:
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

    backend.run(body)


def test_revoke_unknown_device_creates_revoked_record(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        group = await new_group(s)
        admin, stranger = DeviceId.random(), DeviceId.random()
        record = await s.revoke_device(group, stranger, admin, "lost", NOW)
        assert record.revoked
        assert (record.revoked_at, record.revoked_by, record.revoke_reason) == (
            NOW,
            admin,
            "lost",
        )
        assert await s.get_device(group, stranger) == record
        assert [d.device_id for d in await s.list_devices(group)] == [stranger]

    backend.run(body)


def test_revoke_twice_keeps_first_revoker_and_reason(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        device, first, second = DeviceId.random(), DeviceId.random(), DeviceId.random()
        group = await new_group(s, device)
        await s.revoke_device(group, device, first, "stolen", NOW + 1)
        again = await s.revoke_device(group, device, second, "other reason", NOW + 2)
        assert (again.revoked_at, again.revoked_by, again.revoke_reason) == (
            NOW + 1,
            first,
            "stolen",
        )
        assert await s.get_device(group, device) == again

    backend.run(body)


def test_push_token_set_cleared_and_dropped_on_revoke(backend: Backend) -> None:
    async def body(s: Storage) -> None:
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

        stranger = DeviceId.random()  # a token for a device never seen creates nothing
        await s.set_push_token(group, stranger, "tok-789", "fcm", "app")
        assert await s.get_device(group, stranger) is None

    backend.run(body)


# -- push -------------------------------------------------------------------------------------


def test_push_assigns_gap_free_cursors_per_group(backend: Backend) -> None:
    async def body(s: Storage) -> None:
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

    backend.run(body)


def test_concurrent_pushes_to_several_groups_are_gap_free(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        groups = [await new_group(s) for _ in range(3)]
        outcomes = await asyncio.gather(*(push(s, groups[i % 3], b"x%d" % i) for i in range(600)))
        assert not any(o.duplicate or o.quota_exceeded for o in outcomes)
        for g, group in enumerate(groups):
            assert sorted(o.cursor for o in outcomes[g::3]) == list(range(1, 201))
            assert await cursors(s, group) == list(range(1, 201))
            record = await s.get_group(group)
            assert record is not None
            assert record.max_cursor == 200
        assert await s.stats() == (3, 600)

    backend.run(body)


def test_duplicate_blob_id_returns_original_cursor_and_stores_nothing(backend: Backend) -> None:
    async def body(s: Storage) -> None:
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

    backend.run(body)


def test_a_repair_push_stores_a_retired_blob_again_but_never_a_live_one(
    backend: Backend,
) -> None:
    async def body(s: Storage) -> None:
        group = await new_group(s)
        blob, owner = BlobId.random(), DeviceId.random()
        assert await push(s, group, b"v1", blob_id=blob, sender=owner) == PushOutcome(1, NOW)
        # Live: a repair is a duplicate like any retry.
        live = await push(s, group, b"v1", blob_id=blob, sender=owner, repair=True)
        assert live == PushOutcome(1, NOW, duplicate=True)
        await s.delete_blob(group, blob, owner, force=True)
        # Retired: a plain retry is still answered with the first cursor, storing nothing ...
        retry = await push(s, group, b"v1", blob_id=blob, sender=owner, now=NOW + 5)
        assert retry == PushOutcome(1, NOW, duplicate=True)
        assert await cursors(s, group) == []
        # ... a repair stores it again, once, under a new cursor.
        again = await push(s, group, b"v1", blob_id=blob, sender=owner, now=NOW + 9, repair=True)
        assert again == PushOutcome(2, NOW + 9)
        twice = await push(s, group, b"v1", blob_id=blob, sender=owner, now=NOW + 10, repair=True)
        assert twice == PushOutcome(2, NOW + 9, duplicate=True)
        assert await cursors(s, group) == [2]

    backend.run(body)


def test_concurrent_pushes_of_one_blob_id_store_it_once(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        group = await new_group(s)
        blob, sender = BlobId.random(), DeviceId.random()
        outcomes = await asyncio.gather(
            *(push(s, group, b"same", blob_id=blob, sender=sender, now=NOW + i) for i in range(8))
        )
        first = [o for o in outcomes if not o.duplicate]
        assert len(first) == 1
        assert {(o.cursor, o.timestamp) for o in outcomes} == {(1, first[0].timestamp)}
        assert await cursors(s, group) == [1]
        record = await s.get_group(group)
        assert record is not None
        assert (record.max_cursor, record.bytes_stored) == (1, 4)

    backend.run(body)


def test_quota_exceeded_stores_nothing_and_consumes_no_cursor(backend: Backend) -> None:
    async def body(s: Storage) -> None:
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

    backend.run(body)


def test_quota_counts_live_blobs_only(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        owner = DeviceId.random()
        group = await new_group(s, owner)
        blob = BlobId.random()
        await push(s, group, b"a" * 80, blob_id=blob, sender=owner, quota=100)
        assert (await push(s, group, b"b" * 80, quota=100)).quota_exceeded
        await s.delete_blob(group, blob, owner, force=True)
        assert (await push(s, group, b"b" * 80, quota=100)).cursor == 2

    backend.run(body)


def test_push_to_unknown_group_raises(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        with pytest.raises(StorageError, match="unknown group"):
            await push(s, GroupId.random())
        assert await s.stats() == (0, 0)

    backend.run(body)


# -- pull, ack, pending -----------------------------------------------------------------------


def test_pull_after_limit_has_more_and_max_cursor(backend: Backend) -> None:
    async def body(s: Storage) -> None:
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

    backend.run(body)


def test_pull_max_bytes_always_includes_first_blob_then_stops(backend: Backend) -> None:
    """Each blob counts its ciphertext plus STORED_BLOB_OVERHEAD against max_bytes."""
    o = STORED_BLOB_OVERHEAD

    async def body(s: Storage) -> None:
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

    backend.run(body)


def test_pull_skips_tombstones(backend: Backend) -> None:
    async def body(s: Storage) -> None:
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

    backend.run(body)


def test_ack_never_moves_backwards_and_is_capped_at_max_cursor(backend: Backend) -> None:
    async def body(s: Storage) -> None:
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
        stranger = DeviceId.random()  # an ack from a device never seen creates nothing
        await s.ack(group, stranger, 4)
        assert await s.get_device(group, stranger) is None

    backend.run(body)


def test_pending_for_counts_live_blobs_above_the_ack(backend: Backend) -> None:
    async def body(s: Storage) -> None:
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

    backend.run(body)


def test_pending_by_device_matches_pending_for_each_device(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        a, b, c = DeviceId.random(), DeviceId.random(), DeviceId.random()
        group = await new_group(s, a, b, c)
        for sender in (a, a, b, a, c):
            await push(s, group, sender=sender)
        await s.ack(group, b, 2)
        counts = await s.pending_by_device(group)
        assert counts == {d: await s.pending_for(group, d) for d in (a, b, c)}
        assert counts == {a: 2, b: 2, c: 4}
        assert await s.pending_by_device(GroupId.random()) == {}

    backend.run(body)


def test_blobs_after_lists_live_blob_metadata(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        owner = DeviceId.random()
        group = await new_group(s, owner)
        ids = [BlobId.random() for _ in range(5)]
        for i, blob in enumerate(ids):
            await push(s, group, b"y" * (i + 1), blob_id=blob, sender=owner, now=NOW + i)
        await s.delete_blob(group, ids[1], owner, force=True)
        events = await s.blobs_after(group, 0, 10)
        assert [(e.cursor, e.blob_id, e.size, e.timestamp) for e in events] == [
            (c, ids[c - 1], c, NOW + c - 1) for c in (1, 3, 4, 5)
        ]
        assert all(e.group_id == group and e.sender == owner for e in events)
        assert [e.cursor for e in await s.blobs_after(group, 3, 1)] == [4]
        assert await s.blobs_after(group, 5, 10) == []
        assert await s.blobs_after(GroupId.random(), 0, 10) == []

    backend.run(body)


def test_stats_counts_groups_and_live_blobs(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        assert await s.stats() == (0, 0)
        a, b = await new_group(s), await new_group(s)
        await new_group(s)
        for _ in range(3):
            await push(s, a)
        await push(s, b, expires_at=NOW + 1)
        assert await s.stats() == (3, 4)
        await s.cleanup(NOW + 1)
        assert await s.stats() == (3, 3)
        assert (await push(s, b, expires_at=NOW + DAY)).cursor == 2

    backend.run(body)
