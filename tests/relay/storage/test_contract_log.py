"""Each group's membership log, held against every backend: compare-and-append (one
winner per seq, however many appends and relays race), all or nothing, paging, sizes,
durability, the event other relays hear, and misuse. SQLite's full disk at the end."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.relay.storage.support import NOW, Backend, Heard, new_group, push, run
from zerok.errors import StorageError, StorageFullError
from zerok.relay.storage import (
    GroupRecord,
    LogAppended,
    LogConflict,
    LogRecord,
    Resync,
    Storage,
)
from zerok.relay.storage.postgres import LISTENER_NAME
from zerok.relay.storage.sqlite import SQLiteStorage
from zerok.testing import PG_ADMIN_URL
from zerok.wire import GroupId


def record(seq: int, entry: bytes | None = None) -> LogRecord:
    body = entry if entry is not None else b"entry %d" % seq
    return LogRecord(seq, hashlib.sha256(body).digest(), body)


def records(first: int, count: int, tag: bytes = b"") -> list[LogRecord]:
    return [record(seq, b"%s entry %d" % (tag, seq)) for seq in range(first, first + count)]


async def whole_log(s: Storage, group: GroupId) -> list[LogRecord]:
    return await s.log_read(group, -1, 10_000, 1 << 30)


# -- appending --------------------------------------------------------------------------------


def test_a_genesis_creates_its_group(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        group = GroupId.random()
        assert await s.log_head(group) is None
        genesis = record(0)
        assert await s.log_append(group, [genesis], NOW) == genesis
        assert await s.get_group(group) == GroupRecord(group, b"", 0, 0, NOW)
        assert await s.log_head(group) == genesis
        assert (await s.stats())[0] == 1

    backend.run(body)


def test_a_genesis_keeps_a_registered_group_as_it_is(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        group = await new_group(s)
        registered = await s.get_group(group)
        assert await s.log_head(group) is None  # registered, but no log yet
        assert await s.log_append(group, [record(0)], NOW + 5) == record(0)
        assert await s.get_group(group) == registered
        # And the old way still works on a group the log created.
        other = GroupId.random()
        await s.log_append(other, [record(0)], NOW)
        assert (await s.register_group(other, b"k" * 32, NOW + 1)).auth_key == b""

    backend.run(body)


def test_consecutive_appends_move_the_head(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        group = GroupId.random()
        for seq in range(4):
            assert await s.log_append(group, [record(seq)], NOW + seq) == record(seq)
        assert await s.log_head(group) == record(3)
        assert await whole_log(s, group) == [record(seq) for seq in range(4)]

    backend.run(body)


def test_an_append_not_right_after_the_head_changes_nothing(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        group = GroupId.random()
        stored = records(0, 3)
        await s.log_append(group, stored, NOW)
        size = (3, sum(len(r.entry) for r in stored))
        for start, count in ((0, 1), (1, 1), (2, 3), (4, 1), (5, 2)):
            outcome = await s.log_append(group, records(start, count, b"late"), NOW)
            assert outcome == LogConflict(stored[-1]), (start, count)
            assert isinstance(outcome, LogConflict) and outcome.next_seq == 3
            assert await whole_log(s, group) == stored
            assert await s.log_size(group) == size

    backend.run(body)


def test_without_a_log_only_a_genesis_is_taken(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        group, registered = GroupId.random(), await new_group(s)
        for target in (group, registered):
            outcome = await s.log_append(target, [record(1)], NOW)
            assert outcome == LogConflict(None)
            assert isinstance(outcome, LogConflict) and outcome.next_seq == 0
            assert await s.log_head(target) is None
        assert await s.get_group(group) is None  # a refused append creates no group

    backend.run(body)


def test_a_multi_record_append_is_all_or_nothing(backend: Backend) -> None:
    """One record the database refuses (a trigger here; a full disk or a lost connection
    in life) takes back the whole append, also the records of earlier statements."""
    if backend.name == "postgresql":
        trap = [
            "CREATE FUNCTION refuse_boom() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'boom'; END $$",
            "CREATE TRIGGER boom BEFORE INSERT ON group_log FOR EACH ROW"
            " WHEN (NEW.entry = 'boom'::bytea) EXECUTE FUNCTION refuse_boom()",
        ]
    else:
        trap = [
            "CREATE TRIGGER boom BEFORE INSERT ON group_log WHEN NEW.entry = x'626f6f6d'"
            " BEGIN SELECT RAISE(ABORT, 'boom'); END"
        ]

    async def body(s: Storage) -> None:
        group = GroupId.random()
        await s.log_append(group, [record(0)], NOW)
        for statement in trap:
            await asyncio.to_thread(_execute, backend, statement)
        # Longer than one INSERT statement takes (LOG_INSERT_BATCH), the bad one last.
        doomed = [*records(1, 300), record(301, b"boom")]
        with pytest.raises(StorageError, match="boom"):
            await s.log_append(group, doomed, NOW)
        assert await s.log_head(group) == record(0)
        assert await s.log_size(group) == (1, len(record(0).entry))
        assert await s.log_append(group, doomed[:-1], NOW) == doomed[-2]  # no trace left

    backend.run(body)


def _execute(backend: Backend, statement: str) -> None:
    """Run a statement that returns no rows on a separate, plain connection."""
    if backend.name == "postgresql":
        with psycopg.connect(backend.url, autocommit=True) as conn:
            conn.execute(statement)
    else:
        with contextlib.closing(sqlite3.connect(backend.url, isolation_level=None)) as conn:
            conn.execute(statement)


def test_concurrent_appends_at_one_seq_have_one_winner(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        group = GroupId.random()
        # The genesis race creates the group too; then races of single and multi-record
        # appends, each at the seq after the last winner's.
        for count in (1, 1, 3):
            head = await s.log_head(group)
            start = 0 if head is None else head.seq + 1
            rivals = [records(start, count + i % 2, b"%d" % i) for i in range(6)]
            outcomes = await asyncio.gather(*(s.log_append(group, r, NOW) for r in rivals))
            winners = [r for r, o in zip(rivals, outcomes, strict=True) if o == r[-1]]
            assert len(winners) == 1, outcomes
            head = winners[0][-1]
            assert all(o in (head, LogConflict(head)) for o in outcomes), outcomes
        log = await whole_log(s, group)
        assert [r.seq for r in log] == list(range(len(log)))
        assert log[-1] == await s.log_head(group)

    backend.run(body)


def test_appends_through_two_relays_have_one_winner(shared_backend: Backend) -> None:
    async def main() -> None:
        a, b = shared_backend.make(), shared_backend.make()
        await asyncio.gather(a.open(), b.open())
        try:
            group = GroupId.random()
            for start in range(3):
                rivals = [records(start, 1, b"%d" % i) for i in range(6)]
                outcomes = await asyncio.gather(
                    *((a, b)[i % 2].log_append(group, r, NOW) for i, r in enumerate(rivals))
                )
                heads = [o for o in outcomes if isinstance(o, LogRecord)]
                assert len(heads) == 1, outcomes
                assert outcomes.count(LogConflict(heads[0])) == 5
            assert await whole_log(a, group) == await whole_log(b, group)
            assert [r.seq for r in await whole_log(b, group)] == [0, 1, 2]
        finally:
            await asyncio.gather(a.close(), b.close())

    run(main())


# -- reading ----------------------------------------------------------------------------------


def test_log_read_pages_by_seq_count_and_bytes(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        group = GroupId.random()
        stored = [record(seq, bytes([seq]) * 100) for seq in range(10)]
        await s.log_append(group, stored, NOW)
        assert await s.log_read(group, -1, 100, 10_000) == stored
        assert await s.log_read(group, 4, 100, 10_000) == stored[5:]
        assert await s.log_read(group, -1, 3, 10_000) == stored[:3]
        assert await s.log_read(group, 2, 3, 10_000) == stored[3:6]
        assert await s.log_read(group, -1, 100, 250) == stored[:2]  # entries' bytes only
        assert await s.log_read(group, -1, 100, 200) == stored[:2]  # exactly reaches it
        assert await s.log_read(group, -1, 100, 199) == stored[:1]
        assert await s.log_read(group, 6, 100, 1) == stored[7:8]  # at least one record
        assert await s.log_read(group, 9, 100, 10_000) == []
        assert await s.log_read(group, 0, 0, 10_000) == []
        assert await s.log_read(GroupId.random(), -1, 100, 10_000) == []

    backend.run(body)


def test_log_size_counts_records_and_entry_bytes(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        group = GroupId.random()
        assert await s.log_size(group) == (0, 0)
        await s.log_append(group, [record(0, b"a" * 10), record(1, b"")], NOW)
        await s.log_append(group, [record(2, b"b" * 5)], NOW)
        assert await s.log_size(group) == (3, 15)
        assert await s.log_size(GroupId.random()) == (0, 0)

    backend.run(body)


def test_records_survive_close_and_reopen(backend: Backend) -> None:
    group = GroupId.random()
    stored = records(0, 3)

    async def write(s: Storage) -> None:
        await s.log_append(group, stored, NOW)

    async def read(s: Storage) -> tuple[LogRecord | None, list[LogRecord], Any]:
        return await s.log_head(group), await whole_log(s, group), await s.log_size(group)

    backend.run(write)
    head, log, _ = backend.run(read)
    assert (head, log) == (stored[-1], stored)


def test_cleanup_keeps_the_log(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        group = GroupId.random()
        await s.log_append(group, records(0, 2), NOW)
        await s.cleanup(NOW + 10**12)  # far past every TTL and tombstone
        await s.maintain()
        assert await whole_log(s, group) == records(0, 2)

    backend.run(body)


# -- other relays -----------------------------------------------------------------------------


def test_other_relays_hear_of_appends(shared_backend: Backend) -> None:
    async def main() -> None:
        a, b = shared_backend.make(), shared_backend.make()
        await asyncio.gather(a.open(), b.open())
        try:
            mine, theirs = Heard(a), Heard(b)
            group = GroupId.random()
            await a.log_append(group, [record(0)], NOW)
            assert await theirs.next() == LogAppended(group, 0)
            await a.log_append(group, records(1, 3), NOW)  # one event, at the new head
            assert await theirs.next() == LogAppended(group, 3)
            await a.log_append(group, [record(7)], NOW)  # a conflict tells nobody
            await b.log_append(group, [record(4)], NOW)
            assert await mine.next() == LogAppended(group, 4)
            assert theirs.events == [LogAppended(group, 0), LogAppended(group, 3)]
            assert mine.events == [LogAppended(group, 4)]  # never its own appends
        finally:
            await asyncio.gather(a.close(), b.close())

    run(main())


def test_appends_are_heard_again_after_a_resync(shared_backend: Backend) -> None:
    """A relay that lost its listener is told to resync, catches up on the log from the
    tables (``log_head``), and hears later appends again."""

    async def main() -> None:
        a, b = shared_backend.make(), shared_backend.make()
        await asyncio.gather(a.open(), b.open())
        try:
            theirs = Heard(b)
            group = GroupId.random()
            await a.log_append(group, [record(0)], NOW)
            assert await theirs.next() == LogAppended(group, 0)
            await asyncio.to_thread(_end_listeners, shared_backend.url)
            await a.log_append(group, [record(1)], NOW)  # heard or not: b may be deaf
            while (event := await theirs.next()) != Resync():
                assert event == LogAppended(group, 1)
            assert await b.log_head(group) == record(1)  # what catching up reads
            await a.log_append(group, [record(2)], NOW)
            while (event := await theirs.next()) != LogAppended(group, 2):
                assert event == LogAppended(group, 1)  # sent before, heard after the Resync
        finally:
            await asyncio.gather(a.close(), b.close())

    run(main())


def _end_listeners(url: str) -> None:
    """Cut the event listeners of the test's database (and nothing else on the server)."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        ended = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = %s AND application_name = %s",
            (url.rpartition("/")[2], LISTENER_NAME),
        ).fetchone()
    assert ended == (2,)


