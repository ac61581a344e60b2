"""Membership figures (issue 12): a revocation reaching a group of 50 through a real relay,
next to data of the same size reaching the same devices; then what the version-2 blob
header and the membership log cost (``bench.blob_header``, ``bench.log_entries``).

The revocation: a fresh group each round, its creator (an admin) and GROUP - 1 devices
connected to one relay process. The admin appends a Revoke of one device (LOG_APPEND);
the clock runs from that request until every remaining device has received the relay's
MEMBERSHIP notice, verified and applied the entry to its own copy of the log and unwrapped
the new epoch key with its X-Wing key. The entry is built before the clock starts (its
build time, GROUP X-Wing encapsulations, is in the notes).

The baseline, in the same round and to the same connections: the admin pushes a v2 blob
exactly as large as the Revoke entry, and the clock runs until every remaining device has
had the NOTIFY, pulled the blob and opened it. Both are the relay's fan-out of the same
bytes to the same devices, stored durably first; what the ratio shows is the membership
path's extra work (the relay verifying the entry against its log, each device verifying
it and unwrapping its key) less the PULL round trip the data path needs. One untimed
blob first warms every connection up.

All devices run in this one process, so their work adds up here where real devices would
do theirs side by side: the figures are an upper bound on what a group of 50 waits.
"""

from __future__ import annotations

import asyncio
import copy
import statistics
import time
from dataclasses import dataclass

import aiohttp

from bench.blob_header import blob_header_figures
from bench.groups import Sender, connect_all, new_group, register
from bench.harness import Figure, scaled
from bench.log_entries import log_figures
from bench.processes import relay_process
from zerok.crypto.blob import V2_OVERHEAD, open_blob
from zerok.crypto.epoch import blob_key, new_epoch_key, unwrap_epoch_key
from zerok.crypto.identity import DeviceIdentity
from zerok.errors import SyncError
from zerok.protocol import ConnectionClosed, MessageReceived, entries
from zerok.protocol.membership import GroupLog
from zerok.testing import TestGroup
from zerok.transport import RelayConnection
from zerok.wire import LogAppend, LogAppended, Membership, Notify, Pull, PullResponse, Push

GROUP = scaled(50, 8)  # devices, the admin included
ROUNDS = scaled(30, 3)
WAIT = 30.0  # seconds a device waits for what the round sends it


@dataclass(frozen=True)
class Round:
    revoke: float  # seconds until every remaining device holds the new key
    baseline: float  # seconds until every remaining device has opened the blob
    build: float  # seconds the admin took to build the Revoke entry
    entry_bytes: int


async def _message(conn: RelayConnection, kind: type[Notify] | type[Membership]) -> object:
    """The next message of ``kind`` the relay sends ``conn`` unasked."""
    while True:
        event = await conn.next_event(WAIT)
        if isinstance(event, ConnectionClosed):
            raise SyncError(f"the relay closed a device's connection: {event.reason}")
        if isinstance(event, MessageReceived) and isinstance(event.message, kind):
            return event.message


async def _opens_blob(conn: RelayConnection, group: TestGroup, key: bytes) -> float:
    """When this device had the pushed blob open: NOTIFY, PULL, open."""
    note = await _message(conn, Notify)
    assert isinstance(note, Notify)
    page = await conn.request(Pull(after=note.cursor - 1, limit=1))
    assert isinstance(page, PullResponse)
    stored = page.blobs[0]
    open_blob(
        stored.ciphertext,
        key=key,
        group_id=group.group_id,
        blob_id=stored.blob_id,
        sender=stored.sender,
    )
    return asyncio.get_running_loop().time()


async def _holds_key(
    conn: RelayConnection, log: GroupLog, device: DeviceIdentity, expected: bytes
) -> float:
    """When this device held the new epoch key: MEMBERSHIP, verify+apply, unwrap."""
    notice = await _message(conn, Membership)
    assert isinstance(notice, Membership)
    for offset, entry in enumerate(notice.entries):
        if notice.start + offset == log.head_seq + 1:
            log.apply(entry)
    epoch = log.epochs[log.epoch]
    key = unwrap_epoch_key(
        epoch.wraps[device.sign_public],
        epoch=epoch.number,
        recipient=device.sign_public,
        wrap_key=device.wrap_key,
    )
    if key != expected:
        raise SyncError("a device unwrapped another key than the admin wrapped")
    return asyncio.get_running_loop().time()


