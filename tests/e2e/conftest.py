"""Fixtures and helpers for the end-to-end tests of membership and integrity.

Devices are real ``SyncClient``s, each in a data directory of its own (``Fleet``, from the
client tests). Relays are real: a ``zerok relay`` child process where a process matters
(SIGKILL, a restore from a backup), else the relay in this process. What a thief with a
stolen disk, or a hostile operator, would do is done to the relay's own SQLite file from
outside, through SQLite (so the relay's locks are honoured): the relay is not asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import pytest

from tests.client.conftest import LEAKS_FAIL, start_relay
from tests.relay.support import RelayLauncher
from zerok.client import Blob, SyncClient
from zerok.errors import SyncError
from zerok.protocol import ClientTiming
from zerok.testing import InProcessRelay, RelayProcess, RunningRelay
from zerok.wire import BlobId

# The client's own delays 50 times shorter and without randomness: reconnecting to a
# restarted relay takes milliseconds, not the documented seconds.
FAST = ClientTiming(rng=lambda: 0.5).scaled(0.02)
WAIT = 10.0  # seconds any one awaited outcome may take


@pytest.fixture(scope="module")
def relay(module_launcher: RelayLauncher) -> InProcessRelay:
    """The real relay in this process, shared by a module's tests (a group each)."""
    return start_relay(module_launcher)


@pytest.fixture(scope="module")
def relay_process(module_launcher: RelayLauncher) -> RelayProcess:
    """``zerok relay`` as a child process, shared by a module's tests (a group each)."""
    return start_relay(module_launcher, process=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # As in the client tests: a socket or session left open, or a coroutine never awaited,
    # fails the test that left it.
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here):
            for spec in LEAKS_FAIL:
                item.add_marker(pytest.mark.filterwarnings(spec))


# -- the relay's database, from outside -----------------------------------------------------


def database_of(relay: RunningRelay) -> Path:
    return relay.workdir / "data" / "relay.db"


@contextlib.contextmanager
def open_db(path: Path) -> Iterator[sqlite3.Connection]:
    """A SQLite file opened beside whoever else has it (autocommit; waits for locks)."""
    conn = sqlite3.connect(path, timeout=WAIT, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


def snapshot(source: Path, target: Path) -> Path:
    """A consistent copy of a SQLite file that this process has open (a device's state):
    SQLite's backup, its WAL included."""
    with open_db(source) as live, open_db(target) as copy:
        live.backup(copy)
    return target


def copy_database(source: Path, target: Path) -> Path:
    """A relay's database file and its WAL, copied as files while the relay runs (idle:
    every request the test made was answered), as a backup or a thief copies a disk.

    Files, not a SQLite connection: a connection from another process, once closed, finds
    no lock of a relay process on the file and deletes the WAL the relay still writes to
    (test_integrity's test_reading_a_relays_database_loses_nothing)."""
    target.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal"):
        if Path(f"{source}{suffix}").exists():
            shutil.copyfile(f"{source}{suffix}", target / f"relay.db{suffix}")
    return target / "relay.db"


@contextlib.contextmanager
def transaction(path: Path) -> Iterator[sqlite3.Connection]:
    """One write transaction on a SQLite file another process may be using."""
    with open_db(path) as db:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


def stored_blobs(path: Path, group: bytes) -> dict[BlobId, tuple[int, bytes, bytes]]:
    """The group's live blobs in a relay database: id -> (cursor, sender, ciphertext)."""
    with open_db(path) as db:
        rows = db.execute(
            "SELECT blob_id, cursor, sender, ciphertext FROM blobs"
            " WHERE group_id = ? AND ciphertext IS NOT NULL ORDER BY cursor",
            (group,),
        ).fetchall()
    return {BlobId(r[0]): (int(r[1]), bytes(r[2]), bytes(r[3])) for r in rows}


# -- what an app receives -------------------------------------------------------------------


class Inbox:
    """What one device's app receives through ``changes()``, live, for as long as the
    block runs (the way an app consumes; healing happens as devices read)."""

    def __init__(self, client: SyncClient) -> None:
        self.client = client
        self.blobs: list[Blob] = []
        self.ended: BaseException | None = None  # why changes() stopped, if it did
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    @property
    def ids(self) -> set[BlobId]:
        return {b.blob_id for b in self.blobs}

    @property
    def top(self) -> int:
        """The cursor of the last blob received (0: none)."""
        return max((b.cursor for b in self.blobs), default=0)

    async def _consume(self) -> None:
        try:
            async for blob in self.client.changes():
                async with self._changed:
                    self.blobs.append(blob)
                    self._changed.notify_all()
        except SyncError as exc:  # revoked or closed: recorded, and whoever waits is told
            async with self._changed:
                self.ended = exc
                self._changed.notify_all()

    async def __aenter__(self) -> Inbox:
        self._task = asyncio.get_running_loop().create_task(self._consume())
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

    async def wait_for(self, wanted: set[BlobId], timeout: float = WAIT) -> None:
        """Until every blob of ``wanted`` was received."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(lambda: wanted <= self.ids or self.ended is not None)
        except TimeoutError:
            missing = wanted - self.ids
            raise AssertionError(f"{len(missing)} blobs never arrived: {missing}") from None
        assert self.ended is None, f"changes() ended: {self.ended!r}"
