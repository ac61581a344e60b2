"""PostgreSQL storage: several relays share one database (docs/operations.md, "PostgreSQL
and several relays").

What each operation does is shared with SQLite (``common``). Cursors stay gap-free across
relays because a PUSH takes the group's row lock (``UPDATE groups ... RETURNING
max_cursor``) in the transaction that inserts the blob: concurrent pushes to one group
serialise on that row, and a rolled-back push gives its cursor back. A retried PUSH racing
its first attempt on another relay hits the unique index on (group_id, blob_id) and is
answered with the winner's cursor.

Each push and revocation also sends a PostgreSQL NOTIFY from inside its transaction, so it
is delivered exactly when (and only if) the transaction commits. Every relay LISTENs on one
connection; when that connection is lost and re-established, the relay is told to resync
(``Resync``) and catches up from the tables, so no notification is lost for good. Payloads
carry ids, cursors and sizes only: nothing secret, nothing of the blob.

Faults surface as errors, not hangs (docs/operations.md, "When the database is down").
Every connection is checked with an empty statement when it is taken from the pool; a dead
one (the server restarted, its backend was terminated) makes the pool check all its idle
connections, dropping the dead ones, and the call goes on with a fresh connection, so a
restart costs no client anything. Every call has a deadline (``call_timeout``); waiting for
a pooled connection (``pool_timeout``) and connecting (``connect_timeout``) have shorter
ones, so while the database is unreachable each call fails within a few seconds with
StorageUnavailableError, and the pool and the listener reconnect by themselves once it is
back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import select
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from zerok.errors import StorageError, StorageFullError, StorageUnavailableError, WireError
from zerok.relay.config import redact_url
from zerok.relay.storage import common, postgres_chunks
from zerok.relay.storage.base import (
    BlobStored,
    DeviceRecord,
    DeviceWasRevoked,
    LogAppended,
    LogConflict,
    LogRecord,
    PushOutcome,
    Resync,
    StorageEvent,
)
from zerok.relay.storage.common import Fetch, Proc, Row
from zerok.relay.storage.postgres_chunks import PostgresChunks
from zerok.wire import BlobId, DeviceId, GroupId

log = logging.getLogger("zerok.relay.postgres")

T = TypeVar("T")
Conn = psycopg.AsyncConnection[TupleRow]

CHANNEL = "zerok_events"
OPEN_TIMEOUT = 10.0  # seconds to connect, and to start listening, before open() gives up
LISTEN_RETRY = 1.0  # seconds between attempts to re-establish the listener
CALL_TIMEOUT = 5.0  # seconds any one storage call may take (less than the HELLO's deadline)
POOL_TIMEOUT = 3.0  # seconds to wait for a pooled connection (psycopg_pool's default: 30)
CONNECT_TIMEOUT = 2  # seconds to open a connection (libpq's connect_timeout: 2 at least)
RECONNECT_TIMEOUT = 10.0  # seconds the pool retries one connection (backing off) before a
# fresh attempt: keeps the wait after a long outage short (psycopg_pool doubles its delay)
LISTENER_NAME = "zerok-relay-listener"  # application_name of the LISTEN connection
PUSH_BATCH = 256

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE groups (
        group_id     BYTEA PRIMARY KEY,
        auth_key     BYTEA NOT NULL,
        max_cursor   BIGINT NOT NULL DEFAULT 0,
        bytes_stored BIGINT NOT NULL DEFAULT 0,
        blob_count   BIGINT NOT NULL DEFAULT 0,
        created_at   BIGINT NOT NULL
    );
    CREATE TABLE devices (
        group_id      BYTEA NOT NULL,
        device_id     BYTEA NOT NULL,
        name          TEXT NOT NULL DEFAULT '',
        first_seen    BIGINT NOT NULL,
        last_seen     BIGINT NOT NULL,
        acked_cursor  BIGINT NOT NULL DEFAULT 0,
        revoked_at    BIGINT,
        revoked_by    BYTEA,
        revoke_reason TEXT,
        push_token    TEXT,
        push_platform TEXT,
        push_app_id   TEXT,
        PRIMARY KEY (group_id, device_id)
    );
    CREATE TABLE blobs (
        group_id   BYTEA NOT NULL,
        cursor     BIGINT NOT NULL,
        blob_id    BYTEA NOT NULL,
        sender     BYTEA NOT NULL,
        size       INTEGER NOT NULL,
        ciphertext BYTEA,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        PRIMARY KEY (group_id, cursor)
    );
    CREATE UNIQUE INDEX blobs_by_id ON blobs (group_id, blob_id);
    CREATE INDEX blobs_by_expiry ON blobs (expires_at);
    CREATE TABLE invites (
        lookup     BYTEA PRIMARY KEY,
        payload    BYTEA,
        expires_at BIGINT NOT NULL,
        state      TEXT NOT NULL DEFAULT 'open'
    );
    """,
    # 2: retired blobs lose their row; their ids are remembered in blob_ids until they
    # expire (see storage/common.py, ``retire``). Tombstones move there.
    """
    CREATE TABLE blob_ids (
        group_id   BYTEA NOT NULL,
        blob_id    BYTEA NOT NULL,
        cursor     BIGINT NOT NULL,
        sender     BYTEA NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        PRIMARY KEY (group_id, blob_id)
    );
    CREATE INDEX blob_ids_by_expiry ON blob_ids (expires_at);
    INSERT INTO blob_ids (group_id, blob_id, cursor, sender, created_at, expires_at)
        SELECT group_id, blob_id, cursor, sender, created_at, expires_at FROM blobs
        WHERE ciphertext IS NULL;
    DELETE FROM blobs WHERE ciphertext IS NULL;
    """,
    # 3: each group's membership log (see storage/common.py, ``log_append``). The records
    # go with their group, never with cleanup.
    """
    CREATE TABLE group_log (
        group_id   BYTEA NOT NULL REFERENCES groups (group_id) ON DELETE CASCADE,
        seq        BIGINT NOT NULL,
        hash       BYTEA NOT NULL,
        entry      BYTEA NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (group_id, seq)
    );
    """,
    # 4: chunks of large content (see postgres_chunks.py).
    postgres_chunks.MIGRATION,
)
SCHEMA_VERSION = len(MIGRATIONS)

