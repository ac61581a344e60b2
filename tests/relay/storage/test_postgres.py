"""PostgresStorage only: migrating with several relays, pipelined push batches, the push
that loses the race for its blob id, cleanup on several relays, and the event listener.
What every backend must do is in test_contract*.py.

Every test gets a fresh database on the test server (``pg_url``), dropped afterwards.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import psycopg
import pytest

from tests.relay.storage.support import (
    DEADLINE,
    NOW,
    Heard,
    cursors,
    new_group,
    push,
    run,
)
from zerok.errors import StorageFullError, StorageUnavailableError
from zerok.relay.storage import BlobStored, PushOutcome, Resync, StorageError
from zerok.relay.storage.postgres import (
    CHANNEL,
    PUSH_BATCH,
    SCHEMA_VERSION,
    PostgresStorage,
    write_failure,
)
from zerok.testing import PG_ADMIN_URL
from zerok.wire import BlobId, DeviceId, GroupId


async def opened(url: str, count: int) -> list[PostgresStorage]:
    storages = [PostgresStorage(url) for _ in range(count)]
    await asyncio.gather(*(s.open() for s in storages))
    return storages


async def close_all(storages: list[PostgresStorage]) -> None:
    await asyncio.gather(*(s.close() for s in storages))


# -- opening and migrating --------------------------------------------------------------------


def test_relays_starting_together_migrate_once(pg_url: str) -> None:
    async def main() -> None:
        storages = await opened(pg_url, 4)
        try:
            group = await new_group(storages[0])
            for s in storages:
                assert await s.get_group(group) is not None
        finally:
            await close_all(storages)
        await close_all(await opened(pg_url, 1))  # an up-to-date schema is left alone

    run(main())
    with psycopg.connect(pg_url) as conn:
        versions = conn.execute("SELECT version FROM zerok_schema ORDER BY version").fetchall()
        assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]  # each applied once


def test_a_newer_schema_is_refused_with_a_clear_message(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE zerok_schema (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO zerok_schema VALUES (%s)", (SCHEMA_VERSION + 1,))

    async def main() -> None:
        s = PostgresStorage(pg_url)
        with pytest.raises(StorageError, match="newer") as info:
            await s.open()
        assert f"version {SCHEMA_VERSION + 1}" in str(info.value)
        assert f"relay's {SCHEMA_VERSION}" in str(info.value)
        assert s._pool.closed  # a failed open keeps no connection

    run(main())


def test_an_unreachable_server_is_a_storage_error_without_the_password() -> None:
    async def main() -> None:
        s = PostgresStorage("postgresql://zerok:hunter2@127.0.0.1:1/relay", open_timeout=0.3)
        with pytest.raises(StorageError, match="cannot connect") as info:
            await s.open()
        assert "hunter2" not in str(info.value)
        assert "zerok:***@127.0.0.1:1" in str(info.value)
        await s.close()

    run(main())


# -- pushes -----------------------------------------------------------------------------------


def test_concurrent_pushes_share_pipelined_commits(pg_url: str) -> None:
    async def main() -> None:
        (s,) = await opened(pg_url, 1)
        try:
            group = await new_group(s)
            before = s.commits
            outcomes = await asyncio.gather(*(push(s, group, b"%d" % i) for i in range(300)))
            assert sorted(o.cursor for o in outcomes) == list(range(1, 301))
            # Queued together, they go in batches of PUSH_BATCH, one commit each.
            assert s.commits - before == -(-300 // PUSH_BATCH)
        finally:
            await s.close()

    run(main())


def test_a_refused_push_in_a_batch_does_not_undo_the_others(pg_url: str) -> None:
    async def main() -> None:
        (s,) = await opened(pg_url, 1)
        try:
            group = await new_group(s)
            before = s.commits
            results = await asyncio.gather(
                *(push(s, group, b"ok", quota=20) for _ in range(5)),
                push(s, GroupId.random(), b"nowhere"),
                push(s, group, b"over the quota", quota=20),
                *(push(s, group, b"ok", quota=20) for _ in range(5)),
                return_exceptions=True,
            )
            assert s.commits - before == 1
            assert isinstance(results[5], StorageError)
            assert results[6] == PushOutcome(0, NOW, quota_exceeded=True)
            good = [r for r in results[:5] + results[7:] if isinstance(r, PushOutcome)]
            assert sorted(r.cursor for r in good) == list(range(1, 11))
            assert await cursors(s, group) == list(range(1, 11))
        finally:
            await s.close()

    run(main())


async def _wait_for_lock_waiters(admin: psycopg.AsyncConnection[tuple[int]], count: int) -> None:
    """Until ``count`` sessions on this database wait for a lock (there is no event)."""
    deadline = time.monotonic() + DEADLINE / 2
    while True:
        cur = await admin.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        row = await cur.fetchone()
        if row is not None and row[0] >= count:
            return
        assert time.monotonic() < deadline, "the pushes never waited for the group's lock"
        await asyncio.sleep(0.01)


def test_a_push_losing_the_race_for_its_blob_id_gets_the_winners_cursor(pg_url: str) -> None:
    async def main() -> None:
        one, two = await opened(pg_url, 2)
        admin = await psycopg.AsyncConnection.connect(pg_url, autocommit=True)
        try:
            group = await new_group(one)
            blob, sender = BlobId.random(), DeviceId.random()
            # Hold the group's row: both relays' pushes check the id (unknown to both), then
            # queue for the row; the second to get it fails on the unique index.
            async with admin.transaction():
                await admin.execute(
                    "SELECT 1 FROM groups WHERE group_id = %s FOR UPDATE", (bytes(group),)
                )
                racing = [
                    asyncio.ensure_future(
                        push(s, group, b"same", blob_id=blob, sender=sender, now=NOW + i)
                    )
                    for i, s in enumerate((one, two))
                ]
                await _wait_for_lock_waiters(admin, 2)
            winner, loser = sorted(await asyncio.gather(*racing), key=lambda o: o.duplicate)
            assert not winner.duplicate
            assert loser == PushOutcome(1, winner.timestamp, duplicate=True)
            record = await one.get_group(group)
            assert record is not None
            assert (record.max_cursor, record.bytes_stored) == (1, 4)  # the loser took nothing
            assert (await push(two, group)).cursor == 2
        finally:
            await admin.close()
            await close_all([one, two])

    run(main())


def test_two_relays_pushing_to_several_groups_stay_gap_free(pg_url: str) -> None:
    async def main() -> None:
        one, two = await opened(pg_url, 2)
        try:
            groups = [await new_group(one) for _ in range(3)]
            outcomes = await asyncio.gather(
                *(push((one, two)[i % 2], groups[i % 3], b"%d" % i) for i in range(600))
            )
            for g, group in enumerate(groups):
                assert sorted(o.cursor for o in outcomes[g::3]) == list(range(1, 201))
                assert await cursors(two, group) == list(range(1, 201))
        finally:
            await close_all([one, two])

    run(main())


def test_cleanups_on_two_relays_at_once_count_each_blob_once(pg_url: str) -> None:
    async def main() -> None:
        one, two = await opened(pg_url, 2)
        try:
            a, b, c = DeviceId.random(), DeviceId.random(), DeviceId.random()
            group = await new_group(one, a, b, c)
            for i in range(90):  # every third expires at the cleanup
                await push(one, group, b"x" * 10, sender=a, expires_at=NOW + 1 + 10 * (i % 3))
            await one.ack(group, b, 90)
            await one.ack(group, c, 45)  # of the rest, those up to 45 are delivered
            first, second = await asyncio.gather(one.cleanup(NOW + 1), two.cleanup(NOW + 1))
            assert first.expired_blobs + second.expired_blobs == 30
            assert first.acked_blobs + second.acked_blobs == 30
            record = await one.get_group(group)
            assert record is not None
            assert record.bytes_stored == 300
            assert await one.stats() == (1, 30)
        finally:
            await close_all([one, two])

    run(main())


# -- the event listener -----------------------------------------------------------------------


async def _notify(url: str, *payloads: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for payload in payloads:
            await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))


def _blob_note(group: GroupId, blob: BlobId, sender: DeviceId) -> str:
    return json.dumps(
        {
            "k": "blob",
            "o": "another relay",
            "g": group.hex(),
            "b": blob.hex(),
            "c": 7,
            "s": sender.hex(),
            "t": NOW,
            "n": 3,
        }
    )


def test_malformed_notifications_are_ignored(pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    group, blob, sender = GroupId.random(), BlobId.random(), DeviceId.random()

    async def main() -> None:
        (s,) = await opened(pg_url, 1)
        try:
            heard = Heard(s)
            await _notify(
                pg_url,
                "not json",
                json.dumps({"o": "another relay"}),
                json.dumps({"o": "another relay", "k": "blob", "g": "00", "b": "zz"}),
                json.dumps({"o": "another relay", "k": "unknown kind", "g": group.hex()}),
                _blob_note(group, blob, sender),
            )
            assert await heard.next() == BlobStored(group, blob, 7, sender, NOW, 3)
            assert len(heard.events) == 1
        finally:
            await s.close()

    with caplog.at_level(logging.WARNING, logger="zerok.relay.postgres"):
        run(main())
    assert caplog.text.count("ignoring a malformed event") == 3


def test_a_failing_handler_does_not_stop_the_others(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    group, blob, sender = GroupId.random(), BlobId.random(), DeviceId.random()

    def fail(_: object) -> None:
        raise RuntimeError("handler bug")

    async def main() -> None:
        (s,) = await opened(pg_url, 1)
        try:
            s.subscribe(fail)
            heard = Heard(s)
            await _notify(pg_url, _blob_note(group, blob, sender))
            assert await heard.next() == BlobStored(group, blob, 7, sender, NOW, 3)
        finally:
            await s.close()

    with caplog.at_level(logging.ERROR, logger="zerok.relay.postgres"):
        run(main())
    assert "storage event handler failed" in caplog.text


def test_a_full_server_disk_is_storage_full() -> None:
    """PostgreSQL's disk_full (SQLSTATE 53100) reaches clients as STORAGE_FULL, not 3000."""
    assert isinstance(write_failure(psycopg.errors.DiskFull("no space")), StorageFullError)
    other = write_failure(psycopg.errors.SerializationFailure("retry"))
    assert not isinstance(other, StorageFullError)
    broken = write_failure(psycopg.errors.CheckViolation("a bug"))
    assert type(broken) is StorageError  # not worth retrying
    lost = write_failure(psycopg.errors.AdminShutdown("terminating connection"))
    assert isinstance(lost, StorageUnavailableError)


