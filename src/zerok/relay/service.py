"""What the relay does with each HELLO and request (DESIGN §5).

The service owns the routing table (which devices of which group are connected here), the
per-device rate limits and the push notifications for devices that are offline. Storage
does the durable part; every answer is sent only after the storage call returned, i.e.
after its commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import x25519

from zerok.protocol import ConnectionClosed, HelloReceived, RequestReceived, SessionState
from zerok.protocol.ratelimit import RateLimiter
from zerok.relay.config import RelayConfig
from zerok.relay.connection import Connection
from zerok.relay.metrics import RelayMetrics
from zerok.relay.push import PushSender, PushTarget
from zerok.relay.storage import (
    BlobStored,
    DeviceWasRevoked,
    Resync,
    Storage,
    StorageEvent,
)
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

PUSH_DEBOUNCE = 30.0  # seconds between wake-ups of one offline device


def now_ms() -> int:
    return int(time.time() * 1000)


class RelayService:
    def __init__(
        self,
        config: RelayConfig,
        storage: Storage,
        static_key: x25519.X25519PrivateKey,
        push_sender: PushSender,
        *,
        metrics: RelayMetrics | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.config = config
        self.storage = storage
        self.static_key = static_key
        self.relay_id = static_key.public_key().public_bytes_raw()
        self.push_sender = push_sender
        self.metrics = metrics or RelayMetrics()
        self.clock = clock
        self.groups: dict[GroupId, set[Connection]] = defaultdict(set)
        # Highest cursor NOTIFYed to this relay's devices, per group with devices here: a
        # resync after missed cross-relay events notifies what lies beyond it.
        self.notified: dict[GroupId, int] = {}
        self.connections: set[Connection] = set()
        self.rate = RateLimiter(config.messages_per_minute)
        self._push_targets: dict[GroupId, dict[DeviceId, PushTarget]] = {}
        self._last_wake: dict[DeviceId, float] = {}
        self._background: set[asyncio.Task[None]] = set()
        storage.subscribe(self.on_storage_event)
        self.limits = Limits(
            max_blob_size=config.max_blob_size,
            max_group_storage=config.max_group_storage,
            messages_per_minute=config.messages_per_minute,
            max_frame_size=config.frame_limit,
            default_ttl=int(config.default_ttl),
            max_ttl=int(config.max_ttl),
        )

    # -- connections ----------------------------------------------------------------------

    def online(self, group_id: GroupId) -> set[DeviceId]:
        return {c.device_id for c in self.groups.get(group_id, ()) if c.device_id is not None}

    async def on_hello(self, conn: Connection, event: HelloReceived) -> None:
        hello, device_id = event.hello, event.device_id
        session = conn.session
        now = self.clock()
        group = await self.storage.get_group(hello.group_id)
        if group is None:
            group = await self.storage.register_group(hello.group_id, hello.auth_key, now)
            log.info("group %s registered by device %s", hello.group_id.short(), device_id.short())
        if group.auth_key != hello.auth_key:
            # Knowing a group id is not enough: the proof must be by the registered key.
            self._refuse(conn, ErrorCode.UNAUTHORIZED, "this device does not hold the group's key")
            return
        device = await self.storage.get_device(hello.group_id, device_id)
        if device is not None and device.revoked:
            self._refuse(
                conn,
                ErrorCode.DEVICE_REVOKED,
                f"this device was revoked from the group ({device.revoke_reason}); "
                "it can no longer sync with it",
            )
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
            self._refuse(conn, ErrorCode.DEVICE_REVOKED, "this device was revoked from the group")
            return
        if session.closed:
            return
        session.accept(
            Welcome(
                relay_id=self.relay_id,
                max_cursor=group.max_cursor,
                pending=pending,
                limits=self.limits,
                server_time=now,
            ),
            now=conn.loop.time(),
        )
        conn.group_id, conn.device_id = hello.group_id, device_id
        self.groups[hello.group_id].add(conn)
        self.notified[hello.group_id] = max(self.notified.get(hello.group_id, 0), group.max_cursor)
        self.metrics.sessions_active.inc()
        conn.schedule_flush()

    def _refuse(self, conn: Connection, code: ErrorCode, message: str) -> None:
        device = conn.session.device_id
        log.info(
            "refused device %s from %s: %s", device.short() if device else "?", conn.remote, message
        )
        if conn.session.state is SessionState.HELLO_PENDING:  # not already closed meanwhile
            conn.close(code, message)

    def on_session_closed(self, conn: Connection, event: ConnectionClosed) -> None:
        if conn.device_id is None:  # never got in: a failed handshake or a refused HELLO
            reason = "aborted" if event.code is None else _reason_label(event.code)
            self.metrics.handshake_failures.labels(reason).inc()
        log.debug("session with %s ended: %s", conn.remote, event.reason)

    def on_disconnect(self, conn: Connection) -> None:
        self.connections.discard(conn)
        if conn.group_id is not None:
            members = self.groups.get(conn.group_id)
            if members is not None and conn in members:
                members.discard(conn)
                self.metrics.sessions_active.dec()
                if not members:
                    del self.groups[conn.group_id]
                    self.notified.pop(conn.group_id, None)

    # -- requests -------------------------------------------------------------------------

    async def on_request(self, conn: Connection, event: RequestReceived) -> None:
        assert conn.group_id is not None and conn.device_id is not None
        message, rid = event.message, event.request_id
        loop_now = conn.loop.time()
        # Heartbeats do not count: a limit for data must not cut idle, healthy devices.
        if not isinstance(message, Presence) and not self.rate.allow(conn.device_id, loop_now):
            retry = self.rate.retry_after(conn.device_id, loop_now)
            conn.send(
                Error(
                    code=ErrorCode.RATE_LIMITED,
                    message=f"over {self.config.messages_per_minute} messages a minute; "
                    f"retry in {retry} s",
                    retry_after=retry,
                ),
                rid,
            )
            return
        if isinstance(message, Push):
            await self._push(conn, rid, message)
        elif isinstance(message, Pull):
            await self._pull(conn, rid, message)
        elif isinstance(message, Ack):
            await self.storage.ack(conn.group_id, conn.device_id, message.cursor)
            self._confirm(conn, rid, message)
        elif isinstance(message, Delete):
            await self._delete(conn, rid, message)
        elif isinstance(message, RevokeDevice):
            await self._revoke(conn, rid, message)
        elif isinstance(message, ListDevices):
            await self._list_devices(conn, rid)
        elif isinstance(message, RegisterPush):
            await self._register_push(conn, rid, message)
        elif isinstance(message, UnregisterPush):
            await self.storage.set_push_token(conn.group_id, conn.device_id, None, None, None)
            self._push_targets.pop(conn.group_id, None)
            self._confirm(conn, rid, message)
        elif isinstance(message, Presence):
            self._confirm(conn, rid, message)

    @staticmethod
    def _confirm(
        conn: Connection, rid: int, message: Ack | Delete | Presence | RegisterPush | UnregisterPush
    ) -> None:
        if rid:
            conn.send(message, rid)

    async def _push(self, conn: Connection, rid: int, push: Push) -> None:
        assert conn.group_id is not None and conn.device_id is not None
        started = conn.loop.time()
        size = len(push.ciphertext)
        if size > self.config.max_blob_size:
            conn.fail(
                ErrorCode.BLOB_TOO_LARGE,
                f"blob of {size} bytes exceeds this relay's limit of {self.config.max_blob_size}",
                rid,
            )
            return
        ttl = push.ttl or self.config.default_ttl
        now = self.clock()
        outcome = await self.storage.push(
            conn.group_id,
            push.blob_id,
            conn.device_id,
            push.ciphertext,
            now=now,
            expires_at=now + int(min(ttl, self.config.max_ttl) * 1000),
            max_group_bytes=self.config.max_group_storage,
        )
        if outcome.quota_exceeded:
            conn.fail(
                ErrorCode.GROUP_QUOTA_EXCEEDED,
                f"the group's {self.config.max_group_storage} bytes of buffer are full; "
                "let devices catch up or delete blobs",
                rid,
            )
            return
        online = self.online(conn.group_id)  # who was here when the blob arrived
        conn.send(
            PushAck(blob_id=push.blob_id, cursor=outcome.cursor, timestamp=outcome.timestamp), rid
        )
        self.metrics.push_latency.observe(conn.loop.time() - started)
        if outcome.duplicate:
            return
        self.metrics.blobs_received.inc()
        self.metrics.blobs_buffered.inc()
        notify = Notify(
            blob_id=push.blob_id,
            cursor=outcome.cursor,
            sender=conn.device_id,
            timestamp=outcome.timestamp,
            size=size,
        )
        self.fan_out(conn.group_id, notify, exclude=conn)
        await self._wake_offline(conn.group_id, conn.device_id, outcome.cursor, online)

    def fan_out(self, group_id: GroupId, notify: Notify, *, exclude: Connection | None) -> int:
        """NOTIFY every other device of the group connected to this relay."""
        if group_id in self.notified:
            self.notified[group_id] = max(self.notified[group_id], notify.cursor)
        sent = 0
        for other in self.groups.get(group_id, ()):
            if other is not exclude and other.device_id != notify.sender and other.send(notify):
                sent += 1
        self.metrics.notifications.inc(sent)
        return sent

    async def _wake_offline(
        self, group_id: GroupId, sender: DeviceId, cursor: int, online: set[DeviceId]
    ) -> None:
        """Wake the devices with a push token that were offline when the blob arrived."""
        targets = self._push_targets.get(group_id)
        if targets is None:
            devices = await self.storage.list_devices(group_id)
            targets = self._push_targets[group_id] = {
                d.device_id: PushTarget(d.push_token, d.push_platform or "", d.push_app_id or "")
                for d in devices
                if d.push_token and not d.revoked
            }
        if not targets:
            return
        loop_now = time.monotonic()
        for device_id, target in targets.items():
            if device_id == sender or device_id in online:
                continue
            if loop_now - self._last_wake.get(device_id, -PUSH_DEBOUNCE) < PUSH_DEBOUNCE:
                continue
            self._last_wake[device_id] = loop_now
            ok = await self.push_sender.send(target, cursor=cursor)
            self.metrics.push_notifications.labels("sent" if ok else "failed").inc()

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
            self._push_targets.pop(event.group_id, None)
        elif isinstance(event, Resync):
            task = asyncio.get_running_loop().create_task(self.resync())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def resync(self) -> None:
        """Catch up on events missed from other relays: NOTIFY blobs stored meanwhile and
        end the sessions of devices revoked meanwhile."""
        for group_id in list(self.groups):
            after = self.notified.get(group_id, 0)
            while True:
                missed = await self.storage.blobs_after(group_id, after, 500)
                for blob in missed:
                    self.fan_out(group_id, _notify_of(blob), exclude=None)
                    after = blob.cursor
                if len(missed) < 500:
                    break
            for conn in list(self.groups.get(group_id, ())):
                if conn.device_id is None:
                    continue
                device = await self.storage.get_device(group_id, conn.device_id)
                if device is not None and device.revoked:
                    notice = DeviceRevoked(
                        device_id=device.device_id,
                        revoked_by=device.revoked_by or device.device_id,
                        timestamp=device.revoked_at or 0,
                        reason=RevokeReason(device.revoke_reason or "lost"),
                    )
                    self.revoke_connected(group_id, notice)

    async def _pull(self, conn: Connection, rid: int, pull: Pull) -> None:
        assert conn.group_id is not None
        page = await self.storage.pull(
            conn.group_id,
            pull.after,
            pull.limit,
            max_bytes=self.config.frame_limit - PULL_RESPONSE_OVERHEAD,
        )
        if conn.send(
            PullResponse(
                blobs=list(page.blobs), has_more=page.has_more, max_cursor=page.max_cursor
            ),
            rid,
        ):
            self.metrics.blobs_delivered.inc(len(page.blobs))

    async def _delete(self, conn: Connection, rid: int, delete: Delete) -> None:
        assert conn.group_id is not None and conn.device_id is not None
        outcome = await self.storage.delete_blob(
            conn.group_id, delete.blob_id, conn.device_id, force=delete.force
        )
        if outcome.found and not outcome.owner:
            conn.fail(
                ErrorCode.NOT_BLOB_OWNER, "only the device that pushed a blob may delete it", rid
            )
            return
        if outcome.deleted and delete.force:
            log.warning(
                "audit: device %s force-deleted blob %s of group %s",
                conn.device_id.short(),
                delete.blob_id,
                conn.group_id.short(),
            )
        self._confirm(conn, rid, delete)

    async def _revoke(self, conn: Connection, rid: int, revoke: RevokeDevice) -> None:
        assert conn.group_id is not None and conn.device_id is not None
        record = await self.storage.revoke_device(
            conn.group_id, revoke.device_id, conn.device_id, revoke.reason.value, self.clock()
        )
        self._push_targets.pop(conn.group_id, None)
        notice = DeviceRevoked(
            device_id=revoke.device_id,
            revoked_by=record.revoked_by or conn.device_id,
            timestamp=record.revoked_at or self.clock(),
            reason=revoke.reason,
        )
        log.warning(
            "audit: device %s revoked device %s of group %s (%s)",
            conn.device_id.short(),
            revoke.device_id.short(),
            conn.group_id.short(),
            revoke.reason.value,
        )
        conn.send(notice, rid)
        self.revoke_connected(conn.group_id, notice, exclude=conn)

    def revoke_connected(
        self, group_id: GroupId, notice: DeviceRevoked, *, exclude: Connection | None = None
    ) -> None:
        """Tell the group's devices here, and end the revoked device's connections."""
        for other in list(self.groups.get(group_id, ())):
            if other.device_id == notice.device_id:
                other.send(notice)
                other.close(ErrorCode.DEVICE_REVOKED, "this device was revoked")
            elif other is not exclude:
                other.send(notice)

    async def _list_devices(self, conn: Connection, rid: int) -> None:
        assert conn.group_id is not None
        devices = await self.storage.list_devices(conn.group_id)
        pending = await self.storage.pending_by_device(conn.group_id)
        online = self.online(conn.group_id)
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
        conn.send(Devices(devices=infos), rid)

    async def _register_push(self, conn: Connection, rid: int, register: RegisterPush) -> None:
        assert conn.group_id is not None and conn.device_id is not None
        token = register.token
        if not token.isprintable() or token.strip() != token:
            conn.fail(ErrorCode.INVALID_PUSH_TOKEN, "the push token has invalid characters", rid)
            return
        await self.storage.set_push_token(
            conn.group_id, conn.device_id, token, register.platform.value, register.app_id
        )
        self._push_targets.pop(conn.group_id, None)
        self._confirm(conn, rid, register)


def _reason_label(code: int) -> str:
    try:
        return ErrorCode(code).name.lower()
    except ValueError:
        return str(code)


def _notify_of(blob: BlobStored) -> Notify:
    return Notify(
        blob_id=blob.blob_id,
        cursor=blob.cursor,
        sender=blob.sender,
        timestamp=blob.timestamp,
        size=blob.size,
    )
