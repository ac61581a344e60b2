"""What the relay does with each HELLO and request.

The service owns the routing table (which devices of which group are connected here), the
limits it decides (per device: the request rate; per client IP: new groups, new devices
and pushed bytes, since device and group keys are free; the relay-wide storage cap) and
the wake-ups of devices that are offline. Storage does the durable part; every answer is
sent only after the storage call returned, i.e. after its commit. A connection is seen
only through ``Peer``, so the service knows nothing of WebSockets and is tested with plain
objects.

Requests are dispatched through a registry: each request type of the message catalogue
(``zerok.protocol.catalog``) has exactly one handler, marked ``@handles(Type)``; a relay
without a handler for a request type does not start.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from cryptography.hazmat.primitives.asymmetric import x25519

from zerok.errors import LocalProtocolError, StorageError, StorageFullError
from zerok.protocol import ConnectionClosed, HelloReceived, RequestReceived
from zerok.protocol.catalog import CLIENT_REQUESTS
from zerok.protocol.ratelimit import RateLimiter
from zerok.relay.config import BLOB_OVERHEAD, RelayConfig
from zerok.relay.metrics import RelayMetrics
from zerok.relay.push import OfflineWaker, PushSender
from zerok.relay.storage import (
    BlobStored,
    DeviceRecord,
    DeviceWasRevoked,
    Resync,
    Storage,
    StorageEvent,
)
from zerok.relay.tasks import TaskSet
from zerok.wire import (
    Ack,
    Delete,
    DeviceId,
    DeviceInfo,
    DeviceRevoked,
    Devices,
    Error,
    ErrorCode,
    GroupId,
    Limits,
    ListDevices,
    Message,
    Notify,
    Presence,
    Pull,
    PullResponse,
    Push,
    PushAck,
    RegisterPush,
    RevokeDevice,
    RevokeReason,
    UnregisterPush,
    Welcome,
)
from zerok.wire.messages import MAX_DEVICES, PULL_RESPONSE_OVERHEAD

log = logging.getLogger("zerok.relay")
# Refusals are lines a stranger can cause: their own logger, which the relay throttles.
refusals_log = logging.getLogger("zerok.relay.refusals")

RESYNC_PAGE = 500  # blobs read per query when catching up on other relays' pushes
HOUR = 3600.0
USAGE_REFRESH = 5.0  # seconds between reads of the relay's total storage (max_storage)
PRUNE_EVERY = 60.0  # seconds between prunes of the per-IP and per-device buckets


def ip_key(remote: str) -> str:
    """What per-IP limits count by: the IPv4 address, or the /64 of an IPv6 address (one
    host is given a whole /64, so its single addresses cost it nothing)."""
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def now_ms() -> int:
    return int(time.time() * 1000)


class Peer(Protocol):
    """One client connection, as the service sees it."""

    remote: str  # the client's address, for logs and per-IP limits
    group_id: GroupId | None  # set by accept()
    device_id: DeviceId | None

    @property
    def closed(self) -> bool: ...

    def accept(self, welcome: Welcome, group_id: GroupId, device_id: DeviceId) -> None:
        """Answer the pending HELLO with WELCOME; the device is in. LocalProtocolError if
        no HELLO is pending."""
        ...

    def send(self, message: Message, request_id: int = 0) -> bool:
        """Queue an answer (``request_id`` of the request) or an unsolicited message (0);
        an ERROR with a fatal code also ends the session. False if the session ended
        meanwhile; LocalProtocolError if the relay may not send this message."""
        ...

    def close(self, code: ErrorCode, message: str) -> None:
        """End the session with a fatal ERROR (refusal, revocation, shutdown); a no-op if
        it has ended already."""
        ...


M = TypeVar("M", bound=Message)
Handler = Callable[["RelayService", Peer, int, M], Awaitable[None]]
_HANDLERS: dict[type[Message], Handler[Any]] = {}


def handles(kind: type[M]) -> Callable[[Handler[M]], Handler[M]]:
    """Register a RelayService method as the handler of one request type."""

    def register(handler: Handler[M]) -> Handler[M]:
        if kind in _HANDLERS:
            raise LocalProtocolError(f"two relay handlers for {kind.__name__}")
        _HANDLERS[kind] = handler
        return handler

    return register


class RelayService:
    #: The handler of each request type (filled by ``@handles``).
    handlers: dict[type[Message], Handler[Any]] = _HANDLERS

    def __init__(
        self,
        config: RelayConfig,
        storage: Storage,
        static_key: x25519.X25519PrivateKey,
        push_sender: PushSender,
        *,
        metrics: RelayMetrics | None = None,
        clock: Callable[[], int] = now_ms,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        missing = CLIENT_REQUESTS - set(self.handlers)
        if missing:
            names = ", ".join(sorted(m.__name__ for m in missing))
            raise LocalProtocolError(f"the relay has no handler for {names}")
        self.config = config
        self.storage = storage
        self.static_key = static_key
        self.relay_id = static_key.public_key().public_bytes_raw()
        self.push_sender = push_sender
        self.metrics = metrics or RelayMetrics()
        self.clock = clock  # wall time in ms: timestamps, TTLs, invite expiry
        self.monotonic = monotonic  # seconds: rate limits, wake-up debounce
        self.connections: set[Peer] = set()
        self.groups: dict[GroupId, set[Peer]] = defaultdict(set)
        # Highest cursor NOTIFYed to this relay's devices, per group with devices here: a
        # resync after missed cross-relay events notifies what lies beyond it.
        self.notified: dict[GroupId, int] = {}
        self.rate = RateLimiter(config.messages_per_minute, burst=config.messages_burst or None)
        # Keys are free, so what bounds a stranger is counted per client IP: new groups,
        # new devices, and the bytes its pushes store.
        self.new_groups = RateLimiter(config.new_groups_per_hour, per=HOUR)
        self.new_devices = RateLimiter(config.new_devices_per_hour, per=HOUR)
        self.push_bytes = RateLimiter(config.push_bytes_per_hour, per=HOUR)
        self._pruned_at = monotonic()
        # New groups and devices charged lately (until the next prune), so that concurrent
        # first HELLOs of one group or device spend one token, not one each.
        self._charged: dict[tuple[bytes, ...], float] = {}
        # The relay's stored bytes (each blob + BLOB_OVERHEAD) as last read, plus what this
        # relay has accepted since: checked against max_storage.
        self._usage = 0
        self._usage_read_at: float | None = None
        self.waker = OfflineWaker(push_sender, storage, self.metrics, monotonic=monotonic)
        self.tasks = TaskSet("the relay service")
        storage.subscribe(self.on_storage_event)
        self.limits = Limits(
            max_blob_size=config.max_blob_size,
            max_group_storage=config.max_group_storage,
            messages_per_minute=config.messages_per_minute,
            max_frame_size=config.frame_limit,
            default_ttl=int(config.default_ttl),
            max_ttl=int(config.max_ttl),
            # Liveness (protocol.md §6.9): a client probes at least every heartbeat_interval.
            idle_timeout=int(config.idle_timeout),
            heartbeat_interval=max(1, int(config.idle_timeout) // 4) if config.idle_timeout else 0,
        )

    async def stop(self) -> None:
        """Cancel the service's own background work (resyncs)."""
        await self.tasks.cancel()

    # -- connections ----------------------------------------------------------------------

    def online(self, group_id: GroupId) -> set[DeviceId]:
        return {p.device_id for p in self.groups.get(group_id, ()) if p.device_id is not None}

    def on_connect(self, peer: Peer) -> None:
        self.connections.add(peer)
        self.metrics.connections_total.inc()

    async def on_hello(self, peer: Peer, event: HelloReceived) -> None:
        hello, device_id = event.hello, event.device_id
        now = self.clock()
        ip = ip_key(peer.remote)
        self._prune(self.monotonic())
        group = await self.storage.get_group(hello.group_id)
        if group is None:
            if not self.config.allow_new_groups:
                self.metrics.refused("allow_new_groups")
                self._refuse(peer, device_id, ErrorCode.UNKNOWN_GROUP, _NO_NEW_GROUPS)
                return
            if not self._admit(peer, device_id, ip, (hello.group_id,), "new_groups_per_hour"):
                return
            group = await self.storage.register_group(hello.group_id, hello.auth_key, now)
            log.info("group %s registered by device %s", hello.group_id.short(), device_id.short())
        if group.auth_key != hello.auth_key:
            # Knowing a group id is not enough: the proof must be by the registered key.
            self._refuse(peer, device_id, ErrorCode.UNAUTHORIZED, _NOT_THE_GROUPS_KEY)
            return
        device = await self.storage.get_device(hello.group_id, device_id)
        if device is not None and device.revoked:
            message = (
                f"this device was revoked from the group ({device.revoke_reason}); "
                "it can no longer sync with it"
            )
            self._refuse(peer, device_id, ErrorCode.DEVICE_REVOKED, message)
            return
        key = (hello.group_id, device_id)
        if device is None and not self._admit(peer, device_id, ip, key, "new_devices_per_hour"):
            return
        await self.storage.touch_device(hello.group_id, device_id, hello.device_name, now)
        if hello.last_cursor:
            # The device's saved cursor is its receipt for everything up to it, even if the
            # ACK it sent before disconnecting was lost.
            await self.storage.ack(hello.group_id, device_id, hello.last_cursor)
        pending = await self.storage.pending_for(hello.group_id, device_id)
        # Revoked while this HELLO was being decided? Nothing awaits between this check and
        # joining the group's connections, so a later revocation will find this one.
        device = await self.storage.get_device(hello.group_id, device_id)
        if device is not None and device.revoked:
            self._refuse(peer, device_id, ErrorCode.DEVICE_REVOKED, _REVOKED)
            return
        if peer.closed:
            return
        welcome = Welcome(
            relay_id=self.relay_id,
            max_cursor=group.max_cursor,
            pending=pending,
            limits=self.limits,
            server_time=now,
        )
        peer.accept(welcome, hello.group_id, device_id)
        self.groups[hello.group_id].add(peer)
        self.notified[hello.group_id] = max(self.notified.get(hello.group_id, 0), group.max_cursor)
        self.metrics.sessions_active.inc()

    def _admit(
        self, peer: Peer, device_id: DeviceId, ip: str, new: tuple[bytes, ...], option: str
    ) -> bool:
        """Count the new group or device ``new`` against its per-IP hourly limit, once
        (HELLOs racing for the same new group or device are charged one token); refuse the
        HELLO (ERROR 2000, the connection closed) when the address has none left."""
        now = self.monotonic()
        if new in self._charged:
            return True
        limiter = self.new_groups if option == "new_groups_per_hour" else self.new_devices
        if limiter.allow(ip, now):
            self._charged[new] = now
            return True
        retry = limiter.retry_after(ip, now)
        what = "groups registered" if option == "new_groups_per_hour" else "new devices"
        limit = getattr(self.config, option)
        self.metrics.refused(option)
        text = f"too many {what} from {ip} (limit {limit} an hour); retry in {retry} s"
        self._refuse(peer, device_id, ErrorCode.RATE_LIMITED, text)
        return False

    def _refuse(self, peer: Peer, device_id: DeviceId, code: ErrorCode, message: str) -> None:
        refusals_log.info("refused device %s from %s: %s", device_id.short(), peer.remote, message)
        peer.close(code, message)

    def on_session_closed(self, peer: Peer, event: ConnectionClosed) -> None:
        if peer.device_id is None:  # never got in: a failed handshake or a refused HELLO
            reason = "aborted" if event.code is None else _reason_label(event.code)
            self.metrics.handshake_failures.labels(reason).inc()
        log.debug("session with %s ended: %s", peer.remote, event.reason)

    def on_disconnect(self, peer: Peer) -> None:
        self.connections.discard(peer)
        if peer.group_id is None:
            return
        members = self.groups.get(peer.group_id)
        if members is not None and peer in members:
            members.discard(peer)
            self.metrics.sessions_active.dec()
            if not members:
                del self.groups[peer.group_id]
                self.notified.pop(peer.group_id, None)

    # -- requests -------------------------------------------------------------------------

    async def on_request(self, peer: Peer, event: RequestReceived) -> None:
        assert peer.device_id is not None
        message, rid = event.message, event.request_id
        # Heartbeats do not count: a limit for data must not cut idle, healthy devices.
        if not isinstance(message, Presence):
            now = self.monotonic()
            self._prune(now)
            if not self.rate.allow(peer.device_id, now):
                retry = self.rate.retry_after(peer.device_id, now)
                limit, burst = self.config.messages_per_minute, int(self.rate.capacity)
                text = f"over {limit} messages a minute (bursts of {burst}); retry in {retry} s"
                self.metrics.refused("messages_per_minute")
                peer.send(Error(code=ErrorCode.RATE_LIMITED, message=text, retry_after=retry), rid)
                return
        handler = self.handlers.get(type(message))
        if handler is None:  # the session admitted a request type nobody handles: our bug
            raise LocalProtocolError(f"the relay has no handler for {message.TYPE.name}")
        await handler(self, peer, rid, message)

    def _prune(self, now: float) -> None:
        """Forget full buckets now and then, so memory follows the active keys."""
        if now - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = now
        self._charged = {k: t for k, t in self._charged.items() if now - t < PRUNE_EVERY}
        for limiter in (self.rate, self.new_groups, self.new_devices, self.push_bytes):
            limiter.prune(now)

    async def _relay_full(self, cost: int) -> bool:
        """Whether ``cost`` more bytes would pass max_storage; if not, they are reserved
        (the caller gives them back with ``_unreserve`` if the push stores nothing). The
        relay's usage is read from the database every USAGE_REFRESH seconds and counted
        here in between, so relays sharing a database may together pass the cap by what
        they accept in that time."""
        if not self.config.max_storage:
            return False
        now = self.monotonic()
        if self._usage_read_at is None or now - self._usage_read_at >= USAGE_REFRESH:
            self._usage_read_at = now
            stored, blobs = await self.storage.usage()
            self._usage = stored + blobs * BLOB_OVERHEAD
        if self._usage + cost > self.config.max_storage:
            return True
        self._usage += cost
        return False

    def _unreserve(self, cost: int) -> None:
        if self.config.max_storage:
            self._usage = max(0, self._usage - cost)

    @staticmethod
    def _fail(peer: Peer, code: ErrorCode, message: str, rid: int) -> None:
        peer.send(Error(code=int(code), message=message), rid)

    @staticmethod
    def _confirm(peer: Peer, rid: int, message: Message) -> None:
        """Answer a request that is confirmed by its own echo (id 0: no answer wanted)."""
        if rid:
            peer.send(message, rid)

    @handles(Presence)
    async def _presence(self, peer: Peer, rid: int, presence: Presence) -> None:
        self._confirm(peer, rid, presence)

    @handles(Ack)
    async def _ack(self, peer: Peer, rid: int, ack: Ack) -> None:
        group_id, device_id = _member(peer)
        await self.storage.ack(group_id, device_id, ack.cursor)
        self._confirm(peer, rid, ack)

    @handles(Push)
    async def _push(self, peer: Peer, rid: int, push: Push) -> None:
        group_id, device_id = _member(peer)
        started = self.monotonic()
        size = len(push.ciphertext)
        if size > self.config.max_blob_size:
            limit = self.config.max_blob_size
            text = f"blob of {size} bytes exceeds this relay's limit of {limit}"
            self._fail(peer, ErrorCode.BLOB_TOO_LARGE, text, rid)
            return
        cost = size + BLOB_OVERHEAD
        ip = ip_key(peer.remote)
        if not self.push_bytes.allow(ip, started, cost):
            retry = self.push_bytes.retry_after(ip, started, cost)
            limit = self.config.push_bytes_per_hour
            text = (
                f"{ip} pushed its {limit} bytes for this hour "
                f"(each blob counts {BLOB_OVERHEAD} more); retry in {retry} s"
            )
            self.metrics.refused("push_bytes_per_hour")
            peer.send(Error(code=ErrorCode.RATE_LIMITED, message=text, retry_after=retry), rid)
            return
        # A full relay stores nothing more (a quota below 0), but a retry of a stored blob
        # is still answered with its cursor.
        full = await self._relay_full(cost)
        reserved = 0 if full else cost
        ttl = push.ttl or self.config.default_ttl
        now = self.clock()
        try:
            outcome = await self.storage.push(
                group_id,
                push.blob_id,
                device_id,
                push.ciphertext,
                now=now,
                expires_at=now + int(min(ttl, self.config.max_ttl) * 1000),
                max_group_bytes=-1 if full else self.config.max_group_storage,
                max_group_blobs=self.config.max_group_blobs,
                blob_overhead=BLOB_OVERHEAD,
            )
        except StorageFullError as exc:  # not fatal: the client retries, the relay recovers
            self.push_bytes.give_back(ip, cost)
            self._unreserve(reserved)
            self._fail(peer, ErrorCode.STORAGE_FULL, f"the relay's storage is full: {exc}", rid)
            return
        except BaseException:
            self._unreserve(reserved)
            raise
        if outcome.quota_exceeded or outcome.duplicate:
            # Nothing stored: only stored bytes count against the IP and the relay.
            self.push_bytes.give_back(ip, cost)
            self._unreserve(reserved)
        if full and outcome.quota_exceeded:
            self.metrics.refused("max_storage")
            self._fail(peer, ErrorCode.STORAGE_FULL, _RELAY_FULL, rid)
            return
        if outcome.quota_exceeded:
            text = (
                f"the group's buffer is full ({self.config.max_group_storage} bytes, each "
                f"blob counting {BLOB_OVERHEAD} more, or {self.config.max_group_blobs} "
                "blobs); let devices catch up or delete blobs"
            )
            self.metrics.refused("max_group_storage")
            self._fail(peer, ErrorCode.GROUP_QUOTA_EXCEEDED, text, rid)
            return
        online = self.online(group_id)  # who was here when the blob arrived
        ack = PushAck(blob_id=push.blob_id, cursor=outcome.cursor, timestamp=outcome.timestamp)
        peer.send(ack, rid)
        self.metrics.push_latency.observe(self.monotonic() - started)
        if outcome.duplicate:
            return
        self.metrics.blobs_received.inc()
        self.metrics.blobs_buffered.inc()
        notify = Notify(
            blob_id=push.blob_id,
            cursor=outcome.cursor,
            sender=device_id,
            timestamp=outcome.timestamp,
            size=size,
        )
        self.fan_out(group_id, notify, exclude=peer)
        try:
            await self.waker.wake(group_id, device_id, outcome.cursor, online)
        except StorageError as exc:  # the push was answered: no ERROR for it now
            log.warning("no wake-ups for group %s: %s", group_id.short(), exc)

    @handles(Pull)
    async def _pull(self, peer: Peer, rid: int, pull: Pull) -> None:
        group_id, _ = _member(peer)
        page = await self.storage.pull(
            group_id,
            pull.after,
            pull.limit,
            max_bytes=self.config.frame_limit - PULL_RESPONSE_OVERHEAD,
        )
        answer = PullResponse(
            blobs=list(page.blobs), has_more=page.has_more, max_cursor=page.max_cursor
        )
        if peer.send(answer, rid):
            self.metrics.blobs_delivered.inc(len(page.blobs))

    @handles(Delete)
    async def _delete(self, peer: Peer, rid: int, delete: Delete) -> None:
        group_id, device_id = _member(peer)
        outcome = await self.storage.delete_blob(
            group_id, delete.blob_id, device_id, force=delete.force
        )
        if outcome.found and not outcome.owner:
            text = "only the device that pushed a blob may delete it"
            self._fail(peer, ErrorCode.NOT_BLOB_OWNER, text, rid)
            return
        if outcome.deleted and delete.force:
            log.warning(
                "audit: device %s force-deleted blob %s of group %s",
                device_id.short(),
                delete.blob_id,
                group_id.short(),
            )
        self._confirm(peer, rid, delete)

    @handles(RevokeDevice)
    async def _revoke(self, peer: Peer, rid: int, revoke: RevokeDevice) -> None:
        group_id, device_id = _member(peer)
        now = self.clock()
        record = await self.storage.revoke_device(
            group_id, revoke.device_id, device_id, revoke.reason.value, now
        )
        self.waker.forget(group_id)
        notice = DeviceRevoked(
            device_id=revoke.device_id,
            revoked_by=record.revoked_by or device_id,
            timestamp=record.revoked_at or now,
            reason=revoke.reason,
        )
        log.warning(
            "audit: device %s revoked device %s of group %s (%s)",
            device_id.short(),
            revoke.device_id.short(),
            group_id.short(),
            revoke.reason.value,
        )
        peer.send(notice, rid)
        self.revoke_connected(group_id, notice, exclude=peer)

    @handles(ListDevices)
    async def _list_devices(self, peer: Peer, rid: int, _: ListDevices) -> None:
        group_id, _device = _member(peer)
        devices = await self.storage.list_devices(group_id)
        pending = await self.storage.pending_by_device(group_id)
        online = self.online(group_id)
        infos = [
            DeviceInfo(
                device_id=d.device_id,
                name=d.name,
                last_seen=d.last_seen,
                pending=pending.get(d.device_id, 0),
                online=d.device_id in online,
                revoked=d.revoked,
            )
            for d in devices[:MAX_DEVICES]  # the wire's bound on one DEVICES answer
        ]
        peer.send(Devices(devices=infos), rid)

    @handles(RegisterPush)
    async def _register_push(self, peer: Peer, rid: int, register: RegisterPush) -> None:
        group_id, device_id = _member(peer)
        token = register.token
        if not token.isprintable() or token.strip() != token:
            text = "the push token has invalid characters"
            self._fail(peer, ErrorCode.INVALID_PUSH_TOKEN, text, rid)
            return
        await self.storage.set_push_token(
            group_id, device_id, token, register.platform.value, register.app_id
        )
        self.waker.forget(group_id)
        self._confirm(peer, rid, register)

    @handles(UnregisterPush)
    async def _unregister_push(self, peer: Peer, rid: int, unregister: UnregisterPush) -> None:
        group_id, device_id = _member(peer)
        await self.storage.set_push_token(group_id, device_id, None, None, None)
        self.waker.forget(group_id)
        self._confirm(peer, rid, unregister)

    # -- fan-out --------------------------------------------------------------------------

    def fan_out(self, group_id: GroupId, notify: Notify, *, exclude: Peer | None) -> int:
        """NOTIFY every other device of the group connected to this relay."""
        if group_id in self.notified:
            self.notified[group_id] = max(self.notified[group_id], notify.cursor)
        sent = 0
        for other in self.groups.get(group_id, ()):
            if other is not exclude and other.device_id != notify.sender and other.send(notify):
                sent += 1
        self.metrics.notifications.inc(sent)
        return sent

    def revoke_connected(
        self, group_id: GroupId, notice: DeviceRevoked, *, exclude: Peer | None = None
    ) -> None:
        """Tell the group's devices here, and end the revoked device's connections."""
        for other in list(self.groups.get(group_id, ())):
            if other.device_id == notice.device_id:
                other.send(notice)
                other.close(ErrorCode.DEVICE_REVOKED, "this device was revoked")
            elif other is not exclude:
                other.send(notice)

    # -- other relays (shared PostgreSQL) ---------------------------------------------------

    def on_storage_event(self, event: StorageEvent) -> None:
        """What another relay on the same database did, as it concerns devices here."""
        if isinstance(event, BlobStored):
            if event.group_id in self.groups:
                self.fan_out(event.group_id, _notify_of(event), exclude=None)
        elif isinstance(event, DeviceWasRevoked):
            if event.group_id in self.groups:
                notice = DeviceRevoked(
                    device_id=event.device_id,
                    revoked_by=event.revoked_by,
                    timestamp=event.timestamp,
                    reason=RevokeReason(event.reason),
                )
                self.revoke_connected(event.group_id, notice)
            self.waker.forget(event.group_id)
        elif isinstance(event, Resync):
            self.tasks.spawn(self.resync())

    async def resync(self) -> None:
        """Catch up on events missed from other relays: NOTIFY blobs stored meanwhile and
        end the sessions of devices revoked meanwhile."""
        for group_id in list(self.groups):
            after = self.notified.get(group_id, 0)
            while True:
                missed = await self.storage.blobs_after(group_id, after, RESYNC_PAGE)
                for blob in missed:
                    self.fan_out(group_id, _notify_of(blob), exclude=None)
                    after = blob.cursor
                if len(missed) < RESYNC_PAGE:
                    break
            for peer in list(self.groups.get(group_id, ())):
                if peer.device_id is None:
                    continue
                device = await self.storage.get_device(group_id, peer.device_id)
                if device is not None and device.revoked:
                    self.revoke_connected(group_id, _revocation_of(device))


