"""SyncClient: an app's handle on its sync group (docs/client.md).

Local first: ``push`` writes to the durable outbox before anything else and returns when
the relay acknowledged the blob, however long that takes; the outbox survives restarts and
every retry carries the same blob id, so the relay stores each push once. ``changes`` and
``pull`` save the cursor only after the app has the blobs. Inside ``async with client:``
a background task keeps a connection to the first reachable relay, reconnecting with
backoff.

The rules (what to send, what a refusal means, which blob is new, when the cursor moves,
which relay next and when, the status) are ``zerok.protocol.ClientCore``'s. This module is
the asyncio shell around it: it runs the connection and the tasks, tells the core what
happened, does what the core decides, and writes each change to the local state.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, overload

from zerok.client import mailbox, pairing
from zerok.client.events import (
    BlobAvailable,
    BlobPushed,
    Connected,
    DeviceRevoked,
    Disconnected,
    Error,
    EventsDropped,
    StatusChanged,
    SyncEvent,
    SyncStatus,
)
from zerok.client.pairing import Invite, InvitePayload
from zerok.client.state import LocalState
from zerok.crypto.blob import BlobCipher
from zerok.crypto.identity import DeviceIdentity
from zerok.crypto.keys import GroupKeys, KdfParams
from zerok.errors import (
    BlobTooLargeError,
    ConnectError,
    DecryptionError,
    DeviceRevokedError,
    FrameTooLargeError,
    InviteError,
    NotConnectedError,
    RemoteError,
    StateError,
    SyncError,
)
from zerok.protocol import MessageReceived
from zerok.protocol.backoff import ClientTiming
from zerok.protocol.client_core import ClientCore, OutboxEntry
from zerok.protocol.events import ConnectionClosed
from zerok.transport import RelayConnection
from zerok.wire import (
    Ack,
    BlobId,
    Delete,
    DeviceId,
    DeviceInfo,
    Devices,
    ErrorCode,
    GroupId,
    ListDevices,
    Message,
    Notify,
    Pull,
    PullResponse,
    Push,
    PushAck,
    PushPlatform,
    RegisterPush,
    RevokeDevice,
    RevokeReason,
    StoredBlob,
    UnregisterPush,
)
from zerok.wire import DeviceRevoked as DeviceRevokedMessage
from zerok.wire import Error as ErrorMessage
from zerok.wire.messages import MAX_PULL_LIMIT

log = logging.getLogger("zerok.client")

KEY_FILE = "device.key"
DEFAULT_TIMEOUT = 30.0
EVENT_QUEUE_SIZE = 1000  # events kept for a subscriber that does not keep up
CHANGES_PAGE = MAX_PULL_LIMIT  # blobs per PULL in changes(): one commit per page


@dataclass(frozen=True, slots=True)
class PushResult:
    blob_id: BlobId
    cursor: int


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


_REFUSAL_REASONS: dict[int, str] = {
    ErrorCode.RELAY_OVERLOADED: "relay full",
    ErrorCode.RATE_LIMITED: "too many devices from your network",
}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ignore_result(task: asyncio.Task[None]) -> None:
    # An ACK lost with its connection is not lost: HELLO carries the saved cursor, which the
    # relay records as this device's ACK.
    if not task.cancelled():
        task.exception()


class EventStream:
    """An async iterator over a client's events, subscribed from its creation.

    Its queue is bounded: past ``limit`` unread events the oldest are dropped, and the
    next read returns ``EventsDropped(count)`` before the events that were kept. An
    abandoned stream therefore holds at most ``limit`` events; ``aclose()`` unsubscribes.
    """

    def __init__(self, subscribers: set[EventStream], limit: int = EVENT_QUEUE_SIZE) -> None:
        self._subscribers = subscribers
        self._events: collections.deque[SyncEvent] = collections.deque()
        self._limit = limit
        self._ready = asyncio.Event()
        self.dropped = 0  # dropped since the last EventsDropped was returned
        subscribers.add(self)

    def put(self, event: SyncEvent) -> None:
        if len(self._events) >= self._limit:
            self._events.popleft()
            self.dropped += 1
        self._events.append(event)
        self._ready.set()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> SyncEvent:
        while not self._events and not self.dropped:
            self._ready.clear()
            await self._ready.wait()
        if self.dropped:
            count, self.dropped = self.dropped, 0
            return EventsDropped(count)
        return self._events.popleft()

    async def aclose(self) -> None:
        self._subscribers.discard(self)


class _Journal:
    """The outbox's writes of one loop turn, gathered into one write for the state's
    writer thread (which commits several of them at once). ``add`` returns a future done
    once the insert is durable, shared by every push of the same turn."""

    def __init__(self, state: LocalState) -> None:
        self._state = state
        self._adds: list[tuple[OutboxEntry, int]] = []
        self._removes: list[BlobId] = []
        self._attempts: list[BlobId] = []
        self._durable: asyncio.Future[object] | None = None
        self._scheduled = False

    def add(self, entry: OutboxEntry) -> asyncio.Future[object]:
        self._adds.append((entry, _now_ms()))
        if self._durable is None:
            self._durable = asyncio.get_running_loop().create_future()
        self._schedule()
        return self._durable

    def remove(self, blob_id: BlobId) -> None:
        self._removes.append(blob_id)
        self._schedule()

    def attempted(self, blob_ids: list[BlobId]) -> None:
        self._attempts += blob_ids
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._submit)

    def _submit(self) -> None:
        self._scheduled = False
        written = self._state.journal_later(self._adds, self._removes, self._attempts)
        durable, self._durable = self._durable, None
        self._adds, self._removes, self._attempts = [], [], []
        if durable is not None:
            loop = asyncio.get_running_loop()

            def back_on_loop(done: Future[object]) -> None:
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                    loop.call_soon_threadsafe(_copy_outcome, done, durable)

            written.add_done_callback(back_on_loop)


def _copy_outcome(source: Future[object], target: asyncio.Future[object]) -> None:
    if target.done():
        return
    error = source.exception()
    if error is None:
        target.set_result(source.result())
    else:
        target.set_exception(error)


class SyncClient:
    """One device's membership of one sync group, kept in ``data_dir``."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        device_name: str | None = None,
        pad: bool = True,
        timing: ClientTiming | None = None,
    ) -> None:
        """``timing`` replaces the client's own delays (backoff, retries): a testing knob."""
        self.data_dir = Path(data_dir).expanduser()
        self._state = LocalState(self.data_dir)
        self._identity = DeviceIdentity.load_or_create(self.data_dir / KEY_FILE)
        if device_name:
            self._state.set_value("device_name", device_name[:64])
        self.device_name = (
            self._state.get_value("device_name")
            or os.environ.get("SYNC_DEVICE_NAME")
            or socket.gethostname()
        )[:64]
        self.pad = pad
        self._core = ClientCore(
            self._identity.device_id,
            cursor=self._state.cursor,
            outbox=self._state.outbox_load(),
            delivered=self._state.delivered_load(),
            timing=timing,
        )
        self._keys: GroupKeys | None = None
        self._cipher: BlobCipher | None = None
        self._conn: RelayConnection | None = None
        self._runner: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._connected = asyncio.Event()
        self._new_data = asyncio.Event()
        self._outbox_kick = asyncio.Event()
        self._push_waiters: dict[BlobId, list[asyncio.Future[PushResult]]] = {}
        self._subscribers: set[EventStream] = set()
        self._journaling = 0  # pushes whose outbox insert is not durable yet
        self._journal = _Journal(self._state)
        self._shown_status = self._core.status  # the last one announced by StatusChanged
        self._revoked_event = asyncio.Event()
        self._acks: set[asyncio.Task[None]] = set()
        self._last_failure = ""
        self._conn_changed = asyncio.Condition()
        self._background: set[asyncio.Task[None]] = set()
        if self._state.has_group():
            self._load_group()

    # -- identity and group -----------------------------------------------------------------

    @property
    def device_id(self) -> DeviceId:
        return self._identity.device_id

    @property
    def group_id(self) -> GroupId | None:
        return self._keys.group_id if self._keys else None

    @property
    def relays(self) -> list[str]:
        return list(self._core.relays)

    @property
    def status(self) -> SyncStatus:
        return self._core.status

    @property
    def last_cursor(self) -> int:
        return self._core.cursor

    @property
    def pending_count(self) -> int:
        return self._core.pending_count + self._journaling

    @property
    def running(self) -> bool:
        """Whether the client is syncing (inside ``async with``, after ``connect()``)."""
        return self._runner is not None and not self._runner.done() and self._core.active

    def _load_group(self) -> None:
        group = self._state.load_group()
        self._keys = group.keys
        self._cipher = BlobCipher(group.keys.blob_key, group.keys.group_id)
        self._core.relays = list(group.relays)

    def _require_group(self) -> tuple[GroupKeys, BlobCipher]:
        if self._keys is None or self._cipher is None:
            raise StateError("this device is in no group yet: create_group() or join() first")
        if self._core.revoked:
            raise DeviceRevokedError("this device was revoked from its group")
        return self._keys, self._cipher

    async def create_group(
        self,
        relays: list[str],
        passphrase: str | None = None,
        *,
        kdf: KdfParams | None = None,
    ) -> GroupId:
        """Start a new group synced through ``relays`` (tried in order)."""
        if self._state.has_group():
            raise StateError(f"{self.data_dir} already belongs to a group")
        if not relays:
            raise SyncError("a group needs at least one relay URL")
        for relay in relays:
            mailbox.http_base(relay)  # validates the URL
        if passphrase is None:
            keys = GroupKeys.generate()
        else:
            params = kdf or KdfParams.default()
            keys = await asyncio.to_thread(GroupKeys.from_passphrase, passphrase, params)
        self._state.save_group(keys, list(relays))
        self._load_group()
        return keys.group_id

    async def create_invite(self, ttl: float = 600) -> Invite:
        """An invite for another device: a URL (for a QR code) and a short code."""
        keys, _ = self._require_group()
        if not 0 < ttl <= 600:
            raise SyncError("an invite lives at most 600 seconds (the relay's default mailbox TTL)")
        expires_ms = _now_ms() + int(ttl * 1000)
        payload = InvitePayload(
            v=pairing.INVITE_VERSION,
            relays=self.relays,
            root_key=keys.root_key,
            creator=bytes(self.device_id),
            expires_at=expires_ms,
            kdf=keys.kdf.to_dict() if keys.kdf else None,
        )
        code = pairing.new_short_code()
        sealed = await asyncio.to_thread(pairing.seal_for_code, code, payload)
        relay = self.relays[0]
        await mailbox.post_invite(relay, pairing.code_lookup(code), sealed)
        invite = Invite(pairing.invite_url(payload), code, expires_ms / 1000, relay)
        self._state.set_value("last_invite", json.dumps([code, relay, invite.expires_at]))
        return invite

    def last_invite(self) -> Invite | None:
        """The invite this device made last (its URL is not kept: it holds the root key)."""
        raw = self._state.get_value("last_invite")
        if raw is None:
            return None
        code, relay, expires_at = json.loads(raw)
        return Invite("", str(code), float(expires_at), str(relay))

    async def cancel_invite(self, invite: Invite) -> bool:
        """Withdraw an invite's short code; True if it was still waiting."""
        return await mailbox.cancel_invite(invite.relay, pairing.code_lookup(invite.short_code))

    async def join(self, code_or_url: str, *, relay: str | None = None) -> GroupId:
        """Join the group of an invite URL or short code (a short code needs the relay:
        ``relay=`` or ``SYNC_RELAY_URL``)."""
        if self._state.has_group():
            raise StateError(f"{self.data_dir} already belongs to a group")
        if pairing.is_url(code_or_url):
            payload = pairing.parse_url(code_or_url)
        else:
            lookup = pairing.code_lookup(code_or_url)  # InviteError('mistyped') first
            relay = relay or os.environ.get("SYNC_RELAY_URL")
            if not relay:
                raise InviteError(
                    "invalid",
                    "a short code needs the relay URL: pass --relay or set SYNC_RELAY_URL",
                )
            sealed = await mailbox.take_invite(relay, lookup)
            payload = await asyncio.to_thread(pairing.open_with_code, code_or_url, sealed)
        keys = pairing.payload_keys(payload)
        self._state.save_group(keys, list(payload.relays))
        self._load_group()
        return keys.group_id

    # -- connection lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> SyncClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Start syncing in the background; returns at once (see ``wait_connected``)."""
        self._require_group()
        if self._runner is not None and not self._runner.done():
            return
        self._closing = asyncio.Event()
        self._core.start()
        self._runner = asyncio.get_running_loop().create_task(self._run())
        self._publish_status()

    async def wait_connected(self, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """Wait until a relay accepted this device; NotConnectedError after ``timeout``."""
        if self._core.revoked:
            raise DeviceRevokedError("this device was revoked from its group")
        connected = asyncio.ensure_future(self._connected.wait())
        revoked = asyncio.ensure_future(self._revoked_event.wait())
        try:
            await asyncio.wait({connected, revoked}, timeout=timeout, return_when="FIRST_COMPLETED")
        finally:
            connected.cancel()
            revoked.cancel()
        if self._core.revoked:
            raise DeviceRevokedError("this device was revoked from its group")
        if not self._connected.is_set():
            within = "in time" if timeout is None else f"within {timeout:g} s"
            raise NotConnectedError(f"no relay reachable {within} (tried {', '.join(self.relays)})")

    async def close(self) -> None:
        """Stop syncing. Pending pushes stay in the outbox for the next connection; callers
        still awaiting ``push()`` get NotConnectedError."""
        self._core.stop()
        self._closing.set()
        async with self._conn_changed:
            self._conn_changed.notify_all()
        if self._acks:  # receipts already promised to the relay go out first
            await asyncio.wait(self._acks, timeout=5)
        if self._conn is not None:
            await self._conn.close()
        self._fail_pushes(
            lambda: NotConnectedError("the client closed; the push stays queued in the outbox")
        )
        if self._runner is not None:
            # It ends by itself once its connection closed; a connection attempt still in
            # progress (up to its timeout) is cut short.
            done, _ = await asyncio.wait({self._runner}, timeout=1.0)
            if not done:
                self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
            self._runner = None
        self._publish_status()

    def close_state(self) -> None:
        """Release the local state file (after ``close``)."""
        self._state.close()

    async def _run(self) -> None:
        """The background runner. An error nobody expected ends syncing, visibly: an Error
        event, waiting ``push()`` calls fail, the client is OFFLINE and ``connect()`` may
        start it again. It never leaves the client half alive."""
        try:
            await self._rounds()
        except Exception as exc:
            log.exception("syncing stopped after an unexpected error")
            self._core.stop()
            self._closing.set()
            self._connected.clear()
            self._emit(Error(None, f"syncing stopped: {exc!r}", "internal error"))
            text = f"syncing stopped after an unexpected error ({exc!r})"
            self._fail_pushes(lambda: NotConnectedError(f"{text}; the push stays in the outbox"))
            await self._wake_connection_waiters()
            self._publish_status()

    async def _rounds(self) -> None:
        core = self._core
        while core.active:
            url = core.relay_to_try()
            conn = await self._open(url)
            if conn is None:
                reason, delay = self._last_failure, core.connect_failed()
            else:
                reason, delay = await self._serve(conn, url)
            if delay is None or not core.active:
                continue
            self._emit(Disconnected(url, reason, delay))
            self._publish_status()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), delay)

    async def _open(self, url: str) -> RelayConnection | None:
        keys, _ = self._require_group()
        try:
            timing = self._core.timing
            return await RelayConnection.open(
                url,
                self._identity,
                keys,
                device_name=self.device_name,
                last_cursor=self._core.cursor,
                timeout=timing.open_timeout,
                heartbeat=timing.heartbeat,
                heartbeat_timeout=timing.heartbeat_timeout,
                request_timeout=timing.request_timeout,
            )
        except RemoteError as exc:
            self._last_failure = f"{url} refused the connection: {exc.message}"
            if exc.code == ErrorCode.DEVICE_REVOKED:
                self._become_revoked(self.device_id, self.device_id, "revoked")
            else:
                reason = _REFUSAL_REASONS.get(exc.code, "refused")
                self._emit(Error(exc.code, self._last_failure, reason))
            return None
        except ConnectError as exc:
            self._last_failure = f"{url} {exc.reason}: {exc}"
            log.info("%s", self._last_failure)
            self._emit(Error(None, self._last_failure, exc.reason))
            return None

    async def _serve(self, conn: RelayConnection, url: str) -> tuple[str, float]:
        """Run one connection until it ends; return why, and the delay before the next."""
        self._conn = conn
        welcome = conn.welcome
        assert welcome is not None
        self._core.connected(pending=welcome.pending, max_blob=welcome.limits.max_blob_size)
        self._connected.set()
        async with self._conn_changed:
            self._conn_changed.notify_all()
        self._emit(Connected(url))
        self._new_data.set()
        self._publish_status()
        sender = asyncio.get_running_loop().create_task(self._send_outbox(conn))
        reason = f"{url} closed the connection"
        try:
            async for event in conn.events():
                if isinstance(event, MessageReceived):
                    self._on_message(event.message)
                elif isinstance(event, ConnectionClosed):
                    reason = f"{url}: {event.reason}"
                    if event.code == ErrorCode.DEVICE_REVOKED:
                        self._become_revoked(self.device_id, self.device_id, event.reason)
                    elif event.code is not None and event.by_peer:
                        self._emit(Error(event.code, event.reason, "refused"))
                    elif event.code is None and not self._closing.is_set():
                        self._emit(Error(None, reason, "connection lost"))
        finally:
            # First, before any await: pushes in flight go back in line even if cancelled.
            delay = self._core.disconnected()
            self._connected.clear()
            self._conn = None
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            await conn.close()
        return reason, delay

    def _on_message(self, message: Message) -> None:
        if isinstance(message, Notify):
            if self._core.notified(message.sender, message.cursor):
                self._emit(BlobAvailable(message.cursor, message.blob_id, message.sender))
            self._new_data.set()
            self._publish_status()
        elif isinstance(message, DeviceRevokedMessage):
            self._become_revoked(message.device_id, message.revoked_by, message.reason.value)
        elif isinstance(message, ErrorMessage):
            self._emit(Error(message.code, message.message, "refused"))

    def _become_revoked(self, device_id: DeviceId, by: DeviceId, reason: str) -> None:
        if not self._core.device_revoked(device_id):
            return
        this = device_id == self.device_id
        self._emit(DeviceRevoked(device_id, by, reason, this))
        if this:
            self._revoked_event.set()
            waking = asyncio.get_running_loop().create_task(self._wake_connection_waiters())
            self._background.add(waking)
            waking.add_done_callback(self._background.discard)
            self._closing.set()
            self._publish_status()
            self._fail_pushes(lambda: DeviceRevokedError("this device was revoked"))

    # -- status and events ------------------------------------------------------------------

    def _publish_status(self) -> None:
        """Announce the core's status if it changed; call after anything that may change it."""
        status = self._core.status
        if status != self._shown_status:
            self._shown_status = status
            self._emit(StatusChanged(status, self._core.pending_count))

    def _emit(self, event: SyncEvent) -> None:
        for stream in self._subscribers:
            stream.put(event)

    def events(self) -> EventStream:
        """Every event from this call on (not from the first iteration: nothing is missed
        in between), for as long as the caller iterates; ``aclose()`` unsubscribes. At most
        ``EVENT_QUEUE_SIZE`` unread events are kept (then ``EventsDropped``)."""
        return EventStream(self._subscribers)

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
        _, cipher = self._require_group()
        if wait and not self.running:
            raise NotConnectedError(
                "the client is not syncing: push inside `async with client:` (or after "
                "connect()), or queue it with push(data, wait=False)"
            )
        blob_id = BlobId.random()
        sealed = cipher.seal(bytes(data), blob_id=blob_id, sender=self.device_id, pad=self.pad)
        if not self._core.fits(len(sealed)):
            raise BlobTooLargeError(
                f"{len(data):,} bytes seal to {len(sealed):,} (with encryption overhead and "
                f"padding), over the relay's limit of {self._core.max_blob:,} bytes per blob"
            )
        entry = OutboxEntry(blob_id, sealed, int(ttl or 0))
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[PushResult] = loop.create_future()
        if wait:
            self._push_waiters.setdefault(blob_id, []).append(fut)
        # Durable before anything else; the entry joins the in-memory outbox (and may be
        # sent) only once its insert is committed, even if this call is cancelled.
        durable = self._journal.add(entry)
        self._journaling += 1

        def journaled(done: asyncio.Future[object]) -> None:
            self._journaling -= 1
            if done.cancelled() or done.exception() is not None:
                self._settle_pushes(blob_id, StateError("the outbox could not be written"))
                return
            self._core.add(entry)
            self._publish_status()
            self._outbox_kick.set()

        durable.add_done_callback(journaled)
        self._publish_status()
        await asyncio.shield(durable)  # StateError if the file could not be written
        if not wait:
            return blob_id
        return await fut

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
        try:
            reply = await conn.request(
                Push(blob_id=entry.blob_id, ciphertext=entry.ciphertext, ttl=entry.ttl)
            )
        except RemoteError as exc:
            self._push_refused(entry, exc)
        except FrameTooLargeError as exc:  # refused before sending: final, like a 2001
            self._push_refused(entry, RemoteError(ErrorCode.BLOB_TOO_LARGE, str(exc)))
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
                self._emit(BlobPushed(entry.blob_id, reply.cursor))
                self._publish_status()
        finally:
            self._outbox_kick.set()  # a slot is free, or the entry is back in line

    def _push_refused(self, entry: OutboxEntry, exc: RemoteError) -> None:
        now = asyncio.get_running_loop().time()
        refusal = self._core.push_refused(
            entry, exc.code, exc.message, now, retry_after=exc.retry_after
        )
        if refusal.report is not None:
            self._emit(Error(exc.code, refusal.report, "push refused"))
        if refusal.final:
            self._journal.remove(entry.blob_id)
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

    # -- pulling ----------------------------------------------------------------------------

    async def _connection(self, timeout: float | None = DEFAULT_TIMEOUT) -> RelayConnection:
        self._require_group()
        if self._runner is None:
            raise NotConnectedError("not connected: use `async with client:` or connect() first")
        await self.wait_connected(timeout)
        if self._conn is None:
            raise NotConnectedError("the connection dropped; try again")
        return self._conn

    def _open_blob(self, stored: StoredBlob) -> Blob | None:
        _, cipher = self._require_group()
        try:
            data = cipher.open(stored.ciphertext, blob_id=stored.blob_id, sender=stored.sender)
        except DecryptionError as exc:
            text = f"blob {stored.blob_id} at cursor {stored.cursor}: {exc}"
            self._emit(Error(None, text, "blob unreadable"))
            return None
        return Blob(stored.blob_id, stored.cursor, stored.sender, data, stored.timestamp)

    async def _fetch(self, after: int, limit: int) -> PullResponse:
        conn = await self._connection()
        reply = await conn.request(Pull(after=after, limit=limit))
        assert isinstance(reply, PullResponse)
        self._core.page_fetched(after, reply.has_more)
        self._publish_status()
        return reply

    async def _save_page(self, delivered: list[tuple[BlobId, int]], moved: bool) -> None:
        """The delivered ids of a page and the saved cursor, in one commit, durable on
        return (the cursor is in ``ClientCore`` already). Shielded: an app that stops
        iterating does not cut the write short."""
        if not delivered and not moved:
            return
        cursor = self._core.cursor if moved else None
        await asyncio.shield(asyncio.wrap_future(self._state.save_page_later(delivered, cursor)))

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
        cursor, skips this device's own blobs and blobs already delivered, and saves the
        cursor before returning."""
        if not 1 <= limit <= MAX_PULL_LIMIT:
            raise SyncError(f"limit must be 1..{MAX_PULL_LIMIT}, not {limit}")
        resume = after is None
        start = self._core.cursor if after is None else after
        reply = await self._fetch(start, limit)
        blobs: list[Blob] = []
        for stored in reply.blobs:
            if resume and not self._core.is_new(stored):
                continue
            blob = self._open_blob(stored)
            if blob is not None:
                blobs.append(blob)
        if resume and reply.blobs:
            delivered = [(blob.blob_id, blob.cursor) for blob in blobs]
            for blob in blobs:
                self._core.delivered(blob.blob_id, blob.cursor)
            moved = self._core.confirm(reply.blobs[-1].cursor)
            await self._save_page(delivered, moved)
            self._acknowledge()
        return PullResult(blobs, reply.has_more, reply.max_cursor)

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
                    if self._core.is_new(stored):
                        blob = self._open_blob(stored)
                        if blob is not None:
                            yield blob  # resumes when the app is done with it
                            self._core.delivered(blob.blob_id, blob.cursor)
                            delivered.append((blob.blob_id, blob.cursor))
                    moved = self._core.confirm(stored.cursor) or moved
            finally:
                # One commit per page (also when the app stops iterating mid-page): what the
                # app has is saved before the next page is fetched or the relay is told.
                await self._save_page(delivered, moved)
            if reply.blobs:
                self._acknowledge()
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

    # -- group management -------------------------------------------------------------------

    async def _request(self, message: Message) -> Message:
        conn = await self._connection()
        return await conn.request(message)

    async def list_devices(self) -> list[DeviceInfo]:
        reply = await self._request(ListDevices())
        assert isinstance(reply, Devices)
        return list(reply.devices)

    async def revoke_device(self, device_id: DeviceId | str, reason: str = "lost") -> None:
        """Remove a device from the group; it is refused by the relay from now on.

        ``device_id`` may be the id or a unique prefix of its base32 form."""
        target = (
            device_id if isinstance(device_id, DeviceId) else await self._resolve_device(device_id)
        )
        try:
            why = RevokeReason(reason)
        except ValueError:
            choices = ", ".join(r.value for r in RevokeReason)
            raise SyncError(f"reason must be one of {choices}, not {reason!r}") from None
        reply = await self._request(RevokeDevice(device_id=target, reason=why))
        if isinstance(reply, DeviceRevokedMessage):
            self._become_revoked(reply.device_id, reply.revoked_by, reply.reason.value)

    async def _resolve_device(self, text: str) -> DeviceId:
        text = text.strip().lower()
        if len(text) == 52:
            return DeviceId.parse(text)
        matches = [
            d.device_id for d in await self.list_devices() if str(d.device_id).startswith(text)
        ]
        if len(matches) != 1:
            found = "no device" if not matches else f"{len(matches)} devices"
            raise SyncError(f"{found} of this group has an id starting with {text!r}")
        return matches[0]

    async def force_delete(self, blob_id: BlobId | str) -> None:
        """Delete one of this device's blobs from the relay now."""
        target = blob_id if isinstance(blob_id, BlobId) else BlobId.parse(blob_id)
        await self._request(Delete(blob_id=target, force=True))

    async def register_push_token(self, token: str, platform: str, app_id: str = "") -> None:
        try:
            kind = PushPlatform(platform)
        except ValueError:
            choices = ", ".join(p.value for p in PushPlatform)
            raise SyncError(f"platform must be one of {choices}, not {platform!r}") from None
        await self._request(RegisterPush(token=token, platform=kind, app_id=app_id))

    async def unregister_push_token(self) -> None:
        await self._request(UnregisterPush(reason="unregistered by the app"))

    def set_relays(self, relays: list[str]) -> None:
        """Replace the group's relays (tried in order) in the local state; the next
        connection attempt uses them. The other devices keep theirs."""
        self._require_group()
        if not relays:
            raise SyncError("a group needs at least one relay URL")
        for relay in relays:
            mailbox.http_base(relay)  # validates the URL
        self._state.set_relays(list(relays))
        self._core.relays = list(relays)
