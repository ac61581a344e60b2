"""A relay that loses, replays or rolls back blobs: devices notice (IntegrityAlert), ask
for what is missing, push it again, and end with the same blobs.

The relay is the real one, in this process; what a faulty or hostile relay would do is
done to its SQLite database through its own storage writer."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

from tests.client.conftest import EventLog, Fleet, connected, pair, start_relay
from tests.client.test_resilience import fast_client
from tests.relay.support import RelayLauncher, run
from zerok.client import Blob, Connected, IntegrityAlert, Role, SyncClient
from zerok.client.membership import Membership
from zerok.crypto.entry import TicketKey
from zerok.relay.storage.sqlite import SQLiteStorage
from zerok.testing import InProcessRelay
from zerok.transport import RelayConnection
from zerok.wire import BlobId, GroupId

DB_FILES = ("relay.db", "relay.db-wal", "relay.db-shm")


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def on_relay_db(relay: InProcessRelay, op: Callable[[sqlite3.Connection], object]) -> None:
    """Run ``op`` on the relay's database, on its storage's writer thread."""

    async def call(server: object) -> None:
        storage = server.storage  # type: ignore[attr-defined]
        assert isinstance(storage, SQLiteStorage)
        await storage._write(op)

    await relay.acall(call)


def drop_blob(group: GroupId, blob_id: BlobId) -> Callable[[sqlite3.Connection], object]:
    """The blob vanishes, row and all (a relay that lost it, or hides it)."""
    return lambda db: db.execute(
        "DELETE FROM blobs WHERE group_id = ? AND blob_id = ?", (group, blob_id)
    )


def serve_again(group: GroupId, blob_id: BlobId) -> Callable[[sqlite3.Connection], object]:
    """The blob, byte for byte, moved to a new cursor past the group's last one."""

    def op(db: sqlite3.Connection) -> None:
        row = db.execute(
            "SELECT cursor, sender, size, ciphertext, created_at, expires_at FROM blobs"
            " WHERE group_id = ? AND blob_id = ?",
            (group, blob_id),
        ).fetchone()
        (top,) = db.execute("SELECT max_cursor FROM groups WHERE group_id = ?", (group,)).fetchone()
        db.execute("DELETE FROM blobs WHERE group_id = ? AND blob_id = ?", (group, blob_id))
        db.execute(
            "INSERT INTO blobs (group_id, cursor, blob_id, sender, size, ciphertext, created_at,"
            " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (group, top + 1, blob_id, *row[1:]),
        )
        db.execute("UPDATE groups SET max_cursor = ? WHERE group_id = ?", (top + 1, group))

    return op


async def everything(client: SyncClient) -> list[Blob]:
    """Every blob of the group as the relay has it now (own ones too)."""
    blobs: list[Blob] = []
    while True:
        page = await client.pull(after=blobs[-1].cursor if blobs else 0, limit=1000)
        blobs += page.blobs
        if not page.has_more:
            return blobs


