"""Local first under failure: offline pushes, app restarts, relay crashes, failover."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import pytest

from tests.client.conftest import (
    EventLog,
    Fleet,
    connected,
    free_port,
    pair,
    start_relay,
    url_for,
)
from tests.relay.support import RelayLauncher, run
from zerok.client import (
    Blob,
    BlobAvailable,
    BlobPushed,
    Connected,
    Disconnected,
    PushResult,
    SyncClient,
    SyncStatus,
)
from zerok.errors import RelayUnreachableError, SyncError
from zerok.protocol import ClientTiming
from zerok.testing import RelayProcess


def port_of(relay: RelayProcess) -> int:
    assert relay.address is not None
    return int(relay.address.rsplit(":", 1)[1])


def database_of(relay: RelayProcess) -> Path:
    return relay.workdir / "data" / "relay.db"


# The client's own delays (backoff, retries) 50 times shorter and without randomness: the
# same rules, without waiting out real backoffs while a relay restarts.
FAST = ClientTiming(rng=lambda: 0.5).scaled(0.02)


def fast_client(fleet: Fleet, name: str, *, data_dir: Path | None = None) -> SyncClient:
    """``fleet.new(name)`` with the FAST timing."""
    client = SyncClient(data_dir or fleet.base / name, device_name=name, timing=FAST)
    fleet.clients.append(client)
    return client


def fast_backoff(attempt: int) -> object:
    """FAST's delay before reconnect round ``attempt`` (0 first), its jitter fixed at half
    (``pytest.approx``: compare it with ``==``)."""
    return pytest.approx(FAST.schedule[attempt] + FAST.jitter / 2)


async def pull_everything(client: SyncClient) -> list[Blob]:
    """Every blob of the group from cursor 0 on, own blobs included, following has_more."""
    blobs: list[Blob] = []
    after = 0
    while True:
        page = await client.pull(after=after, limit=100)
        blobs += page.blobs
        if not page.has_more:
            return blobs
        after = page.blobs[-1].cursor


async def join_later(fleet: Fleet, creator: SyncClient, name: str) -> SyncClient:
    joiner = fleet.new(name)
    await joiner.join((await creator.create_invite()).url)
    await connected(joiner)
    return joiner


def test_offline_push_waits_for_the_relay(launcher: RelayLauncher, tmp_path: Path) -> None:
    port = free_port()  # the relay starts on it later

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a = fast_client(fleet, "a")
            await a.create_group([url_for(port)])
            async with EventLog(a) as log:
                await a.connect()
                push = asyncio.create_task(a.push(b"written offline"))
                await asyncio.sleep(0)  # the push runs until it waits for the relay's ack
                assert a.pending_count == 1
                retry = await log.wait_for(Disconnected)  # an attempt failed: backing off
                assert retry.retry_in == fast_backoff(0), retry
                assert not push.done()
                assert a.pending_count == 1
                assert a.status == SyncStatus.CONNECTING
                await asyncio.to_thread(start_relay, launcher, port=port)
                result = await asyncio.wait_for(push, 15)
                assert a.pending_count == 0
                pushed = await log.wait_for(BlobPushed)
                assert (pushed.blob_id, pushed.cursor) == (result.blob_id, result.cursor)
            b = await join_later(fleet, a, "b")
            page = await b.pull()
            assert [(x.blob_id, x.sender, x.data) for x in page.blobs] == [
                (result.blob_id, a.device_id, b"written offline")
            ]
            assert [x.blob_id for x in await pull_everything(b)] == [result.blob_id]

    run(scenario())


def test_outbox_survives_an_app_restart(launcher: RelayLauncher, tmp_path: Path) -> None:
    port = free_port()
    a_dir = tmp_path / "a"

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            first = fleet.new("a", data_dir=a_dir)
            group_id = (await first.create_group([url_for(port)])).group_id
            await first.connect()
            push = asyncio.create_task(first.push(b"survives a restart"))
            await asyncio.sleep(0)
            assert first.pending_count == 1
            push.cancel()  # the app quits while the push waits
            with contextlib.suppress(asyncio.CancelledError):
                await push
            await first.close()
            first.close_state()

            again = fleet.new("a", data_dir=a_dir)
            assert again.group_id == group_id
            assert again.device_id == first.device_id
            assert again.pending_count == 1
            await asyncio.to_thread(start_relay, launcher, port=port)
            async with EventLog(again) as log:
                await again.connect()
                pushed = await log.wait_for(BlobPushed)
            assert again.pending_count == 0
            b = await join_later(fleet, again, "b")
            blobs = (await b.pull()).blobs
            assert [(x.blob_id, x.cursor, x.sender, x.data) for x in blobs] == [
                (pushed.blob_id, pushed.cursor, again.device_id, b"survives a restart")
            ]
            assert len(await pull_everything(b)) == 1

    run(scenario())


def test_relay_sigkill_mid_burst_loses_and_duplicates_nothing(
    launcher: RelayLauncher, tmp_path: Path
) -> None:
    relay = start_relay(launcher, process=True)
    port, database = port_of(relay), database_of(relay)

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b = fast_client(fleet, "a"), fast_client(fleet, "b")
            await pair(a, b, [relay.url])
            await connected(a, b)
            payloads = [f"burst {n:03d} ".encode() + os.urandom(2000) for n in range(100)]
            async with EventLog(a) as log:
                pushes = [asyncio.create_task(a.push(p)) for p in payloads]
                await log.wait_for(BlobPushed, lambda e: e.cursor >= 10)
                relay.sigkill()
                acked_before_kill = sum(p.done() for p in pushes)
                await asyncio.to_thread(relay.wait_exit, 10)
                assert acked_before_kill < 100, "the burst finished before the kill"
                assert a.pending_count > 0
                await asyncio.to_thread(start_relay, launcher, port=port, database=database)
                results: list[PushResult] = await asyncio.wait_for(asyncio.gather(*pushes), 30)
            assert a.pending_count == 0
            blobs = await pull_everything(b)
            assert [x.cursor for x in blobs] == list(range(1, 101)), "cursors not gap-free"
            assert sorted(x.data for x in blobs) == sorted(payloads)
            assert len({x.blob_id for x in blobs}) == 100
            # A retried push got the cursor it was first given.
            assert {r.blob_id: r.cursor for r in results} == {x.blob_id: x.cursor for x in blobs}
            assert {x.sender for x in blobs} == {a.device_id}

    run(scenario(), timeout=60)


def test_relay_sigterm_mid_burst_loses_and_duplicates_nothing(
    launcher: RelayLauncher, tmp_path: Path
) -> None:
    """A graceful shutdown (ERROR 3001 to every client) is not a refusal of the pushes in
    flight: they stay in the outbox and go out once, with their ids, on the next relay."""
    relay = start_relay(launcher, process=True)
    port, database = port_of(relay), database_of(relay)

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b = fast_client(fleet, "a"), fast_client(fleet, "b")
            await pair(a, b, [relay.url])
            await connected(a, b)
            payloads = [f"big {n:03d} ".encode() + os.urandom(100_000) for n in range(40)]
            async with EventLog(a) as log:
                pushes = [asyncio.create_task(a.push(p)) for p in payloads]
                await log.wait_for(BlobPushed, lambda e: e.cursor >= 3)
                relay.sigterm()
                assert await asyncio.to_thread(relay.wait_exit, 15) == 0
                assert a.pending_count > 0, "the burst finished before the shutdown"
                await asyncio.to_thread(start_relay, launcher, port=port, database=database)
                results: list[PushResult] = await asyncio.wait_for(asyncio.gather(*pushes), 45)
            assert a.pending_count == 0
            blobs = await pull_everything(b)
            assert [x.cursor for x in blobs] == list(range(1, 41)), "cursors not gap-free"
            assert sorted(x.data for x in blobs) == sorted(payloads)
            assert {r.blob_id: r.cursor for r in results} == {x.blob_id: x.cursor for x in blobs}

    run(scenario(), timeout=90)


def test_a_queued_push_over_the_relays_limit_fails_instead_of_waiting(
    launcher: RelayLauncher, tmp_path: Path
) -> None:
    port = free_port()

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a = fast_client(fleet, "a")
            await a.create_group([url_for(port)])
            await a.connect()
            big = asyncio.create_task(a.push(os.urandom(500_000)))  # queued while offline
            small = asyncio.create_task(a.push(b"fits"))
            await asyncio.to_thread(
                launcher.start, "--bind", f"127.0.0.1:{port}", "--max-blob-size", "100KiB"
            )
            with pytest.raises(SyncError):
                await asyncio.wait_for(big, 30)
            assert (await asyncio.wait_for(small, 30)).cursor == 1
            assert a.pending_count == 0

    run(scenario(), timeout=60)


def test_changes_carries_on_through_a_relay_crash(launcher: RelayLauncher, tmp_path: Path) -> None:
    relay = start_relay(launcher, process=True)
    port, database = port_of(relay), database_of(relay)

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b = fast_client(fleet, "a"), fast_client(fleet, "b")
            await pair(a, b, [relay.url])
            await connected(a, b)
            payloads = [f"live {n:03d} ".encode() + os.urandom(2000) for n in range(60)]
            live: list[Blob] = []

            async def follow() -> None:  # B's changes() loop runs through the crash
                async for blob in b.changes():
                    live.append(blob)
                    if len(live) == len(payloads):
                        return

            follower = asyncio.create_task(follow())
            async with EventLog(b) as log:
                pushes = [asyncio.create_task(a.push(p)) for p in payloads]
                await log.wait_for(BlobAvailable, lambda e: e.cursor >= 5)
                relay.sigkill()
                await asyncio.to_thread(relay.wait_exit, 10)
                await asyncio.to_thread(start_relay, launcher, port=port, database=database)
                await asyncio.wait_for(asyncio.gather(*pushes), 30)
                await asyncio.wait_for(follower, 15)
            assert [x.cursor for x in live] == list(range(1, 61))
            assert sorted(x.data for x in live) == sorted(payloads)

    run(scenario(), timeout=60)


def test_reconnect_backs_off_then_reconnects(launcher: RelayLauncher, tmp_path: Path) -> None:
    relay = start_relay(launcher, process=True)
    port, database = port_of(relay), database_of(relay)

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a = fast_client(fleet, "a")
            await a.create_group([relay.url])
            async with EventLog(a) as log:
                await connected(a)
                mark = log.mark()
                relay.sigkill()
                await asyncio.to_thread(relay.wait_exit, 10)
                # the reconnect schedule (here FAST): 1, 2, 4, ... s + 0-5 s of jitter, the schedule
                # restarting after each successful connection.
                drops = await log.wait_count(Disconnected, 2, after=mark, timeout=15)
                assert {d.relay for d in drops} == {relay.url}
                assert [d.retry_in for d in drops] == [fast_backoff(0), fast_backoff(1)]
                assert a.status == SyncStatus.CONNECTING
                mark = log.mark()
                await asyncio.to_thread(start_relay, launcher, port=port, database=database)
                longest = FAST.schedule[-1] + FAST.jitter
                back = await log.wait_for(Connected, after=mark, timeout=longest + 3)
                assert back.relay == relay.url
                await a.wait_connected(1)
                await a.push(b"after the reconnect")

    run(scenario())


def test_failover_to_the_next_relay(relay: RelayProcess, tmp_path: Path) -> None:
    dead = url_for(free_port())

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b = fleet.new("a"), fleet.new("b")
            await pair(a, b, [relay.url])
            for client in (a, b):  # a first relay that is down, on both devices
                client.set_relays([dead, relay.url])
            async with EventLog(a) as log_a, EventLog(b) as log_b:
                await connected(a, b)
                assert (await log_a.wait_for(Connected)).relay == relay.url
                assert (await log_b.wait_for(Connected)).relay == relay.url
                assert log_a.of(Connected) == [Connected(relay.url)]
            result = await a.push(b"through the second relay")
            assert [(x.blob_id, x.data) for x in (await b.pull()).blobs] == [
                (result.blob_id, b"through the second relay")
            ]

    run(scenario())


def test_invite_needs_the_first_relay(relay: RelayProcess, tmp_path: Path) -> None:
    """docs/client.md: the short code goes to the mailbox of the group's first relay, which
    must be reachable: RelayUnreachableError otherwise (while syncing fails over)."""
    relays = [url_for(free_port()), relay.url]

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a = fleet.new("a")
            await a.create_group(relays)
            with pytest.raises(RelayUnreachableError) as caught:
                await a.create_invite()
            assert "\n" not in str(caught.value)
            assert a.last_invite() is None
            async with EventLog(a) as log:
                await connected(a)
                assert (await log.wait_for(Connected)).relay == relay.url

    run(scenario())


def test_without_a_timing_the_backoff_is_the_documented_one(tmp_path: Path) -> None:
    """1 s plus 0-5 s of jitter after the first failed round (no relay needed to see it)."""

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a = fleet.new("a")
            await a.create_group([url_for(free_port())])
            async with EventLog(a) as log:
                await a.connect()
                retry = await log.wait_for(Disconnected)
            assert retry.retry_in is not None and 1.0 <= retry.retry_in <= 6.0, retry
            assert a.status == SyncStatus.CONNECTING

    run(scenario())
