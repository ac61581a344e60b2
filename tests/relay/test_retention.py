"""Retention: blobs go when their TTL passes or when every live device has ACKed them.

The relay runs its cleanup every 0.2 s; tests poll PULL with a deadline for a blob to go,
and prove that a blob *stays* by watching another blob of the same group go in the same
cleanup pass.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.relay.support import RelayLauncher, clients, pull_all, push, run
from zerok.crypto import DeviceIdentity, GroupKeys
from zerok.testing import RelayProcess
from zerok.transport.connection import RelayConnection
from zerok.wire import Ack, DeviceRevoked, RevokeDevice, RevokeReason


@pytest.fixture(scope="module")
def relay(module_launcher: RelayLauncher) -> RelayProcess:
    return module_launcher.start("--cleanup-interval", "0.2")


async def cursors(conn: RelayConnection) -> list[int]:
    return [b.cursor for b in await pull_all(conn)]


async def wait_for_cursors(conn: RelayConnection, expected: list[int], timeout: float) -> None:
    """Poll PULL until it returns exactly ``expected`` (AssertionError at the deadline)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (seen := await cursors(conn)) != expected:
        assert loop.time() < deadline, f"PULL still returns {seen}, expected {expected}"
        await asyncio.sleep(0.05)


async def ack(conn: RelayConnection, cursor: int) -> None:
    assert await conn.request(Ack(cursor=cursor)) == Ack(cursor=cursor)


def test_blob_is_gone_after_its_ttl(relay: RelayProcess) -> None:
    async def scenario() -> None:
        keys = GroupKeys.generate()
        async with clients(relay.url) as pool:
            conn = await pool.open(keys)
            other = await pool.open(keys)  # never ACKs: only the TTL can remove anything
            short = await push(conn, b"short-lived", ttl=1)
            long = await push(conn, b"long-lived")
            assert [b.blob_id for b in await pull_all(other)] == [short.blob_id, long.blob_id]
            await wait_for_cursors(other, [long.cursor], timeout=6)
            # The cursor is not reused and the group goes on.
            assert (await push(conn, b"next")).cursor == 3
            assert await cursors(other) == [2, 3]

    run(scenario())


def test_ttl_is_capped_by_max_ttl(launcher: RelayLauncher) -> None:
    relay = launcher.start("--cleanup-interval", "0.2", "--max-ttl", "1", "--default-ttl", "1")

    async def scenario() -> None:
        async with clients(relay.url) as pool:
            conn = await pool.open(GroupKeys.generate())
            assert conn.welcome is not None and conn.welcome.limits.max_ttl == 1
            await push(conn, b"asks for a day", ttl=86400)
            await wait_for_cursors(conn, [], timeout=6)

    run(scenario())


def test_blob_acked_by_every_device_is_gone_but_not_before(relay: RelayProcess) -> None:
    async def scenario() -> None:
        keys = GroupKeys.generate()
        async with clients(relay.url) as pool:
            a = await pool.open(keys)
            b = await pool.open(keys)
            c = await pool.open(keys)
            for i in range(3):
                await push(a, f"blob {i}".encode())  # default TTL: 7 days
            await ack(a, 3)
            await ack(b, 3)
            await ack(c, 1)  # C is behind
            # The pass that removes blob 1 (acked by everyone) runs after all the ACKs, and
            # must keep blobs 2 and 3, which C has not acknowledged.
            await wait_for_cursors(a, [2, 3], timeout=5)
            await ack(c, 3)
            await wait_for_cursors(a, [], timeout=5)
            assert (await push(b, b"new")).cursor == 4
            assert await cursors(a) == [4]

    run(scenario())


def test_lone_device_blobs_wait_for_the_devices_it_pairs(relay: RelayProcess) -> None:
    async def scenario() -> None:
        keys = GroupKeys.generate()
        async with clients(relay.url) as pool:
            alone = await pool.open(keys)
            await push(alone, b"before pairing")
            await ack(alone, 1)
            await push(alone, b"witness", ttl=1)
            # The witness goes by TTL in a pass after the ACK; the first blob must stay.
            await wait_for_cursors(alone, [1], timeout=6)
            paired = await pool.open(keys)
            assert [b.ciphertext for b in await pull_all(paired)] == [b"before pairing"]
            await ack(paired, 1)
            await wait_for_cursors(alone, [], timeout=5)

    run(scenario())


def test_revoked_device_does_not_hold_blobs_back(relay: RelayProcess) -> None:
    async def scenario() -> None:
        keys = GroupKeys.generate()
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
            # Removing blob 1 shows a pass ran after the ACKs; the phone holds blob 2 back.
            await wait_for_cursors(a, [2], timeout=5)
            answer = await a.request(
                RevokeDevice(device_id=lost.device_id, reason=RevokeReason.LOST)
            )
            assert isinstance(answer, DeviceRevoked)
            await wait_for_cursors(a, [], timeout=5)

    run(scenario())


def test_ack_of_a_future_cursor_does_not_acknowledge_future_blobs(relay: RelayProcess) -> None:
    async def scenario() -> None:
        keys = GroupKeys.generate()
        async with clients(relay.url) as pool:
            a = await pool.open(keys)
            b = await pool.open(keys)
            await push(a, b"blob 1")
            await ack(b, 1_000_000)  # counts as "up to 1", the highest cursor so far
            await ack(a, 1)
            await wait_for_cursors(a, [], timeout=5)
            await push(a, b"blob 2")
            await push(a, b"blob 3")
            await ack(a, 3)
            # A blob with a 1 s TTL, pushed after the ACKs, marks a cleanup pass that ran
            # after them: when it is gone, blobs 2 and 3 (not acknowledged by B) must stay.
            await push(a, b"witness", ttl=1)
            await wait_for_cursors(a, [2, 3], timeout=6)
            await ack(b, 3)
            await wait_for_cursors(a, [], timeout=5)

    run(scenario())
