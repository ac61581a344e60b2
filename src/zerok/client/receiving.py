"""SyncClient's receiving half: pages of blobs read from the saved cursor, opened with
their epoch's key, checked against each sender's chain, delivered once, and the cursor
saved with what the app has.

Repair requests (blobs of kind 1) are never delivered to the app: one naming this device
makes it push the named blobs again; once a page is processed, this device asks for what
it still misses (``zerok.client.integrity``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from zerok.client.events import IntegrityAlert, SyncEvent
from zerok.client.integrity import Healing
from zerok.client.membership import Membership
from zerok.client.state import LocalState, SentRow, log_failure
from zerok.crypto.blob import KIND_REPAIR, OpenedBlob, open_blob, sealed_epoch
from zerok.errors import (
    ConnectError,
    DecryptionError,
    DeviceRevokedError,
    EpochKeyError,
    NotConnectedError,
    RemoteError,
    SyncError,
    WireError,
)
from zerok.protocol.client_core import ClientCore, OutboxEntry
from zerok.protocol.integrity import decode_repair, encode_repair
from zerok.transport import RelayConnection
from zerok.wire import Ack, BlobId, DeviceId, ErrorCode, Pull, PullResponse, StoredBlob
from zerok.wire.messages import MAX_PULL_LIMIT

log = logging.getLogger("zerok.client")

CHANGES_PAGE = MAX_PULL_LIMIT  # blobs per PULL in changes(): one commit per page


@dataclass(frozen=True, slots=True)
class Blob:
    blob_id: BlobId
    cursor: int
    sender: DeviceId
    data: bytes
    timestamp: int  # when the relay stored it, milliseconds since the Unix epoch


@dataclass(frozen=True, slots=True)
class PullResult:
    blobs: list[Blob]
    has_more: bool
    max_cursor: int


def _ignore_result(task: asyncio.Task[None]) -> None:
    # An ACK lost with its connection is not lost: HELLO carries the saved cursor, which the
    # relay records as this device's ACK.
    if not task.cancelled():
        task.exception()


def _epoch_of(stored: StoredBlob) -> int:
    try:
        return sealed_epoch(stored.ciphertext)
    except DecryptionError:
        return -1


class Receiving:
    """The pulling half of ``SyncClient`` (which provides what is declared under
    TYPE_CHECKING)."""

    if TYPE_CHECKING:
        _core: ClientCore
        _state: LocalState
        _members: Membership | None
        _healing: Healing
        _conn: RelayConnection | None
        _conn_url: str
        _acks: set[asyncio.Task[None]]
        _runner: asyncio.Task[None] | None
        _closing: asyncio.Event
        _new_data: asyncio.Event
        _conn_changed: asyncio.Condition

        @property
        def device_id(self) -> DeviceId: ...
        def _require_group(self) -> Membership: ...
        def _publish_status(self) -> None: ...
        def _emit(self, event: SyncEvent) -> None: ...
        def _catch_up(self, conn: RelayConnection, url: str) -> asyncio.Task[None]: ...
        async def _connection(self) -> RelayConnection: ...
        def _seal(
            self, data: bytes, kind: int, ttl: int
        ) -> tuple[OutboxEntry, tuple[SentRow, bytes]]: ...
        def _journaled(
            self, entry: OutboxEntry, kept: tuple[SentRow, bytes] | None = None
        ) -> asyncio.Future[object]: ...
        def _repush(self, rows: list[SentRow]) -> None: ...

    # -- pulling ----------------------------------------------------------------------------

    def _open_blob(self, stored: StoredBlob) -> OpenedBlob | None:
        """The blob opened with its epoch's key; an "undecryptable" alert if it does not
        open (no key for its epoch, or modified)."""
        members = self._require_group()
        try:
            key = members.blob_key(sealed_epoch(stored.ciphertext))
            return open_blob(
                stored.ciphertext,
                key=key,
                group_id=members.group_id,
                blob_id=stored.blob_id,
                sender=stored.sender,
            )
        except (DecryptionError, EpochKeyError) as exc:
            text = (
                f"blob {stored.blob_id} at cursor {stored.cursor} from device "
                f"{stored.sender.short()} cannot be opened and was skipped: {exc}"
            )
            self._emit(
                IntegrityAlert(
                    "undecryptable",
                    stored.sender,
                    stored.cursor,
                    stored.cursor,
                    self._conn_url,
                    text,
                )
            )
            return None

    def _take(self, stored: StoredBlob) -> Blob | None:
        """What the app gets of a blob read from the saved cursor on: nothing for this
        device's own blobs, for blobs that do not open, for replays and duplicates, and
        for repair requests (which this device answers if they name it)."""
        if stored.sender == self.device_id:
            return None
        opened = self._open_blob(stored)
        if opened is None:
            return None
        deliver, alerts = self._healing.observe(stored, opened, self._conn_url)
        for alert in alerts:
            self._emit(alert)
        if not deliver:
            return None
        if opened.header.kind == KIND_REPAIR:
            self._on_repair_request(opened.data)
            return None
        if not self._core.is_new(stored):
            return None
        return Blob(stored.blob_id, stored.cursor, stored.sender, opened.data, stored.timestamp)

    def _on_repair_request(self, data: bytes) -> None:
        try:
            target, ranges = decode_repair(data)
        except WireError as exc:
            log.warning("ignored a malformed repair request: %s", exc)
            return
        if target != self.device_id:
            self._healing.expect(target, ranges)
            return
        self._repush(self._healing.select(ranges))

    async def _ask_repairs(self) -> None:
        """Once a page is processed: one repair request per sender whose blobs are still
        missing (queued, not waited for)."""
        for sender, ranges in self._healing.repairs_due(self.device_id):
            entry, kept = self._seal(encode_repair(sender, ranges), KIND_REPAIR, 0)
            await asyncio.shield(self._journaled(entry, kept))

    async def _fetch(self, after: int, limit: int) -> PullResponse:
        conn = await self._connection()
        reply = await conn.request(Pull(after=after, limit=limit))
        assert isinstance(reply, PullResponse)
        members = self._members
        assert members is not None
        newest = max((_epoch_of(b) for b in reply.blobs), default=-1)
        if newest > members.epoch:  # sealed under an epoch this device has not read of yet
            with contextlib.suppress(ConnectError, RemoteError):
                await asyncio.shield(self._catch_up(conn, self._conn_url))
        self._core.page_fetched(after, reply.has_more)
        self._publish_status()
        return reply

    async def _save_page(self, delivered: list[tuple[BlobId, int]], moved: bool) -> None:
        """The delivered ids of a page, the saved cursor and the other devices' chains, in
        one commit, durable on return (the cursor is in ``ClientCore`` already). Shielded:
        an app that stops iterating does not cut the write short."""
        chains = self._healing.snapshot() if self._healing.dirty else None
        self._healing.dirty = False
        members = self._members
        if members is not None and members.unsaved:
            written = self._state.save_membership_later([], members.take_unsaved())
            written.add_done_callback(log_failure)
        if not delivered and not moved and chains is None:
            return
        cursor = self._core.cursor if moved else None
        page = self._state.save_page_later(delivered, cursor, chains)
        await asyncio.shield(asyncio.wrap_future(page))

    def _acknowledge(self) -> None:
        """Tell the relay the saved cursor after a page, so it may free what everyone has."""
        conn = self._conn
        if conn is not None and not conn.closed:
            task = asyncio.get_running_loop().create_task(conn.send(Ack(cursor=self._core.cursor)))
            self._acks.add(task)
            task.add_done_callback(self._acks.discard)
            task.add_done_callback(_ignore_result)

    async def pull(self, after: int | None = None, limit: int = 100) -> PullResult:
        """One page of blobs after ``after``. With ``after=None`` it continues from the saved
        cursor, skips this device's own blobs and blobs already delivered, checks each
        sender's chain, and saves the cursor before returning. With ``after`` it lists the
        blobs as they are, own ones too, and moves nothing."""
        if not 1 <= limit <= MAX_PULL_LIMIT:
            raise SyncError(f"limit must be 1..{MAX_PULL_LIMIT}, not {limit}")
        if after is not None:
            reply = await self._fetch(after, limit)
            blobs = [b for b in map(self._peek, reply.blobs) if b is not None]
            return PullResult(blobs, reply.has_more, reply.max_cursor)
        reply = await self._fetch(self._core.cursor, limit)
        blobs = [b for b in map(self._take, reply.blobs) if b is not None]
        for blob in blobs:
            self._core.delivered(blob.blob_id, blob.cursor)
        moved = bool(reply.blobs) and self._core.confirm(reply.blobs[-1].cursor)
        await self._save_page([(b.blob_id, b.cursor) for b in blobs], moved)
        if reply.blobs:
            self._acknowledge()
        await self._ask_repairs()
        return PullResult(blobs, reply.has_more, reply.max_cursor)

    def _peek(self, stored: StoredBlob) -> Blob | None:
        opened = self._open_blob(stored)
        if opened is None or opened.header.kind == KIND_REPAIR:
            return None
        return Blob(stored.blob_id, stored.cursor, stored.sender, opened.data, stored.timestamp)

    async def changes(self) -> AsyncIterator[Blob]:
        """Every new blob of the other devices, live, from the saved cursor on. The cursor
        moves past a blob once the loop body that received it asks for the next one."""
        while True:
            self._new_data.clear()
            connections = self._core.connections
            try:
                reply = await self._fetch(self._core.cursor, CHANGES_PAGE)
            except (NotConnectedError, ConnectError):
                # Offline or dropped mid-fetch: wait for the next connection and go on.
                if self._runner is None or self._closing.is_set():
                    raise
                await self._wait_new_connection(connections)
                continue
            except RemoteError as exc:
                if exc.code == ErrorCode.DEVICE_REVOKED:
                    raise DeviceRevokedError("this device was revoked from its group") from None
                # Rate limited or the relay busy: the relay said later, so later it is.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), self._core.timing.pull_retry)
                if self._closing.is_set():
                    raise NotConnectedError("the client was closed") from None
                continue
            delivered: list[tuple[BlobId, int]] = []
            moved = False
            try:
                for stored in reply.blobs:
                    # Own blobs are never observed, so never taken back.
                    own = stored.sender == self.device_id
                    before = b"" if own else self._healing.snapshot()
                    blob = self._take(stored)
                    if blob is not None:
                        try:
                            yield blob  # resumes when the app is done with it
                        except GeneratorExit:
                            # Not taken: the same blob comes again, and must not be a replay.
                            self._healing.restore(before)
                            raise
                        self._core.delivered(blob.blob_id, blob.cursor)
                        delivered.append((blob.blob_id, blob.cursor))
                    moved = self._core.confirm(stored.cursor) or moved
            finally:
                # One commit per page (also when the app stops iterating mid-page): what the
                # app has is saved before the next page is fetched or the relay is told.
                await self._save_page(delivered, moved)
            if reply.blobs:
                self._acknowledge()
            await self._ask_repairs()
            if reply.has_more:
                continue
            await self._wait_new_data()

    async def _wake_connection_waiters(self) -> None:
        async with self._conn_changed:
            self._conn_changed.notify_all()

    async def _wait_new_connection(self, connections: int) -> None:
        """Wait for a connection after the first ``connections`` (or revocation, or close)."""
        core = self._core
        async with self._conn_changed:
            await self._conn_changed.wait_for(
                lambda: core.connections > connections or core.revoked or self._closing.is_set()
            )
        if core.revoked:
            raise DeviceRevokedError("this device was revoked from its group")
        if self._closing.is_set():
            raise NotConnectedError("the client was closed")

    async def _wait_new_data(self) -> None:
        closing = asyncio.ensure_future(self._closing.wait())
        new = asyncio.ensure_future(self._new_data.wait())
        try:
            await asyncio.wait({closing, new}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            new.cancel()
        if self._core.revoked:
            raise DeviceRevokedError("this device was revoked from its group")
        if self._closing.is_set() and not self._new_data.is_set():
            raise NotConnectedError("the client was closed")
