"""Issue 11: the client never hangs on a bad network and never traps its caller.

Silent relays are plain asyncio servers on 127.0.0.1: one accepts the socket and never
answers; a proxy in front of a real relay forwards until it is frozen (the path dies
without a FIN, as behind a NAT that forgot the connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.client.conftest import EventLog, Fleet, pair
from tests.relay.support import run
from zerok.client import (
    BlobPushed,
    Connected,
    Disconnected,
    Error,
    EventsDropped,
    NotConnectedError,
    SyncClient,
    SyncStatus,
)
from zerok.client.state import LocalState
from zerok.client.sync import EventStream
from zerok.crypto import DeviceIdentity
from zerok.errors import ConnectError
from zerok.protocol import ClientTiming
from zerok.testing import InProcessRelay
from zerok.transport import RelayConnection
from zerok.wire import GroupId

# Reconnect rounds slow on purpose (a failover that waited for one would show), deadlines
# short: a dead path must be noticed by its deadline, not by a backoff or by TCP.
TIMING = dataclasses.replace(
    ClientTiming(rng=lambda: 0.0, schedule=(30.0,), jitter=0.0),
    open_timeout=1.0,
    request_timeout=1.5,
    heartbeat=0.3,
    heartbeat_timeout=0.3,
)


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[str]:
    """Accepts TCP connections and never answers (a hung relay, a captive portal)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"ws://127.0.0.1:{port}/"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