_NOT_THE_GROUPS_KEY = "this device does not hold the group's key"
_NO_NEW_GROUPS = "this relay serves only the groups it knows; it does not register new ones"
_RELAY_FULL = "the relay's storage is full (its max_storage); try again later"
_REVOKED = "this device was revoked from the group"


def _member(peer: Peer) -> tuple[GroupId, DeviceId]:
    """The group and device of an admitted peer (requests come only after WELCOME)."""
    if peer.group_id is None or peer.device_id is None:
        raise LocalProtocolError("a request from a peer that was never admitted")
    return peer.group_id, peer.device_id


def _reason_label(code: int) -> str:
    """A metric label for a code; a peer chooses the codes it sends, so codes that are not
    the protocol's share one label ("other") instead of making one each."""
    try:
        return ErrorCode(code).name.lower()
    except ValueError:
        return "other"


def _notify_of(blob: BlobStored) -> Notify:
    return Notify(
        blob_id=blob.blob_id,
        cursor=blob.cursor,
        sender=blob.sender,
        timestamp=blob.timestamp,
        size=blob.size,
    )


def _revocation_of(device: DeviceRecord) -> DeviceRevoked:
    return DeviceRevoked(
        device_id=device.device_id,
        revoked_by=device.revoked_by or device.device_id,
        timestamp=device.revoked_at or 0,
        reason=RevokeReason(device.revoke_reason or "lost"),
    )
