"""PostgreSQL storage: several relays share one database (DESIGN §5, scale-out).

Semantics match SQLiteStorage. Cursors stay gap-free across relays because a PUSH takes
the group's row lock (``UPDATE groups ... RETURNING max_cursor``) in the transaction that
inserts the blob: concurrent pushes to one group serialise on that row, and a rolled-back
push gives its cursor back. A retried PUSH racing its first attempt on another relay hits
the unique index on (group_id, blob_id) and is answered with the winner's cursor.

Each push and revocation also sends a PostgreSQL NOTIFY from inside its transaction, so it
is delivered exactly when (and only if) the transaction commits. Every relay LISTENs on one
connection; when that connection is lost and re-established, the relay is told to resync
(``Resync``) and catches up from the tables, so no notification is lost for good. Payloads
carry ids, cursors and sizes only: nothing secret, nothing of the blob.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from zerok.errors import StorageError
from zerok.relay.config import redact_url
from zerok.relay.storage.base import (
    BlobStored,
    CleanupStats,
    DeleteOutcome,
    DeviceRecord,
    DeviceWasRevoked,
    GroupRecord,
    InviteTake,
    PullPage,
    PushOutcome,
    Resync,
    StorageEvent,
    page_length,
)
from zerok.wire import BlobId, DeviceId, GroupId, StoredBlob

log = logging.getLogger("zerok.relay.postgres")

CHANNEL = "zerok_events"
INVITE_TOMBSTONE_MS = 24 * 3600 * 1000
LISTEN_RETRY = 1.0  # seconds between attempts to re-establish the listener
LISTENER_NAME = "zerok-relay-listener"  # application_name of the LISTEN connection

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
)
SCHEMA_VERSION = len(MIGRATIONS)

# Same rule as SQLite's: delivered to every other known, non-revoked device, and at least
# one such device exists.
_DELIVERED = (
    "EXISTS (SELECT 1 FROM devices d WHERE d.group_id = blobs.group_id"
    " AND d.device_id <> blobs.sender AND d.revoked_at IS NULL)"
    " AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.group_id = blobs.group_id"
    " AND d.device_id <> blobs.sender AND d.revoked_at IS NULL"
    " AND d.acked_cursor < blobs.cursor)"
)
_DEVICE_COLUMNS = (
    "group_id, device_id, name, last_seen, acked_cursor, revoked_at, revoked_by,"
    " revoke_reason, push_token, push_platform, push_app_id"
)

Conn = psycopg.AsyncConnection[TupleRow]
PUSH_BATCH = 256
_KNOWN_BLOB = "SELECT cursor, created_at FROM blobs WHERE group_id = %s AND blob_id = %s"


@dataclass(frozen=True, slots=True)
class _BatchedPush:
    group_id: bytes
    blob_id: bytes
    params: dict[str, Any]
    future: asyncio.Future[PushOutcome]


# One statement, one round trip per push: the known-id check, the cursor (under the group's
# row lock), the insert and the NOTIFY (delivered at commit). Its row: the known cursor and
# time (a retry), or the new cursor, and whether the group exists.
_PUSH_SQL = """
WITH known AS (
    SELECT cursor, created_at FROM blobs WHERE group_id = %(g)s AND blob_id = %(b)s
), bump AS (
    UPDATE groups SET max_cursor = max_cursor + 1,
        bytes_stored = bytes_stored + %(n)s, blob_count = blob_count + 1
    WHERE group_id = %(g)s AND bytes_stored + %(n)s <= %(max)s
        AND NOT EXISTS (SELECT 1 FROM known)
    RETURNING max_cursor
), stored AS (
    INSERT INTO blobs (group_id, cursor, blob_id, sender, size, ciphertext, created_at,
        expires_at)
    SELECT %(g)s, max_cursor, %(b)s, %(s)s, %(n)s, %(c)s, %(t)s, %(x)s FROM bump
    RETURNING cursor
), told AS (
    SELECT pg_notify('zerok_events', json_build_object(
        'k', 'blob', 'g', encode(%(g)s, 'hex'), 'b', encode(%(b)s, 'hex'), 'c', cursor,
        's', encode(%(s)s, 'hex'), 't', %(t)s, 'n', %(n)s, 'o', %(o)s::text)::text)
    FROM stored
)
SELECT
    COALESCE((SELECT cursor FROM known), (SELECT cursor FROM stored)),
    (SELECT created_at FROM known),
    EXISTS (SELECT 1 FROM groups WHERE group_id = %(g)s),
    EXISTS (SELECT 1 FROM known),
    (SELECT count(*) FROM told)
