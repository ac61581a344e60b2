"""Helpers for the storage tests: backends on fresh databases, and short ways to fill them.

Async bodies run under ``asyncio.run`` (no pytest-asyncio), each bounded by DEADLINE.
Timestamps are passed in, so time is explicit: ``NOW`` plus some milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import queue
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from zerok.relay.storage import PushOutcome, Storage, StorageEvent, open_storage
from zerok.relay.storage.postgres import PostgresStorage
from zerok.testing import PG_ADMIN_URL
from zerok.wire import BlobId, DeviceId, GroupId

T = TypeVar("T")

NOW = 1_700_000_000_000
DAY = 86_400_000
BIG = 1 << 40  # a group quota nothing reaches
AUTH = b"\x11" * 32
DEADLINE = 20.0  # seconds any one test body may take
EVENT_WAIT = 10.0  # seconds to wait for an event from another relay


def run(coro: Coroutine[Any, Any, T], timeout: float = DEADLINE) -> T:
    """Run one test's coroutine on a fresh event loop, bounded in time."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


@dataclass(frozen=True)
class Backend:
    """A storage backend on a database of the test's own."""

    name: str
    url: str
    shared: bool  # several relays may share the database (and hear each other)

    def make(self) -> Storage:
        """A new, unopened storage on the test's database."""
        if self.name == "postgresql":
            # Reconnect the listener quickly: tests cut it on purpose.
            return PostgresStorage(self.url, listen_retry=0.05)
        return open_storage(self.url)

    def run(self, body: Callable[[Storage], Awaitable[T]]) -> T:
        """Open a storage, run ``body`` with it, always close it."""

        async def main() -> T:
            storage = self.make()
            await storage.open()
            try:
                return await body(storage)
            finally:
                await storage.close()

        return run(main())

    def query(self, statement: str) -> list[tuple[Any, ...]]:
        """Rows from a separate, plain connection to the database."""
        if self.name == "postgresql":
            with psycopg.connect(self.url, autocommit=True) as conn:
                return conn.execute(statement).fetchall()
        with contextlib.closing(sqlite3.connect(self.url)) as lite:
            return lite.execute(statement).fetchall()


class FreshDatabases:
    """Empty PostgreSQL databases, one per test: a thread makes them ahead of need and
    drops them once their test is done, so neither waits on the server's disk.

    ``take`` raises psycopg.Error if the server cannot make one. ``close`` drops every
    database still there.
    """

    AHEAD = 2  # databases kept ready
    _CREATE, _DROP, _STOP = 0, 1, 2  # creates go first; stopping, after every drop

    def __init__(self) -> None:
        self._ready: queue.Queue[str | psycopg.Error] = queue.Queue()
        self._work: queue.PriorityQueue[tuple[int, int, str]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def take(self) -> str:
        if self._thread is None:  # started by the first PostgreSQL test, if any
            self._thread = threading.Thread(target=self._serve, name="fresh-databases", daemon=True)
            self._thread.start()
            for _ in range(self.AHEAD):
                self._submit(self._CREATE)
        self._submit(self._CREATE)
        try:
            made = self._ready.get(timeout=DEADLINE)
        except queue.Empty:
            raise psycopg.OperationalError(f"no database made in {DEADLINE} s") from None
        if isinstance(made, psycopg.Error):
            raise made
        return made

    def give_back(self, url: str) -> None:
        self._submit(self._DROP, url.rpartition("/")[2])

    def close(self) -> None:
        if self._thread is not None:
            self._submit(self._STOP)
            self._thread.join(DEADLINE)

    def _submit(self, kind: int, name: str = "") -> None:
        self._work.put((kind, next(self._order), name))

    def _serve(self) -> None:
        alive: set[str] = set()
        admin: psycopg.Connection[Any] | None = None
        while True:
            kind, _, name = self._work.get()
            if kind == self._STOP:
                names, statement = sorted(alive), "DROP DATABASE IF EXISTS {} WITH (FORCE)"
            elif kind == self._DROP:
                names, statement = [name], "DROP DATABASE IF EXISTS {} WITH (FORCE)"
            else:
                names, statement = [f"zerok_t_{os.urandom(6).hex()}"], "CREATE DATABASE {}"
            try:
                admin = admin or psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
                for each in names:
                    admin.execute(sql.SQL(statement).format(sql.Identifier(each)))
                    if kind == self._CREATE:
                        # No fsync per commit: what is tested is who sees what, not
                        # surviving a crash of the server.
                        admin.execute(
                            sql.SQL("ALTER DATABASE {} SET synchronous_commit = off").format(
                                sql.Identifier(each)
                            )
                        )
                        alive.add(each)
                        self._ready.put(f"{PG_ADMIN_URL.rpartition('/')[0]}/{each}")
                    else:
                        alive.discard(each)
            except psycopg.Error as exc:
                if admin is not None:
                    admin.close()
                admin = None  # reconnect for the next piece of work
                if kind == self._CREATE:
                    self._ready.put(exc)
            if kind == self._STOP:
                if admin is not None:
                    admin.close()
                return


def sqlite_backend(directory: Path) -> Backend:
    return Backend("sqlite", str(directory / "relay.db"), shared=False)


def postgres_backend(url: str) -> Backend:
    return Backend("postgresql", url, shared=True)


async def new_group(s: Storage, *devices: DeviceId) -> GroupId:
    group = GroupId.random()
    await s.register_group(group, AUTH, NOW)
    for device in devices:
        await s.touch_device(group, device, "", NOW)
    return group


async def push(
    s: Storage,
    group: GroupId,
    data: bytes = b"ciphertext",
    *,
    sender: DeviceId | None = None,
    blob_id: BlobId | None = None,
    now: int = NOW,
    expires_at: int = NOW + DAY,
    quota: int = BIG,
    blobs: int = 0,
    overhead: int = 0,
    repair: bool = False,
) -> PushOutcome:
    return await s.push(
        group,
        blob_id or BlobId.random(),
        sender or DeviceId.random(),
        data,
        now=now,
        expires_at=expires_at,
        max_group_bytes=quota,
        max_group_blobs=blobs,
        blob_overhead=overhead,
        repair=repair,
    )


async def cursors(s: Storage, group: GroupId) -> list[int]:
    page = await s.pull(group, 0, 1000, BIG)
    return [b.cursor for b in page.blobs]


class Heard:
    """What one storage's subscriber was told."""

    def __init__(self, s: Storage) -> None:
        self.events: list[StorageEvent] = []
        self._queue: asyncio.Queue[StorageEvent] = asyncio.Queue()
        s.subscribe(self._on_event)

    def _on_event(self, event: StorageEvent) -> None:
        self.events.append(event)
        self._queue.put_nowait(event)

    async def next(self) -> StorageEvent:
        return await asyncio.wait_for(self._queue.get(), EVENT_WAIT)
