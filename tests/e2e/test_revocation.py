"""Issue 12 end to end: a lost phone, a thief racing the owner, a stranger who knows the
group id, invites used at once, a revocation racing pushes.

Devices are SyncClients in data directories of their own; the relay is ``zerok relay`` in
a child process (the one in this process where a test holds its loop still, or needs a
fresh relay). What the thief has is real: the phone's data directory and a copy of it from
before the revocation, every invite it saw, and a copy of the relay's database files.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import struct
import time
from pathlib import Path

import pytest

from tests.client.conftest import EventLog, Fleet, connected, start_relay
from tests.e2e.conftest import (
    WAIT,
    Inbox,
    copy_database,
    database_of,
    open_db,
    snapshot,
    stored_blobs,
)
from tests.relay.support import RelayLauncher, run
from zerok.client import (
    DeviceRevoked,
    DeviceRevokedError,
    Invite,
    InviteError,
    KeyRotated,
    PushResult,
    RecoveryKey,
    Role,
    StatusChanged,
    SyncClient,
    SyncStatus,
    pairing,
)
from zerok.client.sync import KEY_FILE
from zerok.crypto import DeviceIdentity
from zerok.crypto.blob import open_blob, sealed_epoch
from zerok.crypto.entry import Signer, TicketKey
from zerok.crypto.epoch import blob_key, new_epoch_key, open_previous, unwrap_epoch_key
from zerok.errors import DecryptionError, EpochKeyError, RemoteError
from zerok.protocol import entries as build
from zerok.protocol.membership import GroupLog
from zerok.testing import InProcessRelay, RelayProcess, member_of
from zerok.transport import RelayConnection
from zerok.wire import BlobId, DeviceId, ErrorCode, GroupId

STATE_FILE = "state.db"
Stored = dict[BlobId, tuple[int, bytes, bytes]]


def now_ms() -> int:
    return int(time.time() * 1000)


# -- what a thief holds, and tries ------------------------------------------------------------


def copy_device(source: Path, target: Path) -> Path:
    """A device's data directory, copied while its app runs (a backup, or a thief)."""
    target.mkdir(parents=True)
    shutil.copy2(source / KEY_FILE, target / KEY_FILE)
    snapshot(source / STATE_FILE, target / STATE_FILE)
    return target


def keys_held(data_dir: Path) -> set[bytes]:
    """Every epoch key a device's state file holds."""
    with open_db(data_dir / STATE_FILE) as db:
        return {bytes(row[0]) for row in db.execute("SELECT key FROM epoch_keys")}


def log_entries(database: Path, group: GroupId) -> list[bytes]:
    with open_db(database) as db:
        rows = db.execute(
            "SELECT entry FROM group_log WHERE group_id = ? ORDER BY seq", (group,)
        ).fetchall()
    return [bytes(r[0]) for r in rows]


def keys_within_reach(identity: DeviceIdentity, log: GroupLog, held: set[bytes]) -> set[bytes]:
    """``held``, every epoch key ``identity`` unwraps from any wrap of the log (whoever it
    names), and every older key the ``prev_key`` chain leads to from those."""
    keys = set(held)
    for number, epoch in log.epochs.items():
        for recipient, wrapped in epoch.wraps.items():
            for named in {recipient, identity.sign_public}:
                with contextlib.suppress(EpochKeyError):
                    keys.add(
                        unwrap_epoch_key(
                            wrapped, epoch=number, recipient=named, wrap_key=identity.wrap_key
                        )
                    )
    grew = True
    while grew:
        grew = False
        for number, epoch in log.epochs.items():
            for key in list(keys) if epoch.prev_key else []:
                with contextlib.suppress(EpochKeyError):
                    older = open_previous(epoch.prev_key, new_key=key, epoch=number)
                    grew = grew or older not in keys
                    keys.add(older)
    return keys


def with_epoch(sealed: bytes, epoch: int) -> bytes:
    """The blob with another epoch in its clear header (byte 0 is the format)."""
    return sealed[:1] + struct.pack(">I", epoch) + sealed[5:]