"""


def _push_outcome(item: _BatchedPush, row: tuple[Any, ...]) -> PushOutcome | StorageError:
    now = int(item.params["t"])
    if len(row) == 4:  # from the lost-race path: (cursor, created_at, _, duplicate)
        return PushOutcome(row[0], row[1], duplicate=True)
    cursor, known_at, group_exists, duplicate, _ = row
    if duplicate:
        return PushOutcome(cursor, known_at, duplicate=True)
    if cursor is None:
        if not group_exists:
            return StorageError(f"unknown group {GroupId(item.group_id)}")
        return PushOutcome(0, now, quota_exceeded=True)
    return PushOutcome(cursor, now)


def _device_from_row(r: tuple[Any, ...]) -> DeviceRecord:
    return DeviceRecord(
        group_id=GroupId(bytes(r[0])),
        device_id=DeviceId(bytes(r[1])),
        name=r[2],
        last_seen=r[3],
        acked_cursor=r[4],
        revoked_at=r[5],
        revoked_by=DeviceId(bytes(r[6])) if r[6] is not None else None,
        revoke_reason=r[7],
        push_token=r[8],
        push_platform=r[9],
        push_app_id=r[10],
    )


class PostgresStorage:
    def __init__(self, url: str, *, min_size: int = 2, max_size: int = 16) -> None:
        self.url = url
        self.origin = os.urandom(8).hex()  # tells this relay's notifications from others'
        self._pool = AsyncConnectionPool(
            url, min_size=min_size, max_size=max_size, open=False, kwargs={"autocommit": True}
        )
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
            await self._pool.open(wait=True, timeout=10)
        except (psycopg.Error, PoolTimeout) as exc:
            raise StorageError(
                f"cannot connect to PostgreSQL at {redact_url(self.url)}: {exc}"
            ) from None
        await self._migrate()
        self._listener = asyncio.get_running_loop().create_task(self._listen_forever())

    async def close(self) -> None:
        if self._push_writer is not None:
            await asyncio.gather(self._push_writer, return_exceptions=True)
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        await self._pool.close()

    async def _migrate(self) -> None:
        async with self._pool.connection() as conn, conn.transaction():
            # One relay migrates at a time; the others wait here, then find it done.
            await conn.execute("SELECT pg_advisory_xact_lock(7461021)")
            await conn.execute("CREATE TABLE IF NOT EXISTS zerok_schema (version INTEGER NOT NULL)")
            row = await (await conn.execute("SELECT max(version) FROM zerok_schema")).fetchone()
            current = int(row[0]) if row and row[0] is not None else 0
            if current > SCHEMA_VERSION:
                raise StorageError(
                    f"the database has schema version {current}, newer than this relay's "
                    f"{SCHEMA_VERSION}; upgrade zerok"
                )
            for version in range(current, SCHEMA_VERSION):
                await conn.execute(MIGRATIONS[version])
                await conn.execute("INSERT INTO zerok_schema (version) VALUES (%s)", (version + 1,))

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
                    self.url, autocommit=True, application_name=LISTENER_NAME
                )
            except psycopg.Error as exc:
                log.warning("cannot listen for other relays' events: %s; retrying", exc)
                await asyncio.sleep(LISTEN_RETRY)
                continue
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
            await asyncio.sleep(LISTEN_RETRY)

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
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring a malformed event from another relay: %s", exc)

    async def _notify(self, conn: Conn, doc: dict[str, Any]) -> None:
        doc["o"] = self.origin
        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, json.dumps(doc)))

    # -- helpers --------------------------------------------------------------------------

    async def _fetchone(self, query: str, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(query, args)
                return await cur.fetchone()
        except psycopg.Error as exc:
            raise StorageError(f"database read failed: {exc}") from exc

    async def _fetchall(self, query: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(query, args)
                return await cur.fetchall()
        except psycopg.Error as exc:
            raise StorageError(f"database read failed: {exc}") from exc

    @contextlib.asynccontextmanager
    async def _tx(self) -> Any:
        try:
            async with self._pool.connection() as conn, conn.transaction():
                yield conn
            self.commits += 1
        except psycopg.Error as exc:
            raise StorageError(f"database write failed: {exc}") from exc

    # -- groups and devices -----------------------------------------------------------------

    async def get_group(self, group_id: GroupId) -> GroupRecord | None:
        row = await self._fetchone(
            "SELECT group_id, auth_key, max_cursor, bytes_stored, created_at FROM groups"
            " WHERE group_id = %s",
            (bytes(group_id),),
        )
        if row is None:
            return None
        return GroupRecord(GroupId(bytes(row[0])), bytes(row[1]), row[2], row[3], row[4])

    async def register_group(self, group_id: GroupId, auth_key: bytes, now: int) -> GroupRecord:
        async with self._tx() as conn:
            await conn.execute(
                "INSERT INTO groups (group_id, auth_key, created_at) VALUES (%s, %s, %s)"
                " ON CONFLICT (group_id) DO NOTHING",
                (bytes(group_id), bytes(auth_key), now),
            )
        record = await self.get_group(group_id)
        assert record is not None
        return record

    async def touch_device(
        self, group_id: GroupId, device_id: DeviceId, name: str, now: int
    ) -> DeviceRecord:
        async with self._tx() as conn:
            await conn.execute(
                "INSERT INTO devices (group_id, device_id, name, first_seen, last_seen)"
                " VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (group_id, device_id) DO UPDATE SET"
                " last_seen = excluded.last_seen,"
                " name = CASE WHEN excluded.name = '' THEN devices.name ELSE excluded.name END",
                (bytes(group_id), bytes(device_id), name, now, now),
            )
        record = await self.get_device(group_id, device_id)
        assert record is not None
        return record

    async def get_device(self, group_id: GroupId, device_id: DeviceId) -> DeviceRecord | None:
        row = await self._fetchone(
            f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE group_id = %s AND device_id = %s",
            (bytes(group_id), bytes(device_id)),
        )
        return _device_from_row(row) if row else None

    async def list_devices(self, group_id: GroupId) -> list[DeviceRecord]:
        rows = await self._fetchall(
            f"SELECT {_DEVICE_COLUMNS} FROM devices WHERE group_id = %s ORDER BY first_seen",
            (bytes(group_id),),
        )
        return [_device_from_row(r) for r in rows]

    async def revoke_device(
        self, group_id: GroupId, device_id: DeviceId, by: DeviceId, reason: str, now: int
    ) -> DeviceRecord:
        async with self._tx() as conn:
            await conn.execute(
                "INSERT INTO devices (group_id, device_id, first_seen, last_seen,"
                " revoked_at, revoked_by, revoke_reason) VALUES (%s, %s, %s, 0, %s, %s, %s)"
                " ON CONFLICT (group_id, device_id) DO UPDATE SET"
                " revoked_at = COALESCE(devices.revoked_at, excluded.revoked_at),"
                " revoked_by = COALESCE(devices.revoked_by, excluded.revoked_by),"
                " revoke_reason = COALESCE(devices.revoke_reason, excluded.revoke_reason),"
                " push_token = NULL, push_platform = NULL, push_app_id = NULL",
                (bytes(group_id), bytes(device_id), now, now, bytes(by), reason),
            )
            row = await (
                await conn.execute(
                    "SELECT revoked_by, revoked_at, revoke_reason FROM devices"
                    " WHERE group_id = %s AND device_id = %s",
                    (bytes(group_id), bytes(device_id)),
                )
            ).fetchone()
            assert row is not None
            await self._notify(
                conn,
                {
                    "k": "revoke",
                    "g": bytes(group_id).hex(),
                    "d": bytes(device_id).hex(),
                    "by": bytes(row[0]).hex(),
                    "t": row[1],
                    "r": row[2],
                },
            )
        record = await self.get_device(group_id, device_id)
        assert record is not None
        return record

    async def set_push_token(
        self,
        group_id: GroupId,
        device_id: DeviceId,
        token: str | None,
        platform: str | None,
        app_id: str | None,
    ) -> None:
        async with self._tx() as conn:
            await conn.execute(
                "UPDATE devices SET push_token = %s, push_platform = %s, push_app_id = %s"
                " WHERE group_id = %s AND device_id = %s",
                (token, platform, app_id, bytes(group_id), bytes(device_id)),
            )

    # -- blobs ----------------------------------------------------------------------------

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
    ) -> PushOutcome:
        if self._pool.closed:
            raise StorageError("the storage is not open (or already closed)")
        item = _BatchedPush(
            bytes(group_id),
            bytes(blob_id),
            {
                "g": bytes(group_id),
                "b": bytes(blob_id),
                "n": len(ciphertext),
                "max": max_group_bytes,
                "s": bytes(sender),
                "c": bytes(ciphertext),
                "t": now,
                "x": expires_at,
                "o": self.origin,
            },
            asyncio.get_running_loop().create_future(),
        )
        self._push_queue.append(item)
        if self._push_writer is None or self._push_writer.done():
            self._push_writer = asyncio.get_running_loop().create_task(self._write_pushes())
        return await item.future

    # -- group commit for pushes ----------------------------------------------------------

    async def _write_pushes(self) -> None:
        """Run queued pushes in shared transactions: one commit (one fsync) and one pipelined
        round trip for many, locks taken in group order so that two relays' batches cannot
        deadlock. A batch that fails as a whole is retried push by push."""
        while self._push_queue:
            batch = self._push_queue[:PUSH_BATCH]
            del self._push_queue[:PUSH_BATCH]
            batch.sort(key=lambda item: item.group_id)
            rows: list[tuple[Any, ...] | BaseException]
            try:
                rows = list(await self._run_push_batch(batch))
                self.commits += 1
            except psycopg.Error:
                rows = [await self._run_push_alone(item) for item in batch]
            for item, row in zip(batch, rows, strict=True):
                result = row if isinstance(row, BaseException) else _push_outcome(item, row)
                if item.future.done():
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)

    async def _run_push_batch(self, batch: list[_BatchedPush]) -> list[tuple[Any, ...]]:
        async with self._pool.connection() as conn, conn.transaction():
            async with conn.pipeline():
                cursors = [await conn.execute(_PUSH_SQL, item.params) for item in batch]
            rows = [await cur.fetchone() for cur in cursors]
        return [row if row is not None else () for row in rows]

    async def _run_push_alone(self, item: _BatchedPush) -> tuple[Any, ...] | BaseException:
        try:
            async with self._pool.connection() as conn:
                try:
                    async with conn.transaction():
                        row = await (await conn.execute(_PUSH_SQL, item.params)).fetchone()
                    self.commits += 1
                except psycopg.errors.UniqueViolation:
                    # The same blob id committed meanwhile through another relay.
                    known = await (
                        await conn.execute(_KNOWN_BLOB, (item.group_id, item.blob_id))
                    ).fetchone()
                    if known is None:
                        return StorageError("a push conflicted and the winner vanished")
                    return (known[0], known[1], None, True)
                return row if row is not None else ()
        except psycopg.Error as exc:
            return StorageError(f"database write failed: {exc}")

    async def pull(self, group_id: GroupId, after: int, limit: int, max_bytes: int) -> PullPage:
        gid = bytes(group_id)
        sizes = await self._fetchall(
            "SELECT cursor, size FROM blobs WHERE group_id = %s AND cursor > %s"
            " AND ciphertext IS NOT NULL ORDER BY cursor LIMIT %s",
            (gid, after, limit + 1),
        )
        take = page_length([size for _, size in sizes], limit, max_bytes)
        group = await self.get_group(group_id)
        max_cursor = group.max_cursor if group else 0
        if not take:
            return PullPage([], False, max_cursor)
        rows = await self._fetchall(
            "SELECT blob_id, cursor, sender, ciphertext, created_at FROM blobs"
            " WHERE group_id = %s AND cursor > %s AND cursor <= %s AND ciphertext IS NOT NULL"
            " ORDER BY cursor",
            (gid, after, sizes[take - 1][0]),
        )
        blobs = [
            StoredBlob(
                blob_id=BlobId(bytes(r[0])),
                cursor=r[1],
                sender=DeviceId(bytes(r[2])),
                ciphertext=bytes(r[3]),
                timestamp=r[4],
            )
            for r in rows
        ]
        return PullPage(blobs, len(sizes) > take, max_cursor)

    async def ack(self, group_id: GroupId, device_id: DeviceId, cursor: int) -> None:
        async with self._tx() as conn:
            await conn.execute(
                "UPDATE devices SET acked_cursor = GREATEST(acked_cursor, LEAST(%s,"
                " (SELECT max_cursor FROM groups WHERE group_id = %s)))"
                " WHERE group_id = %s AND device_id = %s",
                (cursor, bytes(group_id), bytes(group_id), bytes(device_id)),
            )

    async def delete_blob(
        self, group_id: GroupId, blob_id: BlobId, device_id: DeviceId, *, force: bool
    ) -> DeleteOutcome:
        async with self._tx() as conn:
            row = await (
                await conn.execute(
                    "SELECT cursor, sender, ciphertext IS NOT NULL FROM blobs"
                    " WHERE group_id = %s AND blob_id = %s FOR UPDATE",
                    (bytes(group_id), bytes(blob_id)),
                )
            ).fetchone()
            if row is None:
                return DeleteOutcome(found=False, owner=False, deleted=False)
            cursor, sender, live = row
            if bytes(sender) != bytes(device_id):
                return DeleteOutcome(found=True, owner=False, deleted=False)
            if not live:
                return DeleteOutcome(found=True, owner=True, deleted=True)
            where = "cursor = %s" if force else f"cursor = %s AND {_DELIVERED}"
            deleted = await _tombstone(conn, bytes(group_id), where, (cursor,))
            return DeleteOutcome(found=True, owner=True, deleted=bool(deleted))

    async def pending_for(self, group_id: GroupId, device_id: DeviceId) -> int:
        row = await self._fetchone(
            "SELECT COUNT(*) FROM blobs WHERE group_id = %s AND ciphertext IS NOT NULL"
            " AND sender <> %s AND cursor > COALESCE((SELECT acked_cursor FROM devices"
            " WHERE group_id = %s AND device_id = %s), 0)",
            (bytes(group_id), bytes(device_id), bytes(group_id), bytes(device_id)),
        )
        return int(row[0]) if row else 0

    async def pending_by_device(self, group_id: GroupId) -> dict[DeviceId, int]:
        rows = await self._fetchall(
            "SELECT d.device_id, COUNT(b.cursor) FROM devices d"
            " LEFT JOIN blobs b ON b.group_id = d.group_id AND b.ciphertext IS NOT NULL"
            " AND b.sender <> d.device_id AND b.cursor > d.acked_cursor"
            " WHERE d.group_id = %s GROUP BY d.device_id",
            (bytes(group_id),),
        )
        return {DeviceId(bytes(r[0])): int(r[1]) for r in rows}

    async def blobs_after(self, group_id: GroupId, after: int, limit: int) -> list[BlobStored]:
        rows = await self._fetchall(
            "SELECT blob_id, cursor, sender, created_at, size FROM blobs"
            " WHERE group_id = %s AND cursor > %s AND ciphertext IS NOT NULL"
            " ORDER BY cursor LIMIT %s",
            (bytes(group_id), after, limit),
        )
        return [
            BlobStored(group_id, BlobId(bytes(r[0])), r[1], DeviceId(bytes(r[2])), r[3], r[4])
            for r in rows
        ]

    # -- invites --------------------------------------------------------------------------

    async def put_invite(self, lookup: bytes, payload: bytes, expires_at: int) -> bool:
        async with self._tx() as conn:
            cur = await conn.execute(
                "INSERT INTO invites (lookup, payload, expires_at) VALUES (%s, %s, %s)"
                " ON CONFLICT (lookup) DO NOTHING",
                (lookup, payload, expires_at),
            )
            return bool(cur.rowcount == 1)

    async def take_invite(self, lookup: bytes, now: int) -> InviteTake:
        async with self._tx() as conn:
            row = await (
                await conn.execute(
                    "SELECT payload, expires_at, state FROM invites WHERE lookup = %s FOR UPDATE",
                    (lookup,),
                )
            ).fetchone()
            if row is None:
                return InviteTake("unknown")
            payload, expires_at, state = row
            if state != "open":
                return InviteTake(state)
            status = "ok" if expires_at > now else "expired"
            await conn.execute(
                "UPDATE invites SET payload = NULL, state = %s WHERE lookup = %s",
                ("used" if status == "ok" else "expired", lookup),
            )
            return InviteTake(status, bytes(payload) if status == "ok" else None)

    async def delete_invite(self, lookup: bytes) -> bool:
        async with self._tx() as conn:
            cur = await conn.execute(
                "UPDATE invites SET payload = NULL, state = 'cancelled'"
                " WHERE lookup = %s AND state = 'open'",
                (lookup,),
            )
            return bool(cur.rowcount == 1)

    # -- housekeeping ---------------------------------------------------------------------

    async def cleanup(self, now: int) -> CleanupStats:
        async with self._tx() as conn:
            live = await (
                await conn.execute(
                    "SELECT group_id, COUNT(*), SUM(size) FROM blobs"
                    " WHERE expires_at <= %s AND ciphertext IS NOT NULL GROUP BY group_id",
                    (now,),
                )
            ).fetchall()
            for group_id, count, size in live:
                await conn.execute(
                    "UPDATE groups SET bytes_stored = bytes_stored - %s,"
                    " blob_count = blob_count - %s WHERE group_id = %s",
                    (size, count, group_id),
                )
            await conn.execute("DELETE FROM blobs WHERE expires_at <= %s", (now,))
            acked = 0
            groups = await (await conn.execute("SELECT group_id FROM groups")).fetchall()
            for (group_id,) in groups:
                acked += await _tombstone(conn, bytes(group_id), _DELIVERED, ())
            invites = await conn.execute(
                "UPDATE invites SET payload = NULL, state = 'expired'"
                " WHERE state = 'open' AND expires_at <= %s",
                (now,),
            )
            expired_invites = invites.rowcount
            await conn.execute(
                "DELETE FROM invites WHERE expires_at <= %s", (now - INVITE_TOMBSTONE_MS,)
            )
        return CleanupStats(sum(int(r[1]) for r in live), acked, expired_invites)

    async def stats(self) -> tuple[int, int]:
        row = await self._fetchone("SELECT COUNT(*), COALESCE(SUM(blob_count), 0) FROM groups", ())
        assert row is not None
        return int(row[0]), int(row[1])


async def _tombstone(conn: Conn, group_id: bytes, where: str, args: tuple[Any, ...]) -> int:
    row = await (
        await conn.execute(
            "WITH gone AS (UPDATE blobs SET ciphertext = NULL WHERE group_id = %s"
            f" AND ciphertext IS NOT NULL AND {where} RETURNING size)"
            " SELECT COUNT(*), COALESCE(SUM(size), 0) FROM gone",
            (group_id, *args),
        )
    ).fetchone()
    count, size = (int(row[0]), int(row[1])) if row else (0, 0)
    if count:
        await conn.execute(
            "UPDATE groups SET bytes_stored = bytes_stored - %s, blob_count = blob_count - %s"
            " WHERE group_id = %s",
            (size, count, group_id),
        )
    return count
