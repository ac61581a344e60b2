"""PUSH, PULL, NOTIFY, revocation and membership against one shared relay process.

Every test makes its own GroupKeys, so the tests share the relay but never a group.
"""

from __future__ import annotations

import asyncio
import hashlib
import os

import aiohttp
import pytest

from tests.relay.support import (
    RelayLauncher,
    clients,
    next_message,
    pull,
    pull_all,
    push,
    queued_events,
    raw_client,
    revoke,
    run,
    wait_closed,
)
from zerok.crypto import DeviceIdentity
from zerok.errors import RemoteError
from zerok.protocol import CLASSIC, HYBRID, MessageReceived, Variant
from zerok.testing import InProcessRelay, TestGroup
from zerok.transport.connection import RelayConnection
from zerok.wire import (
    Ack,
    BlobId,
    ChunkBegin,
    ChunkData,
    ChunkGet,
    ChunkPut,
    ChunkStatus,
    Delete,
    Devices,
    ErrorCode,
    ListDevices,
    Membership,
    Notify,
    Pull,
    PullResponse,
)


async def _membership_at(conn: RelayConnection, start: int) -> Membership:
    """The MEMBERSHIP notice of the entries from ``start`` (earlier ones passed over)."""
    while True:
        message = await next_message(conn, skip=())
        if isinstance(message, Membership) and message.start == start:
            return message


@pytest.fixture(scope="module")
def relay(module_launcher: RelayLauncher) -> InProcessRelay:
    return module_launcher.start()


async def _round_trip(conn: RelayConnection) -> None:
    """A request and its answer: whatever the relay queued for us before is now here."""
    await pull(conn, limit=1)


def test_cursors_are_gap_free_under_concurrent_pushers(relay: InProcessRelay) -> None:
    pushers, per_pusher = 10, 50

    async def scenario() -> None:
        keys = TestGroup()
        async with clients(relay.url) as pool:
            conns = [await pool.open(keys, name=f"pusher-{i}") for i in range(pushers)]
            sent = {
                (i, n): (BlobId.random(), f"pusher {i} blob {n}".encode())
                for i in range(pushers)
                for n in range(per_pusher)
            }
            acks = await asyncio.gather(
                *(push(conns[i], data, blob_id=blob_id) for (i, _), (blob_id, data) in sent.items())
            )
            cursors = [ack.cursor for ack in acks]
            assert len(cursors) == len(set(cursors)), "a cursor was assigned twice"
            assert sorted(cursors) == list(range(1, pushers * per_pusher + 1))
            for ack, (blob_id, _) in zip(acks, sent.values(), strict=True):
                assert ack.blob_id == blob_id

            by_cursor = {ack.cursor: item for ack, item in zip(acks, sent.values(), strict=True)}
            reader = await pool.open(keys, name="reader")
            assert reader.welcome is not None
            assert reader.welcome.max_cursor == pushers * per_pusher
            blobs = await pull_all(reader)
            assert [b.cursor for b in blobs] == list(range(1, pushers * per_pusher + 1))
            for blob in blobs:
                assert (blob.blob_id, blob.ciphertext) == by_cursor[blob.cursor]

    run(scenario(), timeout=60)


def test_push_is_idempotent_by_blob_id_also_after_reconnecting(relay: InProcessRelay) -> None:
    async def scenario() -> None:
        keys = TestGroup()
        alice = DeviceIdentity.generate()
        async with clients(relay.url) as pool:
            conn = await pool.open(keys, alice)
            watcher = await pool.open(keys)
            await push(conn, b"before")
            blob_id = BlobId.random()
            first = await push(conn, b"the blob", blob_id=blob_id)
            again = await push(conn, b"the blob", blob_id=blob_id)
            assert (again.cursor, again.timestamp) == (first.cursor, first.timestamp)
            await push(conn, b"after")

            blobs = await pull_all(conn)
            assert [b.cursor for b in blobs] == [1, 2, 3]
            assert [b.blob_id for b in blobs].count(blob_id) == 1

            # The watcher heard of the blob once: a retry is not news.
            await _round_trip(watcher)
            notified = [
                e.message.blob_id
                for e in queued_events(watcher)
                if isinstance(e, MessageReceived) and isinstance(e.message, Notify)
            ]
            assert notified.count(blob_id) == 1
            assert len(notified) == 3

            await conn.close()
            conn = await pool.open(keys, alice)
            assert conn.welcome is not None and conn.welcome.max_cursor == 3
            retried = await push(conn, b"the blob", blob_id=blob_id)
            assert (retried.cursor, retried.timestamp) == (first.cursor, first.timestamp)
            blobs = await pull_all(conn)
            assert [b.cursor for b in blobs] == [1, 2, 3]
            assert [b.blob_id for b in blobs].count(blob_id) == 1
            await _round_trip(watcher)
            assert queued_events(watcher) == []

    run(scenario())