def opens(sealed: bytes, blob_id: BlobId, sender: bytes, group: GroupId, key: bytes) -> bool:
    try:
        open_blob(sealed, key=key, group_id=group, blob_id=blob_id, sender=DeviceId(sender))
    except DecryptionError:
        return False
    return True


def readable_with(blobs: Stored, group: GroupId, keys: set[bytes]) -> set[BlobId]:
    """The blobs that open with any of ``keys`` (as an epoch key, or as the blob key
    itself), under the epoch they name or any earlier one a thief writes in the header."""
    candidates = [k for key in keys for k in (blob_key(key), key)]
    found = set()
    for blob_id, (_, sender, sealed) in blobs.items():
        variants = [with_epoch(sealed, e) for e in range(sealed_epoch(sealed) + 1)]
        if any(opens(v, blob_id, sender, group, k) for v in variants for k in candidates):
            found.add(blob_id)
    return found


async def refusal(
    url: str,
    identity: DeviceIdentity,
    group: GroupId,
    *,
    entries: list[bytes] | None = None,
    signer: tuple[bytes, Signer] | None = None,
) -> ErrorCode:
    """The error the relay ends a HELLO with (AssertionError if it admits the session)."""
    try:
        conn = await RelayConnection.open(
            url, identity, group, entries=entries or [], signer=signer, timeout=WAIT
        )
    except RemoteError as exc:
        return ErrorCode(exc.code)
    await conn.close()
    raise AssertionError("the relay admitted the session")


async def ticket_refusal(url: str, group: GroupId, invite: Invite) -> ErrorCode:
    """The relay's answer to a fresh device enrolling with an invite's ticket, whatever
    client presents it."""
    ticket = TicketKey(pairing.parse_url(invite.url).ticket)
    signer = (ticket.public, ticket.sign)
    return await refusal(url, DeviceIdentity.generate(), group, signer=signer)


async def join_refusal(client: SyncClient, code_or_url: str, relay: str | None = None) -> str:
    with pytest.raises(InviteError) as caught:
        await client.join(code_or_url, relay=relay)
    assert client.group_id is None
    return caught.value.reason


def ids(sent: dict[SyncClient, list[PushResult]]) -> set[BlobId]:
    return {r.blob_id for results in sent.values() for r in results}


async def synced(devices: list[SyncClient], sent: dict[SyncClient, list[PushResult]]) -> None:
    """Each device pulls, and gets exactly what the others pushed."""
    for device in devices:
        others = {r.blob_id for d, results in sent.items() if d is not device for r in results}
        assert {b.blob_id for b in (await device.pull()).blobs} == others, device.device_name


# -- a lost phone -----------------------------------------------------------------------------


