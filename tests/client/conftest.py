"""Fixtures and helpers for the client end-to-end tests: real relays, real SyncClients.

Relays are started by ``tests.relay.support.RelayLauncher`` (127.0.0.1, a fresh database,
stopped when the fixture ends): the real relay in this process (``InProcessRelay``), or
with ``process=True`` a ``zerok relay`` child process, for tests that SIGKILL or signal it.
Every SyncClient lives in its own temporary data directory and is closed by the ``Fleet``
that made it. Events are awaited through ``EventLog``, which subscribes to
``client.events()`` before the test acts.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Literal, TypeVar, overload

import pytest

from tests.relay.support import RelayLauncher
from zerok.client import SyncClient, SyncEvent
from zerok.protocol import ClientTiming
from zerok.testing import InProcessRelay, RelayProcess

E = TypeVar("E", bound=SyncEvent)

# Every test client comes from 127.0.0.1: the invite mailbox's per-IP limit is lifted too.
RELAY_ARGS = ("--invites-per-minute", "0")
EVENT_TIMEOUT = 10.0


@overload
def start_relay(
    launcher: RelayLauncher,
    *,
    port: int | None = None,
    database: Path | None = None,
    process: Literal[False] = False,
) -> InProcessRelay: ...


@overload
def start_relay(
    launcher: RelayLauncher,
    *,
    port: int | None = None,
    database: Path | None = None,
    process: Literal[True],
) -> RelayProcess: ...


def start_relay(
    launcher: RelayLauncher,
    *,
    port: int | None = None,
    database: Path | None = None,
    process: bool = False,
) -> InProcessRelay | RelayProcess:
    """A relay on 127.0.0.1 (``port``, or a free one) with the test defaults: in this
    process, or with ``process`` a child process (to SIGKILL or signal)."""
    args: list[str] = list(RELAY_ARGS)
    if port is not None:
        args += ["--bind", f"127.0.0.1:{port}"]
    if process:
        return launcher.start(*args, database=database, process=True)
    return launcher.start(*args, database=database)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a relay started later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def url_for(port: int) -> str:
    return f"ws://127.0.0.1:{port}/"


class Fleet:
    """Makes SyncClients, one data directory each, and closes every one of them."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.clients: list[SyncClient] = []

    def new(
        self,
        name: str,
        *,
        data_dir: Path | None = None,
        pad: bool = True,
        timing: ClientTiming | None = None,
        clock: Callable[[], int] | None = None,
    ) -> SyncClient:
        client = SyncClient(
            data_dir or self.base / name, device_name=name, pad=pad, timing=timing, clock=clock
        )
        self.clients.append(client)
        return client

    async def close(self) -> None:
        for client in reversed(self.clients):
            await client.close()
            client.close_state()

    async def __aenter__(self) -> Fleet:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class EventLog:
    """Records every event of one client from the moment it is entered."""

    def __init__(self, client: SyncClient) -> None:
        self.client = client
        self.events: list[SyncEvent] = []
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def _pump(self) -> None:
        async for event in self.client.events():
            async with self._changed:
                self.events.append(event)
                self._changed.notify_all()

    async def __aenter__(self) -> EventLog:
        self._task = asyncio.get_running_loop().create_task(self._pump())
        await asyncio.sleep(0)  # one loop turn: the task has subscribed to client.events()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def settle(self) -> None:
        """Let the recorder take in what the client has already emitted (after ``close``,
        when no more events can come): a few loop turns, no clock involved."""
        for _ in range(10):
            await asyncio.sleep(0)

    def mark(self) -> int:
        """A position in the log: ``wait_for(..., after=mark)`` ignores earlier events."""
        return len(self.events)

    def of(self, kind: type[E], after: int = 0) -> list[E]:
        return [e for e in self.events[after:] if isinstance(e, kind)]

    async def wait_for(
        self,
        kind: type[E],
        where: Callable[[E], bool] = lambda _: True,
        *,
        after: int = 0,
        timeout: float = EVENT_TIMEOUT,
    ) -> E:
        """The first event of ``kind`` at or after position ``after`` that matches ``where``."""

        def found() -> E | None:
            for event in self.events[after:]:
                if isinstance(event, kind) and where(event):
                    return event
            return None

        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: found() is not None)
        except TimeoutError:
            raise AssertionError(
                f"no {kind.__name__} within {timeout} s; events: {self.events[after:]}"
            ) from None
        event = found()
        assert event is not None
        return event

    async def wait_count(
        self, kind: type[E], count: int, *, after: int = 0, timeout: float = EVENT_TIMEOUT
    ) -> list[E]:
        """The first ``count`` events of ``kind`` at or after position ``after``."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: len(self.of(kind, after)) >= count)
        except TimeoutError:
            raise AssertionError(
                f"fewer than {count} {kind.__name__} within {timeout} s; "
                f"events: {self.events[after:]}"
            ) from None
        return self.of(kind, after)[:count]


async def pair(creator: SyncClient, joiner: SyncClient, relays: list[str]) -> None:
    """A new group through ``relays`` made by ``creator``; ``joiner`` joins by invite URL."""
    await creator.create_group(relays)
    invite = await creator.create_invite()
    await joiner.join(invite.url)
    assert joiner.group_id == creator.group_id


async def connected(*clients: SyncClient, timeout: float = EVENT_TIMEOUT) -> None:
    """Start syncing and wait until every client is accepted by a relay."""
    for client in clients:
        await client.connect()
    for client in clients:
        await client.wait_connected(timeout)


@pytest.fixture(scope="module")
def relay(module_launcher: RelayLauncher) -> InProcessRelay:
    """One relay shared by a module's tests; each test makes its own group."""
    return start_relay(module_launcher)


# Every resource closed on every path: in these tests an unclosed aiohttp session or socket
# (ResourceWarning, raised from __del__ and so reported as unraisable) and a coroutine never
# awaited fail the test that left it.
LEAKS_FAIL = (
    "error::ResourceWarning",
    "error::pytest.PytestUnraisableExceptionWarning",
    "error:coroutine .* was never awaited:RuntimeWarning",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here):
            for spec in LEAKS_FAIL:
                item.add_marker(pytest.mark.filterwarnings(spec))