# -- faults -----------------------------------------------------------------------------------


def _terminate_backends(url: str) -> int:
    """What a server restart does to the relay: every backend of the test's own database
    ends (and only those: the server is shared). The number terminated."""
    name = url.rpartition("/")[2]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
        pids = [pid for pid, done in rows if done]
        # As after a restart: the old backends are gone (their goodbye sent) before the
        # next call. pg_terminate_backend only signals them.
        deadline = time.monotonic() + 5.0
        while admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
        ).fetchone() != (0,):
            assert time.monotonic() < deadline, "terminated backends still running after 5 s"
            time.sleep(0.01)
    return len(pids)


def test_dead_pooled_connections_cost_no_caller_an_error(pg_url: str) -> None:
    """After a restart the pool holds dead connections: the next read, write and push
    succeed all the same (each connection is checked when taken; a dead one has all the
    idle ones checked and replaced), and the listener comes back and resyncs."""

    async def main() -> None:
        (s,) = await opened(pg_url, 1)
        try:
            heard = Heard(s)
            device = DeviceId.random()
            group = await new_group(s, device)
            # Several connections in the pool, all used once.
            await asyncio.gather(*(s.get_group(group) for _ in range(8)))
            assert (await push(s, group, b"before")).cursor == 1
            assert _terminate_backends(pg_url) >= 3  # pooled ones and the listener
            assert await s.get_group(group) is not None  # a read
            await s.touch_device(group, device, "renamed", NOW + 1)  # a write
            pushed = await asyncio.gather(*(push(s, group, b"%d" % i) for i in range(3)))
            assert sorted(o.cursor for o in pushed) == [2, 3, 4]  # pushes
            assert s.dead_connections >= 1
            record = await s.get_device(group, device)
            assert record is not None and record.name == "renamed"
            assert isinstance(await heard.next(), Resync)  # the listener is back
        finally:
            await s.close()

    run(main())