def test_a_lost_phone_is_shut_out_for_good(relay_process: RelayProcess, tmp_path: Path) -> None:
    url = relay_process.url

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            laptop, phone, tablet = fleet.new("laptop"), fleet.new("phone"), fleet.new("tablet")
            await laptop.create_group([url])
            phone_invite = await laptop.create_invite()
            await phone.join(phone_invite.url)
            await tablet.join((await laptop.create_invite()).url)
            spare = await laptop.create_invite()  # on the laptop's screen; the phone saw it
            group = laptop.group_id
            assert group is not None
            await connected(laptop, phone, tablet)
            before = {d: [await d.push(d.device_name.encode())] for d in (laptop, phone, tablet)}
            await synced([laptop, phone, tablet], before)
            phone_copy = copy_device(phone.data_dir, tmp_path / "phone-copy")

            async with EventLog(phone) as phone_log, EventLog(tablet) as tablet_log:
                await laptop.revoke_device(phone.device_id, "lost")
                mine = await phone_log.wait_for(DeviceRevoked, lambda e: e.this_device)
                assert (mine.device_id, mine.revoked_by) == (phone.device_id, laptop.device_id)
                assert await tablet_log.wait_for(KeyRotated) == KeyRotated(1, "revoked")
            after = {laptop: [await laptop.push(b"laptop after")]}
            after[tablet] = [await tablet.push(b"tablet after")]
            await synced([laptop, tablet], after)
            stolen = copy_database(database_of(relay_process), tmp_path / "stolen")

            # The phone cannot connect: not as it is now, not restored from its copy.
            await phone.close()
            phone.close_state()
            for data_dir, knows in ((phone.data_dir, True), (phone_copy, False)):
                device = fleet.new(data_dir.name, data_dir=data_dir)
                assert (device.status is SyncStatus.REVOKED) is knows
                async with EventLog(device) as log:
                    with pytest.raises(DeviceRevokedError):
                        await device.connect()
                        await device.wait_connected(WAIT)
                    if not knows:
                        await log.wait_for(StatusChanged, lambda e: e.status is SyncStatus.REVOKED)
                assert device.epoch == (1 if knows else 0)  # the copy learnt nothing more
                await device.close()
            identity = DeviceIdentity.load(phone.data_dir / KEY_FILE)
            assert await refusal(url, identity, group) is ErrorCode.DEVICE_REVOKED

            # Nor enroll a fresh device key (or its own) with any invite it saw.
            thief = fleet.new("thief")
            assert await join_refusal(thief, phone_invite.url) == "used"
            assert await join_refusal(thief, spare.url) == "cancelled"
            assert await join_refusal(thief, spare.short_code, relay=url) == "cancelled"
            own_key = tmp_path / "thief-with-the-phone-key"
            own_key.mkdir()
            shutil.copy2(phone.data_dir / KEY_FILE, own_key / KEY_FILE)
            again = fleet.new("thief-again", data_dir=own_key)
            assert again.device_id == phone.device_id
            assert await join_refusal(again, spare.url) == "cancelled"
            assert await ticket_refusal(url, group, phone_invite) is ErrorCode.TICKET_USED
            assert await ticket_refusal(url, group, spare) is ErrorCode.TICKET_CANCELLED

            # Nor read what was pushed after, from the relay's database, with any key it
            # had or can derive: its own state's and its copy's, the invites'.
            invites = [pairing.parse_url(i.url) for i in (phone_invite, spare)]
            held = keys_held(phone.data_dir) | keys_held(phone_copy)
            held |= {p.key for p in invites} | {p.ticket for p in invites}
            stolen_log = GroupLog.replay(log_entries(stolen, group), group_id=group)
            assert stolen_log.epoch == 1
            within_reach = keys_within_reach(identity, stolen_log, held)
            assert within_reach == held  # no wrap opens for it, no chain leads anywhere
            blobs = stored_blobs(stolen, group)
            assert ids(before) | ids(after) <= set(blobs)
            assert {sealed_epoch(blobs[b][2]) for b in ids(after)} == {1}
            assert readable_with(blobs, group, within_reach) == ids(before)  # what it had

    run(scenario())


# -- a thief racing the owner -----------------------------------------------------------------


async def thief_takes_over(
    fleet: Fleet, url: str, *, offline: bool = False
) -> tuple[SyncClient, SyncClient, SyncClient, RecoveryKey, Invite]:
    """The phone, an admin, is stolen: the thief revokes the laptop and the tablet (online
    unless ``offline``) and opens an invite for a device of its own. The laptop's owner
    has the recovery words."""
    laptop, phone, tablet = fleet.new("laptop"), fleet.new("phone"), fleet.new("tablet")
    created = await laptop.create_group([url])
    await phone.join((await laptop.create_invite(role=Role.ADMIN)).url)
    await tablet.join((await laptop.create_invite()).url)
    await connected(laptop, phone, *([] if offline else [tablet]))
    async with EventLog(laptop) as laptop_log, EventLog(tablet) as tablet_log:
        await phone.revoke_device(laptop.device_id, "mine now")
        await phone.revoke_device(tablet.device_id, "mine now")
        for log in (laptop_log, *([] if offline else [tablet_log])):
            await log.wait_for(DeviceRevoked, lambda e: e.this_device)
    assert phone.epoch == 2
    return laptop, phone, tablet, created.recovery, await phone.create_invite(role=Role.ADMIN)


