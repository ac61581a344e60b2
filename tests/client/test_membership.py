"""Who may sync: revoking a device, and a key of another group."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.client.conftest import EventLog, Fleet, connected, pair
from tests.relay.support import run
from zerok.client import (
    DeviceRevoked,
    DeviceRevokedError,
    StatusChanged,
    SyncStatus,
)
from zerok.crypto import DeviceIdentity, GroupKeys
from zerok.errors import RemoteError, SyncError
from zerok.testing import RelayProcess
from zerok.transport.connection import RelayConnection
from zerok.wire import ErrorCode


async def revoke_and_check(fleet: Fleet, relay: RelayProcess, target: str | None) -> None:
    """A revokes B (by id, or by the text ``target`` makes of B's id); B learns it and is
    refused from then on; C, a third device, is told."""
    a, b, c = fleet.new("a"), fleet.new("b"), fleet.new("c")
    await pair(a, b, [relay.url])
    await c.join((await a.create_invite()).url)
    await connected(a, b, c)
    await b.push(b"before the revocation")
    async with EventLog(a) as log_a, EventLog(b) as log_b, EventLog(c) as log_c:
        how = b.device_id if target is None else target.format(str(b.device_id))
        await a.revoke_device(how, "lost")
        mine = await log_b.wait_for(DeviceRevoked)
        assert mine.device_id == b.device_id
        assert mine.revoked_by == a.device_id
        assert mine.reason == "lost"
        assert mine.this_device is True
        await log_b.wait_for(StatusChanged, lambda e: e.status == SyncStatus.REVOKED)
        assert b.status == SyncStatus.REVOKED
        # The group's other devices hear of it, as another device's revocation.
        theirs = await log_c.wait_for(DeviceRevoked)
        assert theirs == DeviceRevoked(b.device_id, a.device_id, "lost", False)
        # And so does the revoker (once revoke_device() returned).
        assert log_a.of(DeviceRevoked) == [theirs]
    await a.wait_connected(1)  # the others stay connected
    await c.wait_connected(1)

    with pytest.raises(DeviceRevokedError):
        await b.push(b"after the revocation")
    with pytest.raises(DeviceRevokedError):
        await b.pull()
    await b.close()
    b.close_state()

    # The app restarts on B's data: the relay refuses the device.
    again = fleet.new("b", data_dir=b.data_dir)
    async with EventLog(again) as log:
        await again.connect()
        refused = await log.wait_for(DeviceRevoked)
        # Refused at HELLO: the client cannot know who revoked it.
        assert (refused.device_id, refused.revoked_by) == (b.device_id, b.device_id)
        assert refused.this_device
        await log.wait_for(StatusChanged, lambda e: e.status == SyncStatus.REVOKED)
    assert again.status == SyncStatus.REVOKED
    with pytest.raises(DeviceRevokedError):
        await again.push(b"from the restarted app")

    devices = {d.device_id: d for d in await a.list_devices()}
    assert devices[b.device_id].revoked
    assert not devices[b.device_id].online
    assert not devices[a.device_id].revoked
    assert devices[a.device_id].online
    # The group goes on for the remaining devices.
    result = await a.push(b"still syncing")
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
            await connected(a, b)
            with pytest.raises(SyncError, match="2 devices"):
                await a.revoke_device("", "lost")  # every id starts with ""
            unknown = "9" if not str(b.device_id).startswith("9") else "8"  # not base32
            with pytest.raises(SyncError, match="no device"):
                await a.revoke_device(unknown, "lost")
            with pytest.raises(SyncError, match="reason"):
                await a.revoke_device(b.device_id, "bored")
            assert not any(d.revoked for d in await a.list_devices())

    run(scenario())


def test_wait_connected_on_a_revoked_device_fails_fast(relay: RelayProcess, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b = fleet.new("a"), fleet.new("b")
            await pair(a, b, [relay.url])
            await connected(a, b)
            await a.revoke_device(b.device_id, "compromised")
            await b.close()
            b.close_state()
            again = fleet.new("b", data_dir=tmp_path / "b")
            await again.connect()
            with pytest.raises(DeviceRevokedError):
                await again.wait_connected(timeout=3)

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
                assert log.of(DeviceRevoked) == [
                    DeviceRevoked(b.device_id, a.device_id, "decommissioned", True)
                ]

    run(scenario())


def test_a_key_of_another_group_is_refused(relay: RelayProcess, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            victim = fleet.new("victim")
            victim_group = await victim.create_group([relay.url])
            await connected(victim)  # the relay now knows the group's key
            await victim.push(b"the victim's data")

            forged = GroupKeys.generate()
            forged.group_id = victim_group  # claims the group without holding its key
            with pytest.raises(RemoteError) as caught:
                conn = await RelayConnection.open(
                    relay.url, DeviceIdentity.generate(), forged, timeout=10
                )
                await conn.close()
            assert caught.value.code == 1002
            assert ErrorCode(caught.value.code) is ErrorCode.UNAUTHORIZED
            # Nothing changed for the group.
            devices = await victim.list_devices()
            assert [d.device_id for d in devices] == [victim.device_id]
            assert [x.data for x in (await victim.pull(after=0)).blobs] == [b"the victim's data"]

    run(scenario())
