"""Retention: blobs go when their TTL passes or when every live device has ACKed them.

The relays run in this process on a ``ManualClock`` with no cleanup of their own (once an
hour): a test moves the clock past a TTL and runs the cleanup pass itself, so that a blob
that must stay is seen to stay after a pass that certainly ran after the ACKs.
"""

from __future__ import annotations

import pytest

from tests.relay.support import RelayLauncher, clients, pull_all, push, revoke, run
from zerok.crypto import DeviceIdentity
from zerok.testing import InProcessRelay, ManualClock, TestGroup
from zerok.transport.connection import RelayConnection
from zerok.wire import Ack

NO_CLEANUP = ("--cleanup-interval", "1h")  # the tests run every pass themselves


@pytest.fixture(scope="module")
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(scope="module")
def relay(module_launcher: RelayLauncher, clock: ManualClock) -> InProcessRelay:
    return module_launcher.start(*NO_CLEANUP, clock=clock)


async def cursors(conn: RelayConnection) -> list[int]:
    return [b.cursor for b in await pull_all(conn)]


async def cleaned(relay: InProcessRelay, conn: RelayConnection) -> list[int]:
    """Run one cleanup pass, then the cursors ``conn`` can still PULL."""
    await relay.cleanup_once()
    return await cursors(conn)


async def ack(conn: RelayConnection, cursor: int) -> None:
    assert await conn.request(Ack(cursor=cursor)) == Ack(cursor=cursor)


def test_blob_is_gone_after_its_ttl(relay: InProcessRelay, clock: ManualClock) -> None:
    async def scenario() -> None:
        keys = TestGroup()
        async with clients(relay.url) as pool:
            conn = await pool.open(keys)
            other = await pool.open(keys)  # never ACKs: only the TTL can remove anything
            short = await push(conn, b"short-lived", ttl=1)
            long = await push(conn, b"long-lived")
            assert [b.blob_id for b in await pull_all(other)] == [short.blob_id, long.blob_id]
            clock.advance(0.999)
            assert await cleaned(relay, other) == [short.cursor, long.cursor]  # not yet
            clock.advance(0.001)
            assert await cleaned(relay, other) == [long.cursor]
            # The cursor is not reused and the group goes on.
            assert (await push(conn, b"next")).cursor == 3
            assert await cursors(other) == [2, 3]

    run(scenario())


def test_ttl_is_capped_by_max_ttl(launcher: RelayLauncher) -> None:
    clock = ManualClock()
    relay = launcher.start(*NO_CLEANUP, "--max-ttl", "1", "--default-ttl", "1", clock=clock)

    async def scenario() -> None:
        async with clients(relay.url) as pool:
            conn = await pool.open(TestGroup())
            assert conn.welcome is not None and conn.welcome.limits.max_ttl == 1
            await push(conn, b"asks for a day", ttl=86400)
            clock.advance(0.999)
            assert await cleaned(relay, conn) == [1]
            clock.advance(0.001)
            assert await cleaned(relay, conn) == []

    run(scenario())


def test_blob_acked_by_every_device_is_gone_but_not_before(relay: InProcessRelay) -> None:
    async def scenario() -> None:
        keys = TestGroup()
        async with clients(relay.url) as pool:
            a = await pool.open(keys)
            b = await pool.open(keys)
            c = await pool.open(keys)
            for i in range(3):
                await push(a, f"blob {i}".encode())  # default TTL: 7 days
            await ack(a, 3)
            await ack(b, 3)
            await ack(c, 1)  # C is behind
            # The pass removes blob 1 (acked by everyone) and keeps blobs 2 and 3, which C
            # has not acknowledged.
            assert await cleaned(relay, a) == [2, 3]
            await ack(c, 3)
            assert await cleaned(relay, a) == []
            assert (await push(b, b"new")).cursor == 4
            assert await cursors(a) == [4]

    run(scenario())


def test_lone_device_blobs_wait_for_the_devices_it_pairs(relay: InProcessRelay) -> None:
    async def scenario() -> None:
        keys = TestGroup()
        async with clients(relay.url) as pool:
            alone = await pool.open(keys)
            await push(alone, b"before pairing")
            await ack(alone, 1)
            # Acknowledged by every device of the group so far, yet kept for the next one.
            assert await cleaned(relay, alone) == [1]
            paired = await pool.open(keys)
            assert [b.ciphertext for b in await pull_all(paired)] == [b"before pairing"]
            await ack(paired, 1)
            assert await cleaned(relay, alone) == []

    run(scenario())


def test_revoked_device_does_not_hold_blobs_back(relay: InProcessRelay) -> None:
    async def scenario() -> None:
        keys = TestGroup()
        lost = DeviceIdentity.generate()
        async with clients(relay.url) as pool:
            a = await pool.open(keys)
            b = await pool.open(keys)
            phone = await pool.open(keys, lost)
            for i in range(2):
                await push(a, f"blob {i}".encode())
            await ack(a, 2)
            await ack(b, 2)
            await ack(phone, 1)
            await phone.close()
            assert await cleaned(relay, a) == [2]  # the phone holds blob 2 back
            await revoke(a, keys, lost)
            assert await cleaned(relay, a) == []

    run(scenario())


def test_ack_of_a_future_cursor_does_not_acknowledge_future_blobs(relay: InProcessRelay) -> None:
    async def scenario() -> None:
        keys = TestGroup()
        async with clients(relay.url) as pool:
            a = await pool.open(keys)
            b = await pool.open(keys)
            await push(a, b"blob 1")
            await ack(b, 1_000_000)  # counts as "up to 1", the highest cursor so far
            await ack(a, 1)
            assert await cleaned(relay, a) == []
            await push(a, b"blob 2")
            await push(a, b"blob 3")
            await ack(a, 3)
            assert await cleaned(relay, a) == [2, 3]  # not acknowledged by B
            await ack(b, 3)
            assert await cleaned(relay, a) == []

    run(scenario())