# One statement, one round trip per push: the known-id check, the cursor (under the group's
# row lock), the insert and the NOTIFY (delivered at commit). Its row: the cursor (known or
# new; NULL if nothing was stored), the first push's time if the id was known, and whether
# the group exists.
_PUSH_SQL = f"""
WITH known AS (
    SELECT cursor, created_at FROM blobs WHERE group_id = %(g)s AND blob_id = %(b)s
    UNION ALL  -- a retired blob's id (one snapshot: a retirement is seen whole or not)
    SELECT cursor, created_at FROM blob_ids
    WHERE group_id = %(g)s AND blob_id = %(b)s AND NOT %(r)s  -- a repair stores it again
    LIMIT 1
), bump AS (
    UPDATE groups SET max_cursor = max_cursor + 1,
        bytes_stored = bytes_stored + %(n)s, blob_count = blob_count + 1
    WHERE group_id = %(g)s AND bytes_stored + (blob_count + 1) * %(ov)s + %(n)s <= %(max)s
        AND (%(mb)s = 0 OR blob_count < %(mb)s)
        AND NOT EXISTS (SELECT 1 FROM known)
    RETURNING max_cursor
), stored AS (
    INSERT INTO blobs (group_id, cursor, blob_id, sender, size, ciphertext, created_at,
        expires_at)
    SELECT %(g)s, max_cursor, %(b)s, %(s)s, %(n)s, %(c)s, %(t)s, %(x)s FROM bump
    RETURNING cursor
), forgot AS (
    DELETE FROM blob_ids WHERE %(r)s AND group_id = %(g)s AND blob_id = %(b)s
        AND EXISTS (SELECT 1 FROM stored)
), told AS (
    SELECT pg_notify('{CHANNEL}', json_build_object(
        'k', 'blob', 'g', encode(%(g)s, 'hex'), 'b', encode(%(b)s, 'hex'), 'c', cursor,
        's', encode(%(s)s, 'hex'), 't', %(t)s, 'n', %(n)s, 'o', %(o)s::text)::text)
    FROM stored
)
SELECT
    COALESCE((SELECT cursor FROM known), (SELECT cursor FROM stored)),
    (SELECT created_at FROM known),
    EXISTS (SELECT 1 FROM groups WHERE group_id = %(g)s),
    (SELECT count(*) FROM told)
"""


