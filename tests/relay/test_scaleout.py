"""Several relays on one PostgreSQL database behave as one relay.

Device A sits on relay 1, device B on relay 2: they see one gap-free cursor sequence,
live NOTIFYs both ways, and revocations on either relay.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.relay.support import (
    RelayLauncher,
    clients,
    next_message,
    pull_all,
    push,
    revoke,
    run,
    wait_closed,
)
from zerok.crypto import DeviceIdentity
from zerok.errors import RemoteError
from zerok.relay.storage.postgres import LISTENER_NAME
from zerok.testing import PG_ADMIN_URL, TestGroup
from zerok.wire import ErrorCode, Membership, Notify


@pytest.fixture
def pg_launcher(tmp_path: Path) -> Iterator[RelayLauncher]:
    """Relays on PostgreSQL only: sharing a database is what is tested here."""
    launcher = RelayLauncher(tmp_path, "postgres")
    try:
        yield launcher
    finally:
        launcher.close()


def _start_pair(launcher: RelayLauncher) -> tuple[str, str]:
    """Two relays on one fresh database."""
    shared = launcher.base / "shared.db"  # names the database, as a path would for SQLite
    one = launcher.start(database=shared)
    two = launcher.start(database=shared)
    return one.url, two.url


def test_live_delivery_both_ways_across_relays(pg_launcher: RelayLauncher) -> None:
    url1, url2 = _start_pair(pg_launcher)

    async def scenario() -> None:
        keys = TestGroup()
        async with clients(url1) as on1, clients(url2) as on2:
            a = await on1.open(keys, name="a")
            b = await on2.open(keys, name="b")
            ack = await push(a, b"from relay 1")
            note = await next_message(b)
            assert isinstance(note, Notify) and note.cursor == ack.cursor == 1
            back = await push(b, b"from relay 2")
            note = await next_message(a)
            assert isinstance(note, Notify) and note.cursor == back.cursor == 2
            assert [blob.cursor for blob in await pull_all(b)] == [1, 2]

    run(scenario())


def test_concurrent_pushes_through_both_relays_are_gap_free(pg_launcher: RelayLauncher) -> None:
    url1, url2 = _start_pair(pg_launcher)

    async def scenario() -> None:
        keys = TestGroup()
        async with clients(url1) as on1, clients(url2) as on2:
            senders = [await on1.open(keys) for _ in range(4)] + [
                await on2.open(keys) for _ in range(4)
            ]
            acks = await asyncio.gather(*(push(senders[i % 8], b"%d" % i) for i in range(200)))
            assert sorted(a.cursor for a in acks) == list(range(1, 201))
            reader = await on2.open(keys)
            blobs = await pull_all(reader)
            assert [b.cursor for b in blobs] == list(range(1, 201))
            assert sorted(b.ciphertext for b in blobs) == sorted(b"%d" % i for i in range(200))

    run(scenario())


def test_revocation_on_one_relay_holds_on_the_other(pg_launcher: RelayLauncher) -> None:
    url1, url2 = _start_pair(pg_launcher)

    async def scenario() -> None:
        keys = TestGroup()
        lost = DeviceIdentity.generate()
        async with clients(url1) as on1, clients(url2) as on2:
            a = await on1.open(keys)
            b = await on2.open(keys, lost)
            await revoke(a, keys, lost)
            # The other relay hears of the entry, tells the device, then ends its session.
            notice = await next_message(b, skip=())
            assert isinstance(notice, Membership), notice
            assert keys.entries[notice.start :] == notice.entries
            closed = await wait_closed(b)
            assert closed.code == ErrorCode.DEVICE_REVOKED
            with pytest.raises(RemoteError) as refused:
                await on2.open(keys, lost)
            assert refused.value.code == ErrorCode.DEVICE_REVOKED

    run(scenario())


def test_a_relay_killed_and_restarted_catches_up(pg_launcher: RelayLauncher) -> None:
    shared = pg_launcher.base / "shared.db"
    one = pg_launcher.start(database=shared)
    two = pg_launcher.start(database=shared, process=True)  # to be SIGKILLed

    async def scenario() -> None:
        keys = TestGroup()
        async with clients(one.url) as on1:
            a = await on1.open(keys)
            for i in range(20):
                await push(a, b"before %d" % i)
            two.sigkill()
            two.wait_exit(10)
            for i in range(20):
                await push(a, b"while down %d" % i)
            restarted = pg_launcher.start(database=shared)
            async with clients(restarted.url) as again:
                b = await again.open(keys)
                assert b.welcome is not None and b.welcome.max_cursor == 40
                assert [x.cursor for x in await pull_all(b)] == list(range(1, 41))
                await push(a, b"after")
                note = await next_message(b)
                assert isinstance(note, Notify) and note.cursor == 41

    run(scenario())


def test_notifications_missed_while_the_listener_reconnects_are_caught_up(
    pg_launcher: RelayLauncher,
) -> None:
    url1, url2 = _start_pair(pg_launcher)

    async def scenario() -> None:
        keys = TestGroup()
        async with clients(url1) as on1, clients(url2) as on2:
            a = await on1.open(keys)
            b = await on2.open(keys)
            await push(a, b"warm-up")
            assert isinstance(await next_message(b), Notify)
            # Cut every relay's LISTEN connection: both reconnect after about a second.
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
                killed = admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = %s",
                    (LISTENER_NAME,),
                ).fetchone()
            assert killed is not None and killed[0] == 2
            for i in range(5):  # pushed while relay 2 may not be listening
                await push(a, b"gap %d" % i)
            seen: set[int] = set()
            deadline = time.monotonic() + 15
            while seen != {2, 3, 4, 5, 6}:
                assert time.monotonic() < deadline, f"NOTIFYs seen: {sorted(seen)}"
                note = await next_message(b, timeout=deadline - time.monotonic())
                if isinstance(note, Notify):
                    seen.add(note.cursor)

    run(scenario())
