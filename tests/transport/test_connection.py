"""``RelayConnection``, the client's connection, against the real relay in this process.

Open and WELCOME, requests and their answers, unsolicited messages, the ways a connection
ends (closed by the client with a request pending, a fatal ERROR from the relay, the
relay shutting down) and the ways opening fails (refused, unreachable, no relay there,
a relay that never answers the handshake).

The relay admits a device that the group's log enrolls: the tests use ``TestGroup``,
whose creator enrolls every device they connect, and bring the log in HELLO.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest
from aiohttp import web

from tests.relay.support import RelayLauncher, run
from zerok.crypto import DeviceIdentity
from zerok.errors import ConnectError, FrameTooLargeError, RemoteError
from zerok.protocol import CLASSIC, HYBRID, ConnectionClosed, Event, MessageReceived
from zerok.protocol import entries as log_entries
from zerok.testing import InProcessRelay, TestGroup, member_of
from zerok.transport.connection import RelayConnection
from zerok.wire import (
    BlobId,
    ErrorCode,
    GroupId,
    Limits,
    LogAppend,
    LogAppended,
    Membership,
    Notify,
    Pull,
    PullResponse,
    Push,
    PushAck,
    PushPlatform,
    RegisterPush,
)


@pytest.fixture(scope="module")
def relay(module_launcher: RelayLauncher) -> InProcessRelay:
    return module_launcher.start("--max-blob-size", "1KiB")


async def connect(
    url: str, group: TestGroup, identity: DeviceIdentity | None = None, *, timeout: float = 10.0
) -> RelayConnection:
    """Enroll the device (a new one by default) and connect it, bringing the group's log."""
    identity = identity or DeviceIdentity.generate()
    group.enroll(identity)
    return await RelayConnection.open(
        url,
        identity,
        group.group_id,
        entries=group.entries,
        heartbeat=None,
        timeout=timeout,
    )


async def connect_stranger(url: str, *, timeout: float = 10.0) -> RelayConnection:
    """A device of no group: for openings that fail before any HELLO is read."""
    return await RelayConnection.open(
        url, DeviceIdentity.generate(), GroupId.random(), heartbeat=None, timeout=timeout
    )


async def events_until_closed(conn: RelayConnection, timeout: float = 5.0) -> list[Event]:
    events: list[Event] = []
    async with asyncio.timeout(timeout):
        async for event in conn.events():
            events.append(event)
    return events


def test_open_welcomes_and_requests_get_their_answers(relay: InProcessRelay) -> None:
    async def scenario() -> None:
        group = TestGroup()
        conn = await connect(relay.url, group)
        try:
            assert conn.welcome is not None
            assert conn.welcome.relay_id == bytes(DeviceIdentity.load(relay.key_path).device_id)
            assert (conn.welcome.max_cursor, conn.welcome.pending) == (0, 0)
            assert conn.welcome.limits.max_blob_size == 1024
            # The relay's log is the one HELLO brought: its head and the current epoch.
            assert (conn.welcome.log_seq, conn.welcome.log_hash) == (
                group.log.head_seq,
                group.log.head_hash,
            )
            assert (conn.welcome.epoch, conn.welcome.provisional) == (0, False)
            assert conn.session.variant in (HYBRID, CLASSIC)
            pushes = [Push(blob_id=BlobId.random(), ciphertext=b"blob %d" % i) for i in range(5)]
            # Pipelined: every answer finds its own request.
            answers = await asyncio.gather(*(conn.request(p) for p in pushes))
            acks = [a for a in answers if isinstance(a, PushAck)]
            assert len(acks) == 5
            assert [a.blob_id for a in acks] == [p.blob_id for p in pushes]
            assert sorted(a.cursor for a in acks) == [1, 2, 3, 4, 5]
            page = await conn.request(Pull(after=0, limit=100))
            assert isinstance(page, PullResponse)
            assert [(b.cursor, b.blob_id) for b in page.blobs] == sorted(
                (a.cursor, a.blob_id) for a in acks
            )
            with pytest.raises(FrameTooLargeError):  # over the WELCOME's limit: not sent
                await conn.request(Push(blob_id=BlobId.random(), ciphertext=bytes(2000)))
            with pytest.raises(RemoteError) as refused:  # a non-fatal ERROR answers a request
                await conn.request(RegisterPush(token="bad\x00token", platform=PushPlatform.WEB))
            assert refused.value.code == ErrorCode.INVALID_PUSH_TOKEN
            assert not conn.closed  # and the connection goes on
            assert isinstance(await conn.request(Pull(after=5, limit=1)), PullResponse)
        finally:
            await conn.close()
        assert conn.closed
        closed = await conn.wait_closed()
        assert (closed.code, closed.by_peer) == (None, False)
        with pytest.raises(ConnectError):
            await conn.request(Pull(after=0, limit=1))

    run(scenario())