def write_failure(exc: psycopg.Error) -> StorageError:
    """The StorageError for a failed write: StorageFullError when the server's disk is
    full (SQLSTATE 53100), StorageUnavailableError when the server cannot be reached or
    ended the connection (see ``failure``); both are worth retrying later."""
    if isinstance(exc, psycopg.errors.DiskFull):
        return StorageFullError(f"database write failed: {exc}")
    return failure("database write failed", exc)


def failure(what: str, exc: BaseException) -> StorageError:
    """The StorageError for ``exc``: StorageUnavailableError for a deadline passed
    (TimeoutError, PoolTimeout) or an operational error (connection lost or refused, server
    shutting down, statement cancelled), else a plain StorageError."""
    if isinstance(exc, TimeoutError):
        return StorageUnavailableError(f"{what}: no answer within the storage deadline")
    if isinstance(exc, psycopg.OperationalError) and not isinstance(exc, psycopg.errors.DiskFull):
        return StorageUnavailableError(f"{what}: database unavailable: {exc}")
    return StorageError(f"{what}: {exc}")


@dataclass(frozen=True, slots=True)
class _BatchedPush:
    group_id: bytes
    params: dict[str, Any]
    future: asyncio.Future[PushOutcome]

    def outcome(self, row: Row | None) -> PushOutcome | StorageError:
        if row is None:
            return StorageError("the push statement returned no row")
        try:
            return common.push_outcome(
                self.group_id, self.params["t"], cursor=row[0], known_at=row[1], group_exists=row[2]
            )
        except StorageError as exc:
            return exc


@functools.lru_cache(maxsize=256)
def _dialect(text: str, lock: bool) -> str:
    """Shared SQL (``?`` placeholders) as psycopg takes it."""
    return text.replace("%", "%%").replace("?", "%s") + (" FOR UPDATE" if lock else "")


def _may_be_dead(conn: Conn) -> bool:
    """Whether an idle connection is closed or has something to read (which, idle, it
    should not: the server ended it, or sent a notice); no round trip."""
    if conn.closed or conn.broken:
        return True
    if not hasattr(select, "poll"):  # not on Linux or macOS: always check
        return True
    try:
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError, psycopg.Error):
        return True


async def run_proc(conn: Conn, proc: Proc[T]) -> T:
    """Run a shared procedure to its end on ``conn``."""
    value: Any = None
    while True:
        try:
            query = proc.send(value)
        except StopIteration as done:
            result: T = done.value
            return result
        cur = await conn.execute(_dialect(query.sql, query.lock), query.args)
        if query.fetch is Fetch.ONE:
            value = await cur.fetchone()
        elif query.fetch is Fetch.ALL:
            value = await cur.fetchall()
        else:
            value = cur.rowcount


