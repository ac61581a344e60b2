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
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from zerok.client import mailbox, pairing
from zerok.client.events import (
    BlobAvailable,
    BlobPushed,
    Connected,
    DeviceRevoked,
    Disconnected,
    Error,
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


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ignore_result(task: asyncio.Task[None]) -> None:
    # An ACK lost with its connection is not lost: HELLO carries the saved cursor, which the
    # relay records as this device's ACK.
    if not task.cancelled():
        task.exception()


class EventStream:
    """An async iterator over a client's events, subscribed from its creation."""

    def __init__(self, subscribers: set[asyncio.Queue[SyncEvent]]) -> None:
        self._subscribers = subscribers
        self._queue: asyncio.Queue[SyncEvent] = asyncio.Queue()
        subscribers.add(self._queue)

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> SyncEvent:
        return await self._queue.get()

    async def aclose(self) -> None:
        self._subscribers.discard(self._queue)


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
        self._subscribers: set[asyncio.Queue[SyncEvent]] = set()
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
        return self._core.pending_count

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
            return await RelayConnection.open(
                url,
                self._identity,
                keys,
                device_name=self.device_name,
                last_cursor=self._core.cursor,
            )
        except RemoteError as exc:
            self._last_failure = f"{url} refused the connection: {exc.message}"
            if exc.code == ErrorCode.DEVICE_REVOKED:
                self._become_revoked(self.device_id, self.device_id, "revoked")
            else:
                self._emit(Error(exc.code, self._last_failure))
            return None
        except ConnectError as exc:
            self._last_failure = f"{url} unreachable: {exc}"
            log.info("%s", self._last_failure)
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
                        self._emit(Error(event.code, event.reason))
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
            self._emit(Error(message.code, message.message))

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
        for queue in self._subscribers:
            queue.put_nowait(event)

    def events(self) -> EventStream:
        """Every event from this call on (not from the first iteration: nothing is missed
        in between), for as long as the caller iterates; ``aclose()`` unsubscribes."""
        return EventStream(self._subscribers)

    # -- pushing ----------------------------------------------------------------------------

    async def push(self, data: bytes, *, ttl: int | None = None) -> PushResult:
        """Seal ``data`` and store it in the outbox; return once the relay has it."""
        _, cipher = self._require_group()
        blob_id = BlobId.random()
        sealed = cipher.seal(bytes(data), blob_id=blob_id, sender=self.device_id, pad=self.pad)
        if not self._core.fits(len(sealed)):
            raise BlobTooLargeError(
                f"{len(data):,} bytes seal to {len(sealed):,} (with encryption overhead and "
                f"padding), over the relay's limit of {self._core.max_blob:,} bytes per blob"
            )
        entry = OutboxEntry(blob_id, sealed, int(ttl or 0))
        self._state.outbox_add(entry, _now_ms())  # durable before anything else
        self._core.add(entry)
        fut: asyncio.Future[PushResult] = asyncio.get_running_loop().create_future()
        self._push_waiters.setdefault(blob_id, []).append(fut)
        self._publish_status()
        self._outbox_kick.set()
        return await fut

    async def _send_outbox(self, conn: RelayConnection) -> None:
        loop = asyncio.get_running_loop()
        while not conn.closed:
            self._outbox_kick.clear()
            for entry in self._core.next_pushes(loop.time()):
                self._state.outbox_attempt(entry.blob_id)
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
        else:
            assert isinstance(reply, PushAck)
            if self._core.push_acked(entry.blob_id):
                self._state.outbox_remove(entry.blob_id)
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
            self._emit(Error(exc.code, refusal.report))
        if refusal.final:
            self._state.outbox_remove(entry.blob_id)
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
            self._emit(Error(None, f"blob {stored.blob_id} at cursor {stored.cursor}: {exc}"))
            return None
        return Blob(stored.blob_id, stored.cursor, stored.sender, data, stored.timestamp)

    async def _fetch(self, after: int, limit: int) -> PullResponse:
        conn = await self._connection()
        reply = await conn.request(Pull(after=after, limit=limit))
        assert isinstance(reply, PullResponse)
        self._core.page_fetched(after, reply.has_more)
        self._publish_status()
        return reply

    def _delivered(self, blob: Blob) -> None:
        self._core.delivered(blob.blob_id, blob.cursor)
        self._state.mark_delivered(blob.blob_id, blob.cursor)

    def _confirm(self, cursor: int) -> None:
        if self._core.confirm(cursor):
            self._state.save_cursor(cursor)

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
            for blob in blobs:
                self._delivered(blob)
            self._confirm(reply.blobs[-1].cursor)
            self._acknowledge()
        return PullResult(blobs, reply.has_more, reply.max_cursor)

    async def changes(self) -> AsyncIterator[Blob]:
        """Every new blob of the other devices, live, from the saved cursor on. The cursor
        moves past a blob once the loop body that received it asks for the next one."""
        while True:
            self._new_data.clear()
            connections = self._core.connections
            try:
                reply = await self._fetch(self._core.cursor, 100)
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
            for stored in reply.blobs:
                if self._core.is_new(stored):
                    blob = self._open_blob(stored)
                    if blob is not None:
                        yield blob  # resumes when the app is done with it
                        self._delivered(blob)
                self._confirm(stored.cursor)
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
