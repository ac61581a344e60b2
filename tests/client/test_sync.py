"""Two SyncClients and a relay: push, pull, changes() and events()."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import cast

from tests.client.conftest import EventLog, Fleet, connected, pair, start_relay
from tests.relay.support import RelayLauncher, run
from zerok.client import (
    Blob,
    BlobAvailable,
    BlobPushed,
    Connected,
    Disconnected,
    PullResult,
    PushResult,
    StatusChanged,
    SyncStatus,
)
from zerok.testing import RelayProcess


def test_sync_both_ways(relay: RelayProcess, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b = fleet.new("a"), fleet.new("b")
            assert a.pad and b.pad  # padding is on by default
            await pair(a, b, [relay.url])
            await connected(a, b)

            # A pushes; B pulls from its saved cursor.
            first = await a.push(b"first from A")
            assert isinstance(first, PushResult)
            assert first.cursor == 1
            page = await b.pull()
            assert isinstance(page, PullResult)
            assert [(x.cursor, x.blob_id, x.sender, x.data) for x in page.blobs] == [
                (1, first.blob_id, a.device_id, b"first from A")
            ]
            assert page.max_cursor == 1 and not page.has_more
            assert b.last_cursor == 1
            assert (await b.pull()).blobs == []  # nothing twice

            # A pushes data of awkward sizes; B gets exactly those bytes through changes().
            payloads = [b"", b"x", os.urandom(255), os.urandom(256), os.urandom(5000)]
            results = [await a.push(p) for p in payloads]
            assert [r.cursor for r in results] == [2, 3, 4, 5, 6]
            received: list[Blob] = []
            async for blob in b.changes():  # resumes after cursor 1
                received.append(blob)
                if len(received) == len(payloads):
                    break
            assert [x.data for x in received] == payloads
            assert [x.cursor for x in received] == [r.cursor for r in results]
            assert [x.blob_id for x in received] == [r.blob_id for r in results]
            assert {x.sender for x in received} == {a.device_id}
            assert all(x.timestamp > 0 for x in received)

            # B pushes; A receives it, and none of its own blobs.
            back = await b.push(b"reply from B")
            assert back.cursor == 7
            page = await a.pull()
            assert [(x.cursor, x.sender, x.data) for x in page.blobs] == [
                (7, b.device_id, b"reply from B")
            ]
            assert a.last_cursor == 7
            # An explicit cursor lists everything, own blobs too, and moves no saved cursor.
            everything = await a.pull(after=0)
            assert [x.cursor for x in everything.blobs] == list(range(1, 8))
            assert everything.blobs[0].data == b"first from A"
            assert a.last_cursor == 7

    run(scenario())


def test_changes_delivers_live_in_order_exactly_once(relay: RelayProcess, tmp_path: Path) -> None:
    async def collect(into: list[Blob], source: AsyncIterator[Blob], stop: bytes) -> None:
        async for blob in source:
            into.append(blob)
            if blob.data == stop:
                return

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b = fleet.new("a"), fleet.new("b")
            await pair(a, b, [relay.url])
            await connected(a, b)
            got_b: list[Blob] = []
            got_a: list[Blob] = []
            b_task = asyncio.create_task(collect(got_b, b.changes(), b"sentinel"))
            a_task = asyncio.create_task(collect(got_a, a.changes(), b"from B"))
            payloads = [f"blob {n:02d}".encode() for n in range(20)]
            results = await asyncio.gather(*(a.push(p) for p in payloads))
            assert sorted(r.cursor for r in results) == list(range(1, 21))
            sentinel = await a.push(b"sentinel")
            await asyncio.wait_for(b_task, 15)
            # Every blob once, in cursor order, the sentinel last: no duplicates came before it.
            assert [x.cursor for x in got_b] == list(range(1, 22))
            by_cursor = {r.cursor: p for r, p in zip(results, payloads, strict=True)}
            assert [x.data for x in got_b[:20]] == [by_cursor[c] for c in range(1, 21)]
            assert len({x.blob_id for x in got_b}) == 21
            assert got_b[-1].blob_id == sentinel.blob_id
            # A's own 21 blobs were never handed to A: its first change is B's blob.
            await b.push(b"from B")
            await asyncio.wait_for(a_task, 15)
            assert [(x.cursor, x.sender, x.data) for x in got_a] == [(22, b.device_id, b"from B")]

    run(scenario())


def test_changes_saves_the_cursor_when_the_loop_asks_for_the_next_blob(
    relay: RelayProcess, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b = fleet.new("a"), fleet.new("b")
            await pair(a, b, [relay.url])
            await connected(a, b)
            one = await a.push(b"one")
            two = await a.push(b"two")
            changes = cast(AsyncGenerator[Blob, None], b.changes())
            assert b.last_cursor == 0
            first = await anext(changes)
            assert (first.cursor, first.data) == (one.cursor, b"one")
            assert b.last_cursor == 0, "saved before the app asked for the next blob"
            second = await anext(changes)
            assert (second.cursor, second.data) == (two.cursor, b"two")
            assert b.last_cursor == one.cursor
            await changes.aclose()  # the app stopped inside the loop body of `two`
            assert b.last_cursor == one.cursor
            # `two` was not confirmed: a new loop gets it again, then the cursor moves on.
            again = cast(AsyncGenerator[Blob, None], b.changes())
            redelivered = await anext(again)
            assert (redelivered.cursor, redelivered.data) == (two.cursor, b"two")
            three = await a.push(b"three")
            after = await anext(again)
            assert (after.cursor, after.data) == (three.cursor, b"three")
            assert b.last_cursor == two.cursor
            await again.aclose()

    run(scenario())


def test_events(launcher: RelayLauncher, tmp_path: Path) -> None:
    relay = start_relay(launcher)

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b = fleet.new("a"), fleet.new("b")
            await pair(a, b, [relay.url])
            async with EventLog(a) as log_a, EventLog(b) as log_b:
                await connected(a, b)
                await log_a.wait_for(Connected, lambda e: e.relay == relay.url)
                await log_b.wait_for(Connected, lambda e: e.relay == relay.url)
                await log_a.wait_for(StatusChanged, lambda e: e.status == SyncStatus.SYNCED)
                await log_b.wait_for(StatusChanged, lambda e: e.status == SyncStatus.SYNCED)
                assert a.status == b.status == SyncStatus.SYNCED

                mark_a, mark_b = log_a.mark(), log_b.mark()
                result = await a.push(b"hello")
                pushed = await log_a.wait_for(BlobPushed, after=mark_a)
                assert (pushed.blob_id, pushed.cursor) == (result.blob_id, result.cursor)
                available = await log_b.wait_for(BlobAvailable, after=mark_b)
                assert available == BlobAvailable(result.cursor, result.blob_id, a.device_id)
                assert log_a.of(BlobAvailable, mark_a) == [], "own push announced as available"
                assert log_b.of(BlobPushed, mark_b) == []
                # B has something to fetch: syncing; after the pull: synced.
                await log_b.wait_for(
                    StatusChanged, lambda e: e.status == SyncStatus.SYNCING, after=mark_b
                )
                mark_b = log_b.mark()
                assert [x.data for x in (await b.pull()).blobs] == [b"hello"]
                await log_b.wait_for(
                    StatusChanged, lambda e: e.status == SyncStatus.SYNCED, after=mark_b
                )

                mark_a, mark_b = log_a.mark(), log_b.mark()
                await asyncio.to_thread(relay.stop)  # SIGTERM: the relay says 3001, exits
                for log, mark in ((log_a, mark_a), (log_b, mark_b)):
                    gone = await log.wait_for(Disconnected, after=mark)
                    assert gone.relay == relay.url
                    assert gone.retry_in is not None and gone.retry_in >= 0
                await log_a.wait_for(
                    StatusChanged, lambda e: e.status == SyncStatus.CONNECTING, after=mark_a
                )
                assert {a.status, b.status} == {SyncStatus.CONNECTING}

    run(scenario())
