"""The storage contract, continued: retention and cleanup, delete, invites, and events
between relays. Each test runs once per backend (of the kind it names), on a database of
its own.
"""

from __future__ import annotations

import asyncio

import psycopg

from tests.relay.storage.support import (
    DAY,
    NOW,
    Backend,
    Heard,
    cursors,
    new_group,
    push,
    run,
)
from zerok.relay.storage import (
    BlobStored,
    CleanupStats,
    DeleteOutcome,
    DeviceWasRevoked,
    InviteTake,
    PushOutcome,
    Resync,
    Storage,
)
from zerok.relay.storage.postgres import LISTENER_NAME
from zerok.testing import PG_ADMIN_URL
from zerok.wire import BlobId, DeviceId, GroupId

# -- cleanup ----------------------------------------------------------------------------------


def test_cleanup_deletes_expired_blobs_and_corrects_totals(backend: Backend) -> None:
    async def body(s: Storage) -> None:
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

    backend.run(body)


def test_cleanup_totals_are_right_for_every_group(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        a, b, lost = DeviceId.random(), DeviceId.random(), DeviceId.random()
        groups = [await new_group(s, a, b) for _ in range(3)] + [await new_group(s, lost)]
        for n, group in enumerate(groups):
            for i in range(n + 2):
                await push(s, group, b"z" * (i + 1), sender=a, expires_at=NOW + 10 * (i % 2))
            await s.ack(group, b, 2)
        stats = await s.cleanup(NOW + 5)
        # Per group of n + 2 blobs (blob i: cursor i + 1, i + 1 bytes): the even ones
        # expired; cursor 2 is delivered where b, the sender's only peer, acked it.
        assert stats.expired_blobs == sum((n + 3) // 2 for n in range(4))
        assert stats.acked_blobs == 3
        for n, group in enumerate(groups):
            live = [i for i in range(n + 2) if i % 2 and not (i == 1 and n < 3)]
            record = await s.get_group(group)
            assert record is not None
            assert record.bytes_stored == sum(i + 1 for i in live), n
            assert await cursors(s, group) == [i + 1 for i in live], n
        assert await s.stats() == (4, 3)

    backend.run(body)


def test_cleanup_tombstones_fully_acked_blobs_but_remembers_their_ids(backend: Backend) -> None:
    async def body(s: Storage) -> None:
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

    backend.run(body)


def test_revoked_device_does_not_hold_back_ack_cleanup(backend: Backend) -> None:
    async def body(s: Storage) -> None:
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

    backend.run(body)


def test_a_lone_devices_blobs_wait_for_the_devices_it_pairs(backend: Backend) -> None:
    """A sender has its own blobs, but with no other device they are kept (until TTL)
    for the devices it will pair; its own ack does not count for them."""

    async def body(s: Storage) -> None:
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

    backend.run(body)


def test_cleanup_without_devices_keeps_blobs(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        group = await new_group(s)
        await push(s, group)
        assert await s.cleanup(NOW) == CleanupStats()
        assert await cursors(s, group) == [1]

    backend.run(body)


def test_expired_tombstone_is_removed_and_blob_id_forgotten(backend: Backend) -> None:
    async def body(s: Storage) -> None:
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

    backend.run(body)


# -- delete_blob ------------------------------------------------------------------------------


def test_delete_blob_outcomes(backend: Backend) -> None:
    async def body(s: Storage) -> None:
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
        # A deleted blob's id is still known: a retried push gets its cursor back.
        retried = await push(s, group, b"one", blob_id=first, sender=owner)
        assert (retried.cursor, retried.duplicate) == (1, True)

    backend.run(body)


def test_delete_blob_without_force_once_everyone_acked(backend: Backend) -> None:
    async def body(s: Storage) -> None:
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
        assert await s.stats() == (1, 1)

    backend.run(body)


# -- invites ----------------------------------------------------------------------------------


def test_invites_put_take_once_expire_and_delete(backend: Backend) -> None:
    async def body(s: Storage) -> None:
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
        assert not await s.delete_invite(b"lookup-1")  # used: nothing to cancel
        assert not await s.delete_invite(b"never")

    backend.run(body)


def test_concurrent_takes_hand_an_invite_out_once(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        await s.put_invite(b"lookup", b"payload", NOW + 600_000)
        taken = await asyncio.gather(*(s.take_invite(b"lookup", NOW) for _ in range(8)))
        assert sorted(t.status for t in taken) == ["ok"] + ["used"] * 7
        assert [t.payload for t in taken if t.status == "ok"] == [b"payload"]

    backend.run(body)


def test_used_cancelled_and_expired_invites_keep_no_payload(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        for name in (b"a-used", b"b-cancelled", b"c-expired-at-take", b"d-expired-at-cleanup"):
            await s.put_invite(name, b"secret", NOW + 10)
        await s.put_invite(b"e-open", b"secret", NOW + 600_000)
        await s.take_invite(b"a-used", NOW)
        await s.delete_invite(b"b-cancelled")
        await s.take_invite(b"c-expired-at-take", NOW + 10)
        await s.cleanup(NOW + 10)

    backend.run(body)
    rows = backend.query("SELECT lookup, payload, state FROM invites ORDER BY lookup")
    assert [(bytes(r[0]), r[1] and bytes(r[1]), r[2]) for r in rows] == [
        (b"a-used", None, "used"),
        (b"b-cancelled", None, "cancelled"),
        (b"c-expired-at-take", None, "expired"),
        (b"d-expired-at-cleanup", None, "expired"),
        (b"e-open", b"secret", "open"),
    ]


def test_cleanup_expires_invites_and_forgets_them_a_day_later(backend: Backend) -> None:
    async def body(s: Storage) -> None:
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

    backend.run(body)


# -- events between relays --------------------------------------------------------------------


def test_single_relay_backend_never_calls_subscribers(single_backend: Backend) -> None:
    async def body(s: Storage) -> None:
        heard = Heard(s)
        device = DeviceId.random()
        group = await new_group(s, device)
        await push(s, group, sender=device)
        await s.revoke_device(group, device, DeviceId.random(), "lost", NOW)
        await s.cleanup(NOW)
        await asyncio.sleep(0)
        assert heard.events == []

    single_backend.run(body)


def test_relays_sharing_a_database_hear_each_other_and_not_themselves(
    shared_backend: Backend,
) -> None:
    async def main() -> None:
        one, two = shared_backend.make(), shared_backend.make()
        await one.open()
        await two.open()
        try:
            heard_one, heard_two = Heard(one), Heard(two)
            device, admin = DeviceId.random(), DeviceId.random()
            group = await new_group(one, device, admin)
            blob_1, blob_2, blob_3 = BlobId.random(), BlobId.random(), BlobId.random()
            # Notifications arrive in commit order: once a relay hears a later write of the
            # other's, it would already have heard its own earlier ones.
            await push(one, group, b"1", blob_id=blob_1, sender=device, now=NOW + 1)
            await one.revoke_device(group, device, admin, "lost", NOW + 2)
            await push(two, group, b"22", blob_id=blob_2, sender=admin, now=NOW + 3)
            lost = DeviceId.random()
            await two.revoke_device(group, lost, admin, "stolen", NOW + 4)
            await push(one, group, b"333", blob_id=blob_3, sender=admin, now=NOW + 5)
            await push(one, group, b"333", blob_id=blob_3, sender=admin, now=NOW + 6)  # retry

            assert await heard_one.next() == BlobStored(group, blob_2, 2, admin, NOW + 3, 2)
            assert await heard_one.next() == DeviceWasRevoked(group, lost, admin, NOW + 4, "stolen")
            assert await heard_two.next() == BlobStored(group, blob_1, 1, device, NOW + 1, 1)
            assert await heard_two.next() == DeviceWasRevoked(group, device, admin, NOW + 2, "lost")
            assert await heard_two.next() == BlobStored(group, blob_3, 3, admin, NOW + 5, 3)
            # The duplicate stored nothing, so nobody was told; a last write of two's
            # shows one has nothing else queued.
            await two.revoke_device(group, lost, device, "again", NOW + 7)
            again = await heard_one.next()
            assert again == DeviceWasRevoked(group, lost, admin, NOW + 4, "stolen")
            assert len(heard_one.events) == 3
            assert len(heard_two.events) == 3
        finally:
            await one.close()
            await two.close()

    run(main())


def _cut_listeners(database_url: str) -> int:
    """Kill the LISTEN connections of every relay on this database (and no other)."""
    database = database_url.rpartition("/")[2]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = %s AND datname = %s",
            (LISTENER_NAME, database),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_lost_event_stream_is_followed_by_resync(shared_backend: Backend) -> None:
    async def main() -> None:
        one, two = shared_backend.make(), shared_backend.make()
        await one.open()
        await two.open()
        try:
            heard_one, heard_two = Heard(one), Heard(two)
            group = await new_group(one)
            assert await asyncio.to_thread(_cut_listeners, shared_backend.url) == 2
            assert await heard_one.next() == Resync()
            assert await heard_two.next() == Resync()
            # Listening again: what is written now is heard.
            blob = BlobId.random()
            sender = DeviceId.random()
            await push(two, group, b"after", blob_id=blob, sender=sender)
            assert await heard_one.next() == BlobStored(group, blob, 1, sender, NOW, 5)
        finally:
            await one.close()
            await two.close()

    run(main())
