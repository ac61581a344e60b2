"""SyncClient: an app's handle on its sync group (docs/client.md).

Local first: ``push`` writes to the durable outbox before anything else and returns when
the relay acknowledged the blob, however long that takes; the outbox survives restarts and
every retry carries the same blob id, so the relay stores each push once. ``changes`` and
``pull`` save the cursor only after the app has the blobs. Inside ``async with client:``
a background task keeps a connection to the first reachable relay, reconnecting with
backoff.

Each connection starts by bringing the relay's membership log and this device's to the
same head (``zerok.client.logsync``); blobs are sealed under the current epoch's key and
carry this device's sequence number and chain hash, which receivers check
(``zerok.client.integrity``). The rules (what to send, what a refusal means, which blob is
new, when the cursor moves, which relay next and when, the status) are
``zerok.protocol.ClientCore``'s. This module is the asyncio shell around them: it runs the
connection and the tasks, tells the core what happened, does what the core decides, and
writes each change to the local state. Group management is ``zerok.client.groups``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any

from zerok.client import logsync, mailbox
from zerok.client.content import ContentOps
from zerok.client.events import (
    BlobAvailable,
    Connected,
    DeviceRevoked,
    Disconnected,
    Error,
    IntegrityAlert,
    StatusChanged,
    SyncEvent,
    SyncStatus,
)
from zerok.client.groups import GroupOps
from zerok.client.integrity import Healing, rollback_event
from zerok.client.membership import Ingested, Membership
from zerok.client.receiving import Blob, PullResult, Receiving
from zerok.client.sending import PushResult, Sending
from zerok.client.state import LocalState, log_failure
from zerok.client.streams import EVENT_QUEUE_SIZE, EventStream, Journal
from zerok.crypto.entry import Signer
from zerok.crypto.identity import DeviceIdentity
from zerok.errors import (
    ConnectError,
    DeviceRevokedError,
    MembershipError,
    NotConnectedError,
    RemoteError,
    StateError,
    SyncError,
)
from zerok.protocol import MessageReceived
from zerok.protocol.backoff import ClientTiming
from zerok.protocol.client_core import ClientCore
from zerok.protocol.events import ConnectionClosed
from zerok.protocol.integrity import IntegrityAlert as Alert
from zerok.protocol.integrity import (
    KeepPolicy,
    SenderChains,
    detect_reused_cursor,
    detect_rollback,
)
from zerok.transport import RelayConnection
from zerok.wire import (
    BlobId,
    Delete,
    DeviceId,
    ErrorCode,
    GroupId,
    Message,
    Notify,
    Pull,
    PullResponse,
    PushPlatform,
    RegisterPush,
    UnregisterPush,
)
from zerok.wire import Error as ErrorMessage
from zerok.wire import Membership as MembershipMessage
from zerok.wire.messages import MAX_HELLO_ENTRIES

__all__ = ["EVENT_QUEUE_SIZE", "Blob", "EventStream", "PullResult", "PushResult", "SyncClient"]

log = logging.getLogger("zerok.client")

KEY_FILE = "device.key"
DEFAULT_TIMEOUT = 30.0


_REFUSAL_REASONS: dict[int, str] = {
    ErrorCode.RELAY_OVERLOADED: "relay full",
    ErrorCode.RATE_LIMITED: "too many devices from your network",
}


def _wall_clock() -> int:
    return int(time.time() * 1000)


def _hello_entries(refusal: RemoteError, brought: str | None) -> str | None:
    """Which entries to bring in a new HELLO after this refusal of one that brought
    ``brought``: the log from its genesis (the relay does not know the group), its latest
    entries (it does not know this device: it lost them), the same again (another
    connection registered the group meanwhile), or None (entries would not help)."""
    if refusal.code == ErrorCode.LOG_OUTDATED and brought is not None:
        return brought
    if refusal.code == ErrorCode.UNKNOWN_GROUP and brought != "first":
        return "first"
    if refusal.code == ErrorCode.UNAUTHORIZED and "not enrolled" in refusal.message:
        return "last" if brought != "last" else None
    return None


class SyncClient(Sending, Receiving, GroupOps, ContentOps):
    """One device's membership of one sync group, kept in ``data_dir``."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        device_name: str | None = None,
        pad: bool = True,
        timing: ClientTiming | None = None,
        keep: KeepPolicy | None = None,
        clock: Callable[[], int] | None = None,
    ) -> None:
        """``keep`` bounds the blobs this device keeps for re-pushing (docs/client.md).
        ``timing`` replaces the client's own delays (backoff, retries) and ``clock`` its
        wall clock (milliseconds: entry times, invite expiry): testing knobs."""
        self.data_dir = Path(data_dir).expanduser()
        self._state = LocalState(self.data_dir)
        self._identity = DeviceIdentity.load_or_create(self.data_dir / KEY_FILE)
        self._clock = clock or _wall_clock
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
        saved_chains = self._state.chains_load()
        self._healing = Healing(
            SenderChains() if saved_chains is None else SenderChains.from_bytes(saved_chains),
            self._state.sent_load(),
            policy=keep or KeepPolicy(),
            quiet_until=self._state.quiet_until,
        )
        self._sender = self._state.sender_load()
        self._members: Membership | None = None
        self._conn: RelayConnection | None = None
        self._conn_url = ""
        self._runner: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._connected = asyncio.Event()
        self._new_data = asyncio.Event()
        self._outbox_kick = asyncio.Event()
        self._push_waiters: dict[BlobId, list[asyncio.Future[PushResult]]] = {}
        self._blob_chunks = self._state.blob_chunks_load()
        self._uploading: set[int] = set()  # uploads being put in this run
        self._subscribers: set[EventStream] = set()
        self._journaling = 0  # pushes whose outbox insert is not durable yet
        self._journal = Journal(self._state)
        self._shown_status = self._core.status  # the last one announced by StatusChanged
        self._revoked_event = asyncio.Event()
        self._acks: set[asyncio.Task[None]] = set()
        self._last_failure = ""
        self._conn_changed = asyncio.Condition()
        self._background: set[asyncio.Task[None]] = set()
        self._relay_needs: dict[str, str] = {}  # relays that lack the log: which entries
        self._catching_up: asyncio.Task[None] | None = None
        if self._state.has_group():
            self._load_group()

    # -- identity and group -----------------------------------------------------------------

    @property
    def device_id(self) -> DeviceId:
        return self._identity.device_id

    @property
    def group_id(self) -> GroupId | None:
        return self._members.group_id if self._members else None

    @property
    def epoch(self) -> int | None:
        """The group's current epoch as this device's log has it (None: no group)."""
        return self._members.epoch if self._members else None

    @property
    def log_head(self) -> tuple[int, bytes] | None:
        """The position and hash of the last entry of this device's log (None: no group)."""
        return (self._members.head_seq, self._members.head_hash) if self._members else None

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
        try:
            members = Membership.load(
                self._identity, self._state.log_load(), self._state.keys_load()
            )
        except MembershipError as exc:
            raise StateError(f"the group's log in {self._state.path} is unusable: {exc}") from None
        if members.group_id != group.group_id:
            raise StateError(f"the group's log in {self._state.path} is another group's")
        self._adopt(members, group.relays)

    def _adopt(self, members: Membership, relays: list[str]) -> None:
        self._members = members
        self._core.relays = list(relays)
        self._core.epoch = members.epoch
        if not members.active:
            self._core.device_revoked(self.device_id)

    def _require_group(self) -> Membership:
        if self._members is None:
            raise StateError("this device is in no group yet: create_group() or join() first")
        if self._core.revoked:
            raise DeviceRevokedError("this device was revoked from its group")
        return self._members

    async def _flush(self) -> None:
        """Wait until every write queued so far is durable (the writer commits in order)."""
        await asyncio.wrap_future(self._state.submit(lambda db: None))

    def _absorber(self, relay: str) -> Callable[[Ingested], object]:
        return lambda got: self._absorb(got, relay)

    def _absorb(self, got: Ingested, relay: str = "") -> None:
        """Save and announce what log entries changed, wherever they came from."""
        members = self._members
        assert members is not None
        keys = got.keys | members.take_unsaved()
        if got.rows or keys:
            self._state.save_membership_later(got.rows, keys).add_done_callback(log_failure)
        for event in got.events:
            self._emit(event)
        for device, by, reason in got.revocations:
            if device == self.device_id and members.active:
                continue  # revoked, then kept by a recovery, in one catch-up: still in
            self._become_revoked(device, by, reason)
        if got.reinstated and self._core.revoked:
            self._core.reinstated()
            self._revoked_event.clear()
            self._publish_status()
        if got.new_epoch or self._core.epoch != members.epoch:
            self._reseal_stale()

    async def _dial(
        self,
        url: str,
        *,
        signer: tuple[bytes, Signer] | None = None,
        group_id: GroupId | None = None,
    ) -> RelayConnection:
        """A connection to ``url``. A relay that does not know the group (or this device)
        gets the log's entries in a second HELLO, at once."""
        members = self._members
        if group_id is None:
            assert members is not None
            group_id = members.group_id
        timing = self._core.timing

        async def attempt(entries: list[bytes]) -> RelayConnection:
            return await RelayConnection.open(
                url,
                self._identity,
                group_id,
                entries=entries,
                signer=signer,
                device_name=self.device_name,
                last_cursor=0 if signer else self._core.cursor,
                timeout=timing.open_timeout,
                heartbeat=timing.heartbeat,
                heartbeat_timeout=timing.heartbeat_timeout,
                request_timeout=timing.request_timeout,
            )

        if members is None:  # joining, or recovering on a device without the log
            return await attempt([])
        bring = self._relay_needs.get(url)
        try:
            conn = await attempt(self._entries_for(bring))
        except RemoteError as exc:
            need = _hello_entries(exc, bring)
            if need is None:
                raise
            self._relay_needs[url] = need
            conn = await attempt(self._entries_for(need))
        self._relay_needs.pop(url, None)
        return conn

    def _entries_for(self, need: str | None) -> list[bytes]:
        assert self._members is not None
        entries = self._members.entries
        if need == "first":
            return entries[:MAX_HELLO_ENTRIES]
        if need == "last":
            return entries[-MAX_HELLO_ENTRIES:]
        return []

    async def _live(self) -> tuple[RelayConnection, str]:
        return await self._connection(), self._conn_url

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
        """Start syncing in the background; returns at once (see ``wait_connected``).

        A device its own log says is revoked tries too: only a relay can tell it that a
        recovery kept it since. One that is still revoked there is refused (ERROR 1003),
        and ``wait_connected`` raises DeviceRevokedError."""
        if self._members is None:
            self._require_group()
        if self._runner is not None and not self._runner.done():
            return
        if self._core.revoked:
            self._core.reinstated()
            self._revoked_event.clear()
        self._closing = asyncio.Event()
        self._core.start()
        self._runner = asyncio.get_running_loop().create_task(self._run())
        self._publish_status()

    async def wait_connected(self, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        """Wait until a relay accepted this device; NotConnectedError after ``timeout``."""
        if self._core.revoked:
            raise DeviceRevokedError("this device was revoked from its group")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        # A connection that was up when the wait began may be gone when it wakes (it was
        # lost meanwhile): wait again, to the same deadline.
        while not self._connected.is_set() and not self._core.revoked:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                break
            connected = asyncio.ensure_future(self._connected.wait())
            revoked = asyncio.ensure_future(self._revoked_event.wait())
            try:
                await asyncio.wait(
                    {connected, revoked}, timeout=left, return_when="FIRST_COMPLETED"
                )
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
            self._stop_syncing(f"syncing stopped: {exc!r}", "internal error")

    def _stop_syncing(self, text: str, reason: str) -> None:
        self._core.stop()
        self._closing.set()
        self._connected.clear()
        self._emit(Error(None, text, reason))
        self._fail_pushes(lambda: NotConnectedError(f"{text}; the push stays in the outbox"))
        waking = asyncio.get_running_loop().create_task(self._wake_connection_waiters())
        self._background.add(waking)
        waking.add_done_callback(self._background.discard)
        self._publish_status()

    async def _rounds(self) -> None:
        core = self._core
        while core.active:
            if not core.usable_relays:
                text = "every relay of the group presented a forked membership log"
                self._stop_syncing(text, "refused")
                return
            url = core.relay_to_try()
            conn = await self._open(url)
            if conn is None:
                reason, delay = self._last_failure, core.connect_failed()
            else:
                reason, delay = await self._serve(conn, url)
                if url not in core.usable_relays:
                    delay = None  # forsaken: the next relay at once
            if delay is None or not core.active:
                continue
            self._emit(Disconnected(url, reason, delay))
            self._publish_status()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), delay)

    async def _open(self, url: str) -> RelayConnection | None:
        try:
            return await self._dial(url)
        except RemoteError as exc:
            self._last_failure = f"{url} refused the connection: {exc.message}"
            if exc.code == ErrorCode.DEVICE_REVOKED:
                self._become_revoked(self.device_id, None, exc.message)
            else:
                reason = _REFUSAL_REASONS.get(exc.code, "refused")
                self._emit(Error(exc.code, self._last_failure, reason))
            return None
        except ConnectError as exc:
            self._last_failure = f"{url} {exc.reason}: {exc}"
            log.info("%s", self._last_failure)
            self._emit(Error(None, self._last_failure, exc.reason))
            return None

    async def _start_session(self, conn: RelayConnection, url: str) -> bool:
        """The log first, then what the relay's head says about blobs; False if this
        relay may not be used (forked log, or this device revoked)."""
        welcome = conn.welcome
        members = self._members
        assert welcome is not None and members is not None
        try:
            await logsync.reconcile(conn, welcome, members, self._absorber(url))
        except MembershipError as exc:
            self._refute(url, exc)
            return False
        except RemoteError as exc:  # the relay refused what it lacks: go on, say so
            self._emit(Error(exc.code, f"{url} did not take the log's entries: {exc}", "refused"))
        if self._core.revoked:
            return False
        alert = detect_rollback(self._core.cursor, welcome.max_cursor)
        if alert is None:
            alert = await self._landmark_moved(conn)
        if alert is not None:
            self._emit(rollback_event(alert, url))
            self._healing.rolled_back(self._core.cursor)
            self._core.restart_from(0)
            rewind = self._state.rewind_later(0, self._healing.quiet_until)
            rewind.add_done_callback(log_failure)
            self._repush(self._healing.rows())
        self._healing.new_connection()
        return True

    async def _landmark_moved(self, conn: RelayConnection) -> Alert | None:
        """Whether the relay holds another blob where this device received its last one
        (a relay restored from an older copy whose cursor has climbed back past ours)."""
        landmark = self._core.landmark()
        if landmark is None:
            return None
        blob_id, cursor = landmark
        reply = await conn.request(Pull(after=cursor - 1, limit=1))
        assert isinstance(reply, PullResponse)
        first = reply.blobs[0] if reply.blobs else None
        return detect_reused_cursor(
            blob_id,
            cursor,
            self._core.cursor,
            first.blob_id if first else None,
            first.cursor if first else 0,
        )

    def _refute(self, url: str, exc: MembershipError) -> None:
        """The relay's log contradicts this device's, or breaks the rules: stop using it."""
        seq = exc.seq if exc.seq is not None else -1
        text = f"{url} presented a membership log this device cannot accept: {exc}"
        log.warning("%s", text)
        self._emit(IntegrityAlert("fork", None, seq, seq, url, text))
        self._core.forsake(url)

    async def _serve(self, conn: RelayConnection, url: str) -> tuple[str, float]:
        """Run one connection until it ends; return why, and the delay before the next."""
        self._conn_url = url
        try:
            usable = await self._start_session(conn, url)
        except (ConnectError, RemoteError) as exc:
            usable = False
            self._emit(Error(None, f"{url}: {exc}", "connection lost"))
        if not usable:
            await conn.close()
            return f"{url}: not used", self._core.disconnected()
        welcome = conn.welcome
        assert welcome is not None
        self._conn = conn
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
                    self._on_message(conn, url, event.message)
                elif isinstance(event, ConnectionClosed):
                    reason = f"{url}: {event.reason}"
                    if event.code == ErrorCode.DEVICE_REVOKED:
                        self._become_revoked(self.device_id, None, event.reason)
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

    def _on_message(self, conn: RelayConnection, url: str, message: Message) -> None:
        if isinstance(message, Notify):
            if self._core.notified(message.sender, message.cursor):
                self._emit(BlobAvailable(message.cursor, message.blob_id, message.sender))
            self._new_data.set()
            self._publish_status()
        elif isinstance(message, MembershipMessage):
            members = self._members
            assert members is not None
            got = members.ingest(message.start, message.entries)
            self._absorb(got, url)
            if got.error is not None:
                self._refute(url, got.error)
                self._later(conn.close())
            elif got.gap:
                self._catch_up(conn, url)
        elif isinstance(message, ErrorMessage):
            self._emit(Error(message.code, message.message, "refused"))

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _catch_up(self, conn: RelayConnection, url: str) -> asyncio.Task[None]:
        """Read the relay's log beyond this device's head, once at a time."""
        task = self._catching_up
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(self._read_log(conn, url))
            self._catching_up = task
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return task

    async def _read_log(self, conn: RelayConnection, url: str) -> None:
        members = self._members
        assert members is not None
        try:
            await logsync.catch_up(conn, members, self._absorber(url))
        except MembershipError as exc:
            self._refute(url, exc)
            await conn.close()
        except (ConnectError, RemoteError):
            pass  # the connection's end tells the rest

    def _become_revoked(self, device_id: DeviceId, by: DeviceId | None, reason: str) -> None:
        if not self._core.device_revoked(device_id):
            return
        this = device_id == self.device_id
        self._emit(DeviceRevoked(device_id, by, reason, this))
        if this:
            self._revoked_event.set()
            self._later(self._wake_connection_waiters())
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
    # -- pulling ----------------------------------------------------------------------------

    async def _connection(self, timeout: float | None = DEFAULT_TIMEOUT) -> RelayConnection:
        self._require_group()
        if self._runner is None:
            raise NotConnectedError("not connected: use `async with client:` or connect() first")
        await self.wait_connected(timeout)
        if self._conn is None:
            raise NotConnectedError("the connection dropped; try again")
        return self._conn

    # -- the relay's other services ---------------------------------------------------------

    async def _request(self, message: Message) -> Message:
        conn = await self._connection()
        return await conn.request(message)

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
