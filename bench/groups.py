"""Groups of protocol version 2 for the benchmarks: a relay admits only enrolled devices,
so every benchmark device is enrolled in a ``TestGroup`` first and the relay is brought the
group's log before the devices connect.

A HELLO carries at most MAX_HELLO_ENTRIES entries, so ``register`` sends the rest of a big
group's log with LOG_APPEND, MAX_APPEND_ENTRIES at a time, over the creator's connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiohttp

from zerok.crypto.blob import KIND_DATA, NO_LINK, BlobHeader, chain_hash, seal_blob
from zerok.crypto.epoch import blob_key
from zerok.crypto.identity import DeviceIdentity
from zerok.errors import SyncError
from zerok.protocol import CLASSIC, Variant
from zerok.testing import TestGroup
from zerok.transport import RelayConnection
from zerok.wire import BlobId, LogAppend, LogAppended
from zerok.wire.log import MAX_MEMBERS
from zerok.wire.messages import MAX_APPEND_ENTRIES, MAX_HELLO_ENTRIES

CONNECTING = 16  # handshakes in flight at once when many devices connect


def new_group(devices: int) -> tuple[TestGroup, list[DeviceIdentity]]:
    """A group of its creator (an admin) and ``devices`` other enrolled devices."""
    if not 0 <= devices < MAX_MEMBERS:
        raise SyncError(f"a group holds 1..{MAX_MEMBERS} devices, not {devices + 1}")
    group = TestGroup()
    identities = [DeviceIdentity.generate() for _ in range(devices)]
    for identity in identities:
        group.enroll(identity)
    return group, identities


async def register(
    url: str,
    group: TestGroup,
    http: aiohttp.ClientSession | None = None,
    *,
    variant: Variant = CLASSIC,
) -> RelayConnection:
    """The creator's connection, once the relay holds the group's whole log (the caller
    closes it)."""
    entries = group.entries
    admin = await RelayConnection.open(
        url,
        group.creator,
        group.group_id,
        entries=entries[:MAX_HELLO_ENTRIES],
        variants=(variant,),
        heartbeat=None,
        http=http,
    )
    try:
        for start in range(MAX_HELLO_ENTRIES, len(entries), MAX_APPEND_ENTRIES):
            chunk = entries[start : start + MAX_APPEND_ENTRIES]
            reply = await admin.request(LogAppend(entries=chunk))
            if not isinstance(reply, LogAppended):
                raise SyncError(f"the relay answered LOG_APPEND with {reply!r}")
    except BaseException:
        await admin.close()
        raise
    return admin


async def connect(
    url: str,
    group: TestGroup,
    identity: DeviceIdentity,
    http: aiohttp.ClientSession | None = None,
    *,
    variant: Variant = CLASSIC,
) -> RelayConnection:
    """An enrolled device's connection to a relay that holds the group's log."""
    return await RelayConnection.open(
        url, identity, group.group_id, variants=(variant,), heartbeat=None, http=http
    )


async def connect_all(
    url: str,
    group: TestGroup,
    identities: Sequence[DeviceIdentity],
    http: aiohttp.ClientSession,
) -> list[RelayConnection]:
    """Every device's connection, in the order given (CONNECTING handshakes at a time)."""
    gate = asyncio.Semaphore(CONNECTING)

    async def one(identity: DeviceIdentity) -> RelayConnection:
        async with gate:
            return await connect(url, group, identity, http)

    return list(await asyncio.gather(*(one(i) for i in identities)))


class Sender:
    """Seals one device's blobs as SyncClient does: v2, the group's current epoch, the
    device's sequence numbers and hash chain."""

    def __init__(self, group: TestGroup, identity: DeviceIdentity) -> None:
        self.group = group
        self.identity = identity
        self.seq = 0
        self.link = NO_LINK

    def seal(self, data: bytes) -> tuple[BlobId, bytes]:
        blob_id = BlobId.random()
        self.seq += 1
        header = BlobHeader(epoch=self.group.epoch, kind=KIND_DATA, seq=self.seq, link=self.link)
        sealed = seal_blob(
            data,
            key=blob_key(self.group.epoch_key),
            group_id=self.group.group_id,
            blob_id=blob_id,
            sender=self.identity.device_id,
            header=header,
        )
        self.link = chain_hash(blob_id, self.seq, KIND_DATA, data)
        return blob_id, sealed