async def _push_to_all(
    admin: RelayConnection, sender: Sender, receivers: list[RelayConnection], size: int
) -> float:
    """Seconds from the admin's PUSH of a ``size``-byte blob until every receiver opened it."""
    group = sender.group
    blob_id, sealed = sender.seal(bytes(size - V2_OVERHEAD))
    key = blob_key(group.epoch_key)
    waiting = [asyncio.create_task(_opens_blob(conn, group, key)) for conn in receivers]
    start = asyncio.get_running_loop().time()
    await admin.request(Push(blob_id=blob_id, ciphertext=sealed, epoch=group.epoch))
    return max(await asyncio.gather(*waiting)) - start


def _revoke(group: TestGroup, victim: DeviceIdentity, new_key: bytes) -> bytes:
    """The admin's Revoke of ``victim``, built on the group's head (not applied to it)."""
    admin = group.creator
    return entries.revoke(
        group.log,
        admin.sign_public,
        admin.sign,
        [bytes(victim.device_id)],
        old_key=group.epoch_key,
        new_key=new_key,
        reason="lost",
        now=group.now,
    )


async def _round(url: str, http: aiohttp.ClientSession) -> Round:
    group, devices = new_group(GROUP - 1)
    admin = await register(url, group, http)
    conns = await connect_all(url, group, devices, http)
    try:
        victim, stay = devices[-1], list(zip(devices[:-1], conns[:-1], strict=True))
        receivers = [conn for _, conn in stay]
        new_key = new_epoch_key()
        built = time.perf_counter()
        entry = _revoke(group, victim, new_key)
        build = time.perf_counter() - built
        sender = Sender(group, group.creator)
        await _push_to_all(admin, sender, receivers, len(entry))  # warm-up
        baseline = await _push_to_all(admin, sender, receivers, len(entry))
        logs = [copy.deepcopy(group.log) for _ in stay]  # each device's own
        waiting = [
            asyncio.create_task(_holds_key(conn, log, device, new_key))
            for (device, conn), log in zip(stay, logs, strict=True)
        ]
        start = asyncio.get_running_loop().time()
        reply = await admin.request(LogAppend(entries=[entry]))
        if not isinstance(reply, LogAppended):
            raise SyncError(f"the relay answered LOG_APPEND with {reply!r}")
        revoke = max(await asyncio.gather(*waiting)) - start
    finally:
        for conn in [admin, *conns]:
            await conn.close()
    return Round(revoke, baseline, build, len(entry))


def _p50_p99(samples: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return q[49] * 1000, q[98] * 1000


async def _rounds(url: str) -> list[Round]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        return [await _round(url, http) for _ in range(ROUNDS)]


def fan_out_figures() -> tuple[list[Figure], list[str]]:
    with relay_process() as (url, _pid):
        rounds = asyncio.run(_rounds(url))
    p50, p99 = _p50_p99([r.revoke for r in rounds])
    base_p50, base_p99 = _p50_p99([r.baseline for r in rounds])
    stay = GROUP - 2
    base = f"same-size blob to {stay}: PUSH…PULL"
    figures = [
        Figure(f"revoke in {GROUP}: {stay} hold new key, p50", "ms", p50, base, base_p50),
        Figure(f"revoke in {GROUP}: {stay} hold new key, p99", "ms", p99, base, base_p99),
    ]
    build = statistics.median(r.build for r in rounds) * 1000
    notes = [
        f"revocation: {ROUNDS} rounds, each a fresh group of {GROUP} on one relay process "
        f"(p99 of {ROUNDS} samples is about the worst); all devices run in this process, so "
        "their verify+apply and unwrap (the log figures below) add up",
        f"the Revoke entry ({rounds[0].entry_bytes:,} bytes, the blob as large) took the admin "
        f"{build:.1f} ms to build (median), before the clock starts",
    ]
    return figures, notes


def all_figures() -> tuple[list[Figure], list[str]]:
    figures, notes = fan_out_figures()
    return figures + blob_header_figures() + log_figures(), notes
