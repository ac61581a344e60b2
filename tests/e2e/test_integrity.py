"""Issue 12 end to end: a relay that drops a blob, replays blobs, or comes back from an
earlier copy of its database. Three devices read live (``changes()``, as apps do, which is
also when they heal); each fault is seen by the devices it concerns, named (sender and
range, or the rollback's cursors), healed, and every device ends with the same blobs.

The faults are made in the relay's SQLite file itself: through SQLite for the relay in this
process (so its locks are honoured), and as files for ``zerok relay`` processes, which are
killed and restarted on their restored files.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

from tests.client.conftest import EventLog, Fleet, connected, start_relay
from tests.e2e.conftest import (
    FAST,
    WAIT,
    Inbox,
    copy_database,
    database_of,
    open_db,
    stored_blobs,
    transaction,
)
from tests.relay.support import RelayLauncher, run
from zerok.client import Blob, IntegrityAlert, PushResult, SyncClient
from zerok.testing import InProcessRelay, RelayProcess
from zerok.wire import BlobId, GroupId

DB_FILES = ("relay.db", "relay.db-wal", "relay.db-shm")


async def group_of_three(fleet: Fleet, url: str) -> tuple[SyncClient, SyncClient, SyncClient]:
    a, b, c = (fleet.new(name, timing=FAST) for name in ("a", "b", "c"))
    await a.create_group([url])
    await b.join((await a.create_invite()).url)
    await c.join((await a.create_invite()).url)
    return a, b, c


def others(sent: dict[SyncClient, list[PushResult]], device: SyncClient) -> set[BlobId]:
    return {r.blob_id for d, results in sent.items() if d is not device for r in results}


async def converged(
    inboxes: dict[SyncClient, Inbox], sent: dict[SyncClient, list[PushResult]]
) -> None:
    """Every device received every blob of the others, each once."""
    for device, inbox in inboxes.items():
        await inbox.wait_for(others(sent, device))
        assert len(inbox.blobs) == len(inbox.ids) == len(others(sent, device)), device.device_name


def alerts(log: EventLog) -> list[tuple[str, object, int, int]]:
    return [(e.kind, e.sender, e.first, e.last) for e in log.of(IntegrityAlert)]


async def everything(device: SyncClient) -> list[Blob]:
    """Every data blob the relay holds for the group, as a device lists them (own ones
    too; repair requests are not listed)."""
    blobs: list[Blob] = []
    while True:
        page = await device.pull(after=blobs[-1].cursor if blobs else 0, limit=1000)
        blobs += page.blobs
        if not page.has_more:
            return blobs


async def until(condition: Callable[[], bool]) -> None:
    """Polled: a saved cursor is nothing a client announces."""
    async with asyncio.timeout(WAIT):
        while not condition():
            await asyncio.sleep(0.005)


# -- what a faulty or hostile relay does to its database --------------------------------------


def drop(db: sqlite3.Connection, group: GroupId, blob_id: BlobId) -> None:
    db.execute("DELETE FROM blobs WHERE group_id = ? AND blob_id = ?", (group, blob_id))


def serve_again(db: sqlite3.Connection, group: GroupId, blob_id: BlobId, as_id: BlobId) -> int:
    """A stored blob's row, byte for byte, at a new cursor past the group's last, under
    ``as_id`` (its own id: the row moves there); its new cursor."""
    row = db.execute(
        "SELECT sender, size, ciphertext, created_at, expires_at FROM blobs"
        " WHERE group_id = ? AND blob_id = ?",
        (group, blob_id),
    ).fetchone()
    if as_id == blob_id:
        drop(db, group, blob_id)
    (top,) = db.execute("SELECT max_cursor FROM groups WHERE group_id = ?", (group,)).fetchone()
    db.execute(
        "INSERT INTO blobs (group_id, cursor, blob_id, sender, size, ciphertext, created_at,"
        " expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (group, top + 1, as_id, *row),
    )
    db.execute("UPDATE groups SET max_cursor = ? WHERE group_id = ?", (top + 1, group))
    return int(top) + 1


# -- a dropped blob, replayed blobs -----------------------------------------------------------


def test_a_dropped_blob_is_noticed_asked_for_and_healed(
    relay: InProcessRelay, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b, c = await group_of_three(fleet, relay.url)
            group = a.group_id
            assert group is not None
            await connected(a)
            sent = {a: [await a.push(b"a%d" % n) for n in (1, 2, 3)]}
            with transaction(database_of(relay)) as db:
                drop(db, group, sent[a][1].blob_id)
            async with (
                EventLog(b) as log_b,
                EventLog(c) as log_c,
                Inbox(a) as inbox_a,
                Inbox(b) as inbox_b,
                Inbox(c) as inbox_c,
            ):
                await connected(b, c)
                sent[b], sent[c] = [await b.push(b"b1")], [await c.push(b"c1")]
                await converged({a: inbox_a, b: inbox_b, c: inbox_c}, sent)
            for log in (log_b, log_c):  # each saw the hole, asked, and got the blob
                assert alerts(log) == [
                    ("gap", a.device_id, 2, 2),
                    ("recovered", a.device_id, 2, 2),
                ]
            # Pushed again by A under its id, the blob is on the relay for good.
            assert set(stored_blobs(database_of(relay), group)) >= {
                r.blob_id for results in sent.values() for r in results
            }

    run(scenario())


def test_replayed_blobs_are_noticed_and_never_delivered_twice(
    relay: InProcessRelay, tmp_path: Path
) -> None:
    """The relay serves A's first blob again under another id (the AEAD binds the id: it
    does not open), and A's second blob again under its own id after retiring it (a
    replay: not delivered twice)."""

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b, c = await group_of_three(fleet, relay.url)
            group = a.group_id
            assert group is not None
            async with (
                EventLog(b) as log_b,
                EventLog(c) as log_c,
                Inbox(b) as inbox_b,
                Inbox(c) as inbox_c,
            ):
                inboxes = {b: inbox_b, c: inbox_c}
                await connected(a, b, c)
                sent = {a: [await a.push(b"x1"), await a.push(b"x2")]}
                await converged(inboxes, sent)
                x1, x2 = (r.blob_id for r in sent[a])
                with transaction(database_of(relay)) as db:
                    copied = serve_again(db, group, x1, BlobId.random())
                    moved = serve_again(db, group, x2, x2)
                sent[a].append(await a.push(b"x3"))  # its NOTIFY has everyone read on
                await converged(inboxes, sent)
                for log in (log_b, log_c):
                    await log.wait_for(IntegrityAlert, lambda e: e.kind == "replay")
            for log in (log_b, log_c):
                assert alerts(log) == [
                    ("undecryptable", a.device_id, copied, copied),
                    ("replay", a.device_id, 2, 2),
                ]
                assert [e.relay for e in log.of(IntegrityAlert)] == [relay.url] * 2
            for inbox in inboxes.values():
                assert [x.data for x in inbox.blobs] == [b"x1", b"x2", b"x3"]
                assert moved not in {x.cursor for x in inbox.blobs}

    run(scenario())


# -- a relay restored from an earlier copy ----------------------------------------------------


def restore(database: Path, backup: Path) -> None:
    for name in DB_FILES:
        (database.parent / name).unlink(missing_ok=True)
        if (backup.parent / name).exists():
            shutil.copyfile(backup.parent / name, database.parent / name)


def port_of(relay: RelayProcess) -> int:
    assert relay.address is not None
    return int(relay.address.rsplit(":", 1)[1])


def test_a_relay_restored_from_an_earlier_copy_is_noticed_and_healed(
    launcher: RelayLauncher, tmp_path: Path
) -> None:
    """Copied mid-run, SIGKILLed, restored from the copy, restarted: the relay has lost
    every blob pushed since the copy. Each device sees the rollback, reads again from the
    start and pushes what it keeps again; each ends with every blob once."""
    relay = start_relay(launcher, process=True)
    database = database_of(relay)

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet, contextlib.AsyncExitStack() as stack:
            devices = await group_of_three(fleet, relay.url)
            logs = {d: await stack.enter_async_context(EventLog(d)) for d in devices}
            inboxes = {d: await stack.enter_async_context(Inbox(d)) for d in devices}
            await connected(*devices)
            sent = {d: [await d.push(d.device_name.encode() + b"1")] for d in devices}
            await converged(inboxes, sent)
            backup = await asyncio.to_thread(copy_database, database, tmp_path / "backup")
            for d in devices:
                sent[d].append(await d.push(d.device_name.encode() + b"2"))
            await converged(inboxes, sent)
            # Each confirmed what it received (not its own last blob: it never fetches it).
            await until(lambda: all(d.last_cursor >= inboxes[d].top for d in devices))
            saved = {d: d.last_cursor for d in devices}

            relay.sigkill()
            await asyncio.to_thread(relay.wait_exit, WAIT)
            restore(database, backup)
            again = await asyncio.to_thread(
                start_relay, launcher, port=port_of(relay), database=database, process=True
            )
            for device, log in logs.items():
                rollback = await log.wait_for(IntegrityAlert, lambda e: e.kind == "rollback")
                assert (rollback.sender, rollback.first, rollback.last) == (None, 4, saved[device])
                assert rollback.relay == again.url
            await until(lambda: all(d.pending_count == 0 for d in devices))  # pushed again
            await converged(inboxes, sent)  # and nothing delivered twice
            every = {r.blob_id for results in sent.values() for r in results}
            for device in devices:  # the relay has every blob again (and repair requests)
                assert {b.blob_id for b in await everything(device)} == every
            # Read again from the start without alarm. A lost blob pushed again may land past
            # the cursor a device had reached: then it is reported as a replay (and ignored).
            lost = {("replay", d.device_id, 2, 2) for d in devices}
            for log in logs.values():
                assert alerts(log)[0][0] == "rollback"
                assert set(alerts(log)[1:]) <= lost

    run(scenario())


def test_reading_a_relays_database_loses_nothing(launcher: RelayLauncher, tmp_path: Path) -> None:
    """An operator's query (a backup, a look at the blobs) while ``zerok relay`` runs, then
    a crash: every blob the relay acknowledged is still there when it restarts."""
    relay = start_relay(launcher, process=True)
    database = database_of(relay)

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            device = fleet.new("a", timing=FAST)
            await device.create_group([relay.url])
            await connected(device)
            first = await device.push(b"before the query")
            with open_db(database) as db:  # another process, through SQLite
                assert db.execute("SELECT count(*) FROM blobs").fetchone() == (1,)
            second = await device.push(b"after the query")
            relay.sigkill()
            await asyncio.to_thread(relay.wait_exit, WAIT)
            await asyncio.to_thread(
                start_relay, launcher, port=port_of(relay), database=database, process=True
            )
            await connected(device)
            listed = {x.blob_id for x in (await device.pull(after=0)).blobs}
            assert listed == {first.blob_id, second.blob_id}

    run(scenario())
