"""RelayService on its own: no sockets, no Noise, a real SQLite database, clocks in hand.

The service sees connections only through the ``Peer`` interface, so these tests drive it
with ``FakePeer``s that record what the relay sent and refuse, like a real connection,
any message the catalogue does not let a relay send.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from zerok.crypto import DeviceIdentity
from zerok.crypto.entry import entry_hash
from zerok.crypto.membership import make_hello
from zerok.errors import LocalProtocolError
from zerok.protocol import ConnectionClosed, HelloReceived, RequestReceived
from zerok.protocol import entries as membership_entries
from zerok.protocol.catalog import RELAY_MESSAGES
from zerok.protocol.membership import GroupLog
from zerok.relay.config import BLOB_OVERHEAD, RelayConfig
from zerok.relay.metrics import LIMITS, RelayMetrics
from zerok.relay.push import LoggingPushSender
from zerok.relay.service import USAGE_REFRESH, RelayService, ip_key
from zerok.relay.storage import (
    BlobStored,
    DeviceRecord,
    LogConflict,
    LogRecord,
    Resync,
    SQLiteStorage,
)
from zerok.relay.storage import LogAppended as LogAppendedElsewhere
from zerok.testing import TestGroup, member_of
from zerok.wire import (
    Ack,
    BlobId,
    ChunkBegin,
    ChunkData,
    ChunkGet,
    ChunkHave,
    ChunkInfo,
    ChunkPut,
    ChunkStatus,
    Delete,
    DeviceId,
    Devices,
    Error,
    ErrorCode,
    GroupId,
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
    PushPlatform,
    RegisterPush,
    UnregisterPush,
    Welcome,
)
from zerok.wire.log import decode_entry

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, 20)

    return asyncio.run(bounded())


@dataclass(eq=False)  # peers are kept in sets: by identity
class FakePeer:
    """A Peer that records: what was sent (with request ids) and how it was closed."""

    remote: str = "192.0.2.1"
    group_id: GroupId | None = None
    device_id: DeviceId | None = None
    sent: list[tuple[Message, int]] = field(default_factory=list)
    closed_with: tuple[ErrorCode, str] | None = None
    welcome: Welcome | None = None

    @property
    def closed(self) -> bool:
        return self.closed_with is not None

    def accept(self, welcome: Welcome, group_id: GroupId, device_id: DeviceId) -> None:
        if self.closed or self.welcome is not None:
            raise LocalProtocolError("no HELLO is pending")
        self.welcome, self.group_id, self.device_id = welcome, group_id, device_id

    def send(self, message: Message, request_id: int = 0) -> bool:
        if type(message) not in RELAY_MESSAGES:
            raise LocalProtocolError(f"a relay does not send {type(message).__name__}")
        if self.closed:
            return False
        self.sent.append((message, request_id))
        return True

    def close(self, code: ErrorCode, message: str) -> None:
        if not self.closed:
            self.closed_with = (code, message)

    def answer(self, request_id: int) -> Message:
        answers = [m for m, rid in self.sent if rid == request_id]
        assert len(answers) == 1, f"expected one answer to {request_id}, got {answers}"
        return answers[0]

    def unsolicited(self, *, skip: tuple[type[Message], ...] = (Membership,)) -> list[Message]:
        """Unasked messages, but (by default) MEMBERSHIP: devices of a test group enroll as
        they join, and the others are told."""
        return [m for m, rid in self.sent if rid == 0 and not isinstance(m, skip)]


class Clocks:
    """Wall time (ms) and monotonic time (s), both moved by hand."""

    def __init__(self) -> None:
        self.wall = 1_767_225_600_000
        self.mono = 1000.0

    def advance(self, seconds: float) -> None:
        self.wall += int(seconds * 1000)
        self.mono += seconds


def hello_from(
    identity: DeviceIdentity, group: TestGroup, *, group_id: GroupId | None = None
) -> HelloReceived:
    """What the relay's session hands the service for this device's HELLO (with the whole
    log, so the relay appends what it lacks)."""
    handshake_hash = os.urandom(32)
    hello = make_hello(identity, handshake_hash, group_id or group.group_id, entries=group.entries)
    return HelloReceived(identity.device_id, hello, handshake_hash)


@dataclass
class Relay:
    service: RelayService
    storage: SQLiteStorage
    clocks: Clocks
    pushes: LoggingPushSender
    keys: TestGroup = field(default_factory=TestGroup)
    _next_id: int = 1

    async def join(
        self,
        identity: DeviceIdentity | None = None,
        *,
        keys: TestGroup | None = None,
        remote: str = FakePeer.remote,
    ) -> FakePeer:
        """A device says HELLO (from ``remote``); the peer, accepted or refused."""
        identity = identity or DeviceIdentity.generate()
        group = keys or self.keys
        group.enroll(identity)
        peer = FakePeer(remote=remote)
        self.service.on_connect(peer)
        await self.service.on_hello(peer, hello_from(identity, group))
        return peer

    async def revoke(self, by: FakePeer, *devices: DeviceIdentity) -> Message:
        """An admin's Revoke entry, appended through ``by``'s session."""
        return await self.ask(by, LogAppend(entries=[self.keys.revoke(*devices)]))

    async def request(self, peer: FakePeer, message: Message, *, answer: bool = True) -> int:
        self._next_id += 1
        rid = self._next_id if answer else 0
        await self.service.on_request(peer, RequestReceived(rid, message))
        return rid

    async def ask(self, peer: FakePeer, message: Message) -> Message:
        return peer.answer(await self.request(peer, message))


@asynccontextmanager
async def relay(tmp_path: Path, **options: Any) -> AsyncIterator[Relay]:
    settings: dict[str, Any] = {"messages_per_minute": 0, **options}
    config = RelayConfig(database=str(tmp_path / "relay.db"), **settings).validate()
    storage = SQLiteStorage(tmp_path / "relay.db")
    await storage.open()
    clocks = Clocks()
    pushes = LoggingPushSender()
    service = RelayService(
        config,
        storage,
        DeviceIdentity.generate().private_key,
        pushes,
        clock=lambda: clocks.wall,
        monotonic=lambda: clocks.mono,
    )
    try:
        yield Relay(service, storage, clocks, pushes)
    finally:
        await service.stop()
        await storage.close()


def with_relay(
    tmp_path: Path, test: Callable[[Relay], Coroutine[Any, Any, None]], **kw: Any
) -> None:
    async def go() -> None:
        async with relay(tmp_path, **kw) as r:
            await test(r)

    run(go())


def test_a_first_hello_registers_the_group_and_is_welcomed(tmp_path: Path) -> None:
    async def test(r: Relay) -> None:
        peer = await r.join()
        assert peer.welcome is not None and peer.closed_with is None
        assert peer.welcome.relay_id == r.service.relay_id
        assert peer.welcome.max_cursor == 0 and peer.welcome.pending == 0
        assert peer.welcome.limits == r.service.limits
        assert peer.welcome.server_time == r.clocks.wall
        assert peer.group_id == r.keys.group_id
        assert r.service.online(r.keys.group_id) == {peer.device_id}
        assert await r.storage.get_group(r.keys.group_id) is not None

    with_relay(tmp_path, test)


def test_another_log_for_a_known_group_id_is_refused(tmp_path: Path) -> None:
    async def test(r: Relay) -> None:
        await r.join()
        impostor, stranger = TestGroup(), DeviceIdentity.generate()
        impostor.enroll(stranger)
        # A log of the stranger's own, presented under the group's id.
        peer = FakePeer()
        r.service.on_connect(peer)
        await r.service.on_hello(peer, hello_from(stranger, impostor, group_id=r.keys.group_id))
        assert peer.welcome is None
        assert peer.closed_with is not None and peer.closed_with[0] == ErrorCode.LOG_REJECTED
        assert "genesis" in peer.closed_with[1]
        # Nor does a device that is in no log get in by naming the group.
        nobody = FakePeer()
        r.service.on_connect(nobody)
        empty = TestGroup()
        await r.service.on_hello(nobody, hello_from(stranger, empty, group_id=r.keys.group_id))
        assert nobody.closed_with is not None and nobody.closed_with[0] in {
            ErrorCode.UNAUTHORIZED,
            ErrorCode.LOG_REJECTED,
        }
        assert len(r.service.online(r.keys.group_id)) == 1

    with_relay(tmp_path, test)


def test_a_revoked_device_is_refused_at_hello(tmp_path: Path) -> None:
    async def test(r: Relay) -> None:
        admin = await r.join()
        lost = DeviceIdentity.generate()
        await r.join(lost)
        assert isinstance(await r.revoke(admin, lost), LogAppended)
        peer = await r.join(lost)
        assert peer.closed_with is not None
        assert peer.closed_with[0] == ErrorCode.DEVICE_REVOKED
        assert "lost" in peer.closed_with[1]
        handshake_failures = r.service.metrics.handshake_failures
        r.service.on_session_closed(peer, ConnectionClosed(ErrorCode.DEVICE_REVOKED, "", False))
        assert handshake_failures.labels("device_revoked")._value.get() == 1

    with_relay(tmp_path, test)


def test_a_peer_gone_while_its_hello_was_decided_is_not_admitted(tmp_path: Path) -> None:
    async def test(r: Relay) -> None:
        identity = DeviceIdentity.generate()
        r.keys.enroll(identity)
        peer = FakePeer()
        peer.close(ErrorCode.INVALID_MESSAGE, "sent a frame before WELCOME")
        await r.service.on_hello(peer, hello_from(identity, r.keys))
        assert peer.welcome is None
        assert r.service.online(r.keys.group_id) == set()

    with_relay(tmp_path, test)


def test_push_is_acked_then_notified_to_the_other_devices_once(tmp_path: Path) -> None:
    async def test(r: Relay) -> None:
        laptop, phone, tablet = await r.join(), await r.join(), await r.join()
        blob_id = BlobId.random()
        ack = await r.ask(laptop, Push(blob_id=blob_id, ciphertext=b"x" * 10))
        assert isinstance(ack, PushAck) and ack.cursor == 1 and ack.timestamp == r.clocks.wall
        for other in (phone, tablet):
            (notify,) = other.unsolicited()
            assert isinstance(notify, Notify)
            assert (notify.cursor, notify.blob_id, notify.size) == (1, blob_id, 10)
            assert notify.sender == laptop.device_id
        assert laptop.unsolicited() == []
        # A retry of the same blob: the same cursor, no second NOTIFY.
        again = await r.ask(laptop, Push(blob_id=blob_id, ciphertext=b"x" * 10))
        assert isinstance(again, PushAck) and again.cursor == 1
        assert len(phone.unsolicited()) == 1
        assert r.service.notified[r.keys.group_id] == 1

    with_relay(tmp_path, test)


def test_push_over_the_blob_limit_or_the_quota_is_refused(tmp_path: Path) -> None:
    async def test(r: Relay) -> None:
        peer = await r.join()
        big = await r.ask(peer, Push(blob_id=BlobId.random(), ciphertext=bytes(1025)))
        assert isinstance(big, Error) and big.code == ErrorCode.BLOB_TOO_LARGE
        for _ in range(2):
            ok = await r.ask(peer, Push(blob_id=BlobId.random(), ciphertext=bytes(1000)))
            assert isinstance(ok, PushAck)
        full = await r.ask(peer, Push(blob_id=BlobId.random(), ciphertext=bytes(1000)))
        assert isinstance(full, Error) and full.code == ErrorCode.GROUP_QUOTA_EXCEEDED
        assert not peer.closed

    with_relay(tmp_path, test, max_blob_size=1024, max_group_storage=2500, max_frame_size=70_000)


def test_rate_limit_counts_data_not_heartbeats_and_refills_with_time(tmp_path: Path) -> None:
    async def test(r: Relay) -> None:
        peer = await r.join()
        for _ in range(3):
            assert isinstance(await r.ask(peer, Pull()), PullResponse)
        limited = await r.ask(peer, Pull())
        assert isinstance(limited, Error) and limited.code == ErrorCode.RATE_LIMITED
        assert limited.retry_after == 20  # 3 a minute: one every 20 s
        assert isinstance(await r.ask(peer, Presence()), Presence)  # heartbeats pass
        r.clocks.advance(20)
        assert isinstance(await r.ask(peer, Pull()), PullResponse)

    with_relay(tmp_path, test, messages_per_minute=3, messages_burst=3)


def test_echoed_requests_are_confirmed_only_when_an_answer_is_wanted(tmp_path: Path) -> None:
    async def test(r: Relay) -> None:
        peer = await r.join()
        await r.ask(peer, Push(blob_id=BlobId.random(), ciphertext=b"a"))
        assert await r.ask(peer, Ack(cursor=1)) == Ack(cursor=1)
        assert await r.ask(peer, Presence(online=False)) == Presence(online=False)
        before = len(peer.sent)
        await r.request(peer, Ack(cursor=1), answer=False)
        await r.request(peer, Presence(), answer=False)
        assert len(peer.sent) == before

    with_relay(tmp_path, test)


def test_pull_pages_and_delete_rules(tmp_path: Path) -> None:
    async def test(r: Relay) -> None:
        owner, other = await r.join(), await r.join()
        ids = [BlobId.random() for _ in range(3)]
        for blob_id in ids:
            await r.ask(owner, Push(blob_id=blob_id, ciphertext=b"data"))
        page = await r.ask(other, Pull(after=1, limit=1))
        assert isinstance(page, PullResponse)
        assert [b.cursor for b in page.blobs] == [2] and page.has_more and page.max_cursor == 3
        refused = await r.ask(other, Delete(blob_id=ids[0], force=True))
        assert isinstance(refused, Error) and refused.code == ErrorCode.NOT_BLOB_OWNER
        assert await r.ask(owner, Delete(blob_id=ids[0], force=True)) == Delete(
            blob_id=ids[0], force=True
        )
        rest = await r.ask(other, Pull())
        assert isinstance(rest, PullResponse) and [b.cursor for b in rest.blobs] == [2, 3]

    with_relay(tmp_path, test)


def test_revocation_tells_everyone_and_ends_the_revoked_session(tmp_path: Path) -> None:
    async def test(r: Relay) -> None:
        phone = DeviceIdentity.generate()
        admin, lost, bystander = await r.join(), await r.join(phone), await r.join()
        before = len(admin.sent)
        answer = await r.revoke(admin, phone)
        assert isinstance(answer, LogAppended) and answer.head_seq == r.keys.log.head_seq
        notice = Membership(start=r.keys.log.head_seq, entries=[r.keys.entries[-1]])
        assert bystander.unsolicited(skip=())[-1] == notice
        assert lost.unsolicited(skip=())[-1] == notice
        assert lost.closed_with is not None and lost.closed_with[0] == ErrorCode.DEVICE_REVOKED
        assert [m for m, rid in admin.sent[before:] if rid == 0] == []  # it has its answer
        record = await r.storage.get_device(r.keys.group_id, phone.device_id)
        assert record is not None and record.revoked

    with_relay(tmp_path, test)


def test_list_devices_shows_who_is_online_and_pending(tmp_path: Path) -> None:
    async def test(r: Relay) -> None:
        laptop, phone = await r.join(), await r.join()
        await r.ask(laptop, Push(blob_id=BlobId.random(), ciphertext=b"a"))
        r.service.on_disconnect(phone)
        listing = await r.ask(laptop, ListDevices())
        assert isinstance(listing, Devices)
        by_id = {d.device_id: d for d in listing.devices}
        assert by_id[laptop.device_id].online and not by_id[phone.device_id].online  # type: ignore[index]
        assert by_id[phone.device_id].pending == 1  # type: ignore[index]
        assert r.service.online(r.keys.group_id) == {laptop.device_id}

    with_relay(tmp_path, test)


def test_offline_devices_with_a_token_are_woken_once_per_burst(tmp_path: Path) -> None:
    async def test(r: Relay) -> None:
        sender, sleeper = await r.join(), await r.join()
        bad = await r.ask(sleeper, RegisterPush(token="tok en\n", platform=PushPlatform.FCM))
        assert isinstance(bad, Error) and bad.code == ErrorCode.INVALID_PUSH_TOKEN
        register = RegisterPush(token="token-1", platform=PushPlatform.FCM, app_id="app")
        assert await r.ask(sleeper, register) == register
        r.service.on_disconnect(sleeper)
        for _ in range(3):
            await r.ask(sender, Push(blob_id=BlobId.random(), ciphertext=b"a"))
        assert [(t.token, cursor) for t, cursor in r.pushes.sent] == [("token-1", 1)]
        r.clocks.advance(31)
        await r.ask(sender, Push(blob_id=BlobId.random(), ciphertext=b"a"))
        assert [cursor for _, cursor in r.pushes.sent] == [1, 4]
        back = await r.join()
        await r.ask(back, UnregisterPush())
        r.clocks.advance(31)
        await r.ask(sender, Push(blob_id=BlobId.random(), ciphertext=b"a"))
        assert len(r.pushes.sent) == 3  # the sleeper's token still stands

    with_relay(tmp_path, test)


def test_events_from_other_relays_reach_the_devices_here(tmp_path: Path) -> None:
    async def test(r: Relay) -> None:
        here_identity = DeviceIdentity.generate()
        here = await r.join(here_identity)
        group = r.keys.group_id
        elsewhere = DeviceIdentity.generate().device_id
        blob = BlobStored(group, BlobId.random(), 7, elsewhere, r.clocks.wall, 3)
        r.service.on_storage_event(blob)
        (notify,) = here.unsolicited()
        assert isinstance(notify, Notify) and notify.cursor == 7
        assert here.device_id is not None
        # Another relay appended a revocation of this device to the shared log.
        entry = r.keys.revoke(here_identity)
        head = r.keys.log.head_seq
        record = LogRecord(head, entry_hash(decode_entry(entry).body), entry)
        assert not isinstance(
            await r.storage.log_append(group, [record], r.clocks.wall), LogConflict
        )
        r.service.on_storage_event(LogAppendedElsewhere(group, head))
        assert await r.service.tasks.wait(5)
        assert here.unsolicited(skip=())[-1] == Membership(start=head, entries=[entry])
        assert here.closed_with is not None
        assert here.closed_with[0] == ErrorCode.DEVICE_REVOKED

    with_relay(tmp_path, test)


def test_a_resync_notifies_what_was_missed(tmp_path: Path) -> None:
    async def test(r: Relay) -> None:
        reader = await r.join()
        elsewhere = DeviceIdentity.generate().device_id
        for _ in range(3):  # stored through another relay, whose events were lost
            await r.storage.push(
                r.keys.group_id,
                BlobId.random(),
                elsewhere,
                b"a",
                now=r.clocks.wall,
                expires_at=r.clocks.wall + 60_000,
                max_group_bytes=1 << 20,
            )
        assert reader.unsolicited() == []
        r.service.on_storage_event(Resync())
        assert await r.service.tasks.wait(5)
        assert [m.cursor for m in reader.unsolicited() if isinstance(m, Notify)] == [1, 2, 3]

    with_relay(tmp_path, test)


def test_a_request_from_an_unadmitted_peer_is_a_bug_not_a_silence(tmp_path: Path) -> None:
    async def test(r: Relay) -> None:
        stranger = FakePeer(device_id=DeviceIdentity.generate().device_id)
        with pytest.raises(LocalProtocolError):
            await r.service.on_request(stranger, RequestReceived(5, Pull()))

    with_relay(tmp_path, test)


def test_codes_a_peer_chooses_do_not_become_metric_labels(tmp_path: Path) -> None:
    async def test(r: Relay) -> None:
        failures = r.service.metrics.handshake_failures
        for code in (4242, 65535, 4242):
            r.service.on_session_closed(FakePeer(), ConnectionClosed(code, "", True))
        r.service.on_session_closed(FakePeer(), ConnectionClosed(1002, "", True))
        labels = {
            sample.labels["reason"]
            for metric in failures.collect()
            for sample in metric.samples
            if sample.name.endswith("_total")
        }
        assert labels == {"other", "unauthorized"}
        assert failures.labels("other")._value.get() == 3

    with_relay(tmp_path, test)


def test_a_token_registered_while_wake_ups_load_is_not_lost(tmp_path: Path) -> None:
    # The interleaving: a push starts loading the group's push targets; while that read
    # waits, a device registers its token (and the cache is cleared); the read then
    # finishes with what it saw before the registration. It must not be cached.
    async def test(r: Relay) -> None:
        sender = await r.join()
        loading, release = asyncio.Event(), asyncio.Event()
        list_devices = r.storage.list_devices

        async def slow_list_devices(group_id: GroupId) -> list[DeviceRecord]:
            devices = await list_devices(group_id)
            loading.set()
            await release.wait()
            return devices

        r.storage.list_devices = slow_list_devices  # type: ignore[method-assign]
        push = asyncio.ensure_future(r.ask(sender, Push(blob_id=BlobId.random(), ciphertext=b"a")))
        await asyncio.wait_for(loading.wait(), 5)
        r.storage.list_devices = list_devices  # type: ignore[method-assign]
        phone = await r.join()
        register = RegisterPush(token="phone-token", platform=PushPlatform.APNS)
        assert await r.ask(phone, register) == register
        r.service.on_disconnect(phone)  # asleep: the next push should wake it
        release.set()
        await asyncio.wait_for(push, 5)
        await r.ask(sender, Push(blob_id=BlobId.random(), ciphertext=b"b"))
        assert [t.token for t, _ in r.pushes.sent] == ["phone-token"]

    with_relay(tmp_path, test)


def test_wake_up_bookkeeping_forgets_what_no_longer_matters(tmp_path: Path) -> None:
    async def test(r: Relay) -> None:
        waker = r.service.waker
        sender = await r.join()
        for i in range(20):
            sleeper = await r.join()
            register = RegisterPush(token=f"token-{i}", platform=PushPlatform.FCM)
            await r.ask(sleeper, register)
            r.service.on_disconnect(sleeper)
        await r.ask(sender, Push(blob_id=BlobId.random(), ciphertext=b"a"))
        assert len(r.pushes.sent) == 20
        assert waker.remembered_wake_ups == 20
        r.clocks.advance(waker.debounce + 1)
        await r.ask(sender, Push(blob_id=BlobId.random(), ciphertext=b"a"))  # wakes again
        r.clocks.advance(waker.debounce + 1)
        waker.prune()
        assert waker.remembered_wake_ups == 0

    with_relay(tmp_path, test)


def test_push_targets_are_cached_for_a_bounded_number_of_groups(tmp_path: Path) -> None:
    async def test(r: Relay) -> None:
        r.service.waker.cached_groups = 2
        for _ in range(3):
            peer = await r.join(keys=TestGroup())
            await r.ask(peer, Push(blob_id=BlobId.random(), ciphertext=b"a"))
        assert len(r.service.waker._targets) == 2

    with_relay(tmp_path, test)


# -- quotas and per-IP limits (issue 10, item 5) -------------------------------------------


def refusals(r: Relay, limit: str) -> float:
    value: float = r.service.metrics.limit_refusals.labels(limit)._value.get()
    return value


def test_empty_blobs_cost_their_overhead_in_the_group_quota(tmp_path: Path) -> None:
    async def test(r: Relay) -> None:
        peer = await r.join()
        answers = [
            await r.ask(peer, Push(blob_id=BlobId.random(), ciphertext=b"")) for _ in range(12)
        ]
        assert [type(a) for a in answers] == [PushAck] * 10 + [Error] * 2
        refused = answers[-1]
        assert isinstance(refused, Error) and refused.code == ErrorCode.GROUP_QUOTA_EXCEEDED
        assert "128" in refused.message
        assert refusals(r, "max_group_storage") == 2
        assert not peer.closed

    with_relay(tmp_path, test, max_group_storage=10 * BLOB_OVERHEAD)


def test_blobs_per_group_are_limited(tmp_path: Path) -> None:
    async def test(r: Relay) -> None:
        peer = await r.join()
        for cursor in (1, 2, 3):
            ack = await r.ask(peer, Push(blob_id=BlobId.random(), ciphertext=b"x"))
            assert isinstance(ack, PushAck) and ack.cursor == cursor
        refused = await r.ask(peer, Push(blob_id=BlobId.random(), ciphertext=b"x"))
        assert isinstance(refused, Error) and refused.code == ErrorCode.GROUP_QUOTA_EXCEEDED
        other = await r.join(keys=TestGroup())  # each group has its own count
        assert isinstance(
            await r.ask(other, Push(blob_id=BlobId.random(), ciphertext=b"")), PushAck
        )

    with_relay(tmp_path, test, max_group_blobs=3)


def test_new_groups_per_ip_are_limited_per_hour(tmp_path: Path) -> None:
    async def test(r: Relay) -> None:
        assert (await r.join()).welcome is not None
        assert (await r.join(keys=TestGroup())).welcome is not None
        third = TestGroup()
        refused = await r.join(keys=third)
        assert refused.welcome is None and refused.closed_with is not None
        code, message = refused.closed_with
        assert code == ErrorCode.RATE_LIMITED
        assert "groups registered" in message and "retry in 1800 s" in message
        assert await r.storage.get_group(third.group_id) is None  # nothing was registered
        assert refusals(r, "new_groups_per_hour") == 1
        # Groups it knows still admit devices from that address; other addresses register.
        assert (await r.join(keys=r.keys)).welcome is not None
        assert (await r.join(keys=third, remote="198.51.100.7")).welcome is not None
        # Half an hour later, the address has one more.
        r.clocks.advance(1800)
        assert (await r.join(keys=TestGroup())).welcome is not None
        assert (await r.join(keys=TestGroup())).closed_with is not None

    with_relay(tmp_path, test, new_groups_per_hour=2, new_devices_per_hour=0)


def test_new_devices_per_ip_are_limited_but_known_devices_return(tmp_path: Path) -> None:
    async def test(r: Relay) -> None:
        devices = [DeviceIdentity.generate() for _ in range(3)]
        for device in devices:  # the first registers the group: it counts too
            assert (await r.join(device)).welcome is not None
        refused = await r.join()
        assert refused.closed_with is not None
        assert refused.closed_with[0] == ErrorCode.RATE_LIMITED
        assert "new devices" in refused.closed_with[1]
        assert refusals(r, "new_devices_per_hour") == 1
        for device in devices:  # reconnecting is free
            assert (await r.join(device)).welcome is not None
        assert (await r.join(remote="2001:db8::1")).welcome is not None
        # One IPv6 host holds a whole /64: its addresses share one budget.
        assert (await r.join(remote="2001:db8::2")).welcome is not None
        assert (await r.join(remote="2001:db8::3:4")).welcome is not None
        assert (await r.join(remote="2001:db8:0:0:ffff::9")).closed_with is not None
        assert (await r.join(remote="2001:db8:0:1::1")).welcome is not None

    with_relay(tmp_path, test, new_devices_per_hour=3)


def test_ip_key_groups_ipv6_by_64_and_unwraps_mapped_ipv4() -> None:
    assert ip_key("192.0.2.1") == "192.0.2.1"
    assert ip_key("2001:db8::1") == ip_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert ip_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert ip_key("not an address") == "not an address"


def test_a_private_relay_refuses_unknown_groups(tmp_path: Path) -> None:
    async def test(r: Relay) -> None:
        peer = await r.join()
        assert peer.closed_with is not None
        assert peer.closed_with[0] == ErrorCode.UNKNOWN_GROUP
        assert await r.storage.get_group(r.keys.group_id) is None
        assert refusals(r, "allow_new_groups") == 1
        # A group the operator registered (or that existed before) is served.
        await r.storage.register_group(r.keys.group_id, b"", r.clocks.wall)
        assert (await r.join()).welcome is not None

    with_relay(tmp_path, test, allow_new_groups=False)


def test_push_bytes_are_limited_per_ip_across_devices_and_groups(tmp_path: Path) -> None:
    cost = 1000 + BLOB_OVERHEAD

    def blob(blob_id: BlobId | None = None) -> Push:
        return Push(blob_id=blob_id or BlobId.random(), ciphertext=bytes(1000))

    async def test(r: Relay) -> None:
        first = await r.join()
        second = await r.join(keys=TestGroup())  # another group, same address
        stored = BlobId.random()
        assert isinstance(await r.ask(first, blob(stored)), PushAck)
        # A retry of a stored blob stores nothing and costs nothing.
        assert isinstance(await r.ask(first, blob(stored)), PushAck)
        assert isinstance(await r.ask(second, blob()), PushAck)
        refused = await r.ask(second, blob())
        assert isinstance(refused, Error) and refused.code == ErrorCode.RATE_LIMITED
        assert refused.retry_after == 1800  # one blob's cost comes back in half an hour
        assert refusals(r, "push_bytes_per_hour") == 1
        assert not second.closed
        elsewhere = await r.join(remote="198.51.100.7")  # another address has its own
        assert isinstance(await r.ask(elsewhere, blob()), PushAck)
        r.clocks.advance(1800)
        assert isinstance(await r.ask(second, blob()), PushAck)
        assert isinstance(await r.ask(first, blob()), Error)

    with_relay(tmp_path, test, max_blob_size=1024, push_bytes_per_hour=2 * cost)


def test_max_storage_caps_the_whole_relay(tmp_path: Path) -> None:
    cost = 10 + BLOB_OVERHEAD

    async def test(r: Relay) -> None:
        owner = await r.join()
        other = await r.join(keys=TestGroup())
        ids = [BlobId.random() for _ in range(3)]
        for blob_id in ids:
            assert isinstance(
                await r.ask(owner, Push(blob_id=blob_id, ciphertext=bytes(10))), PushAck
            )
        assert isinstance(
            await r.ask(other, Push(blob_id=BlobId.random(), ciphertext=bytes(10))), PushAck
        )
        full = await r.ask(other, Push(blob_id=BlobId.random(), ciphertext=bytes(10)))
        assert isinstance(full, Error) and full.code == ErrorCode.STORAGE_FULL
        assert "max_storage" in full.message
        assert refusals(r, "max_storage") == 1
        # A retry of a stored blob is still answered.
        assert isinstance(await r.ask(owner, Push(blob_id=ids[0], ciphertext=bytes(10))), PushAck)
        # Space comes back once blobs go: seen at the next read of the relay's usage.
        gone = Delete(blob_id=ids[0], force=True)
        assert await r.ask(owner, gone) == gone
        r.clocks.advance(USAGE_REFRESH)
        assert isinstance(
            await r.ask(other, Push(blob_id=BlobId.random(), ciphertext=bytes(10))), PushAck
        )

    with_relay(tmp_path, test, max_storage=4 * cost)


def test_racing_first_hellos_of_one_group_spend_one_token(tmp_path: Path) -> None:
    async def test(r: Relay) -> None:
        # Five devices of a new group say HELLO at once: one new group, five new devices.
        peers = await asyncio.gather(*(r.join() for _ in range(5)))
        assert all(p.welcome is not None for p in peers), [p.closed_with for p in peers]
        assert refusals(r, "new_groups_per_hour") == 0
        assert (await r.join(keys=TestGroup())).closed_with is not None
        device = DeviceIdentity.generate()  # one device twice at once: charged once
        again = await asyncio.gather(*(r.join(device, keys=r.keys) for _ in range(2)))
        assert all(p.welcome is not None for p in again)
        assert (await r.join()).closed_with is not None  # the 7th new device

    with_relay(tmp_path, test, new_groups_per_hour=1, new_devices_per_hour=6)


def test_limit_refusal_labels_are_a_fixed_set() -> None:
    metrics = RelayMetrics()
    for limit in LIMITS:
        metrics.refused(limit)
    with pytest.raises(ValueError, match="not a limit label"):
        metrics.refused("2000")
    assert b'sync_relay_limit_refusals_total{limit="max_storage"} 1.0' in metrics.render()


# -- protocol 2: the membership log ------------------------------------------------------------


def test_the_group_log_limits_refuse_with_1005_and_count(tmp_path: Path) -> None:
    async def test(r: Relay) -> None:
        admin_identity = r.keys.creator
        admin = await r.join(admin_identity)
        r.keys.ticket()  # one more entry than the limit leaves room for
        answer = await r.ask(admin, LogAppend(entries=[r.keys.entries[-1]]))
        assert isinstance(answer, Error) and answer.code == ErrorCode.LOG_REJECTED
        assert "limit of 1 entries" in answer.message
        assert refusals(r, "max_log_entries") == 1

    with_relay(tmp_path, test, max_log_entries=1)


def test_a_ticket_opens_a_provisional_session_for_the_log_only(tmp_path: Path) -> None:
    async def test(r: Relay) -> None:
        await r.join(r.keys.creator)
        ticket = r.keys.ticket()
        await r.ask(await r.join(r.keys.creator), LogAppend(entries=[r.keys.entries[-1]]))
        newcomer = DeviceIdentity.generate()
        hh = os.urandom(32)
        hello = make_hello(newcomer, hh, r.keys.group_id, signer=(ticket.public, ticket.sign))
        peer = FakePeer()
        r.service.on_connect(peer)
        await r.service.on_hello(peer, HelloReceived(newcomer.device_id, hello, hh))
        assert peer.welcome is not None and peer.welcome.provisional
        refused = await r.ask(peer, Push(blob_id=BlobId.random(), ciphertext=b"x"))
        assert isinstance(refused, Error) and refused.code == ErrorCode.UNAUTHORIZED
        log = await r.ask(peer, LogGet())
        assert isinstance(log, Log) and log.entries == r.keys.entries
        # It enrolls itself at the head; from then on it is a member.
        r.keys.log.apply(
            enroll := membership_entries.enroll(
                r.keys.log, member_of(newcomer), newcomer.sign, ticket, now=r.clocks.wall
            )
        )
        r.keys.entries.append(enroll)
        assert isinstance(await r.ask(peer, LogAppend(entries=[enroll])), LogAppended)
        stored = await r.ask(peer, Push(blob_id=BlobId.random(), ciphertext=b"x"))
        assert isinstance(stored, PushAck)
        # The ticket is used: a second device holding it is refused at HELLO.
        other = DeviceIdentity.generate()
        again = make_hello(other, hh, r.keys.group_id, signer=(ticket.public, ticket.sign))
        late = FakePeer()
        r.service.on_connect(late)
        await r.service.on_hello(late, HelloReceived(other.device_id, again, hh))
        assert late.closed_with is not None and late.closed_with[0] == ErrorCode.TICKET_USED

    with_relay(tmp_path, test)


def test_expired_and_cancelled_tickets_are_refused_with_their_codes(tmp_path: Path) -> None:
    async def test(r: Relay) -> None:
        admin = await r.join(r.keys.creator)
        expiring = r.keys.ticket(ttl_ms=1000)
        cancelled = r.keys.ticket()
        r.keys.append(
            membership_entries.cancel(
                r.keys.log,
                r.keys.creator.sign_public,
                r.keys.creator.sign,
                cancelled.public,
                now=r.keys.now,
            )
        )
        assert isinstance(await r.ask(admin, LogAppend(entries=r.keys.entries[-3:])), LogAppended)
        r.clocks.wall = r.keys.now + 2000
        for ticket, code in (
            (expiring, ErrorCode.TICKET_EXPIRED),
            (cancelled, ErrorCode.TICKET_CANCELLED),
        ):
            device, hh = DeviceIdentity.generate(), os.urandom(32)
            hello = make_hello(device, hh, r.keys.group_id, signer=(ticket.public, ticket.sign))
            peer = FakePeer()
            r.service.on_connect(peer)
            await r.service.on_hello(peer, HelloReceived(device.device_id, hello, hh))
            assert peer.closed_with is not None and peer.closed_with[0] == code

    with_relay(tmp_path, test)


def test_a_push_under_an_old_epoch_gets_2004_after_a_revocation(tmp_path: Path) -> None:
    async def test(r: Relay) -> None:
        lost = DeviceIdentity.generate()
        admin, _ = await r.join(r.keys.creator), await r.join(lost)
        await r.revoke(admin, lost)
        stale = await r.ask(admin, Push(blob_id=BlobId.random(), ciphertext=b"x", epoch=0))
        assert isinstance(stale, Error) and stale.code == ErrorCode.EPOCH_STALE
        assert "epoch 1" in stale.message
        fresh = await r.ask(admin, Push(blob_id=BlobId.random(), ciphertext=b"x", epoch=1))
        assert isinstance(fresh, PushAck)

    with_relay(tmp_path, test)


def test_a_repair_push_stores_a_retired_blob_again(tmp_path: Path) -> None:
    async def test(r: Relay) -> None:
        owner = await r.join()
        blob_id = BlobId.random()
        assert isinstance(await r.ask(owner, Push(blob_id=blob_id, ciphertext=b"x")), PushAck)
        assert await r.ask(owner, Delete(blob_id=blob_id, force=True)) == Delete(
            blob_id=blob_id, force=True
        )
        retry = await r.ask(owner, Push(blob_id=blob_id, ciphertext=b"x"))
        assert isinstance(retry, PushAck) and retry.cursor == 1  # still the first cursor
        repaired = await r.ask(owner, Push(blob_id=blob_id, ciphertext=b"x", repair=True))
        assert isinstance(repaired, PushAck) and repaired.cursor == 2

    with_relay(tmp_path, test)


def test_a_full_log_still_takes_the_revocation_of_the_device_that_filled_it(
    tmp_path: Path,
) -> None:
    async def test(r: Relay) -> None:
        thief_identity = DeviceIdentity.generate()
        owner = await r.join(r.keys.creator)
        thief = await r.join(thief_identity)  # the log now holds 3 entries: the limit
        r.keys.ticket()  # what the thief would go on appending
        answer = await r.ask(thief, LogAppend(entries=[r.keys.entries[-1]]))
        assert isinstance(answer, Error) and answer.code == ErrorCode.LOG_REJECTED
        r.keys.entries.pop()
        r.keys.log = GroupLog.replay(r.keys.entries)
        assert isinstance(await r.revoke(owner, thief_identity), LogAppended)
        assert thief.closed_with is not None

    with_relay(tmp_path, test, max_log_entries=3)


# -- large content: chunks ----------------------------------------------------------------------


def _chunk(size: int, seed: int = 1) -> tuple[bytes, bytes]:
    data = bytes((seed * 7 + i) % 251 for i in range(size))
    return hashlib.sha256(data).digest(), data


def test_a_chunk_goes_up_in_pieces_is_verified_and_comes_down(tmp_path: Path) -> None:
    async def test(r: Relay) -> None:
        peer = await r.join()
        address, data = _chunk(300_000)
        have = await r.ask(peer, ChunkHave(addresses=[address]))
        assert have == ChunkStatus(chunks=[ChunkInfo(address=address)])
        begun = await r.ask(peer, ChunkBegin(address=address, size=len(data)))
        assert begun == ChunkStatus(chunks=[ChunkInfo(address=address, size=len(data))])
        first = await r.ask(peer, ChunkPut(address=address, offset=0, data=data[:200_000]))
        assert isinstance(first, ChunkStatus) and first.chunks[0].received == 200_000
        # Out of order: refused, and the upload resumes where the relay is.
        wrong = await r.ask(peer, ChunkPut(address=address, offset=0, data=data[:10]))
        assert isinstance(wrong, Error) and wrong.code == ErrorCode.CHUNK_UNKNOWN
        done = await r.ask(peer, ChunkPut(address=address, offset=200_000, data=data[200_000:]))
        assert isinstance(done, ChunkStatus) and done.chunks[0].complete
        got = await r.ask(peer, ChunkGet(address=address, offset=100, length=1000))
        assert got == ChunkData(address=address, offset=100, data=data[100:1100])
        # An equal chunk is stored once: beginning it again finds it complete.
        again = await r.ask(peer, ChunkBegin(address=address, size=len(data)))
        assert isinstance(again, ChunkStatus) and again.chunks[0].complete

    with_relay(tmp_path, test)


def test_a_chunk_that_does_not_hash_to_its_address_is_refused_and_not_kept(
    tmp_path: Path,
) -> None:
    async def test(r: Relay) -> None:
        peer = await r.join()
        address, data = _chunk(1000)
        forged = bytes([data[0] ^ 1]) + data[1:]
        await r.ask(peer, ChunkBegin(address=address, size=len(data)))
        refused = await r.ask(peer, ChunkPut(address=address, offset=0, data=forged))
        assert isinstance(refused, Error) and refused.code == ErrorCode.CHUNK_MISMATCH
        have = await r.ask(peer, ChunkHave(addresses=[address]))
        assert isinstance(have, ChunkStatus) and not have.chunks[0].complete
        assert have.chunks[0].received == 0
        missing = await r.ask(peer, ChunkGet(address=address))
        assert isinstance(missing, Error) and missing.code == ErrorCode.CHUNK_UNKNOWN

    with_relay(tmp_path, test)


def test_chunks_count_in_the_group_quota(tmp_path: Path) -> None:
    async def test(r: Relay) -> None:
        peer = await r.join()
        address, data = _chunk(5000)
        refused = await r.ask(peer, ChunkBegin(address=address, size=len(data)))
        assert isinstance(refused, Error) and refused.code == ErrorCode.GROUP_QUOTA_EXCEEDED
        assert refusals(r, "max_group_storage") == 1

    with_relay(tmp_path, test, max_group_storage=4096)


def test_chunks_a_live_blob_refers_to_survive_collection_and_go_with_it(tmp_path: Path) -> None:
    async def test(r: Relay) -> None:
        peer = await r.join()
        kept, kept_data = _chunk(2000, 1)
        loose, loose_data = _chunk(2000, 2)
        for address, data in ((kept, kept_data), (loose, loose_data)):
            await r.ask(peer, ChunkBegin(address=address, size=len(data)))
            await r.ask(peer, ChunkPut(address=address, offset=0, data=data))
        manifest = BlobId.random()
        push = Push(blob_id=manifest, ciphertext=b"sealed manifest", chunks=[kept])
        assert isinstance(await r.ask(peer, push), PushAck)
        later = r.clocks.wall + 2 * 24 * 3600 * 1000  # both idle for two days
        assert await r.storage.chunk_gc(later, 100) == 1
        have = await r.ask(peer, ChunkHave(addresses=[kept, loose]))
        assert isinstance(have, ChunkStatus)
        assert [c.complete for c in have.chunks] == [True, False]
        gone = Delete(blob_id=manifest, force=True)
        assert await r.ask(peer, gone) == gone
        assert await r.storage.chunk_gc(later, 100) == 1

    with_relay(tmp_path, test)