def test_unsolicited_messages_are_events(relay: InProcessRelay) -> None:
    async def scenario() -> None:
        group = TestGroup()
        a = await connect(relay.url, group)
        known = len(group.entries)
        b = await connect(relay.url, group)  # its HELLO brings its enrollment to the log
        try:
            # The relay tells the group's other devices of what was appended.
            event = await a.next_event(5)
            assert isinstance(event, MessageReceived) and isinstance(event.message, Membership)
            assert event.message.start == known
            assert event.message.entries == group.entries[known:]
            ack = await a.request(Push(blob_id=BlobId.random(), ciphertext=b"news"))
            assert isinstance(ack, PushAck)
            # b's first event is this NOTIFY: the device that brought the entries is not told
            # of them (a MEMBERSHIP would have come first, on the same ordered channel).
            event = await b.next_event(5)
            assert isinstance(event, MessageReceived) and isinstance(event.message, Notify)
            assert (event.message.blob_id, event.message.cursor) == (ack.blob_id, ack.cursor)
            assert event.message.sender == a.session.identity.device_id
            with pytest.raises(TimeoutError):  # the sender is not told of its own blob
                await a.next_event(0.2)
        finally:
            await a.close()
            await b.close()
        [closed] = await events_until_closed(a)
        assert isinstance(closed, ConnectionClosed) and not closed.by_peer

    run(scenario())


def test_close_while_a_request_is_pending_fails_it(relay: InProcessRelay) -> None:
    async def scenario() -> None:
        conn = await connect(relay.url, TestGroup())
        with relay.paused():  # the relay answers nothing while it is held
            pending = asyncio.create_task(conn.request(Pull(after=0, limit=1)))
            async with asyncio.timeout(5):
                while not conn._waiting:  # sent, and waiting for its answer
                    await asyncio.sleep(0)
            closing = asyncio.create_task(conn.close())
            with pytest.raises(ConnectError, match="ended before the answer"):
                await asyncio.wait_for(pending, 5)
        await asyncio.wait_for(closing, 10)
        closed = await conn.wait_closed()
        assert (closed.code, closed.by_peer) == (None, False)

    run(scenario())


def test_a_fatal_error_from_the_relay_ends_the_connection(relay: InProcessRelay) -> None:
    """An admin revokes a device (a Revoke entry in LOG_APPEND): the device hears of it by
    MEMBERSHIP, then the relay ends its connection with ERROR 1003, and refuses it after."""

    async def scenario() -> None:
        group = TestGroup()
        lost = DeviceIdentity.generate()
        admin = await connect(relay.url, group, group.creator)
        victim = await connect(relay.url, group, lost)
        try:
            revoke = group.revoke(lost)
            appended = await admin.request(LogAppend(entries=[revoke]))
            head = group.log
            assert appended == LogAppended(head_seq=head.head_seq, head_hash=head.head_hash)
            events = await events_until_closed(victim)
            notice, closed = events
            assert isinstance(notice, MessageReceived)
            assert notice.message == Membership(start=group.log.head_seq, entries=[revoke])
            assert isinstance(closed, ConnectionClosed)
            assert (closed.code, closed.by_peer) == (ErrorCode.DEVICE_REVOKED, True)
            assert victim.closed and await victim.wait_closed() == closed
            with pytest.raises(ConnectError, match="closed"):
                await victim.request(Pull(after=0, limit=1))
            # Opening again is refused with the relay's ERROR.
            with pytest.raises(RemoteError) as refused:
                await connect(relay.url, group, lost)
            assert refused.value.code == ErrorCode.DEVICE_REVOKED
            assert not admin.closed  # the admin's connection goes on, in the new epoch
            assert isinstance(await admin.request(Pull(after=0, limit=1)), PullResponse)
        finally:
            await admin.close()
            await victim.close()

    run(scenario())


def test_the_relay_shutting_down_ends_the_connection_with_3001(tmp_path: Path) -> None:
    launcher = RelayLauncher(tmp_path)
    try:
        relay = launcher.start()

        async def scenario() -> None:
            conn = await connect(relay.url, TestGroup())
            relay.sigterm()
            closed = await asyncio.wait_for(conn.wait_closed(), 10)
            assert (closed.code, closed.by_peer) == (ErrorCode.RELAY_SHUTTING_DOWN, True)
            await conn.close()

        run(scenario())
        assert relay.wait_exit(10) == 0
    finally:
        launcher.close()