class PostgresStorage(PostgresChunks):
    def __init__(
        self,
        url: str,
        *,
        min_size: int = 2,
        max_size: int = 16,
        open_timeout: float = OPEN_TIMEOUT,
        listen_retry: float = LISTEN_RETRY,
        call_timeout: float = CALL_TIMEOUT,
        pool_timeout: float = POOL_TIMEOUT,
        connect_timeout: int = CONNECT_TIMEOUT,
    ) -> None:
        self.url = url
        self.origin = os.urandom(8).hex()  # tells this relay's notifications from others'
        self.open_timeout = open_timeout
        self.listen_retry = listen_retry
        self.call_timeout = call_timeout
        self.connect_timeout = connect_timeout
        self._pool = AsyncConnectionPool(
            url,
            min_size=min_size,
            max_size=max_size,
            open=False,
            kwargs={"autocommit": True, "connect_timeout": connect_timeout},
            timeout=pool_timeout,
            reconnect_timeout=RECONNECT_TIMEOUT,
        )
        self.dead_connections = 0  # found dead when taken from the pool (and replaced)
        self._listen_failures = 0
        self._handlers: list[Callable[[StorageEvent], None]] = []
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._push_queue: list[_BatchedPush] = []
        self._push_writer: asyncio.Task[None] | None = None
        self.commits = 0

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self) -> None:
        # The pool logs every failed attempt; the one error below says it all.
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
        try:
            await self._pool.open(wait=True, timeout=self.open_timeout)
        except (psycopg.Error, PoolTimeout) as exc:
            raise StorageError(
                f"cannot connect to PostgreSQL at {redact_url(self.url)}: {exc}"
            ) from None
        try:
            await self._migrate()
            self._listener = asyncio.get_running_loop().create_task(self._listen_forever())
            # Only once it listens does the relay hear every other relay's later writes.
            await asyncio.wait_for(self._listening.wait(), self.open_timeout)
        except TimeoutError:
            await self.close()
            raise StorageError(
                f"cannot listen for other relays' events at {redact_url(self.url)}"
            ) from None
        except StorageError:
            await self.close()
            raise

    async def close(self) -> None:
        if self._push_writer is not None:
            await asyncio.gather(self._push_writer, return_exceptions=True)
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        await self._pool.close()

    async def maintain(self) -> None:
        """Nothing to do: PostgreSQL's autovacuum returns the space."""

    async def _migrate(self) -> None:
        try:
            async with self._pool.connection() as conn, conn.transaction():
                # One relay migrates at a time; the others wait here, then find it done.
                await conn.execute("SELECT pg_advisory_xact_lock(7461021)")
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS zerok_schema (version INTEGER NOT NULL)"
                )
                cur = await conn.execute("SELECT max(version) FROM zerok_schema")
                row = await cur.fetchone()
                current = int(row[0]) if row and row[0] is not None else 0
                if current > SCHEMA_VERSION:
                    raise StorageError(
                        f"the database has schema version {current}, newer than this relay's "
                        f"{SCHEMA_VERSION}; upgrade zerok"
                    )
                for version in range(current, SCHEMA_VERSION):
                    await conn.execute(MIGRATIONS[version])
                    await conn.execute(
                        "INSERT INTO zerok_schema (version) VALUES (%s)", (version + 1,)
                    )
        except psycopg.Error as exc:
            raise StorageError(f"migrating the PostgreSQL schema failed: {exc}") from exc

    # -- connections ----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Conn]:
        """A pooled connection known to work, as the pool's ``connection()`` gives it
        (committed or rolled back at the end, returned to the pool, replaced if broken)."""
        conn = await self._checked_out()
        try:
            async with conn:
                yield conn
        finally:
            await self._pool.putconn(conn)

    async def _checked_out(self) -> Conn:
        """A connection from the pool that is not known to be dead.

        An idle connection has nothing to read unless the server said something: a backend
        ended by a restart or pg_terminate_backend sends its error and closes the socket.
        So the socket is polled first (no round trip), and only a connection with something
        to read is checked with an empty statement. (Checking every checkout that way, the
        pool's ``check`` option, cost a third of sequential push throughput.) A dead one has
        every idle connection checked and the dead ones replaced, and the next one is taken:
        after a restart, no caller sees an error. A connection cut without a word (a network
        partition) is not seen here; the call then fails within ``call_timeout``."""
        conn = await self._pool.getconn()
        if not _may_be_dead(conn):
            return conn
        try:
            await AsyncConnectionPool.check_connection(conn)
        except psycopg.Error as exc:
            await self._pool.putconn(conn)  # broken: the pool closes it and opens another
            self.dead_connections += 1
            log.info("a pooled PostgreSQL connection was dead (%s); checking the others", exc)
            await self._pool.check()
            return await self._pool.getconn()
        except BaseException:
            await self._pool.putconn(conn)
            raise
        return conn

    # -- running procedures ---------------------------------------------------------------

    async def _read_proc(self, proc: Proc[T]) -> T:
        try:
            async with asyncio.timeout(self.call_timeout), self._connection() as conn:
                return await run_proc(conn, proc)
        except (psycopg.Error, TimeoutError) as exc:
            raise failure("database read failed", exc) from exc

    async def _write_proc(self, make: Callable[[], Proc[T]]) -> T:
        try:
            async with (
                asyncio.timeout(self.call_timeout),
                self._connection() as conn,
                conn.transaction(),
            ):
                result = await run_proc(conn, make())
        except TimeoutError as exc:
            raise failure("database write failed", exc) from exc
        except psycopg.Error as exc:
            raise write_failure(exc) from exc
        self.commits += 1
        return result

    async def revoke_device(
        self, group_id: GroupId, device_id: DeviceId, by: DeviceId, reason: str, now: int
    ) -> DeviceRecord:
        return await self._write_proc(
            lambda: self._revoke_and_tell(group_id, device_id, by, reason, now)
        )

    def _revoke_and_tell(
        self, group_id: GroupId, device_id: DeviceId, by: DeviceId, reason: str, now: int
    ) -> Proc[DeviceRecord]:
        record = yield from common.revoke_device(group_id, device_id, by, reason, now)
        assert record.revoked_by is not None
        note = {
            "k": "revoke",
            "g": bytes(group_id).hex(),
            "d": bytes(device_id).hex(),
            "by": bytes(record.revoked_by).hex(),
            "t": record.revoked_at,
            "r": record.revoke_reason,
            "o": self.origin,
        }
        yield from common.execute("SELECT pg_notify(?, ?)", CHANNEL, json.dumps(note))
        return record

    def _log_append_proc(
        self, group_id: GroupId, records: Sequence[LogRecord], now: int
    ) -> Proc[LogRecord | LogConflict]:
        appended = yield from common.log_append(group_id, records, now)
        if isinstance(appended, LogRecord):  # a conflict stored nothing: nothing to tell
            note = {"k": "log", "g": bytes(group_id).hex(), "s": appended.seq, "o": self.origin}
            yield from common.execute("SELECT pg_notify(?, ?)", CHANNEL, json.dumps(note))
        return appended

    # -- pushes: group commit -------------------------------------------------------------

    async def push(
        self,
        group_id: GroupId,
        blob_id: BlobId,
        sender: DeviceId,
        ciphertext: bytes,
        *,
        now: int,
        expires_at: int,
        max_group_bytes: int,
        max_group_blobs: int = 0,
        blob_overhead: int = 0,
        repair: bool = False,
    ) -> PushOutcome:
        if self._pool.closed:
            raise StorageError("the storage is not open (or already closed)")
        item = _BatchedPush(
            bytes(group_id),
            {
                "g": bytes(group_id),
                "b": bytes(blob_id),
                "n": len(ciphertext),
                "max": max_group_bytes,
                "mb": max_group_blobs,
                "ov": blob_overhead,
                "s": bytes(sender),
                "c": bytes(ciphertext),
                "t": now,
                "x": expires_at,
                "o": self.origin,
                "r": repair,
            },
            asyncio.get_running_loop().create_future(),
        )
        self._push_queue.append(item)
        if self._push_writer is None or self._push_writer.done():
            self._push_writer = asyncio.get_running_loop().create_task(self._write_pushes())
        return await item.future

    async def _write_pushes(self) -> None:
        """Run queued pushes in shared transactions: one commit (one fsync) and one pipelined
        round trip for many, locks taken in group order so that two relays' batches cannot
        deadlock. A batch that fails as a whole is retried push by push."""
        while self._push_queue:
            batch = self._push_queue[:PUSH_BATCH]
            del self._push_queue[:PUSH_BATCH]
            batch.sort(key=lambda item: item.group_id)
            results: list[PushOutcome | StorageError] = []
            try:
                async with asyncio.timeout(self.call_timeout):
                    try:
                        rows = await self._run_push_batch(batch)
                    except psycopg.OperationalError as exc:
                        if isinstance(exc, PoolTimeout | psycopg.errors.DiskFull):
                            raise
                        # The connection died under the batch (a restart): once more on
                        # another. Safe: a push that did commit is found by its blob id.
                        log.info("a push batch lost its connection (%s); retrying once", exc)
                        rows = await self._run_push_batch(batch)
                self.commits += 1
                results = [item.outcome(row) for item, row in zip(batch, rows, strict=True)]
            except (psycopg.Error, TimeoutError) as exc:
                down = write_failure(exc) if isinstance(exc, psycopg.Error) else None
                if down is None or isinstance(down, StorageUnavailableError):
                    # The database is unreachable: so it is for every push waiting now.
                    batch += self._push_queue
                    self._push_queue.clear()
                    results = [down or failure("database write failed", exc)] * len(batch)
                else:
                    for item in batch:
                        results.append(await self._run_push_alone(item))
                        if isinstance(results[-1], StorageUnavailableError):
                            results += [results[-1]] * (len(batch) - len(results))
                            break
            for item, result in zip(batch, results, strict=True):
                if item.future.done():
                    continue
                if isinstance(result, StorageError):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)

    async def _run_push_batch(self, batch: list[_BatchedPush]) -> list[Row | None]:
        async with self._connection() as conn, conn.transaction():
            async with conn.pipeline():
                cursors = [await conn.execute(_PUSH_SQL, item.params) for item in batch]
            return [await cur.fetchone() for cur in cursors]

    async def _run_push_alone(self, item: _BatchedPush) -> PushOutcome | StorageError:
        try:
            async with asyncio.timeout(self.call_timeout), self._connection() as conn:
                try:
                    async with conn.transaction():
                        row = await (await conn.execute(_PUSH_SQL, item.params)).fetchone()
                except psycopg.errors.UniqueViolation:
                    # The same blob id committed meanwhile through another relay: asked
                    # again, the statement finds it and answers with the winner's cursor.
                    async with conn.transaction():
                        row = await (await conn.execute(_PUSH_SQL, item.params)).fetchone()
                self.commits += 1
                return item.outcome(row)
        except TimeoutError as exc:
            return failure("database write failed", exc)
        except psycopg.Error as exc:
            return write_failure(exc)

    # -- cross-relay events ---------------------------------------------------------------

    def subscribe(self, handler: Callable[[StorageEvent], None]) -> None:
        self._handlers.append(handler)

    def _dispatch(self, event: StorageEvent) -> None:
        for handler in self._handlers:
            try:
                handler(event)
            except Exception:
                log.exception("storage event handler failed")

    async def _listen_forever(self) -> None:
        first = True
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.url,
                    autocommit=True,
                    application_name=LISTENER_NAME,
                    connect_timeout=self.connect_timeout,
                )
            except psycopg.Error as exc:
                # Said once an outage, not every listen_retry.
                self._listen_failures += 1
                if self._listen_failures == 1:
                    log.warning("cannot listen for other relays' events: %s; retrying", exc)
                await asyncio.sleep(self.listen_retry)
                continue
            self._listen_failures = 0
            try:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
                self._listening.set()
                if not first:
                    self._dispatch(Resync())  # what happened while we were not listening
                first = False
                async for note in conn.notifies():
                    self._on_notify(note.payload)
            except psycopg.Error as exc:
                log.warning("lost the event listener connection: %s; reconnecting", exc)
            finally:
                self._listening.clear()
                with contextlib.suppress(psycopg.Error):
                    await conn.close()
            await asyncio.sleep(self.listen_retry)

    def _on_notify(self, payload: str) -> None:
        try:
            doc = json.loads(payload)
            if doc["o"] == self.origin:
                return
            group_id = GroupId(bytes.fromhex(doc["g"]))
            if doc["k"] == "blob":
                self._dispatch(
                    BlobStored(
                        group_id,
                        BlobId(bytes.fromhex(doc["b"])),
                        int(doc["c"]),
                        DeviceId(bytes.fromhex(doc["s"])),
                        int(doc["t"]),
                        int(doc["n"]),
                    )
                )
            elif doc["k"] == "revoke":
                self._dispatch(
                    DeviceWasRevoked(
                        group_id,
                        DeviceId(bytes.fromhex(doc["d"])),
                        DeviceId(bytes.fromhex(doc["by"])),
                        int(doc["t"]),
                        str(doc["r"]),
                    )
                )
            elif doc["k"] == "log":
                self._dispatch(LogAppended(group_id, int(doc["s"])))
        except (ValueError, KeyError, TypeError, WireError) as exc:
            log.warning("ignoring a malformed event from another relay: %s", exc)
