"""Who may sync: revoking a device, rotating keys, roles, the recovery key, and a device that
knows a group's id without being in it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.client.conftest import EventLog, Fleet, connected, pair
from tests.relay.support import run
from zerok.client import (
    DeviceRevoked,
    DeviceRevokedError,
    KeyRotated,
    MembershipChanged,
    MembershipError,
    RecoveryKey,
    Role,
    StatusChanged,
    SyncClient,
    SyncStatus,
)
from zerok.crypto import DeviceIdentity
from zerok.crypto.blob import open_blob, sealed_epoch
from zerok.crypto.epoch import blob_key
from zerok.errors import DecryptionError, EpochKeyError, RecoveryKeyError, RemoteError, SyncError
from zerok.protocol.client_core import OutboxEntry
from zerok.testing import RelayProcess
from zerok.transport.connection import RelayConnection
from zerok.wire import ErrorCode, GroupId, Message
from zerok.wire import Membership as MembershipMessage


async def three(fleet: Fleet, relay: RelayProcess) -> tuple[SyncClient, SyncClient, SyncClient]:
    """A (admin) made the group; B and C joined with invites; all three syncing."""
    a, b, c = fleet.new("a"), fleet.new("b"), fleet.new("c")
    await pair(a, b, [relay.url])
    await c.join((await a.create_invite()).url)
    await connected(a, b, c)
    return a, b, c


async def revoke_and_check(fleet: Fleet, relay: RelayProcess, target: str | None) -> None:
    """A revokes B (by id, or by the text ``target`` makes of B's id); B learns it from the
    log and is refused from then on; C, a third device, is told; B cannot read what is
    pushed after, even handed the bytes."""
    a, b, c = await three(fleet, relay)
    await b.push(b"before the revocation")
    async with EventLog(a) as log_a, EventLog(b) as log_b, EventLog(c) as log_c:
        how = b.device_id if target is None else target.format(str(b.device_id))
        await a.revoke_device(how, "lost")
        mine = await log_b.wait_for(DeviceRevoked)
        assert mine == DeviceRevoked(b.device_id, a.device_id, "lost", True)
        await log_b.wait_for(StatusChanged, lambda e: e.status == SyncStatus.REVOKED)
        assert b.status == SyncStatus.REVOKED
        # The group's other devices hear of it, with the new epoch it started.
        theirs = await log_c.wait_for(DeviceRevoked)
        assert theirs == DeviceRevoked(b.device_id, a.device_id, "lost", False)
        changed = await log_c.wait_for(MembershipChanged, lambda e: e.kind == "revoked")
        assert (changed.device_id, changed.by) == (b.device_id, a.device_id)
        assert await log_c.wait_for(KeyRotated) == KeyRotated(1, "revoked")
        # And so does the revoker (once revoke_device() returned).
        assert log_a.of(DeviceRevoked) == [theirs]
        assert log_a.of(KeyRotated) == [KeyRotated(1, "revoked")]
    assert a.epoch == c.epoch == 1
    assert b.epoch == 1  # it read the entry that revoked it, but holds no key of epoch 1
    await a.wait_connected(1)  # the others stay connected
    await c.wait_connected(1)

    with pytest.raises(DeviceRevokedError):
        await b.push(b"after the revocation")
    with pytest.raises(DeviceRevokedError):
        await b.pull()
    result = await a.push(b"still syncing")
    # Handed the sealed blob, B cannot open it: no key of epoch 1, and its last key fails.
    [stored] = [x for x in (await c.pull(after=0)).blobs if x.blob_id == result.blob_id]
    sealed = await a._fetch(stored.cursor - 1, 1)
    ciphertext = sealed.blobs[0].ciphertext
    assert sealed_epoch(ciphertext) == 1
    members_b = b._members
    assert members_b is not None
    with pytest.raises(EpochKeyError):
        members_b.key_for(1)
    with pytest.raises(DecryptionError):
        open_blob(
            ciphertext,
            key=blob_key(members_b.key_for(0)),
            group_id=members_b.group_id,
            blob_id=result.blob_id,
            sender=a.device_id,
        )
    await b.close()
    b.close_state()

    # The app restarts on B's data: its own log says it is revoked. It asks a relay all the
    # same (a recovery may have kept it since), and is refused.
    again = fleet.new("b", data_dir=b.data_dir)
    assert again.status == SyncStatus.REVOKED
    await again.connect()
    with pytest.raises(DeviceRevokedError):
        await again.wait_connected(timeout=5)
    with pytest.raises(DeviceRevokedError):
        await again.push(b"from the restarted app", wait=False)

    devices = {d.device_id: d for d in await a.list_devices()}
    assert devices[b.device_id].revoked
    assert devices[b.device_id].revoked_by == a.device_id
    assert devices[b.device_id].reason == "lost"
    assert not devices[b.device_id].online
    assert not devices[a.device_id].revoked
    assert devices[a.device_id].online and devices[a.device_id].this_device
    assert devices[a.device_id].role is Role.ADMIN
    # The group goes on for the remaining devices.
    assert [(x.cursor, x.data) for x in (await c.pull()).blobs] == [
        (1, b"before the revocation"),
        (result.cursor, b"still syncing"),
    ]


@pytest.mark.parametrize(
    "target",
    [None, "{}", "{:.12}", " {:.6} "],
    ids=["device-id", "full-text", "prefix", "short-prefix-with-spaces"],
)
def test_revoke_a_device(relay: RelayProcess, tmp_path: Path, target: str | None) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            await revoke_and_check(fleet, relay, target)

    run(scenario())


def test_revoke_by_a_prefix_that_is_not_unique_or_unknown(
    relay: RelayProcess, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b = fleet.new("a"), fleet.new("b")
            await pair(a, b, [relay.url])
            with pytest.raises(SyncError, match="2 devices"):
                await a.revoke_device("", "lost")  # every id starts with ""
            unknown = "9" if not str(b.device_id).startswith("9") else "8"  # not base32
            with pytest.raises(SyncError, match="no device"):
                await a.revoke_device(unknown, "lost")
            assert not any(d.revoked for d in await a.list_devices())
            assert a.epoch == 0

    run(scenario())


def test_a_device_revoked_while_offline_is_refused_by_the_relay(
    relay: RelayProcess, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b = fleet.new("a"), fleet.new("b")
            await pair(a, b, [relay.url])
            await a.revoke_device(b.device_id, "compromised")  # B is not running
            async with EventLog(b) as log:
                await b.connect()
                with pytest.raises(DeviceRevokedError):
                    await b.wait_connected(timeout=3)
                refused = await log.wait_for(DeviceRevoked)
            # Refused at HELLO, before it could read the log: it cannot know who did it.
            assert (refused.device_id, refused.revoked_by, refused.this_device) == (
                b.device_id,
                None,
                True,
            )
            assert b.status == SyncStatus.REVOKED

    run(scenario(), timeout=15)


def test_one_revocation_one_event(relay: RelayProcess, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b = fleet.new("a"), fleet.new("b")
            await pair(a, b, [relay.url])
            await connected(a, b)
            async with EventLog(b) as log:
                await a.revoke_device(b.device_id, "decommissioned")
                await log.wait_for(StatusChanged, lambda e: e.status == SyncStatus.REVOKED)
                await b.close()  # no event can come after this
                await log.settle()
                # From the log entry; the relay's closing ERROR 1003 adds nothing.
                assert log.of(DeviceRevoked) == [
                    DeviceRevoked(b.device_id, a.device_id, "decommissioned", True)
                ]

    run(scenario())


def test_a_member_may_not_invite_or_revoke_others_until_made_admin(
    relay: RelayProcess, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b, c = await three(fleet, relay)
            with pytest.raises(MembershipError, match="only an admin") as caught:
                await b.create_invite()
            assert caught.value.reason == "unauthorized"
            with pytest.raises(MembershipError, match="admin"):  # refused by the log's rules
                await b.revoke_device(c.device_id)
            async with EventLog(c) as log:
                await a.set_role(b.device_id, Role.ADMIN)
                role = await log.wait_for(MembershipChanged, lambda e: e.kind == "role")
            assert (role.device_id, role.by) == (b.device_id, a.device_id)
            await b.wait_connected(1)
            assert b._require_group().role() is Role.ADMIN
            await b.revoke_device(c.device_id, "b may now")
            roles = {d.device_id: (d.role, d.active) for d in await a.list_devices()}
            assert roles[b.device_id] == (Role.ADMIN, True)
            assert roles[c.device_id] == (Role.MEMBER, False)

    run(scenario())


def test_rotate_keys(relay: RelayProcess, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b = fleet.new("a"), fleet.new("b")
            await pair(a, b, [relay.url])
            await connected(a, b)
            old = await a.push(b"under epoch 0")
            async with EventLog(a) as log:
                assert await b.rotate_keys("a leak") == 1  # any member may rotate
                assert await log.wait_for(KeyRotated) == KeyRotated(1, "a leak")
            assert a.epoch == b.epoch == 1
            new = await a.push(b"under epoch 1")
            blobs = (await b.pull()).blobs
            assert [(x.blob_id, x.data) for x in blobs] == [
                (old.blob_id, b"under epoch 0"),
                (new.blob_id, b"under epoch 1"),
            ]
            # A device that joins now gets epoch 1's key and walks back to epoch 0's.
            c = fleet.new("c")
            await c.join((await a.create_invite()).url)
            await connected(c)
            assert [x.data for x in (await c.pull()).blobs] == [b"under epoch 0", b"under epoch 1"]

    run(scenario())


def test_a_push_sealed_before_a_revocation_is_sealed_again_and_lands(
    relay: RelayProcess, tmp_path: Path
) -> None:
    """EPOCH_STALE: C seals a push under epoch 0 before it heard that A revoked B (here, the
    relay's MEMBERSHIP note is held back from C). The relay refuses it; C reads the log,
    seals the blob again under epoch 1 (same id, same place in its chain), and it lands."""

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b, c = await three(fleet, relay)
            held: list[object] = []
            deliver = c._on_message

            def late(conn: RelayConnection, url: str, message: Message) -> None:
                if isinstance(message, MembershipMessage):
                    held.append(message)  # arrives, but C has not read it yet
                else:
                    deliver(conn, url, message)

            c._on_message = late  # type: ignore[method-assign]
            refusals: list[int] = []
            refused = c._push_refused

            def counted(conn: RelayConnection, entry: OutboxEntry, exc: RemoteError) -> None:
                refusals.append(exc.code)
                refused(conn, entry, exc)

            c._push_refused = counted  # type: ignore[method-assign]
            await a.revoke_device(b.device_id)
            await asyncio.wait_for(_until(lambda: bool(held)), 5)
            assert c.epoch == 0
            result = await asyncio.wait_for(c.push(b"sealed under epoch 0"), 10)
            assert refusals == [ErrorCode.EPOCH_STALE]
            assert c.epoch == 1
            [blob] = (await a.pull()).blobs
            assert (blob.blob_id, blob.data) == (result.blob_id, b"sealed under epoch 0")
            stored = (await a._fetch(result.cursor - 1, 1)).blobs[0]
            assert sealed_epoch(stored.ciphertext) == 1

    run(scenario())


def test_a_push_still_being_journaled_when_the_epoch_moves_is_sealed_again(
    relay: RelayProcess, tmp_path: Path
) -> None:
    """C seals a push under epoch 0 and, while its outbox entry is still being written, hears
    that A revoked B: the entry is sealed again under epoch 1 as it joins the outbox, so it
    never goes out under the old epoch (before: refused as stale for ever)."""

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b, c = await three(fleet, relay)
            gate = threading.Event()
            c._state.submit(lambda db: gate.wait(10))  # the writer holds until released
            try:
                push = asyncio.ensure_future(c.push(b"sealed while the epoch moved"))
                await asyncio.wait_for(_until(lambda: c._journaling > 0), 5)
                await a.revoke_device(b.device_id)
                await asyncio.wait_for(_until(lambda: c.epoch == 1), 5)
            finally:
                gate.set()
            result = await asyncio.wait_for(push, 10)
            stored = (await a._fetch(result.cursor - 1, 1)).blobs[0]
            assert sealed_epoch(stored.ciphertext) == 1
            [blob] = (await a.pull()).blobs
            assert blob.data == b"sealed while the epoch moved"

    run(scenario())


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.01)


def test_recover_after_a_thief_revoked_this_device(relay: RelayProcess, tmp_path: Path) -> None:
    """The phone (an admin) is stolen; the thief revokes the laptop. With the recovery
    key's words the laptop takes the group back: the thief is out, the laptop an admin
    again, and it reads what was pushed while it was out."""

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            laptop, phone = fleet.new("laptop"), fleet.new("phone")
            created = await laptop.create_group([relay.url])
            await phone.join((await laptop.create_invite(role=Role.ADMIN)).url)
            await connected(laptop, phone)
            async with EventLog(laptop) as log:
                await phone.revoke_device(laptop.device_id, "stolen? no: the thief")
                await log.wait_for(StatusChanged, lambda e: e.status == SyncStatus.REVOKED)
            secret = await phone.push(b"the thief's")
            await laptop.close()
            with pytest.raises(RecoveryKeyError):
                await laptop.recover("abandon " * 24)
            words = " ".join(created.recovery.words())
            async with EventLog(phone) as thief_log, EventLog(laptop) as log:
                assert await laptop.recover(words) == created.group_id
                assert laptop.status is not SyncStatus.REVOKED
                await thief_log.wait_for(DeviceRevoked, lambda e: e.this_device)
                back = await log.wait_for(MembershipChanged, lambda e: e.kind == "reinstated")
                assert back.device_id == laptop.device_id and back.by is None
                assert await log.wait_for(KeyRotated) == KeyRotated(2, "recovered")
            assert laptop.epoch == 2
            await connected(laptop)
            assert [(x.blob_id, x.data) for x in (await laptop.pull()).blobs] == [
                (secret.blob_id, b"the thief's")
            ]
            devices = {d.device_id: d for d in await laptop.list_devices()}
            assert devices[laptop.device_id].active
            assert devices[laptop.device_id].role is Role.ADMIN
            assert devices[phone.device_id].revoked
            assert devices[phone.device_id].revoked_by is None  # the recovery key did it
            with pytest.raises(DeviceRevokedError):
                await phone.push(b"too late", wait=False)

    run(scenario())


def test_recover_on_a_new_device(relay: RelayProcess, tmp_path: Path) -> None:
    """Every device lost: a new one takes the group back with the words, the group's id and
    its relay."""

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            old = fleet.new("old")
            created = await old.create_group([relay.url])
            await connected(old)
            await old.push(b"from before")
            await old.close()
            new = fleet.new("new")
            with pytest.raises(SyncError, match="relays"):
                await new.recover(created.recovery)
            recovered = await new.recover(
                created.recovery, relays=[relay.url], group_id=created.group_id
            )
            assert recovered == created.group_id == new.group_id
            await connected(new)
            assert [x.data for x in (await new.pull()).blobs] == [b"from before"]
            devices = {d.device_id: d for d in await new.list_devices()}
            assert devices[new.device_id].role is Role.ADMIN and devices[new.device_id].active
            assert devices[old.device_id].revoked
            wrong = RecoveryKey.generate()
            with pytest.raises(MembershipError, match="not the recovery key"):
                await new.recover(wrong)

    run(scenario())


def test_knowing_a_group_id_is_not_enough(relay: RelayProcess, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            victim = fleet.new("victim")
            created = await victim.create_group([relay.url])
            await connected(victim)  # the relay now knows the group's log
            await victim.push(b"the victim's data")

            stranger = DeviceIdentity.generate()
            with pytest.raises(RemoteError) as caught:
                conn = await RelayConnection.open(relay.url, stranger, created.group_id)
                await conn.close()
            assert ErrorCode(caught.value.code) is ErrorCode.UNAUTHORIZED
            # Nor is a group id nobody registered: a relay needs its genesis.
            with pytest.raises(RemoteError) as unknown:
                conn = await RelayConnection.open(relay.url, stranger, GroupId.random())
                await conn.close()
            assert ErrorCode(unknown.value.code) is ErrorCode.UNKNOWN_GROUP
            # Nothing changed for the group.
            devices = await victim.list_devices()
            assert [d.device_id for d in devices] == [victim.device_id]
            assert [x.data for x in (await victim.pull(after=0)).blobs] == [b"the victim's data"]

    run(scenario())
