"""PostgreSQL unreachable: faults surface as prompt, retryable errors, not hangs.

The shared test server is never touched: the relay (or a PostgresStorage) reaches its own
fresh database through a small TCP proxy in the test, and stopping the proxy (every
forwarded connection dropped, new ones refused) is the database going away. While it is
away, /health answers 503 within a second, a push is answered ERROR 3000 with a
``retry_after`` within the storage deadline, and a HELLO is refused the same way well
within the handshake deadline. Once the proxy is back, the relay serves again without a
restart, and hears other relays' writes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.relay.storage.support import new_group
from tests.relay.storage.support import push as store_push
from tests.relay.support import RelayLauncher, clients, http, next_message, push, run
from zerok.errors import RemoteError, StorageUnavailableError
from zerok.relay.config import RelayConfig
from zerok.relay.connection import STORAGE_RETRY_AFTER
from zerok.relay.storage.postgres import POOL_TIMEOUT, PostgresStorage
from zerok.testing import PostgresDatabases, TestGroup
from zerok.wire import DeviceId, ErrorCode, Notify

PROMPT = POOL_TIMEOUT + 1.5  # seconds: what "a few seconds" means for a failing call
HANDSHAKE_TIMEOUT = RelayConfig().handshake_timeout
WAIT = 10.0  # seconds for the proxy's own operations, and for recovery


class TcpProxy:
    """Forwards a local port to PostgreSQL, on an event loop of its own (in a thread, so
    that it keeps forwarding while the test's loop waits or blocks).

    ``stop`` is the database going away: every forwarded connection is dropped and new ones
    are refused. ``start`` serves again, on the same port."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(WAIT)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(WAIT)

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(WAIT)
        self._loop.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._link, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in self._links:
            task.cancel()
        await asyncio.gather(*self._links, return_exceptions=True)

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._links.add(task)
        upstream: asyncio.StreamWriter | None = None
        try:
            up_reader, upstream = await asyncio.open_connection(*self.target)
            await asyncio.gather(_pipe(reader, upstream), _pipe(up_reader, writer))
        except OSError:
            pass
        finally:
            self._links.discard(task)
            for end in (writer, upstream):
                if end is not None:
                    end.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    finally:
        writer.transport.abort()


@dataclass(frozen=True)
class Proxied:
    proxy: TcpProxy
    url: str  # the database, through the proxy
    direct: str  # the same database, not through the proxy


@pytest.fixture
def proxied() -> Iterator[Proxied]:
    """A fresh database on the test server, reachable through a proxy the test controls."""
    databases = PostgresDatabases()
    direct = databases.create()
    parts = urlsplit(direct)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    try:
        proxy.start()
        netloc = parts.netloc.rpartition("@")
        host = f"{netloc[0]}{netloc[1]}127.0.0.1:{proxy.port}"
        yield Proxied(proxy, urlunsplit(parts._replace(netloc=host)), direct)
    finally:
        proxy.close()
        databases.drop_all()


async def _timed(coro: asyncio.Future[object] | object) -> tuple[float, BaseException | None]:
    """How long ``coro`` took, and what it raised."""
    started = time.monotonic()
    try:
        await coro  # type: ignore[misc]
    except Exception as exc:
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


def test_storage_calls_fail_promptly_while_the_database_is_unreachable(
    proxied: Proxied,
) -> None:
    async def main() -> None:
        s = PostgresStorage(proxied.url, listen_retry=0.1)
        await s.open()
        try:
            device = DeviceId.random()
            group = await new_group(s, device)
            assert (await store_push(s, group)).cursor == 1
            proxied.proxy.stop()
            results = await asyncio.gather(
                _timed(s.get_group(group)),  # a read
                _timed(s.touch_device(group, device, "", 1)),  # a write
                _timed(store_push(s, group)),  # a push
            )
            for took, error in results:
                assert isinstance(error, StorageUnavailableError), error
                assert took < PROMPT, took
            proxied.proxy.start()
            async with asyncio.timeout(WAIT):
                while True:  # the pool reconnects by itself
                    with contextlib.suppress(StorageUnavailableError):
                        assert (await store_push(s, group)).cursor == 2
                        break
                    await asyncio.sleep(0.1)
                await s._listening.wait()  # and so does the listener
        finally:
            await s.close()

    run(main())


def test_a_relay_answers_promptly_while_its_database_is_down_and_recovers(
    tmp_path: Path,
    proxied: Proxied,
) -> None:
    launcher = RelayLauncher(tmp_path, "postgres")
    try:
        relay = launcher.start("--database", proxied.url)
        other = launcher.start("--database", proxied.direct)  # another relay, on the same db
        assert relay.server is not None
        relay.server.http.counts.ttl = 0  # the counts /health shows are not reused
        assert http("GET", f"{relay.http_url}/health").status == 200

        async def scenario() -> None:
            keys = TestGroup()
            async with clients(relay.url) as on_relay, clients(other.url) as on_other:
                member = await on_relay.open(keys)
                assert (await push(member, b"before")).cursor == 1
                proxied.proxy.stop()

                async def health() -> None:
                    reply = await asyncio.to_thread(http, "GET", f"{relay.http_url}/health")
                    assert reply.status == 503

                pushed, hello, checked = await asyncio.gather(
                    _timed(push(member, b"while down")),
                    _timed(on_relay.open(keys)),
                    _timed(health()),
                )
                took, error = pushed
                assert isinstance(error, RemoteError), error
                assert error.code == ErrorCode.RELAY_OVERLOADED
                assert error.retry_after == STORAGE_RETRY_AFTER
                assert took < PROMPT, took
                took, error = hello
                assert isinstance(error, RemoteError), error
                assert error.code == ErrorCode.RELAY_OVERLOADED
                assert took < HANDSHAKE_TIMEOUT / 2 + 0.5, took
                took, error = checked
                assert error is None, error
                assert took < 1.5, took

                proxied.proxy.start()
                async with asyncio.timeout(WAIT):
                    while True:  # serves again, without a restart
                        try:
                            again = await on_relay.open(keys)
                            assert (await push(again, b"after")).cursor == 2
                            break
                        except RemoteError as exc:
                            assert exc.code == ErrorCode.RELAY_OVERLOADED
                            await asyncio.sleep(0.1)
                    while http("GET", f"{relay.http_url}/health").status != 200:
                        await asyncio.sleep(0.1)
                    # Its listener is back: another relay's push reaches it. (A resync may
                    # announce cursor 2 first.)
                    pusher = await on_other.open(keys)
                    ack = await push(pusher, b"from the other relay")
                    while True:
                        note = await next_message(again)
                        if isinstance(note, Notify) and note.cursor == ack.cursor:
                            break

        run(scenario())
    finally:
        launcher.close()