def test_notify_reaches_the_other_devices_and_not_the_sender(relay: InProcessRelay) -> None:
    async def scenario() -> None:
        keys = TestGroup()
        async with clients(relay.url) as pool:
            a, b, c = [await pool.open(keys, name=name) for name in "abc"]
            stranger = await pool.open(TestGroup())  # another group
            data = os.urandom(777)
            ack = await push(a, data)
            for device in (b, c):
                notify = await next_message(device)
                assert isinstance(notify, Notify), notify
                assert notify.blob_id == ack.blob_id
                assert notify.cursor == ack.cursor == 1
                assert notify.sender == a.session.identity.device_id
                assert notify.size == len(data)
                assert notify.timestamp == ack.timestamp
            # Anything for A (or the other group) would have been queued before these answers.
            await _round_trip(a)
            await _round_trip(stranger)
            assert queued_events(a) == []
            assert queued_events(stranger) == []

    run(scenario())


def test_pull_pages_by_limit_and_after(relay: InProcessRelay) -> None:
    async def scenario() -> None:
        keys = TestGroup()
        async with clients(relay.url) as pool:
            conn = await pool.open(keys)
            acks = [await push(conn, f"blob {i}".encode()) for i in range(7)]
            assert [a.cursor for a in acks] == list(range(1, 8))

            page = await pull(conn, after=0, limit=3)
            assert [b.cursor for b in page.blobs] == [1, 2, 3]
            assert (page.has_more, page.max_cursor) == (True, 7)
            page = await pull(conn, after=3, limit=3)
            assert [b.cursor for b in page.blobs] == [4, 5, 6]
            assert (page.has_more, page.max_cursor) == (True, 7)
            page = await pull(conn, after=6, limit=3)
            assert [b.cursor for b in page.blobs] == [7]
            assert (page.has_more, page.max_cursor) == (False, 7)
            assert page.blobs[0].ciphertext == b"blob 6"
            assert page.blobs[0].blob_id == acks[6].blob_id
            page = await pull(conn, after=7)
            assert (page.blobs, page.has_more, page.max_cursor) == ([], False, 7)
            page = await pull(conn, after=2, limit=4)
            assert [b.cursor for b in page.blobs] == [3, 4, 5, 6]
            assert page.has_more
            page = await pull(conn, after=100)
            assert (page.blobs, page.has_more, page.max_cursor) == ([], False, 7)

    run(scenario())


def test_blobs_larger_than_one_noise_message_round_trip(relay: InProcessRelay) -> None:
    async def scenario() -> None:
        keys = TestGroup()
        async with clients(relay.url) as pool:
            conn = await pool.open(keys)
            for size in (65_000, 65_518, 65_519, 200_000, 1024 * 1024):
                data = os.urandom(size)
                ack = await push(conn, data)
                [blob] = (await pull(conn, after=ack.cursor - 1, limit=1)).blobs
                assert (blob.cursor, blob.ciphertext) == (ack.cursor, data)

    run(scenario(), timeout=60)


def test_pull_pages_are_capped_by_bytes(relay: InProcessRelay) -> None:
    """200 KiB blobs with the default 1 MiB blob limit: a page holds only some of them."""
    size, count = 200 * 1024, 8  # 1.6 MB in all, more than one 1 MiB frame

    async def scenario() -> None:
        keys = TestGroup()
        async with clients(relay.url) as pool:
            conn = await pool.open(keys)
            assert conn.welcome is not None
            await _check_byte_capped_paging(conn, size, count, conn.welcome.limits.max_frame_size)

    run(scenario(), timeout=60)


