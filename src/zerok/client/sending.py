"""SyncClient's sending half: sealing blobs into this device's chain, the outbox, and
pushing them again (under a new epoch, or for a device that reported them missing).

Each new blob takes the next sequence number of this device's chain and links to the
previous one's chain hash; the blob, its keep-window row and the chain's new state are
journaled together, durable before the blob may go out. A blob sealed under an old epoch
never goes out: it is sealed again under the current one, with the same id, header and
data (``_reseal``), as is every blob pushed again for a repair.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal, overload

from zerok.client.events import BlobPushed, Error, SyncEvent
from zerok.client.integrity import Healing
from zerok.client.membership import Membership
from zerok.client.state import LocalState, SentRow
from zerok.client.streams import Journal
from zerok.crypto.blob import (
    KIND_DATA,
    BlobHeader,
    chain_hash,
    open_blob,
    seal_blob,
    sealed_epoch,
)
from zerok.errors import (
    BlobTooLargeError,
    ConnectError,
    DecryptionError,
    DeviceRevokedError,
    EpochKeyError,
    FrameTooLargeError,
    NotConnectedError,
    RemoteError,
    StateError,
    SyncError,
)
from zerok.protocol.client_core import ClientCore, OutboxEntry
from zerok.transport import RelayConnection
from zerok.wire import BlobId, DeviceId, ErrorCode, Push, PushAck

log = logging.getLogger("zerok.client")


@dataclass(frozen=True, slots=True)
class PushResult:
    blob_id: BlobId
    cursor: int


class Sending:
    """The pushing half of ``SyncClient`` (which provides what is declared under
    TYPE_CHECKING)."""

    if TYPE_CHECKING:
        _core: ClientCore
        _state: LocalState
        _members: Membership | None
        _healing: Healing
        _journal: Journal
        _journaling: int
        _sender: tuple[int, bytes]
        _push_waiters: dict[BlobId, list[asyncio.Future[PushResult]]]
        _blob_chunks: dict[BlobId, list[bytes]]  # what this device's manifest blobs refer to
        _outbox_kick: asyncio.Event
        _background: set[asyncio.Task[None]]
        _conn_url: str
        _clock: Callable[[], int]
        pad: bool

        @property
        def device_id(self) -> DeviceId: ...
        @property
        def running(self) -> bool: ...
        def _require_group(self) -> Membership: ...
        def _publish_status(self) -> None: ...
        def _emit(self, event: SyncEvent) -> None: ...
        def _catch_up(self, conn: RelayConnection, url: str) -> asyncio.Task[None]: ...

    # -- pushing ----------------------------------------------------------------------------

    @overload
    async def push(
        self, data: bytes, *, ttl: int | None = None, wait: Literal[True] = True
    ) -> PushResult: ...

    @overload
    async def push(
        self, data: bytes, *, ttl: int | None = None, wait: Literal[False]
    ) -> BlobId: ...

    async def push(
        self, data: bytes, *, ttl: int | None = None, wait: bool = True
    ) -> PushResult | BlobId:
        """Seal ``data`` and store it in the outbox durably; return once the relay has it.

        Only while syncing (``async with client`` or ``connect()``): else NotConnectedError
        at once rather than a wait for ever. With ``wait=False`` it returns the blob id as
        soon as the outbox entry is durable, running or not; the blob goes out on the next
        connection (``BlobPushed`` tells when)."""
        return await self._push_data(bytes(data), ttl=ttl, wait=wait)

    async def _push_data(
        self, data: bytes, *, ttl: int | None, wait: bool, chunks: list[bytes] | None = None
    ) -> PushResult | BlobId:
        """``push``, for a blob that may refer to chunks (a file's manifest): the chunk
        addresses are recorded before the blob may go out, and its every PUSH carries them."""
        self._require_group()
        if wait and not self.running:
            raise NotConnectedError(
                "the client is not syncing: push inside `async with client:` (or after "
                "connect()), or queue it with push(data, wait=False)"
            )
        entry, kept = self._seal(data, KIND_DATA, int(ttl or 0))
        if chunks:
            self._state.blob_chunks_add(entry.blob_id, chunks)
            self._blob_chunks[entry.blob_id] = list(chunks)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[PushResult] = loop.create_future()
        # A caller that gave up (cancelled) leaves its outcome unread: not an error to log.
        fut.add_done_callback(lambda done: done.cancelled() or done.exception())
        if wait:
            self._push_waiters.setdefault(entry.blob_id, []).append(fut)
        durable = self._journaled(entry, kept)
        self._publish_status()
        await asyncio.shield(durable)  # StateError if the file could not be written
        if not wait:
            return entry.blob_id
        return await fut

    def _seal(self, data: bytes, kind: int, ttl: int) -> tuple[OutboxEntry, tuple[SentRow, bytes]]:
        """A new blob of this device's chain, sealed under the current epoch, with its
        keep-window row (the chain's state moves on: journal both together)."""
        members = self._require_group()
        epoch = members.epoch
        seq, link = self._sender
        blob_id = BlobId.random()
        sealed = self._seal_as(
            data, blob_id, BlobHeader(epoch=epoch, kind=kind, seq=seq, link=link)
        )
        if not self._core.fits(len(sealed)):
            raise BlobTooLargeError(
                f"{len(data):,} bytes seal to {len(sealed):,} (with encryption overhead and "
                f"padding), over the relay's limit of {self._core.max_blob:,} bytes per blob"
            )
        # Only a blob that fits takes a seq: a skipped seq would look like a loss to others.
        self._sender = (seq + 1, chain_hash(blob_id, seq, kind, data))
        row = SentRow(seq, blob_id, epoch, self._clock(), len(sealed))
        self._healing.kept(row)
        self._journal.forget(self._healing.prune(self._clock()))
        return OutboxEntry(blob_id, sealed, ttl, epoch=epoch, seq=seq), (row, sealed)

    def _journaled(
        self, entry: OutboxEntry, kept: tuple[SentRow, bytes] | None = None
    ) -> asyncio.Future[object]:
        """Journal a sealed entry (a new blob with its keep-window row and the chain's
        state); it joins the in-memory outbox (and may be sent) only once its insert is
        durable, even if the pushing call is cancelled."""
        sender = None if kept is None else self._sender
        durable = self._journal.add(entry, sent=kept, sender=sender)
        self._journaling += 1

        def journaled(done: asyncio.Future[object]) -> None:
            self._journaling -= 1
            if done.cancelled() or done.exception() is not None:
                self._settle_pushes(entry.blob_id, StateError("the outbox could not be written"))
                return
            if not self._core.queued(entry.blob_id):
                self._core.add(entry)
            members = self._members
            if members is not None and entry.epoch != members.epoch:
                # The epoch moved on while the entry was being journaled, past the re-seal
                # that ran then: it must not go out under the old one.
                self._reseal_stale()
            self._publish_status()
            self._outbox_kick.set()

        durable.add_done_callback(journaled)
        return durable

    def _reseal(self, sealed: bytes, blob_id: BlobId) -> tuple[bytes, int]:
        """One of this device's blobs under the current epoch: same id, header and data."""
        members = self._require_group()
        old = sealed_epoch(sealed)
        epoch = members.epoch
        if old == epoch:
            return sealed, epoch
        opened = open_blob(
            sealed,
            key=members.blob_key(old),
            group_id=members.group_id,
            blob_id=blob_id,
            sender=self.device_id,
        )
        return self._seal_as(opened.data, blob_id, replace(opened.header, epoch=epoch)), epoch

    def _seal_as(self, data: bytes, blob_id: BlobId, header: BlobHeader) -> bytes:
        """``data`` sealed by this device under ``header``'s epoch."""
        members = self._require_group()
        return seal_blob(
            data,
            key=members.blob_key(header.epoch),
            group_id=members.group_id,
            blob_id=blob_id,
            sender=self.device_id,
            header=header,
            pad=self.pad,
        )

    def _reseal_stale(self) -> None:
        """Outbox entries sealed under an older epoch, sealed again under the current one
        (no device pushes under an old epoch)."""
        if self._members is None or self._core.revoked:
            return
        self._core.epoch = self._members.epoch
        for entry in self._core.stale():
            try:
                sealed, epoch = self._reseal(entry.ciphertext, entry.blob_id)
            except (DecryptionError, EpochKeyError, DeviceRevokedError) as exc:
                log.warning("cannot re-seal queued blob %s: %s", entry.blob_id, exc)
                continue
            fresh = replace(entry, ciphertext=sealed, epoch=epoch)
            self._core.replace(fresh)
            self._journal.reseal(fresh)
        self._outbox_kick.set()

    def _repush(self, rows: list[SentRow]) -> None:
        """Push kept blobs again (repair = True), each under the current epoch."""
        wanted = [
            r
            for r in rows
            if not self._core.queued(r.blob_id) and r.blob_id not in self._journal.pending
        ]
        sealed = self._state.sent_ciphertexts(r.seq for r in wanted)
        for row in wanted:
            data = sealed.get(row.seq)
            if data is None:
                continue
            try:
                ciphertext, epoch = self._reseal(data, row.blob_id)
            except (DecryptionError, EpochKeyError, DeviceRevokedError) as exc:
                log.warning("cannot re-push blob %s: %s", row.blob_id, exc)
                continue
            entry = OutboxEntry(row.blob_id, ciphertext, epoch=epoch, seq=row.seq, repair=True)
            self._journaled(entry)

    async def _send_outbox(self, conn: RelayConnection) -> None:
        loop = asyncio.get_running_loop()
        while not conn.closed:
            self._outbox_kick.clear()
            entries = self._core.next_pushes(loop.time())
            if entries:  # not waited for: a lost count only changes a statistic
                self._journal.attempted([e.blob_id for e in entries])
            for entry in entries:
                task = loop.create_task(self._push_one(conn, entry))
                # Not cancelled with the connection: its request fails with it, promptly.
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            wake = self._core.next_retry(loop.time())
            timeout = None if wake is None else max(0.0, wake - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox_kick.wait(), timeout)

    async def _push_one(self, conn: RelayConnection, entry: OutboxEntry) -> None:
        push = Push(
            blob_id=entry.blob_id,
            ciphertext=entry.ciphertext,
            epoch=entry.epoch,
            ttl=entry.ttl,
            repair=entry.repair,
            chunks=self._blob_chunks.get(entry.blob_id, []),
        )
        try:
            reply = await conn.request(push)
        except RemoteError as exc:
            self._push_refused(conn, entry, exc)
        except FrameTooLargeError as exc:  # refused before sending: final, like a 2001
            self._push_refused(conn, entry, RemoteError(ErrorCode.BLOB_TOO_LARGE, str(exc)))
        except ConnectError:  # the connection dropped before the answer
            self._core.push_lost(entry)
        except Exception as exc:  # not expected: kept, tried again, and reported
            log.exception("push %s failed", entry.blob_id)
            self._core.push_lost(entry)
            self._emit(Error(None, f"push {entry.blob_id} failed: {exc!r}", "internal error"))
        else:
            assert isinstance(reply, PushAck)
            if self._core.push_acked(entry.blob_id):
                # Not waited for: if this delete is lost, the same blob id goes out again
                # and the relay stores it once.
                self._journal.remove(entry.blob_id)
                self._settle_pushes(entry.blob_id, PushResult(entry.blob_id, reply.cursor))
                if not entry.repair:
                    self._emit(BlobPushed(entry.blob_id, reply.cursor))
                self._publish_status()
        finally:
            self._outbox_kick.set()  # a slot is free, or the entry is back in line

    def _push_refused(self, conn: RelayConnection, entry: OutboxEntry, exc: RemoteError) -> None:
        now = asyncio.get_running_loop().time()
        refusal = self._core.push_refused(
            entry, exc.code, exc.message, now, retry_after=exc.retry_after
        )
        if refusal.stale:
            # A revocation got in first: learn the new epoch, then the entry is re-sealed.
            self._catch_up(conn, self._conn_url)
        if refusal.report is not None:
            self._emit(Error(exc.code, refusal.report, "push refused"))
        if refusal.final:
            self._journal.remove(entry.blob_id)
            if not entry.repair:  # others will ask for it in vain: stop keeping it
                self._healing.drop([entry.seq])
                self._journal.forget([entry.seq])
            self._settle_pushes(entry.blob_id, exc)
            self._publish_status()

    def _settle_pushes(self, blob_id: BlobId, outcome: PushResult | SyncError) -> None:
        for fut in self._push_waiters.pop(blob_id, []):
            if fut.done():
                continue
            if isinstance(outcome, PushResult):
                fut.set_result(outcome)
            else:
                fut.set_exception(outcome)

    def _fail_pushes(self, error: Callable[[], SyncError]) -> None:
        """Every waiting ``push()`` raises a new ``error()``; the outbox stays as it is."""
        for blob_id in list(self._push_waiters):
            self._settle_pushes(blob_id, error())
