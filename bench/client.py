"""Client figures: ``SyncClient`` (durable outbox, local state, the asyncio shell) next to
the low-level ``RelayConnection`` client, both against the same relay process in one run.

The SyncClient joins a ``TestGroup`` with an invite URL, as an app's second device would;
the group's other devices are bench devices. The low-level pushes go to a group of their
own, so that the SyncClient never has to skip them.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from bench.groups import Sender, connect, new_group, register
from bench.harness import QUICK, Figure, scaled
from bench.processes import relay_process
from zerok.client import SyncClient
from zerok.client.pairing import INVITE_VERSION, InvitePayload, invite_url
from zerok.crypto.identity import DeviceIdentity
from zerok.testing import TestGroup
from zerok.wire import BlobId, Pull, PullResponse, Push
from zerok.wire.messages import MAX_PULL_LIMIT

KIB = os.urandom(1024)
IN_FLIGHT = 32  # the SyncClient's own limit of pushes in flight
PUSH_SECONDS = 0.3 if QUICK else 4.0
RECEIVED = scaled(20_000, 200)
PAGE = 1000
INVITE_TTL_MS = 600_000


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


async def low_level_push_rate(url: str, group: TestGroup, device: DeviceIdentity) -> float:
    """Pushes/s of one RelayConnection with IN_FLIGHT pushes waiting for their acks."""
    conn = await connect(url, group, device)
    try:

        async def one() -> None:
            await conn.request(Push(blob_id=BlobId.random(), ciphertext=KIB, epoch=group.epoch))

        return await _window(PUSH_SECONDS, IN_FLIGHT, one)
    finally:
        await conn.close()


async def client_push_rate(client: SyncClient) -> float:
    """Durable pushes/s of one SyncClient with IN_FLIGHT push() calls waiting."""

    async def one() -> None:
        await client.push(KIB)

    return await _window(PUSH_SECONDS, IN_FLIGHT, one)


async def _fill(url: str, group: TestGroup, device: DeviceIdentity, count: int) -> None:
    """``count`` blobs of another device, sealed as SyncClient seals them, pushed in order."""
    sender = Sender(group, device)
    # Sealed first, in sequence order: each links to the one before it.
    blobs = [sender.seal(n.to_bytes(4, "big") * 64) for n in range(count)]
    conn = await connect(url, group, device)
    try:
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def one(blob_id: BlobId, sealed: bytes) -> None:
            async with gate:
                await conn.request(Push(blob_id=blob_id, ciphertext=sealed, epoch=group.epoch))

        await asyncio.gather(*(one(*blob) for blob in blobs))
    finally:
        await conn.close()


async def low_level_receive_rate(
    url: str, group: TestGroup, device: DeviceIdentity, after: int, count: int
) -> float:
    """Blobs/s of PULL pages read by a RelayConnection (no decryption, nothing saved)."""
    conn = await connect(url, group, device)
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


def _invite(url: str, group: TestGroup) -> str:
    """An invite URL for one device, its ticket already in the group's log."""
    ticket = group.ticket(ttl_ms=INVITE_TTL_MS)
    payload = InvitePayload(
        v=INVITE_VERSION,
        relays=[url],
        group=bytes(group.group_id),
        ticket=ticket.seed,
        epoch=group.epoch,
        key=group.epoch_key,
        expires_at=group.now + INVITE_TTL_MS,
        inviter=bytes(group.creator.device_id),
    )
    return invite_url(payload)


async def _figures(url: str, base: Path) -> tuple[float, float, float, float]:
    group, (filler, reader) = new_group(2)
    other, (pusher,) = new_group(1)
    invite = _invite(url, group)  # before registering: the relay must hold its ticket
    for each in (group, other):
        await (await register(url, each)).close()
    client = SyncClient(base / "device", device_name="bench", pad=False)
    await client.join(invite)
    try:
        async with client:
            await client.wait_connected(20)
            low_push = await low_level_push_rate(url, other, pusher)
            sync_push = await client_push_rate(client)
            # Past its own blobs, so that the receive figure counts only the other device's.
            while (await client.pull(limit=MAX_PULL_LIMIT)).has_more:
                pass
            start = client.last_cursor
            await _fill(url, group, filler, RECEIVED)
            low_receive = await low_level_receive_rate(url, group, reader, start, RECEIVED)
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