def test_pull_pages_are_capped_by_bytes_with_small_frames(launcher: RelayLauncher) -> None:
    """The same with limits small enough that every message fits one Noise message."""
    relay = launcher.start("--max-blob-size", "20000", "--max-frame-size", "60000")

    async def scenario() -> None:
        keys = TestGroup()
        async with clients(relay.url) as pool:
            conn = await pool.open(keys)
            assert conn.welcome is not None
            assert conn.welcome.limits.max_frame_size == 60000
            await _check_byte_capped_paging(conn, 15_000, 9, 60000)

    run(scenario())


async def _check_byte_capped_paging(
    conn: RelayConnection, size: int, count: int, frame_limit: int
) -> None:
    sent = {}
    for _ in range(count):
        data = os.urandom(size)
        sent[(await push(conn, data)).cursor] = data
    assert sorted(sent) == list(range(1, count + 1))

    first = await pull(conn, limit=100)
    assert 0 < len(first.blobs) < count
    assert first.has_more
    assert first.max_cursor == count
    assert sum(len(b.ciphertext) for b in first.blobs) < frame_limit
    assert [b.cursor for b in first.blobs] == list(range(1, len(first.blobs) + 1))

    pages = [first]
    while pages[-1].has_more:
        page = await pull(conn, after=pages[-1].blobs[-1].cursor, limit=100)
        assert page.blobs and sum(len(b.ciphertext) for b in page.blobs) < frame_limit
        pages.append(page)
    blobs = [b for page in pages for b in page.blobs]
    assert [b.cursor for b in blobs] == list(range(1, count + 1))
    assert all(b.ciphertext == sent[b.cursor] for b in blobs)
    assert len(pages) >= 2


def test_pull_response_frames_stay_within_the_announced_frame_limit(
    relay: InProcessRelay,
) -> None:
    async def scenario() -> None:
        keys = TestGroup()
        async with raw_client(relay.url) as raw:
            welcome = await raw.open(keys)
            frame_limit = welcome.limits.max_frame_size
            async with clients(relay.url) as pool:
                writer = await pool.open(keys)
                await asyncio.gather(*(push(writer, os.urandom(1090)) for _ in range(1000)))
            raw.transport.max_frame = 16 * 1024 * 1024  # read it anyway, to measure it
            page = await raw.request(Pull(limit=1000))
            assert isinstance(page, PullResponse)
            assert page.blobs, page
            assert raw.frame_sizes[-1] <= frame_limit, (raw.frame_sizes[-1], len(page.blobs))

    run(scenario(), timeout=60)


@pytest.mark.parametrize("variant", [HYBRID, CLASSIC], ids=["hybrid", "classic"])
def test_push_and_pull_with_each_handshake_variant(relay: InProcessRelay, variant: Variant) -> None:
    async def scenario() -> None:
        keys = TestGroup()
        async with clients(relay.url) as pool:
            writer = await pool.open(keys, variant=variant)
            reader = await pool.open(keys, variant=variant)
            assert writer.session.variant == variant
            assert writer._ws.protocol == variant.subprotocol
            data = os.urandom(30_000)
            ack = await push(writer, data)
            notify = await next_message(reader)
            assert isinstance(notify, Notify) and notify.cursor == ack.cursor
            [blob] = await pull_all(reader)
            assert (blob.blob_id, blob.ciphertext, blob.cursor) == (ack.blob_id, data, 1)
            assert blob.sender == writer.session.identity.device_id

    run(scenario())


def test_devices_on_different_variants_share_a_group(relay: InProcessRelay) -> None:
    async def scenario() -> None:
        keys = TestGroup()
        async with clients(relay.url) as pool:
            hybrid = await pool.open(keys, variant=HYBRID)
            classic = await pool.open(keys, variant=CLASSIC)
            preferred = await pool.open(keys, variants=(HYBRID, CLASSIC))
            assert preferred.session.variant == HYBRID  # the client's first choice
            await push(hybrid, b"from hybrid")
            await push(classic, b"from classic")
            blobs = await pull_all(preferred)
            assert [b.ciphertext for b in blobs] == [b"from hybrid", b"from classic"]

    run(scenario())