class FreezableProxy:
    """Forwards TCP to a relay until ``freeze()``: from then on nothing passes either way
    and no connection is closed. ``thaw()`` lets new connections through; those open at
    the freeze stay dead (a NAT mapping dropped, a Wi-Fi network left)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = False
        self.generation = 0  # bumped by each freeze: older connections stay dead
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.url = ""

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, born: int
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if not self.frozen and born == self.generation:
                    writer.write(data)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, up_writer]
        born = self.generation
        pipes = (self._pipe(reader, up_writer, born), self._pipe(up_reader, writer, born))
        for task in pipes:
            t = asyncio.get_running_loop().create_task(task)
            self._tasks.add(t)

    def freeze(self) -> None:
        self.frozen = True
        self.generation += 1

    def thaw(self) -> None:
        self.frozen = False

    async def __aenter__(self) -> FreezableProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/"
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        for writer in self._writers:
            writer.close()
        self._server.close()
        await self._server.wait_closed()


@contextlib.asynccontextmanager
async def http_status_server(status: int) -> AsyncIterator[str]:
    """Answers the WebSocket upgrade with an HTTP error (a full relay, a per-IP limit)."""

    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=status, text="no")

    app = web.Application()
    app.router.add_get("/", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"ws://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


def port_of(relay: InProcessRelay) -> int:
    return int(relay.url.rstrip("/").rsplit(":", 1)[1])


def timed_client(fleet: Fleet, name: str) -> SyncClient:
    client = SyncClient(fleet.base / name, device_name=name, timing=TIMING)
    fleet.clients.append(client)
    return client


# -- deadlines ------------------------------------------------------------------------------


def test_open_has_one_deadline_for_tcp_upgrade_handshake_and_welcome() -> None:
    async def scenario() -> None:
        async with silent_server() as url:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(ConnectError) as caught:
                await RelayConnection.open(
                    url, DeviceIdentity.generate(), GroupId.random(), timeout=0.3
                )
            assert loop.time() - started < 2.0
            assert caught.value.reason == "unreachable"
            assert "deadline" in str(caught.value)

    run(scenario(), timeout=10)


def test_cancelling_an_open_leaves_nothing_open() -> None:
    async def scenario() -> None:
        async with silent_server() as url:
            opening = asyncio.ensure_future(
                RelayConnection.open(url, DeviceIdentity.generate(), GroupId.random())
            )
            await asyncio.sleep(0.1)  # it is waiting for the upgrade's answer
            opening.cancel()
            with pytest.raises(asyncio.CancelledError):
                await opening
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gc.collect()
        leaks = [str(w.message) for w in caught if "nclosed" in str(w.message)]
        assert not leaks

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gc.collect()  # what earlier tests left behind is not this test's
    run(scenario(), timeout=10)


@pytest.mark.parametrize(
    ("status", "reason"), [(503, "relay full"), (429, "too many devices from your network")]
)
def test_an_http_refusal_at_the_upgrade_reaches_the_app_with_its_reason(
    status: int, reason: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with http_status_server(status) as url, Fleet(tmp_path) as fleet:
            with pytest.raises(ConnectError) as caught:
                await RelayConnection.open(url, DeviceIdentity.generate(), GroupId.random())
            assert caught.value.reason == reason
            client = timed_client(fleet, "a")
            await client.create_group([url])
            async with EventLog(client) as log:
                await client.connect()
                error = await log.wait_for(Error)
                disconnected = await log.wait_for(Disconnected)
            assert error.reason == reason and str(status) in error.message
            assert disconnected.retry_in == pytest.approx(30.0)

    run(scenario(), timeout=20)


def test_a_silent_relay_fails_over_to_the_next_at_once(
    relay: InProcessRelay, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with silent_server() as silent, Fleet(tmp_path) as fleet:
            client = timed_client(fleet, "a")
            await client.create_group([silent, relay.url])
            loop = asyncio.get_running_loop()
            async with EventLog(client) as log:
                started = loop.time()
                await client.connect()
                await client.wait_connected(10)
                elapsed = loop.time() - started
                connected = await log.wait_for(Connected)
            assert connected.relay == relay.url
            # The open deadline (1 s), not the 30 s between rounds.
            assert elapsed < TIMING.open_timeout + 3.0
            [error] = log.of(Error)
            assert error.reason == "unreachable" and silent in error.message
            assert not log.of(Disconnected)
            assert (await client.push(b"after failover")).cursor == 1

    run(scenario(), timeout=30)


def test_a_path_that_dies_silently_is_noticed_by_the_heartbeat(
    relay: InProcessRelay, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with FreezableProxy(port_of(relay)) as proxy, Fleet(tmp_path) as fleet:
            client = timed_client(fleet, "a")
            await client.create_group([proxy.url])
            async with EventLog(client) as log:
                await client.connect()
                await client.wait_connected(10)
                await asyncio.sleep(3 * TIMING.heartbeat)  # answered heartbeats keep it up
                assert not log.of(Disconnected)
                loop = asyncio.get_running_loop()
                proxy.freeze()
                frozen_at = loop.time()
                lost = await log.wait_for(Disconnected, timeout=10)
                noticed = loop.time() - frozen_at
            assert noticed < TIMING.heartbeat + TIMING.heartbeat_timeout + 1.0
            assert "heartbeat" in lost.reason
            assert any(e.reason == "connection lost" for e in log.of(Error))
            assert client.status == SyncStatus.CONNECTING

    run(scenario(), timeout=30)


def test_a_push_in_flight_when_the_path_dies_goes_out_once_on_the_next_connection(
    relay: InProcessRelay, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with FreezableProxy(port_of(relay)) as proxy, Fleet(tmp_path) as fleet:
            timing = dataclasses.replace(TIMING, schedule=(0.2,))  # reconnect soon
            client = SyncClient(fleet.base / "a", timing=timing)
            fleet.clients.append(client)
            await client.create_group([proxy.url])
            await client.connect()
            await client.wait_connected(10)
            proxy.freeze()
            pushing = asyncio.ensure_future(client.push(b"sent into the void"))
            await asyncio.sleep(TIMING.heartbeat)  # the PUSH is written, never answered
            assert not pushing.done()
            proxy.thaw()  # the old path stays dead; a new connection gets through
            result = await asyncio.wait_for(pushing, 15)
            assert result.cursor == 1
            page = await client.pull(after=0)
            assert [b.cursor for b in page.blobs] == [1]  # stored once, not twice

    run(scenario(), timeout=40)


def test_a_request_without_answer_fails_at_its_deadline(
    relay: InProcessRelay, tmp_path: Path
) -> None:
    timing = dataclasses.replace(TIMING, heartbeat=60.0, heartbeat_timeout=60.0)

    async def scenario() -> None:
        async with FreezableProxy(port_of(relay)) as proxy, Fleet(tmp_path) as fleet:
            client = SyncClient(fleet.base / "a", timing=timing)
            fleet.clients.append(client)
            await client.create_group([proxy.url])
            await client.connect()
            await client.wait_connected(10)
            proxy.freeze()
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(ConnectError):
                await client.list_devices()
            assert loop.time() - started < timing.request_timeout + 1.0

    run(scenario(), timeout=30)


# -- an API that cannot hang by surprise ----------------------------------------------------


def test_push_on_a_client_that_is_not_syncing_raises_or_queues(
    relay: InProcessRelay, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a = timed_client(fleet, "a")
            await a.create_group([relay.url])
            with pytest.raises(NotConnectedError, match="wait=False"):
                await asyncio.wait_for(a.push(b"nobody sends this"), 5)
            assert a.pending_count == 0
            blob_id = await asyncio.wait_for(a.push(b"queued", wait=False), 5)
            assert a.pending_count == 1
            async with EventLog(a) as log:
                await a.connect()
                pushed = await log.wait_for(BlobPushed)
            assert pushed.blob_id == blob_id
            assert a.pending_count == 0

    run(scenario(), timeout=20)


def test_an_unexpected_error_in_the_runner_is_reported_and_fails_waiters(
    relay: InProcessRelay, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a = timed_client(fleet, "a")
            await a.create_group([relay.url])
            real_open = a._open
            gate = asyncio.Event()

            async def broken_open(url: str) -> RelayConnection | None:
                await gate.wait()
                raise RuntimeError("a bug")

            a._open = broken_open  # type: ignore[method-assign]
            async with EventLog(a) as log:
                await a.connect()
                push = asyncio.ensure_future(a.push(b"waits"))
                while a.pending_count == 0 or a._core.pending_count == 0:
                    await asyncio.sleep(0.01)
                gate.set()
                error = await log.wait_for(Error)
                with pytest.raises(NotConnectedError, match="a bug"):
                    await asyncio.wait_for(push, 5)
            assert error.reason == "internal error" and "a bug" in error.message
            assert a.status == SyncStatus.OFFLINE and not a.running
            # Not half alive: it starts again, and the push still in the outbox goes out.
            a._open = real_open  # type: ignore[method-assign]
            async with EventLog(a) as log:
                await a.connect()
                await log.wait_for(BlobPushed)
            assert a.pending_count == 0

    run(scenario(), timeout=20)


def test_event_queues_are_bounded_and_say_what_they_dropped() -> None:
    async def scenario() -> None:
        subscribers: set[EventStream] = set()
        stream = EventStream(subscribers, limit=3)
        for n in range(5):
            stream.put(Error(None, str(n)))
        assert await stream.__anext__() == EventsDropped(2)
        kept = [await stream.__anext__() for _ in range(3)]
        assert [e.message for e in kept if isinstance(e, Error)] == ["2", "3", "4"]
        await stream.aclose()
        assert not subscribers

    run(scenario(), timeout=5)


def test_an_abandoned_event_stream_holds_a_bounded_number_of_events(
    relay: InProcessRelay, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a = timed_client(fleet, "a")
            await a.create_group([relay.url])
            stream = a.events()  # never read
            for n in range(5000):
                a._emit(Error(None, str(n)))
            assert len(stream._events) <= 1000
            assert stream.dropped == 4000

    run(scenario(), timeout=5)


def test_concurrent_pushes_and_a_page_of_changes_share_commits(
    relay: InProcessRelay, tmp_path: Path
) -> None:
    """Group commit keeps every promise: each push acked once, every blob delivered once,
    and nothing left in the outbox journal once the writes are done."""

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b = timed_client(fleet, "a"), timed_client(fleet, "b")
            await pair(a, b, [relay.url])
            async with a, b:
                await a.wait_connected(10)
                results = await asyncio.gather(*(a.push(f"{n}".encode()) for n in range(200)))
                assert sorted(r.cursor for r in results) == list(range(1, 201))
                got = []
                async for blob in b.changes():
                    got.append(blob.data)
                    if len(got) == 200:
                        break
                assert sorted(got) == sorted(f"{n}".encode() for n in range(200))
                assert b.last_cursor == 199  # the last one was never followed by a next()
            a.close_state()  # waits for the queued writes
            b.close_state()
            assert LocalState(a.data_dir).outbox_load() == []
            again = LocalState(b.data_dir)
            assert again.cursor == 199
            again.close()

    run(scenario(), timeout=30)