def test_a_device_the_log_does_not_enroll_is_refused(relay: InProcessRelay) -> None:
    """Knowing a group's id (and even its whole log) does not let a device in."""

    async def scenario() -> None:
        group = TestGroup()
        conn = await connect(relay.url, group)
        await conn.close()
        with pytest.raises(RemoteError) as refused:
            await RelayConnection.open(
                relay.url,
                DeviceIdentity.generate(),
                group.group_id,
                entries=group.entries,
                heartbeat=None,
            )
        assert refused.value.code == ErrorCode.UNAUTHORIZED
        assert "not enrolled" in refused.value.message

    run(scenario())


def test_a_proof_by_another_key_than_the_logs_is_refused(relay: InProcessRelay) -> None:
    """The log names the signing key of each device: a device proving with any other key
    (here the log has another key for it) is refused, as a wrong group key was in v1."""

    async def scenario() -> None:
        group = TestGroup()
        device, other = DeviceIdentity.generate(), DeviceIdentity.generate()
        ticket = group.ticket()
        wrong = msgspec.structs.replace(member_of(device), sign=other.sign_public)
        group.append(log_entries.enroll(group.log, wrong, other.sign, ticket, now=group.now))
        with pytest.raises(RemoteError) as refused:
            await connect(relay.url, group, device)
        assert refused.value.code == ErrorCode.UNAUTHORIZED
        assert "proof does not verify" in refused.value.message

    run(scenario())


# -- opening fails -----------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@asynccontextmanager
async def websocket_server(protocols: tuple[str, ...]) -> AsyncIterator[str]:
    """A WebSocket server on 127.0.0.1 that agrees to ``protocols`` and then says nothing."""
    held: list[web.WebSocketResponse] = []

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=protocols)
        await ws.prepare(request)
        held.append(ws)
        async for _ in ws:  # read (and ignore) until the client goes
            pass
        return ws

    app = web.Application()
    app.router.add_get("/", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"ws://{host}:{port}/"
    finally:
        for ws in held:
            await ws.close()
        await runner.cleanup()


def test_open_times_out_when_the_handshake_is_not_answered() -> None:
    async def scenario() -> None:
        async with websocket_server((CLASSIC.subprotocol, HYBRID.subprotocol)) as url:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(ConnectError, match="deadline"):
                await connect_stranger(url, timeout=0.5)
            assert 0.4 <= loop.time() - started <= 5.0

    run(scenario())


def test_open_fails_without_a_relay() -> None:
    async def scenario() -> None:
        url = f"ws://127.0.0.1:{closed_port()}/"
        with pytest.raises(ConnectError, match="cannot connect"):
            await connect_stranger(url, timeout=5)
        async with websocket_server(("chat",)) as other:  # a WebSocket, but no relay
            with pytest.raises(ConnectError, match="not a 0k-Sync relay"):
                await connect_stranger(other, timeout=5)

    run(scenario())


def test_welcome_announces_the_relays_idle_timeout_and_heartbeat(relay: InProcessRelay) -> None:
    async def scenario() -> None:
        group, identity = TestGroup(), DeviceIdentity.generate()
        group.enroll(identity)
        conn = await RelayConnection.open(  # the default heartbeat, which WELCOME adjusts
            relay.url, identity, group.group_id, entries=group.entries
        )
        try:
            assert conn.welcome is not None
            limits = conn.welcome.limits
            assert (limits.idle_timeout, limits.heartbeat_interval) == (120, 30)
            # The client heartbeats at least as often as the relay asks.
            assert conn.session.heartbeat_interval == 30.0
        finally:
            await conn.close()

    run(scenario())


def test_limits_from_an_older_relay_decode_without_the_liveness_fields() -> None:
    older = msgspec.msgpack.encode(
        {
            "max_blob_size": 1,
            "max_group_storage": 2,
            "messages_per_minute": 3,
            "max_frame_size": 4,
            "default_ttl": 5,
            "max_ttl": 6,
        }
    )
    limits = msgspec.msgpack.decode(older, type=Limits)
    assert (limits.idle_timeout, limits.heartbeat_interval) == (0, 0)
    assert b"idle_timeout" not in msgspec.msgpack.encode(limits)  # omitted when 0