def test_revoked_device_is_told_disconnected_and_refused(relay: InProcessRelay) -> None:
    async def scenario() -> None:
        keys = TestGroup()
        bob = DeviceIdentity.generate()
        async with clients(relay.url) as pool:
            a = await pool.open(keys, keys.creator, name="alice")  # the group's admin
            b = await pool.open(keys, bob, name="bob")
            c = await pool.open(keys, name="carol")
            a_id = a.session.identity.device_id

            answer = await revoke(a, keys, bob)
            assert (answer.head_seq, answer.head_hash) == (keys.log.head_seq, keys.log.head_hash)
            notice = Membership(start=keys.log.head_seq, entries=[keys.entries[-1]])

            assert await _membership_at(b, notice.start) == notice
            closed = await wait_closed(b)
            assert closed.code == ErrorCode.DEVICE_REVOKED
            assert closed.by_peer

            assert await _membership_at(c, notice.start) == notice  # the others hear of it
            assert not c.closed

            with pytest.raises(RemoteError) as refused:
                await pool.open(keys, bob)
            assert refused.value.code == ErrorCode.DEVICE_REVOKED

            devices = await a.request(ListDevices())
            assert isinstance(devices, Devices)
            info = {d.device_id: d for d in devices.devices}
            assert info[bob.device_id].revoked
            assert not info[bob.device_id].online
            assert info[bob.device_id].name == "bob"
            assert not info[a_id].revoked and info[a_id].online
            # The group goes on without Bob, in its new epoch.
            ack = await push(c, b"still syncing", epoch=keys.epoch)
            assert isinstance(await next_message(a), Notify)
            assert ack.cursor == 1

    run(scenario())


def test_a_device_without_the_group_key_cannot_join(relay: InProcessRelay) -> None:
    async def scenario() -> None:
        victim = TestGroup()
        async with clients(relay.url) as pool:
            owner = await pool.open(victim)
            await push(owner, b"private")

            # Knowing the group id is not enough: a log of one's own under it is refused,
            # and so is a device no log of the group knows.
            impostor = TestGroup()
            impostor.group_id = victim.group_id
            with pytest.raises(RemoteError) as refused:
                async with clients(relay.url) as elsewhere:  # brings its whole log
                    await elsewhere.open(impostor)
            assert refused.value.code == ErrorCode.LOG_REJECTED
            assert "genesis" in str(refused.value)
            stranger = DeviceIdentity.generate()
            with pytest.raises(RemoteError) as refused:
                await RelayConnection.open(relay.url, stranger, victim.group_id, variants=[HYBRID])
            assert refused.value.code == ErrorCode.UNAUTHORIZED

            # The group is untouched and its owner still served.
            blobs = await pull_all(owner)
            assert [b.ciphertext for b in blobs] == [b"private"]
            devices = await owner.request(ListDevices())
            assert isinstance(devices, Devices) and len(devices.devices) == 1

    run(scenario())


def test_delete_is_for_the_owner_and_force_deletes_now(relay: InProcessRelay) -> None:
    async def scenario() -> None:
        keys = TestGroup()
        async with clients(relay.url) as pool:
            owner = await pool.open(keys)
            other = await pool.open(keys)
            kept = await push(owner, b"kept")
            doomed = await push(owner, b"doomed")

            with pytest.raises(RemoteError) as refused:
                await other.request(Delete(blob_id=doomed.blob_id, force=True))
            assert refused.value.code == ErrorCode.NOT_BLOB_OWNER
            assert not other.closed  # 1004 is not fatal

            # Not acknowledged by every device yet: a plain DELETE keeps it for now.
            echo = await owner.request(Delete(blob_id=doomed.blob_id))
            assert echo == Delete(blob_id=doomed.blob_id)
            assert [b.cursor for b in await pull_all(other)] == [1, 2]

            echo = await owner.request(Delete(blob_id=doomed.blob_id, force=True))
            assert echo == Delete(blob_id=doomed.blob_id, force=True)
            assert [b.blob_id for b in await pull_all(other)] == [kept.blob_id]
            # Cursors are not reused, and a retried PUSH of the deleted blob is no new blob.
            retry = await push(owner, b"doomed", blob_id=doomed.blob_id)
            assert retry.cursor == doomed.cursor
            later = await push(owner, b"later")
            assert later.cursor == 3
            echo = await owner.request(Ack(cursor=3))
            assert echo == Ack(cursor=3)

    run(scenario())