def test_a_lost_blob_is_reported_asked_for_and_pushed_again(
    relay: InProcessRelay, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b = fleet.new("a"), fleet.new("b")
            await pair(a, b, [relay.url])
            await connected(a, b)
            group = a.group_id
            assert group is not None
            sent = [await a.push(f"blob {n}".encode()) for n in (1, 2, 3)]
            await on_relay_db(relay, drop_blob(group, sent[1].blob_id))
            async with EventLog(b) as log_b:
                got = (await b.pull()).blobs
                assert [x.data for x in got] == [b"blob 1", b"blob 3"]
                [gap] = log_b.of(IntegrityAlert)
                assert (gap.kind, gap.sender, gap.first, gap.last) == ("gap", a.device_id, 2, 2)
                assert gap.relay == relay.url and "missing" in gap.detail
                # One repair request went out; nothing of it reaches an app.
                await _until(lambda: b.pending_count == 0)
                async with EventLog(a) as log_a:
                    assert (await a.pull()).blobs == []
                    await _until(lambda: a.pending_count == 0)  # the re-push, acknowledged
                assert not log_a.of(IntegrityAlert)
                again = (await b.pull()).blobs
                assert [(x.blob_id, x.data) for x in again] == [(sent[1].blob_id, b"blob 2")]
                kinds = [(e.kind, e.first) for e in log_b.of(IntegrityAlert)]
                assert kinds == [("gap", 2), ("recovered", 2)]
                assert (await b.pull()).blobs == []  # asked once: nothing more comes
            # Every device, and one that joins now, ends with the same three blobs.
            c = fleet.new("c")
            await c.join((await a.create_invite()).url)
            await connected(c)
            assert sorted(x.data for x in (await c.pull()).blobs) == [
                b"blob 1",
                b"blob 2",
                b"blob 3",
            ]

    run(scenario())


def test_a_replayed_blob_is_reported_and_not_delivered_twice(
    relay: InProcessRelay, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b = fleet.new("a"), fleet.new("b")
            await pair(a, b, [relay.url])
            await connected(a, b)
            group = a.group_id
            assert group is not None
            first = await a.push(b"once")
            await a.push(b"twice?")
            assert [x.data for x in (await b.pull()).blobs] == [b"once", b"twice?"]
            await on_relay_db(relay, serve_again(group, first.blob_id))
            async with EventLog(b) as log:
                assert (await b.pull()).blobs == []
                later = await a.push(b"after")
                assert [x.cursor for x in (await b.pull()).blobs] == [later.cursor]
            [replay] = log.of(IntegrityAlert)
            assert (replay.kind, replay.sender, replay.first) == ("replay", a.device_id, 1)
            assert "ignored" in replay.detail

    run(scenario())


def _restarter(
    launcher: RelayLauncher, first: InProcessRelay, backup: Path
) -> Callable[[InProcessRelay, bool], InProcessRelay]:
    """``restart(relay, restore)``: stop the relay and start it again on the same port and
    database, having first copied its database files to ``backup`` (restore False), or
    put the backup's copies back in their place (restore True)."""
    port = int(first.url.rstrip("/").rsplit(":", 1)[1])
    database = first.workdir / "data" / "relay.db"

    def restart(relay: InProcessRelay, restore: bool) -> InProcessRelay:
        relay.stop()
        source, target = (backup, database.parent) if restore else (database.parent, backup)
        target.mkdir(exist_ok=True)
        for name in DB_FILES:
            (target / name).unlink(missing_ok=True)
            if (source / name).exists():
                shutil.copy(source / name, target / name)
        return start_relay(launcher, port=port, database=database)

    return restart


def test_a_relay_rolled_back_to_a_backup_is_noticed_and_healed(
    launcher: RelayLauncher, tmp_path: Path
) -> None:
    relay = start_relay(launcher)
    restart = _restarter(launcher, relay, tmp_path / "backup")

    async def scenario() -> None:
        nonlocal relay
        async with Fleet(tmp_path) as fleet:
            a, b = fast_client(fleet, "a"), fast_client(fleet, "b")
            await pair(a, b, [relay.url])
            await connected(a, b)
            kept = [await a.push(b"a1"), await b.push(b"b1")]
            await a.pull()
            await b.pull()
            relay = await asyncio.to_thread(restart, relay, False)  # the backup is taken here
            await connected(a, b)
            lost = [await a.push(b"a2"), await a.push(b"a3"), await b.push(b"b2")]
            assert {x.data for x in (await a.pull()).blobs} == {b"b2"}
            assert {x.data for x in (await b.pull()).blobs} == {b"a2", b"a3"}
            saved = a.last_cursor
            async with EventLog(a) as log_a, EventLog(b) as log_b:
                relay = await asyncio.to_thread(restart, relay, True)  # ... and restored
                roll_a = await log_a.wait_for(IntegrityAlert, lambda e: e.kind == "rollback")
                roll_b = await log_b.wait_for(IntegrityAlert, lambda e: e.kind == "rollback")
                await _until(lambda: a.pending_count == b.pending_count == 0)
                # Read again from the start: nothing new for the app, no false alarm.
                assert (await a.pull()).blobs == []
                assert (await b.pull()).blobs == []
            assert (roll_a.sender, roll_a.first, roll_a.last) == (None, 3, saved)
            assert roll_a.relay == relay.url and roll_b.relay == relay.url
            assert not [e for e in log_a.of(IntegrityAlert) if e.kind != "rollback"]
            # The relay has every blob again: what it kept, and what the devices pushed again.
            stored = {x.blob_id for x in await everything(a)}
            assert stored == {r.blob_id for r in kept + lost}
            c = fast_client(fleet, "c")
            await c.join((await a.create_invite()).url)
            await connected(c)
            got = sorted(x.data for x in await everything(c))
            assert got == [b"a1", b"a2", b"a3", b"b1", b"b2"]

    run(scenario())


def test_a_device_back_after_the_relays_cursor_climbed_again_still_sees_the_rollback(
    launcher: RelayLauncher, tmp_path: Path
) -> None:
    """The relay is restored; other devices reconnect first and push enough to take its
    cursor past the one a late device saved. That device finds another blob where it
    received its last one, reads the group again, and ends with every blob."""
    relay = start_relay(launcher)
    restart = _restarter(launcher, relay, tmp_path / "backup")

    async def scenario() -> None:
        nonlocal relay
        async with Fleet(tmp_path) as fleet:
            a, b, late = fast_client(fleet, "a"), fast_client(fleet, "b"), fast_client(fleet, "c")
            await pair(a, b, [relay.url])
            await late.join((await a.create_invite()).url)
            await connected(a, b, late)
            await a.push(b"a1")
            await late.pull()
            relay = await asyncio.to_thread(restart, relay, False)  # the backup
            await connected(a, b, late)
            await a.push(b"a2")
            await b.push(b"b1")
            assert sorted(x.data for x in (await late.pull()).blobs) == [b"a2", b"b1"]
            saved = late.last_cursor
            await late.close()
            relay = await asyncio.to_thread(restart, relay, True)  # ... restored
            await connected(a, b)
            for i in range(4):  # the others' new blobs take the cursor past ``saved``
                await b.push(b"b-after-%d" % i)
            await _until(lambda: a.pending_count == b.pending_count == 0)
            assert (await a.pull()).blobs  # a has caught up
            assert max(x.cursor for x in await everything(a)) > saved
            async with EventLog(late) as events:
                await connected(late)
                rollback = await events.wait_for(IntegrityAlert, lambda e: e.kind == "rollback")
                assert rollback.last == saved
                await _until(lambda: late.pending_count == 0)
            got = sorted(x.data for x in (await late.pull()).blobs)
            assert got == sorted([b"b-after-%d" % i for i in range(4)])
            # It asked every sender for what it had got from them: they push it again.
            async with EventLog(a) as log_a, EventLog(b) as log_b:
                await a.pull()
                await b.pull()
                await _until(lambda: a.pending_count == b.pending_count == 0)
            # Blobs pushed again may arrive out of their senders' order (reorder) but never
            # as another history.
            kinds = {e.kind for e in log_a.of(IntegrityAlert) + log_b.of(IntegrityAlert)}
            assert kinds <= {"reorder", "recovered", "gap"}, kinds
            # Every blob is at the relay again, the late device's view included.
            c = fast_client(fleet, "d")
            await c.join((await a.create_invite()).url)
            await connected(c)
            every = sorted(x.data for x in await everything(c))
            assert every == sorted([b"a1", b"a2", b"b1", *[b"b-after-%d" % i for i in range(4)]])

    run(scenario())


def test_a_blob_that_does_not_open_is_reported_and_skipped(
    relay: InProcessRelay, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b = fleet.new("a"), fleet.new("b")
            await pair(a, b, [relay.url])
            await connected(a, b)
            group = a.group_id
            assert group is not None
            bad = await a.push(b"to be damaged")
            await a.push(b"fine")

            def damage(db: sqlite3.Connection) -> None:
                where = (group, bad.blob_id)
                (sealed,) = db.execute(
                    "SELECT ciphertext FROM blobs WHERE group_id = ? AND blob_id = ?", where
                ).fetchone()
                flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])  # its tag no longer matches
                db.execute(
                    "UPDATE blobs SET ciphertext = ? WHERE group_id = ? AND blob_id = ?",
                    (flipped, *where),
                )

            await on_relay_db(relay, damage)
            async with EventLog(b) as log:
                assert [x.data for x in (await b.pull()).blobs] == [b"fine"]
            [alert] = log.of(IntegrityAlert)
            assert (alert.kind, alert.sender, alert.first) == ("undecryptable", a.device_id, 1)
            assert b.last_cursor == 2  # skipped, not retried for ever

    run(scenario())


def test_a_relay_presenting_a_forked_log_is_left_for_the_next(
    launcher: RelayLauncher, tmp_path: Path
) -> None:
    """A relay whose log has another entry at a position this device holds: a "fork"
    alert, and the device syncs through its other relay."""
    liar, honest = start_relay(launcher), start_relay(launcher)

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a = fleet.new("a")
            await a.create_group([honest.url])
            await a.create_invite()  # entry 1 at the honest relay (and in A's log)
            members = a._members
            assert members is not None
            # The liar registered the group with another entry 1, signed by A's key too
            # (say, A's older state, or an equivocating A restored from a backup).
            genesis_only = Membership.start(a._identity, members.entries[:1])
            other = genesis_only.invite(
                TicketKey(bytes(32)), role=Role.MEMBER, expires_at=a._clock() + 60_000, now=1
            )
            conn = await RelayConnection.open(
                liar.url, a._identity, members.group_id, entries=[members.entries[0], other]
            )
            await conn.close()
            a.set_relays([liar.url, honest.url])
            async with EventLog(a) as log:
                await connected(a)
                fork = await log.wait_for(IntegrityAlert, lambda e: e.kind == "fork")
                assert (fork.sender, fork.first, fork.relay) == (None, 1, liar.url)
                assert log.of(Connected) == [Connected(honest.url)]
            assert (await a.push(b"through the honest relay")).cursor == 1

    run(scenario())


def test_a_relay_that_lost_log_entries_gets_them_back_from_the_devices(
    launcher: RelayLauncher, tmp_path: Path
) -> None:
    """Restored from a backup taken before B joined: B's first HELLO is refused (not
    enrolled) and the second brings the entries; A's log is ahead and heals it too."""
    relay = start_relay(launcher)
    port = int(relay.url.rstrip("/").rsplit(":", 1)[1])
    database = relay.workdir / "data" / "relay.db"
    backup = tmp_path / "backup"

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b = fast_client(fleet, "a"), fast_client(fleet, "b")
            await a.create_group([relay.url])
            await connected(a)
            await a.close()
            await asyncio.to_thread(relay.stop)
            backup.mkdir()
            for name in DB_FILES:
                if (database.parent / name).exists():
                    shutil.copy(database.parent / name, backup / name)
            again = await asyncio.to_thread(start_relay, launcher, port=port, database=database)
            await b.join((await a.create_invite()).url)
            await asyncio.to_thread(again.stop)
            for name in DB_FILES:
                (database.parent / name).unlink(missing_ok=True)
                if (backup / name).exists():
                    shutil.copy(backup / name, database.parent / name)
            await asyncio.to_thread(start_relay, launcher, port=port, database=database)
            await connected(b)
            await connected(a)
            assert a.log_head == b.log_head
            sent = await b.push(b"from the device the relay had forgotten")
            assert [x.blob_id for x in (await a.pull()).blobs] == [sent.blob_id]

    run(scenario())