async def owner_recovers(
    laptop: SyncClient, tablet: SyncClient, phone: SyncClient, recovery: RecoveryKey
) -> None:
    """With the recovery words, on the laptop, keeping the laptop and the tablet."""
    words = " ".join(recovery.words())
    async with EventLog(phone) as thief_log:
        await laptop.recover(words, keep=[laptop.device_id, tablet.device_id])
        out = await thief_log.wait_for(DeviceRevoked, lambda e: e.this_device)
    assert out.revoked_by is None  # the recovery key did it
    assert laptop.epoch == 3
    await connected(laptop)


def test_a_thief_racing_the_owner_is_shut_out(relay_process: RelayProcess, tmp_path: Path) -> None:
    url = relay_process.url

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            laptop, phone, tablet, recovery, thief_invite = await thief_takes_over(fleet, url)
            group = laptop.group_id
            assert group is not None
            secret = await phone.push(b"the thief's")
            await owner_recovers(laptop, tablet, phone, recovery)
            head = laptop.log_head
            assert head is not None
            fresh = await laptop.push(b"the owner's again")
            # The laptop reads what the thief pushed meanwhile (the recovery key had it).
            assert [b.data for b in (await laptop.pull()).blobs] == [b"the thief's"]

            # The thief cannot connect, nor append: through its client, or in a HELLO, on
            # the relay's head or on the one it knew as an admin; its invite is closed.
            assert phone.status is SyncStatus.REVOKED
            with pytest.raises(DeviceRevokedError):
                await phone.revoke_device(laptop.device_id)
            identity = DeviceIdentity.load(phone.data_dir / KEY_FILE)
            assert await refusal(url, identity, group) is ErrorCode.DEVICE_REVOKED
            entries = log_entries(
                copy_database(database_of(relay_process), tmp_path / "copy"), group
            )
            log = GroupLog.replay(entries, group_id=group)
            for base in (log, GroupLog.replay(entries[:-1], group_id=group)):
                forged = build.invite(
                    base,
                    identity.sign_public,
                    identity.sign,
                    TicketKey(new_epoch_key()).public,
                    role=Role.ADMIN,
                    expires_at=now_ms() + 60_000,
                    now=now_ms(),
                )
                code = await refusal(url, identity, group, entries=[forged])
                assert code is ErrorCode.LOG_REJECTED
            thief = fleet.new("thief")
            assert await join_refusal(thief, thief_invite.url) == "cancelled"
            assert await ticket_refusal(url, group, thief_invite) is ErrorCode.TICKET_CANCELLED

            # The relay's log did not move; what the owner pushes under the new epoch opens
            # with nothing the thief has.
            await phone.close()
            later = copy_database(database_of(relay_process), tmp_path / "later")
            assert GroupLog.replay(log_entries(later, group)).head_hash == head[1]
            blobs = stored_blobs(later, group)
            assert sealed_epoch(blobs[fresh.blob_id][2]) == 3
            within_reach = keys_within_reach(identity, log, keys_held(phone.data_dir))
            assert len(within_reach) == 3  # epochs 0 to 2, which it held
            assert readable_with(blobs, group, within_reach) == {secret.blob_id}

    run(scenario())


async def kept_device_syncs(
    fleet: Fleet, relay: RelayProcess, tmp_path: Path, *, offline: bool
) -> None:
    """After the owner's recovery the tablet syncs with the laptop, live, under the new
    epoch; none of it opens for the thief."""
    laptop, phone, tablet, recovery, _ = await thief_takes_over(fleet, relay.url, offline=offline)
    await owner_recovers(laptop, tablet, phone, recovery)
    async with EventLog(tablet) as log:
        await connected(tablet)
        assert tablet.status is not SyncStatus.REVOKED
        assert tablet.epoch == 3
        sent = {laptop: [await laptop.push(b"laptop")], tablet: [await tablet.push(b"tablet")]}
        await synced([laptop, tablet], sent)
        async with Inbox(tablet) as inbox:  # live, as an app reads
            for n in range(2):
                sent[laptop].append(await laptop.push(b"more %d" % n))
                await inbox.wait_for({sent[laptop][-1].blob_id})
    assert not [e for e in log.events if isinstance(e, DeviceRevoked) and e.this_device]
    group = laptop.group_id
    assert group is not None
    await phone.close()
    copied = copy_database(database_of(relay), tmp_path / "copy")
    blobs = stored_blobs(copied, group)
    identity = DeviceIdentity.load(phone.data_dir / KEY_FILE)
    group_log = GroupLog.replay(log_entries(copied, group), group_id=group)
    within_reach = keys_within_reach(identity, group_log, keys_held(phone.data_dir))
    assert not readable_with(blobs, group, within_reach) & ids(sent)


