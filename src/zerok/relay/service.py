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

from zerok.crypto.membership import verify_hello
from zerok.errors import (
    InvalidProofError,
    LocalProtocolError,
    MembershipError,
    StorageError,
    StorageFullError,
    StorageUnavailableError,
    TicketError,
)
from zerok.protocol import ConnectionClosed, HelloReceived, RequestReceived
from zerok.protocol.catalog import CLIENT_REQUESTS
from zerok.protocol.membership import GroupLog, TicketState
from zerok.protocol.ratelimit import RateLimiter
from zerok.relay.config import BLOB_OVERHEAD, RelayConfig
from zerok.relay.locks import KeyedLocks
from zerok.relay.membership import AppendResult, GroupLogs, is_removal
from zerok.relay.metrics import RelayMetrics
from zerok.relay.push import OfflineWaker, PushSender
from zerok.relay.storage import (
    BlobStored,
    ChunkState,
    DeviceWasRevoked,
    Resync,
    Storage,
    StorageEvent,
)
from zerok.relay.storage import LogAppended as LogAppendedElsewhere
from zerok.relay.tasks import TaskSet
from zerok.wire import (
    Ack,
    ChunkBegin,
    ChunkData,
    ChunkGet,
    ChunkHave,
    ChunkInfo,
    ChunkPut,
    ChunkStatus,
    Delete,
    DeviceId,
    DeviceInfo,
    Devices,
    Error,
    ErrorCode,
    GroupId,
    Hello,
    Limits,
    ListDevices,
    Log,
    LogAppend,
    LogAppended,
    LogGet,
    Membership,
    Message,
    Notify,
    Presence,
    Pull,
    PullResponse,
    Push,
    PushAck,
    RegisterPush,
    UnregisterPush,
    Welcome,
)
from zerok.wire.messages import MAX_APPEND_ENTRIES, MAX_DEVICES, PULL_RESPONSE_OVERHEAD

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
        self.logs = GroupLogs(storage)
        self._chunk_puts: KeyedLocks[tuple[GroupId, bytes]] = KeyedLocks()
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
        group_id = hello.group_id
        try:
            members = await self._hello_log(peer, device_id, ip, hello, now)
        except MembershipError as exc:
            self._refuse(peer, device_id, _membership_code(exc), f"log entry refused: {exc}")
            return
        if members is None:
            return
        signer = bytes(hello.signer)
        provisional = bool(signer)
        if not provisional:
            member = members.member(device_id)
            if member is None:
                self._refuse(peer, device_id, ErrorCode.UNAUTHORIZED, _NOT_ENROLLED)
                return
            if not member.active:
                text = f"this device was revoked from the group ({member.reason or 'revoked'})"
                self._refuse(peer, device_id, ErrorCode.DEVICE_REVOKED, text)
                return
            signer = member.sign
        elif signer != members.recovery_sign:
            ticket = members.tickets.get(signer)
            refusal = _ticket_refusal(ticket, now)
            if refusal is not None:
                self._refuse(peer, device_id, *refusal)
                return
        try:
            verify_hello(hello, event.handshake_hash, device_id, signer)
        except InvalidProofError:
            self._refuse(peer, device_id, ErrorCode.UNAUTHORIZED, _BAD_PROOF)
            return
        device = await self.storage.get_device(group_id, device_id)
        key = (group_id, device_id)
        if device is None and not self._admit(peer, device_id, ip, key, "new_devices_per_hour"):
            return
        group = await self.storage.get_group(group_id)
        if group is None:  # the log's group row is written with its genesis
            raise StorageError(f"group {group_id.short()} has a log but no group row")
        if not provisional:
            await self.storage.touch_device(group_id, device_id, hello.device_name, now)
            if hello.last_cursor:
                # The device's saved cursor is its receipt for everything up to it, even if
                # the ACK it sent before disconnecting was lost.
                await self.storage.ack(group_id, device_id, hello.last_cursor)
        pending = 0 if provisional else await self.storage.pending_for(group_id, device_id)
        # Revoked while this HELLO was being decided? Nothing awaits between this check and
        # joining the group's connections, so a later revocation will find this one.
        if not provisional and members.admission(device_id) != "member":
            self._refuse(peer, device_id, ErrorCode.DEVICE_REVOKED, _REVOKED)
            return
        if peer.closed:
            return
        welcome = Welcome(
            relay_id=self.relay_id,
            max_cursor=group.max_cursor,
            pending=pending,
            limits=self.limits,
            log_seq=members.head_seq,
            log_hash=members.head_hash,
            epoch=members.epoch,
            server_time=now,
            provisional=provisional,
        )
        peer.accept(welcome, group_id, device_id)
        self.groups[group_id].add(peer)
        self.logs.pinned.add(group_id)
        self.notified[group_id] = max(self.notified.get(group_id, 0), group.max_cursor)
        self.metrics.sessions_active.inc()

    async def _hello_log(
        self, peer: Peer, device_id: DeviceId, ip: str, hello: Hello, now: int
    ) -> GroupLog | None:
        """The group's log, after appending what HELLO brought; None: HELLO was refused."""
        group_id = hello.group_id
        members = await self.logs.get(group_id)
        if members is None:
            if not hello.entries:
                self._refuse(peer, device_id, ErrorCode.UNKNOWN_GROUP, _UNKNOWN_GROUP)
                return None
            # A private relay serves the group ids its operator registered (allow-listed):
            # their first log comes with a device's HELLO like anywhere else.
            allowed = await self.storage.get_group(group_id) is not None
            if not self.config.allow_new_groups and not allowed:
                self.metrics.refused("allow_new_groups")
                self._refuse(peer, device_id, ErrorCode.UNKNOWN_GROUP, _NO_NEW_GROUPS)
                return None
            if not self._check_log_size(peer, device_id, hello.entries, 0, 0):
                return None
            if not self._admit(peer, device_id, ip, (group_id,), "new_groups_per_hour"):
                return None
            # A new group's log is its creator's own: its entries are judged by their time.
            created = await self.logs.create(group_id, hello.entries, None)
            if created is not None:
                log.info("group %s registered by device %s", group_id.short(), device_id.short())
                await self._after_append(group_id, created, exclude=peer)
                return created.log
            members = await self.logs.get(group_id)  # registered meanwhile: join it
            if members is None:
                raise MembershipError("chain", "the group's log vanished while registering")
        if not hello.entries:
            return members
        # Tickets are judged by the relay's clock unless the device was a member already:
        # a stranger holding an old invite must not enroll after its expiry, while a member
        # bringing back history the relay lost (a restore from an old backup) is judged by
        # each entry's own time.
        clock = None if members.admission(device_id) == "member" else now
        count, size = await self.storage.log_size(group_id)
        # Judged on what is new by the log as we hold it (at worst more than by the time
        # the append runs: a stricter count).
        fresh = GroupLogs.beyond(members, hello.entries)
        if not self._check_log_size(peer, device_id, fresh, count, size):
            return None
        result = await self.logs.bring(group_id, hello.entries, clock, stored_at=now)
        if result is None:
            return members
        await self._after_append(group_id, result, exclude=peer)
        return result.log

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
                self.logs.pinned.discard(peer.group_id)

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
        members = self.logs.cached(peer.group_id) if peer.group_id else None
        if members is None:  # not cached (dropped after a failure): read again
            members = await self._members_of(peer)
        if type(message) not in PROVISIONAL_REQUESTS and not _admits(members, peer):
            peer.send(Error(code=ErrorCode.UNAUTHORIZED, message=_ENROLL_FIRST), rid)
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
        members = self.logs.cached(group_id) or await self.logs.get(group_id)
        if members is not None and push.epoch != members.epoch:
            text = (
                f"the blob is sealed under epoch {push.epoch}; the group is at epoch "
                f"{members.epoch}: fetch the log (LOG_GET), seal it again and push it again"
            )
            self._fail(peer, ErrorCode.EPOCH_STALE, text, rid)
            return
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
                repair=push.repair,
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
        if push.chunks and not outcome.quota_exceeded:
            # What the blob (a file's manifest) refers to stays while the blob lives.
            await self.storage.chunk_refs(group_id, push.blob_id, push.chunks)
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

    # -- large content: chunks -------------------------------------------------------------

    @handles(ChunkHave)
    async def _chunk_have(self, peer: Peer, rid: int, have: ChunkHave) -> None:
        group_id, _ = _member(peer)
        states = await self.storage.chunk_have(group_id, have.addresses)
        peer.send(ChunkStatus(chunks=[_chunk_info(a, states.get(a)) for a in have.addresses]), rid)

    @handles(ChunkBegin)
    async def _chunk_begin(self, peer: Peer, rid: int, begin: ChunkBegin) -> None:
        group_id, _ = _member(peer)
        if await self._relay_full(begin.size):
            self.metrics.refused("max_storage")
            self._fail(peer, ErrorCode.STORAGE_FULL, _RELAY_FULL, rid)
            return
        try:
            state = await self._begin_chunk(group_id, begin)
        except StorageFullError as exc:
            self._unreserve(begin.size)
            self._fail(peer, ErrorCode.STORAGE_FULL, f"the relay's storage is full: {exc}", rid)
            return
        except StorageUnavailableError:
            self._unreserve(begin.size)
            raise
        except StorageError as exc:  # begun before with another size
            self._unreserve(begin.size)
            self._fail(peer, ErrorCode.CHUNK_UNKNOWN, str(exc), rid)
            return
        except BaseException:
            self._unreserve(begin.size)
            raise
        if state is None or state.received:  # refused, or held before: nothing new counted
            self._unreserve(begin.size)
        if state is None:
            self.metrics.refused("max_group_storage")
            text = (
                f"the group's storage is full ({self.config.max_group_storage} bytes for its "
                "blobs and chunks); let devices catch up or delete blobs"
            )
            self._fail(peer, ErrorCode.GROUP_QUOTA_EXCEEDED, text, rid)
            return
        peer.send(ChunkStatus(chunks=[_chunk_info(begin.address, state)]), rid)

    async def _begin_chunk(self, group_id: GroupId, begin: ChunkBegin) -> ChunkState | None:
        """Start or resume the upload (None: the group's quota would pass)."""
        return await self.storage.chunk_begin(
            group_id,
            begin.address,
            begin.size,
            self.clock(),
            max_group_bytes=self.config.max_group_storage,
            blob_overhead=BLOB_OVERHEAD,
        )

    @handles(ChunkPut)
    async def _chunk_put(self, peer: Peer, rid: int, put: ChunkPut) -> None:
        group_id, _ = _member(peer)
        # One chunk's pieces are written in the order they arrived (requests run as
        # concurrent tasks), so a client may keep several in flight.
        async with self._chunk_puts.hold((group_id, put.address)):
            await self._put_piece(peer, rid, group_id, put)

    async def _put_piece(self, peer: Peer, rid: int, group_id: GroupId, put: ChunkPut) -> None:
        ip, started = ip_key(peer.remote), self.monotonic()
        # Chunk bytes count in the address's push budget like blob bytes.
        if not self.push_bytes.allow(ip, started, len(put.data)):
            retry = self.push_bytes.retry_after(ip, started, len(put.data))
            text = (
                f"{ip} pushed its {self.config.push_bytes_per_hour} bytes for this hour; "
                f"retry in {retry} s"
            )
            self.metrics.refused("push_bytes_per_hour")
            peer.send(Error(code=ErrorCode.RATE_LIMITED, message=text, retry_after=retry), rid)
            return
        try:
            state = await self.storage.chunk_write(group_id, put.address, put.offset, put.data)
            if state.received == state.size and not state.complete:
                state = await self.storage.chunk_commit(group_id, put.address)
        except StorageFullError as exc:
            self.push_bytes.give_back(ip, len(put.data))
            self._fail(peer, ErrorCode.STORAGE_FULL, f"the relay's storage is full: {exc}", rid)
            return
        except StorageUnavailableError:
            raise
        except StorageError as exc:  # not begun, or not at the offset the relay has
            self.push_bytes.give_back(ip, len(put.data))
            self._fail(peer, ErrorCode.CHUNK_UNKNOWN, f"{exc}: ask CHUNK_HAVE and resume", rid)
            return
        if state.mismatch:
            text = "the chunk's bytes do not hash to its address; nothing of it was kept"
            self._fail(peer, ErrorCode.CHUNK_MISMATCH, text, rid)
            return
        peer.send(ChunkStatus(chunks=[_chunk_info(put.address, state)]), rid)

    @handles(ChunkGet)
    async def _chunk_get(self, peer: Peer, rid: int, get: ChunkGet) -> None:
        group_id, _ = _member(peer)
        try:
            data = await self.storage.chunk_read(group_id, get.address, get.offset, get.length)
        except StorageUnavailableError:
            raise
        except StorageError as exc:
            self._fail(peer, ErrorCode.CHUNK_UNKNOWN, f"no such chunk here whole: {exc}", rid)
            return
        peer.send(ChunkData(address=get.address, offset=get.offset, data=data), rid)

    @handles(LogGet)
    async def _log_get(self, peer: Peer, rid: int, get: LogGet) -> None:
        group_id, _ = _member(peer)
        head = await self.storage.log_head(group_id)
        records = await self.storage.log_read(
            group_id, get.start - 1, get.limit, self.config.frame_limit - LOG_PAGE_OVERHEAD
        )
        entries = [r.entry for r in records]
        peer.send(Log(start=get.start, entries=entries, head_seq=head.seq if head else 0), rid)

    @handles(LogAppend)
    async def _log_append(self, peer: Peer, rid: int, append: LogAppend) -> None:
        group_id, _ = _member(peer)
        count, size = await self.storage.log_size(group_id)
        over = self._log_over(append.entries, count, size)
        if over is not None:
            self.metrics.refused(over[0])
            self._fail(peer, ErrorCode.LOG_REJECTED, over[1], rid)
            return
        now = self.clock()
        clock = None if await self._enrolled(peer) else now  # see _hello_log
        try:
            result = await self.logs.append(group_id, append.entries, clock, stored_at=now)
        except MembershipError as exc:
            self._fail(peer, _membership_code(exc), str(exc), rid)
            return
        except StorageFullError as exc:  # not fatal: acks and pulls still work
            self._fail(peer, ErrorCode.STORAGE_FULL, f"the relay's storage is full: {exc}", rid)
            return
        peer.send(LogAppended(head_seq=result.log.head_seq, head_hash=result.log.head_hash), rid)
        await self._after_append(group_id, result, exclude=peer)

    def _log_over(self, entries: list[bytes], count: int, size: int) -> tuple[str, str] | None:
        """The group log limit these entries would pass (its name, and why), or None.

        Revocations and recoveries may go LOG_HEADROOM beyond the limits: a member device
        filling its group's log (a stolen one rotating in a loop) must not leave the owner
        unable to revoke it."""
        entry_limit, byte_limit = self.config.max_log_entries, self.config.max_log_bytes
        if all(is_removal(e) for e in entries):
            entry_limit += max(16, entry_limit // LOG_HEADROOM)
            byte_limit += max(1024 * 1024, byte_limit // LOG_HEADROOM)
        if count + len(entries) > entry_limit:
            limit = self.config.max_log_entries
            return "max_log_entries", f"the group's log is at its limit of {limit} entries"
        if size + sum(len(e) for e in entries) > byte_limit:
            limit = self.config.max_log_bytes
            return "max_log_bytes", f"the group's log is at its limit of {limit} bytes"
        return None

    def _check_log_size(
        self, peer: Peer, device_id: DeviceId, entries: list[bytes], count: int, size: int
    ) -> bool:
        over = self._log_over(entries, count, size)
        if over is None:
            return True
        self.metrics.refused(over[0])
        self._refuse(peer, device_id, ErrorCode.LOG_REJECTED, over[1])
        return False

    async def _after_append(
        self, group_id: GroupId, result: AppendResult, *, exclude: Peer | None
    ) -> None:
        """Tell the group's devices here, record revocations, end revoked sessions."""
        entries = result.entries
        for first in range(0, len(entries), MAX_APPEND_ENTRIES):
            notice = Membership(
                start=result.start + first, entries=entries[first : first + MAX_APPEND_ENTRIES]
            )
            for other in list(self.groups.get(group_id, ())):
                if other is not exclude:
                    other.send(notice)
        now = self.clock()
        for applied in result.applied:
            if not applied.revoked:
                continue
            author = result.log.by_sign(applied.body.author)
            # A recovery's author is the recovery key, which is no device: its key stands in.
            by = author.device if author is not None else DeviceId(applied.body.author)
            for device in applied.revoked:
                await self.storage.revoke_device(group_id, device, by, applied.kind, now)
                log.warning(
                    "audit: device %s of group %s revoked (log entry %d, %s)",
                    device.short(),
                    group_id.short(),
                    applied.seq,
                    applied.kind,
                )
            self.waker.forget(group_id)
        self.close_revoked(group_id)

    def close_revoked(self, group_id: GroupId) -> None:
        """End the sessions of devices the group's log no longer admits."""
        members = self.logs.cached(group_id)
        if members is None:
            return
        for other in list(self.groups.get(group_id, ())):
            if other.device_id is not None and members.admission(other.device_id) == "revoked":
                other.close(ErrorCode.DEVICE_REVOKED, _REVOKED)

    async def _members_of(self, peer: Peer) -> GroupLog | None:
        group_id, _ = _member(peer)
        return await self.logs.get(group_id)

    async def _enrolled(self, peer: Peer) -> bool:
        return _admits(await self._members_of(peer), peer)

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

    # -- other relays (shared PostgreSQL) ---------------------------------------------------

    def on_storage_event(self, event: StorageEvent) -> None:
        """What another relay on the same database did, as it concerns devices here."""
        if isinstance(event, BlobStored):
            if event.group_id in self.groups:
                self.fan_out(event.group_id, _notify_of(event), exclude=None)
        elif isinstance(event, DeviceWasRevoked):
            self.waker.forget(event.group_id)
        elif isinstance(event, LogAppendedElsewhere):
            if self.logs.cached(event.group_id) is not None:
                self.tasks.spawn(self.catch_up_log(event.group_id))
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
            await self.catch_up_log(group_id)

    async def catch_up_log(self, group_id: GroupId) -> None:
        """Apply what other relays appended to a group's log, and tell the devices here."""
        try:
            start, applied, entries = await self.logs.refresh(group_id)
        except (MembershipError, StorageError) as exc:
            log.warning("cannot catch up on the log of group %s: %s", group_id.short(), exc)
            return
        members = self.logs.cached(group_id)
        if entries and members is not None:
            await self._after_append(
                group_id, AppendResult(members, applied, start, entries), exclude=None
            )


# What a device enrolling with a ticket, or recovering, may do before it is a member.
PROVISIONAL_REQUESTS = frozenset({LogGet, LogAppend, Presence})
LOG_HEADROOM = 10  # revocations may pass the log limits by a tenth (see _log_over)
LOG_PAGE_OVERHEAD = 1024
_NOT_ENROLLED = (
    "this device is not enrolled in the group's log: pair it with an invite "
    "(or bring the log's entries in HELLO)"
)
_BAD_PROOF = "the HELLO proof does not verify with the key the group's log has for it"
_UNKNOWN_GROUP = (
    "this relay does not know the group: bring its log from the genesis in HELLO to register it"
)
_ENROLL_FIRST = "this session may only read and append the group's log until the device is enrolled"
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


def _chunk_info(address: bytes, state: ChunkState | None) -> ChunkInfo:
    if state is None:
        return ChunkInfo(address=address)
    return ChunkInfo(
        address=address, size=state.size, received=state.received, complete=state.complete
    )


def _admits(members: GroupLog | None, peer: Peer) -> bool:
    """Whether the group's log holds the peer's device as an active member (a provisional
    session's device is not, until its entry lands)."""
    return (
        members is not None
        and peer.device_id is not None
        and members.admission(peer.device_id) == "member"
    )


def _membership_code(exc: MembershipError) -> ErrorCode:
    if isinstance(exc, TicketError):
        return {
            "used": ErrorCode.TICKET_USED,
            "expired": ErrorCode.TICKET_EXPIRED,
            "cancelled": ErrorCode.TICKET_CANCELLED,
        }.get(exc.reason, ErrorCode.LOG_REJECTED)
    if exc.reason == "chain":
        return ErrorCode.LOG_OUTDATED
    return ErrorCode.LOG_REJECTED


def _ticket_refusal(ticket: TicketState | None, now: int) -> tuple[ErrorCode, str] | None:
    """Why a HELLO signed by this ticket is refused, or None when it may enroll."""
    if ticket is None:
        return ErrorCode.UNAUTHORIZED, "no such invite in this group's log"
    if ticket.state == "used":
        return ErrorCode.TICKET_USED, "this invite was already used: ask for a new one"
    if ticket.state in {"cancelled", "closed"}:
        why = "cancelled" if ticket.state == "cancelled" else "closed when the group's keys rotated"
        return ErrorCode.TICKET_CANCELLED, f"this invite was {why}: ask for a new one"
    if now > ticket.expires_at:
        return ErrorCode.TICKET_EXPIRED, "this invite has expired: ask for a new one"
    return None
