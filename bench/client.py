"""Client figures: ``SyncClient`` (durable outbox, local state, the asyncio shell) next to
the low-level ``RelayConnection`` client, both against the same relay process in one run."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from bench.harness import QUICK, Figure, scaled
from bench.processes import relay_process
from zerok.client import SyncClient
from zerok.crypto import DeviceIdentity
from zerok.crypto.blob import BlobCipher
from zerok.protocol import CLASSIC
from zerok.transport import RelayConnection
from zerok.wire import BlobId, Pull, PullResponse, Push

KIB = os.urandom(1024)
IN_FLIGHT = 32  # the SyncClient's own limit of pushes in flight
PUSH_SECONDS = 0.3 if QUICK else 4.0
RECEIVED = scaled(20_000, 200)
PAGE = 1000


async def _window(seconds: float, in_flight: int, one: object) -> float:
    """Operations per second of ``in_flight`` loops of ``one()`` after a short warm-up."""
    loop = asyncio.get_running_loop()
    counted = 0
    start = loop.time() + (0.1 if QUICK else 0.5)
    stop = start + seconds

    async def worker() -> None:
        nonlocal counted
        while (now := loop.time()) < stop:
            await one()  # type: ignore[operator]
            if now >= start:
                counted += 1

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return counted / seconds


async def low_level_push_rate(url: str, client: SyncClient) -> float:
    """Pushes/s of one RelayConnection with IN_FLIGHT pushes waiting for their acks."""
    assert client._keys is not None
    conn = await RelayConnection.open(
        url, DeviceIdentity.generate(), client._keys, variants=(CLASSIC,), heartbeat=None
    )
    try:

        async def one() -> None:
            await conn.request(Push(blob_id=BlobId.random(), ciphertext=KIB))

        return await _window(PUSH_SECONDS, IN_FLIGHT, one)
    finally:
        await conn.close()


async def client_push_rate(client: SyncClient) -> float:
    """Durable pushes/s of one SyncClient with IN_FLIGHT push() calls waiting."""

    async def one() -> None:
        await client.push(KIB)

    return await _window(PUSH_SECONDS, IN_FLIGHT, one)


async def _fill(url: str, client: SyncClient, count: int) -> None:
    """``count`` blobs of another device, sealed for the group, pushed at the relay."""
    assert client._keys is not None
    sender = DeviceIdentity.generate()
    cipher = BlobCipher(client._keys.blob_key, client._keys.group_id)
    conn = await RelayConnection.open(
        url, sender, client._keys, variants=(CLASSIC,), heartbeat=None
    )
    try:
        sem = asyncio.Semaphore(IN_FLIGHT)

        async def one(n: int) -> None:
            async with sem:
                blob_id = BlobId.random()
                sealed = cipher.seal(
                    n.to_bytes(4, "big") * 64, blob_id=blob_id, sender=sender.device_id
                )
                await conn.request(Push(blob_id=blob_id, ciphertext=sealed))

        await asyncio.gather(*(one(n) for n in range(count)))
    finally:
        await conn.close()


async def low_level_receive_rate(url: str, client: SyncClient, after: int, count: int) -> float:
    """Blobs/s of PULL pages read by a RelayConnection (no decryption, nothing saved)."""
    assert client._keys is not None
    conn = await RelayConnection.open(
        url, DeviceIdentity.generate(), client._keys, variants=(CLASSIC,), heartbeat=None
    )
    try:
        loop = asyncio.get_running_loop()
        got, start = 0, loop.time()
        while got < count:
            reply = await conn.request(Pull(after=after, limit=PAGE))
            assert isinstance(reply, PullResponse)
            got += len(reply.blobs)
            after = reply.blobs[-1].cursor
        return got / (loop.time() - start)
    finally:
        await conn.close()


async def client_receive_rate(client: SyncClient, count: int) -> float:
    """Blobs/s delivered by ``changes()``, each opened and its cursor saved durably."""
    loop = asyncio.get_running_loop()
    got, start = 0, loop.time()
    async for _ in client.changes():
        got += 1
        if got == count:
            break
    return got / (loop.time() - start)


async def _figures(url: str, base: Path) -> tuple[float, float, float, float]:
    client = SyncClient(base / "device", device_name="bench", pad=False)
    await client.create_group([url])
    try:
        async with client:
            await client.wait_connected(20)
            low_push = await low_level_push_rate(url, client)
            sync_push = await client_push_rate(client)
            start = (await client.pull(after=0, limit=1)).max_cursor
            await _fill(url, client, RECEIVED)
            low_receive = await low_level_receive_rate(url, client, start, RECEIVED)
            sync_receive = await client_receive_rate(client, RECEIVED)
    finally:
        await client.close()
        client.close_state()
    return sync_push, low_push, sync_receive, low_receive


def all_figures() -> list[Figure]:
    with tempfile.TemporaryDirectory() as tmp, relay_process() as (url, _pid):
        sync_push, low_push, sync_receive, low_receive = asyncio.run(_figures(url, Path(tmp)))
    base = "low-level RelayConnection client"
    return [
        Figure(
            f"SyncClient pushes, {IN_FLIGHT} in flight, 1 KiB",
            "/s",
            sync_push,
            base,
            low_push,
        ),
        Figure("SyncClient blobs received by changes()", "/s", sync_receive, base, low_receive),
    ]