def test_a_device_revoked_online_and_kept_by_the_recovery_syncs_again(
    relay_process: RelayProcess, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            await kept_device_syncs(fleet, relay_process, tmp_path, offline=False)

    run(scenario())


def test_a_device_revoked_offline_and_kept_by_the_recovery_syncs_again(
    relay_process: RelayProcess, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            await kept_device_syncs(fleet, relay_process, tmp_path, offline=True)

    run(scenario())


# -- a stranger who knows the group id --------------------------------------------------------


def test_a_stranger_with_the_group_id_cannot_register_it_first(
    relay_process: RelayProcess, launcher: RelayLauncher, tmp_path: Path
) -> None:
    """The group moves to a relay that has never seen it; a stranger who learnt its id gets
    there first with a genesis of its own. Refused, nothing stored; the owner registers
    the group there afterwards and its devices sync through it."""
    fresh = start_relay(launcher)

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            owner, phone = fleet.new("owner"), fleet.new("phone")
            await owner.create_group([relay_process.url])
            await phone.join((await owner.create_invite()).url)
            group = owner.group_id
            assert group is not None
            stranger = DeviceIdentity.generate()
            recovery = RecoveryKey.generate()
            theirs = build.genesis(
                member_of(stranger),
                stranger.sign,
                recovery_sign=recovery.sign_public,
                recovery_wrap=recovery.wrap_public,
                epoch_key=new_epoch_key(),
                now=now_ms(),
            )
            code = await refusal(fresh.url, stranger, group, entries=[theirs])
            assert code is ErrorCode.LOG_REJECTED
            assert await refusal(fresh.url, stranger, group) is ErrorCode.UNKNOWN_GROUP
            with open_db(database_of(fresh)) as db:
                for table in ("groups", "group_log", "devices"):
                    found = db.execute(f"SELECT count(*) FROM {table} WHERE group_id = ?", (group,))
                    assert found.fetchone() == (0,), table

            for device in (owner, phone):
                device.set_relays([fresh.url])
            await connected(owner, phone)
            # What the relay holds is the owner's log, whose genesis hashes to the group id.
            registered = GroupLog.replay(log_entries(database_of(fresh), group), group_id=group)
            assert owner.log_head == (registered.head_seq, registered.head_hash)
            sent = {owner: [await owner.push(b"owner")], phone: [await phone.push(b"phone")]}
            await synced([owner, phone], sent)
            # And the stranger, now as before, gets nothing.
            code = await refusal(fresh.url, stranger, group, entries=[theirs])
            assert code is ErrorCode.LOG_REJECTED
            assert await refusal(fresh.url, stranger, group) is ErrorCode.UNAUTHORIZED

    run(scenario())


# -- racing -----------------------------------------------------------------------------------


def test_invites_used_at_once_and_a_ticket_used_again(
    relay_process: RelayProcess, tmp_path: Path
) -> None:
    url = relay_process.url

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            creator = fleet.new("creator")
            await creator.create_group([url])
            first, second = await creator.create_invite(), await creator.create_invite()
            group = creator.group_id
            assert group is not None
            b, c = fleet.new("b"), fleet.new("c")
            joined = await asyncio.gather(b.join(first.url), c.join(second.short_code, relay=url))
            assert list(joined) == [group, group]
            late = fleet.new("late")
            assert await join_refusal(late, first.url) == "used"
            assert await join_refusal(late, first.short_code, relay=url) == "used"
            assert await join_refusal(late, second.url) == "used"
            assert await ticket_refusal(url, group, first) is ErrorCode.TICKET_USED
            await connected(creator, b, c)
            sent = {d: [await d.push(d.device_name.encode())] for d in (creator, b, c)}
            await synced([creator, b, c], sent)
            devices = {d.device_id: d.active for d in await creator.list_devices()}
            assert devices == {creator.device_id: True, b.device_id: True, c.device_id: True}

    run(scenario())


async def in_flight(*clients: SyncClient) -> None:
    """Until each client has a request on its connection that the relay has not answered.
    Polled: a request being sent is nothing a client announces."""
    async with asyncio.timeout(WAIT):
        while not all(c._conn is not None and c._conn._waiting for c in clients):
            await asyncio.sleep(0.005)
    for _ in range(5):  # the frames' last writes, already under way
        await asyncio.sleep(0)


async def outcome(task: asyncio.Task[PushResult]) -> PushResult | BaseException:
    try:
        return await asyncio.wait_for(task, WAIT)
    except (DeviceRevokedError, RemoteError) as exc:
        return exc


def test_a_revocation_racing_pushes(relay: InProcessRelay, tmp_path: Path) -> None:
    """The laptop revokes the phone while the tablet and the phone push: the relay reads
    all three at once, in whatever order it takes them. In every order nothing sealed
    under the old epoch is stored after the revocation, the tablet's push lands (sealed
    again if it was refused: test_membership forces that order), and the phone's landed
    before the revocation or never lands."""

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            laptop, phone, tablet = fleet.new("laptop"), fleet.new("phone"), fleet.new("tablet")
            await laptop.create_group([relay.url])
            await phone.join((await laptop.create_invite()).url)
            await tablet.join((await laptop.create_invite()).url)
            group = laptop.group_id
            assert group is not None
            await connected(laptop, phone, tablet)
            loop = asyncio.get_running_loop()
            with relay.paused():
                revoking = loop.create_task(laptop.revoke_device(phone.device_id))
                racing = {d: loop.create_task(d.push(b"racing")) for d in (tablet, phone)}
                await in_flight(laptop, tablet, phone)
            await asyncio.wait_for(revoking, WAIT)
            results = {d: await outcome(task) for d, task in racing.items()}
            landed = await tablet.push(b"after")
            marker = await laptop.push(b"marker")
            tablet_push = results[tablet]
            assert isinstance(tablet_push, PushResult), tablet_push
            got = {b.blob_id: b for b in (await laptop.pull()).blobs}
            assert {tablet_push.blob_id, landed.blob_id} <= set(got)

            # The relay stored nothing under epoch 0 once the revocation was in its log.
            blobs = stored_blobs(database_of(relay), group)
            epochs = {b: sealed_epoch(sealed) for b, (_, _, sealed) in blobs.items()}
            cursors = {b: cursor for b, (cursor, _, _) in blobs.items()}
            first_new = min(cursors[b] for b, e in epochs.items() if e == 1)
            assert all(cursors[b] < first_new for b, e in epochs.items() if e == 0)
            assert epochs[marker.blob_id] == epochs[landed.blob_id] == 1
            # The phone's push got in before the revocation, or not at all. Told it was
            # revoked, it may not know which: the relay may end its session between storing
            # the blob and acknowledging it.
            phones = {b for b, (_, sender, _) in blobs.items() if sender == phone.device_id}
            assert len(phones) <= 1 and {epochs[b] for b in phones} <= {0}
            assert [got[b].data for b in phones] == [b"racing"] * len(phones)
            phone_push = results[phone]
            if isinstance(phone_push, PushResult):
                assert phones == {phone_push.blob_id}
            else:
                assert isinstance(phone_push, DeviceRevokedError), phone_push
            # Restarted, the phone cannot send anything more.
            await phone.close()
            phone.close_state()
            again = fleet.new("phone", data_dir=phone.data_dir)
            await again.connect()  # it asks the relay, which refuses it
            with pytest.raises(DeviceRevokedError):
                await again.wait_connected(WAIT)
            stored = stored_blobs(database_of(relay), group)
            assert {
                b for b, (_, sender, _) in stored.items() if sender == phone.device_id
            } == phones

    run(scenario())