# -- misuse -----------------------------------------------------------------------------------

BAD_APPENDS: list[tuple[list[Any], str]] = [
    ([], "at least one record"),
    ([record(0), record(2)], "consecutive"),
    ([record(1), record(0)], "consecutive"),
    ([record(0), record(0)], "consecutive"),
    ([LogRecord(-1, bytes(32), b"")], ">= 0"),
    ([LogRecord(True, bytes(32), b"")], ">= 0"),  # a bool is an int to mypy
    ([LogRecord(0, bytes(31), b"")], "32 bytes, not 31 bytes"),
    ([LogRecord(0, bytes(33), b"")], "32 bytes, not 33 bytes"),
    ([LogRecord(0, "h" * 32, b"")], "32 bytes, not str"),  # type: ignore[arg-type]
    ([LogRecord(0, bytes(32), "entry")], "must be bytes, not str"),  # type: ignore[arg-type]
    ([(0, bytes(32), b"")], "must be LogRecord, not tuple"),
]


def test_misused_appends_are_storage_errors(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        group = GroupId.random()
        for bad, message in BAD_APPENDS:
            with pytest.raises(StorageError, match=message):
                await s.log_append(group, bad, NOW)
        assert await s.log_head(group) is None
        assert await s.get_group(group) is None

    backend.run(body)


def test_misused_reads_are_storage_errors(backend: Backend) -> None:
    async def body(s: Storage) -> None:
        for after, limit, max_bytes in ((-2, 1, 1), (0, -1, 1), (0, 1, -1)):
            with pytest.raises(StorageError, match="log_read needs"):
                await s.log_read(GroupId.random(), after, limit, max_bytes)

    backend.run(body)


def test_a_closed_storage_refuses_log_calls(backend: Backend) -> None:
    async def main() -> None:
        s = backend.make()
        await s.open()
        await s.close()
        group = GroupId.random()
        with pytest.raises(StorageError):
            await s.log_append(group, [record(0)], NOW)
        with pytest.raises(StorageError):
            await s.log_head(group)

    run(main())


# -- SQLite's full disk -----------------------------------------------------------------------


def test_a_full_disk_refuses_appends_and_stores_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        s = SQLiteStorage(tmp_path / "relay.db", max_pages=64, reserve_bytes=16 * 1024)
        await s.open()
        try:
            group = GroupId.random()
            await s.log_append(group, [record(0)], NOW)
            # Too big for the pages left: the append itself hits the full disk.
            huge = [record(1), record(2, b"x" * 512 * 1024)]
            with pytest.raises(StorageFullError):
                await s.log_append(group, huge, NOW)
            assert await whole_log(s, group) == [record(0)]
            # Blobs fill the disk; then even a small append is refused, as a push is.
            with pytest.raises(StorageFullError):
                for _ in range(100):
                    await push(s, group, b"b" * 4096)
            assert s.degraded() is not None
            with pytest.raises(StorageFullError, match="refused"):
                await s.log_append(group, [record(1)], NOW)
            assert await whole_log(s, group) == [record(0)]
        finally:
            await s.close()

    run(main())
