"""Storage figures (issue 10): what cleanup costs the pushes that arrive while it runs, and
the disk a relay keeps after its blobs are delivered. SQLiteStorage driven in this process
(the relay's storage layer, without the network), so that the figures are the database's.

``python -m bench storage`` prints them; ``make bench`` includes them.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

from bench.harness import Figure, scaled
from zerok.relay.storage.sqlite import SQLiteStorage
from zerok.wire import BlobId, DeviceId, GroupId

KIB = os.urandom(1024)
NOW = 1_700_000_000_000
DAY = 86_400_000
BIG = 1 << 40
CLEANUP_BLOBS = scaled(200_000, 2_000)
WIDE_DEVICES, WIDE_BLOBS = scaled(2_000, 20), scaled(20_000, 200)
SIZE_BLOBS, SIZE_ROUND = scaled(300_000, 3_000), scaled(10_000, 500)
GOAL_WAIT_MS = 50.0  # no push should wait longer than this while cleanup runs


async def _group(s: SQLiteStorage, devices: list[DeviceId]) -> GroupId:
    group = GroupId.random()
    await s.register_group(group, b"\x11" * 32, NOW)
    for device in devices:
        await s.touch_device(group, device, "", NOW)
    return group


async def _fill(s: SQLiteStorage, group: GroupId, sender: DeviceId, count: int) -> None:
    for start in range(0, count, 1000):  # 1000 in flight: they share commits
        await asyncio.gather(
            *(
                s.push(
                    group,
                    BlobId.random(),
                    sender,
                    KIB,
                    now=NOW,
                    expires_at=NOW + DAY,
                    max_group_bytes=BIG,
                )
                for _ in range(min(1000, count - start))
            )
        )


async def _cleanup_under_pushes(s: SQLiteStorage) -> tuple[float, float]:
    """Run cleanup while one device pushes to another group, one push at a time; return
    (cleanup seconds, worst push wait in ms)."""
    other = await _group(s, [DeviceId.random()])
    sender = DeviceId.random()
    waits: list[float] = []
    start = time.perf_counter()
    cleaning = asyncio.ensure_future(s.cleanup(NOW))
    while not cleaning.done():
        sent = time.perf_counter()
        await s.push(
            other, BlobId.random(), sender, KIB, now=NOW, expires_at=NOW + DAY, max_group_bytes=BIG
        )
        waits.append(time.perf_counter() - sent)
    await cleaning
    return time.perf_counter() - start, max(waits, default=0.0) * 1000


async def delivered_cleanup(path: Path) -> tuple[float, float, float]:
    """(seconds to push, seconds to clean up, worst push wait ms): CLEANUP_BLOBS 1 KiB
    blobs of one pair of devices, all acknowledged."""
    s = SQLiteStorage(path)
    await s.open()
    try:
        a, b = DeviceId.random(), DeviceId.random()
        group = await _group(s, [a, b])
        start = time.perf_counter()
        await _fill(s, group, a, CLEANUP_BLOBS)
        pushed = time.perf_counter() - start
        await s.ack(group, b, CLEANUP_BLOBS)
        cleanup, worst = await _cleanup_under_pushes(s)
        return pushed, cleanup, worst
    finally:
        await s.close()


async def wide_group_cleanup(path: Path) -> tuple[float, float, float]:
    """(seconds to push, cleanup seconds, worst push wait ms): a group of WIDE_DEVICES
    devices, one of which never acks, holding WIDE_BLOBS blobs the others all acked."""
    s = SQLiteStorage(path)
    await s.open()
    try:
        devices = [DeviceId.random() for _ in range(WIDE_DEVICES)]
        group = await _group(s, devices)
        start = time.perf_counter()
        await _fill(s, group, devices[1], WIDE_BLOBS)
        pushed = time.perf_counter() - start
        await asyncio.gather(*(s.ack(group, d, WIDE_BLOBS) for d in devices[1:]))
        return (pushed, *await _cleanup_under_pushes(s))
    finally:
        await s.close()


def _size(path: Path, suffix: str = "") -> int:
    try:
        return Path(f"{path}{suffix}").stat().st_size
    except FileNotFoundError:
        return 0


async def delivered_size(path: Path) -> tuple[float, float, float]:
    """(database MiB, WAL MiB, pushed MiB) after SIZE_BLOBS 1 KiB pushes, delivered as
    they go: a round of SIZE_ROUND pushes, the other device acks, the relay's cleanup
    (cleanup and maintain) runs; measured while the relay still runs."""
    s = SQLiteStorage(path)
    await s.open()
    try:
        a, b = DeviceId.random(), DeviceId.random()
        group = await _group(s, [a, b])
        for done in range(SIZE_ROUND, SIZE_BLOBS + 1, SIZE_ROUND):
            await _fill(s, group, a, SIZE_ROUND)
            await s.ack(group, b, done)
            await s.cleanup(NOW)
            await s.maintain()
        return _size(path) / 2**20, _size(path, "-wal") / 2**20, SIZE_BLOBS * len(KIB) / 2**20
    finally:
        await s.close()


def storage_figures() -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="zerok-bench-") as directory:
        root = Path(directory)
        pushed, cleanup, worst = asyncio.run(delivered_cleanup(root / "delivered.db"))
        wide_pushed, wide_cleanup, wide_worst = asyncio.run(wide_group_cleanup(root / "wide.db"))
        db_mib, wal_mib, pushed_mib = asyncio.run(delivered_size(root / "size.db"))
    n, goal = f"{CLEANUP_BLOBS:,}", "goal"
    wide = f"{WIDE_DEVICES:,} devices (1 silent), {WIDE_BLOBS:,} blobs"
    return [
        Figure(f"cleanup, {n} delivered blobs", "s", cleanup, "pushing them", pushed),
        Figure(f"worst push wait, cleanup of {n}", "ms", worst, goal, GOAL_WAIT_MS),
        Figure(f"cleanup, {wide}", "s", wide_cleanup, "pushing them", wide_pushed),
        Figure("worst push wait, that cleanup", "ms", wide_worst, goal, GOAL_WAIT_MS),
        Figure(
            f"database after {SIZE_BLOBS:,} x 1 KiB delivered", "MiB", db_mib, "pushed", pushed_mib
        ),
        Figure("its WAL", "MiB", wal_mib, "pushed", pushed_mib),
    ]
