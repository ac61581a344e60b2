"""Crash and shutdown: a PUSH_ACK means the blob is stored, whatever happens next."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.relay.support import (
    RelayLauncher,
    clients,
    pull_all,
    push,
    raw_client,
    run,
)
from zerok.errors import ConnectError, RemoteError, SyncError
from zerok.protocol import ConnectionClosed, MessageReceived
from zerok.testing import TestGroup
from zerok.transport.connection import RelayConnection
from zerok.wire import BlobId, Error, ErrorCode, Membership, Notify, Push, PushAck, encode


@dataclass
class Burst:
    """Pushes from many tasks; records what was sent and what was acknowledged."""

    sent: dict[BlobId, bytes] = field(default_factory=dict)
    acked: dict[BlobId, int] = field(default_factory=dict)
    failures: list[BaseException] = field(default_factory=list)
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    target: int = 0
    relay_id: bytes = b""

    async def worker(self, conn: RelayConnection, name: str, limit: int = 5000) -> None:
        for n in range(limit):
            blob_id = BlobId.random()
            data = f"{name} #{n} ".encode() + os.urandom(64)
            self.sent[blob_id] = data
            try:
                ack = await push(conn, data, blob_id=blob_id)
            except SyncError as exc:
                self.failures.append(exc)
                return
            assert ack.blob_id == blob_id
            self.acked[blob_id] = ack.cursor
            if len(self.acked) >= self.target:
                self.reached.set()


async def _run_burst(conns: list[RelayConnection], burst: Burst, stop: Callable[[], None]) -> None:
    """Run 8 pushing tasks per connection; call ``stop`` once enough acks arrived."""
    tasks = [
        asyncio.create_task(burst.worker(conn, f"c{i}w{w}"))
        for i, conn in enumerate(conns)
        for w in range(8)
    ]
    await asyncio.wait_for(burst.reached.wait(), 20)
    stop()
    await asyncio.wait_for(asyncio.gather(*tasks), 20)


async def _check_recovered(url: str, keys: TestGroup, burst: Burst) -> None:
    async with clients(url) as pool:
        reader = await pool.open(keys)
        blobs = await pull_all(reader)
    assert reader.welcome is not None
    assert reader.welcome.relay_id == burst.relay_id, "the relay's key changed on restart"
    cursors = [b.cursor for b in blobs]
    assert cursors == list(range(1, len(blobs) + 1)), "cursors are not gap-free from 1"
    assert reader.welcome is not None and reader.welcome.max_cursor == len(blobs)
    stored = {b.blob_id: b for b in blobs}
    lost = [blob_id for blob_id in burst.acked if blob_id not in stored]
    assert not lost, f"{len(lost)} acknowledged blobs lost"
    for blob_id, cursor in burst.acked.items():
        assert stored[blob_id].cursor == cursor
    for blob in blobs:
        assert blob.ciphertext == burst.sent[blob.blob_id]  # nothing invented or mangled


def test_sigkill_mid_burst_loses_no_acknowledged_blob(launcher: RelayLauncher) -> None:
    relay = launcher.start(process=True)  # only a process can be SIGKILLed
    database = relay.workdir / "data" / "relay.db"
    keys = TestGroup()
    burst = Burst(target=300)

    async def before() -> None:
        async with clients(relay.url) as pool:
            conns = [await pool.open(keys) for _ in range(4)]
            assert conns[0].welcome is not None
            burst.relay_id = conns[0].welcome.relay_id
            await _run_burst(conns, burst, relay.sigkill)
            for conn in conns:
                assert conn.closed

    run(before(), timeout=60)
    assert relay.wait_exit(10) == -signal.SIGKILL
    assert len(burst.failures) == 32  # every worker was cut off mid-burst
    assert len(burst.acked) >= 300

    restarted = launcher.start(database=database)

    async def after() -> None:
        await _check_recovered(restarted.url, keys, burst)

    run(after())


def test_sigterm_tells_clients_drains_and_exits_cleanly(launcher: RelayLauncher) -> None:
    relay = launcher.start(process=True)  # the signal, the exit code and stderr of a process
    database = relay.workdir / "data" / "relay.db"
    keys = TestGroup()
    burst = Burst(target=200)
    exit_code: list[int] = []

    async def before() -> None:
        async with clients(relay.url) as pool:
            idle = await pool.open(keys)
            assert idle.welcome is not None
            burst.relay_id = idle.welcome.relay_id
            first = await push(idle, b"acknowledged before the shutdown")
            burst.sent[first.blob_id] = b"acknowledged before the shutdown"
            burst.acked[first.blob_id] = first.cursor
            pushers = [await pool.open(keys) for _ in range(2)]
            await _run_burst(pushers, burst, relay.sigterm)
            for conn in (idle, *pushers):
                closed = await asyncio.wait_for(conn.wait_closed(), 10)
                assert closed.code == ErrorCode.RELAY_SHUTTING_DOWN, closed
                assert closed.by_peer
            # The idle device heard of the pushers joining, of the burst, then of the
            # shutdown, and nothing else.
            events = []
            while True:
                event = await idle.next_event(1)
                events.append(event)
                if isinstance(event, ConnectionClosed):
                    break
            assert all(
                isinstance(e, MessageReceived) and isinstance(e.message, Notify | Membership)
                for e in events[:-1]
            )
            # Requests in flight fail with the relay's ERROR 3001; later ones find the
            # connection closed.
            for failure in burst.failures:
                if isinstance(failure, RemoteError):
                    assert failure.code == ErrorCode.RELAY_SHUTTING_DOWN
                else:
                    assert isinstance(failure, ConnectError), failure
            assert len(burst.failures) == 16
            loop = asyncio.get_running_loop()
            exit_code.append(await loop.run_in_executor(None, relay.wait_exit, 15))

    run(before(), timeout=60)
    assert exit_code == [0]
    assert "Traceback" not in relay.stderr()

    restarted = launcher.start(database=database)

    async def after() -> None:
        await _check_recovered(restarted.url, keys, burst)

    run(after())


def test_shutdown_error_reaches_a_client_that_keeps_sending(launcher: RelayLauncher) -> None:
    """A client still pipelining PUSHes and reading slowly when the relay shuts down gets
    ERROR 3001 and the close frame: the relay must not close its socket with the client's
    frames unread (Linux then resets the connection and drops what the relay had not yet
    sent, its last words included)."""
    relay = launcher.start()

    async def scenario() -> None:
        keys = TestGroup()
        async with raw_client(relay.url) as raw:
            await raw.open(keys)
            sending = True

            async def pusher() -> None:
                request_id = 1000
                while sending:
                    request_id += 1
                    frame = encode(
                        Push(blob_id=BlobId.random(), ciphertext=bytes(64)), request_id=request_id
                    )
                    try:
                        await raw.send_frame(frame)
                    except ConnectionError:
                        return
                    await asyncio.sleep(0)

            task = asyncio.create_task(pusher())
            try:
                acks = 0
                while acks < 300:  # the relay is busy answering
                    frame = await raw.receive_frame(timeout=10)
                    assert frame is not None and isinstance(frame.message, PushAck), frame
                    acks += 1
                relay.sigterm()
                codes: list[int] = []
                while (frame := await raw.receive_frame(timeout=10)) is not None:
                    if isinstance(frame.message, Error):
                        codes.append(frame.message.code)
                    await asyncio.sleep(0.001)  # a slow reader
            finally:
                sending = False
                await task
            assert codes == [ErrorCode.RELAY_SHUTTING_DOWN]
            assert raw.ws.close_code == 1001  # the relay's close frame, not a reset

    run(scenario())
    assert relay.wait_exit(10) == 0