def test_list_devices_reports_names_online_and_pending(relay: InProcessRelay) -> None:
    async def scenario() -> None:
        keys = TestGroup()
        async with clients(relay.url) as pool:
            a = await pool.open(keys, name="laptop")
            phone = DeviceIdentity.generate()
            b = await pool.open(keys, phone, name="phone")
            for i in range(3):
                await push(a, f"{i}".encode())
            await b.request(Ack(cursor=2))
            await b.close()
            late = await pool.open(keys, name="watch")
            assert late.welcome is not None
            assert (late.welcome.pending, late.welcome.max_cursor) == (3, 3)
            answer = await a.request(ListDevices())
            assert isinstance(answer, Devices)
            by_name = {d.name: d for d in answer.devices}
            assert set(by_name) == {"laptop", "phone", "watch"}
            assert by_name["laptop"].online and not by_name["laptop"].revoked
            # (Whether a device's own blobs count as pending for it is not asserted here.)
            assert by_name["watch"].pending == 3
            assert by_name["phone"].pending == 1
            assert by_name["phone"].last_seen > 0
            # "online" follows the connection; wait for the relay to notice Bob left.
            async with asyncio.timeout(5):
                while True:
                    answer = await a.request(ListDevices())
                    assert isinstance(answer, Devices)
                    if not {d.name: d for d in answer.devices}["phone"].online:
                        break
                    await asyncio.sleep(0.05)
            again = await pool.open(keys, phone)
            assert again.welcome is not None and again.welcome.pending == 1

    run(scenario())


def test_plain_http_get_and_upgrade_without_subprotocol(relay: InProcessRelay) -> None:
    async def scenario() -> None:
        async with aiohttp.ClientSession() as http:
            async with http.get(relay.http_url + "/") as response:
                assert response.status == 200
                assert "0k-Sync relay" in await response.text()
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(relay.url, protocols=["chat"])
            assert refused.value.status == 400
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(relay.url)
            assert refused.value.status == 400
            # A client of protocol version 1 is told which version this relay speaks.
            async with http.get(
                relay.http_url + "/",
                headers={
                    "Upgrade": "websocket",
                    "Connection": "Upgrade",
                    "Sec-WebSocket-Version": "13",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                    "Sec-WebSocket-Protocol": "0k-sync.v1.hfs, 0k-sync.v1.xx",
                },
            ) as response:
                assert response.status == 400
                text = await response.text()
                assert "protocol version 2" in text and "offered protocol v1" in text

    run(scenario())


def test_pieces_of_a_chunk_sent_without_waiting_are_written_in_order(
    relay: InProcessRelay,
) -> None:
    """A client may keep several CHUNK_PUTs of one chunk in flight: the relay runs requests
    as concurrent tasks, but writes one chunk's pieces in the order they arrived."""

    async def scenario() -> None:
        data = os.urandom(6 * 64 * 1024 + 123)
        address = hashlib.sha256(data).digest()
        async with clients(relay.url) as pool:
            conn = await pool.open(TestGroup())
            begun = await conn.request(ChunkBegin(address=address, size=len(data)))
            assert isinstance(begun, ChunkStatus)
            step = 64 * 1024
            puts = [
                conn.request(ChunkPut(address=address, offset=at, data=data[at : at + step]))
                for at in range(0, len(data), step)
            ]
            answers = await asyncio.gather(*puts)
            assert all(isinstance(a, ChunkStatus) for a in answers), answers
            last = answers[-1]
            assert isinstance(last, ChunkStatus) and last.chunks[0].complete
            got = await conn.request(ChunkGet(address=address, offset=0, length=len(data)))
            assert isinstance(got, ChunkData) and got.data == data

    run(scenario())
