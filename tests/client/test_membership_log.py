"""``Membership``: the group's log and epoch keys as one device holds them, without a relay.

Three devices (A, the creator; B and C, enrolled with invites) and the recovery key write
entries and take each other's in; what each learns (events, keys, revocations) is what the
client saves and announces.
"""

from __future__ import annotations

import os

import pytest

from zerok.client.events import KeyRotated, MembershipChanged
from zerok.client.membership import Ingested, Membership, member_of
from zerok.client.state import LogRow
from zerok.crypto.entry import TicketKey
from zerok.crypto.epoch import new_epoch_key
from zerok.crypto.identity import DeviceIdentity
from zerok.crypto.recovery import RecoveryKey
from zerok.errors import EpochKeyError, LogForkError, MembershipError
from zerok.protocol import entries as build
from zerok.wire.log import Role

FAR = 10**13  # an expiry in the future of every entry's time


class Group:
    """A group made by A, B enrolled; every device's view kept up to date by ``spread``."""

    def __init__(self) -> None:
        self.recovery = RecoveryKey.generate()
        self.ids = {name: DeviceIdentity.generate() for name in "abc"}
        self.k0 = new_epoch_key()
        genesis = build.genesis(
            member_of(self.ids["a"], "a"),
            self.ids["a"].sign,
            recovery_sign=self.recovery.sign_public,
            recovery_wrap=self.recovery.wrap_public,
            epoch_key=self.k0,
            now=1,
        )
        self.views = {"a": Membership.start(self.ids["a"], [genesis])}
        self.views["a"].keys = {0: self.k0}
        self.enroll("b")

    @property
    def a(self) -> Membership:
        return self.views["a"]

    def spread(self, entry: bytes) -> dict[str, Ingested]:
        """Every view takes the entry in; what each learnt, by device name."""
        seq = self.a.head_seq + 1
        return {name: view.ingest(seq, [entry]) for name, view in self.views.items()}

    def enroll(self, name: str) -> Membership:
        ticket = TicketKey(os.urandom(32))
        self.spread(self.a.invite(ticket, role=Role.MEMBER, expires_at=FAR, now=2))
        view = Membership.start(self.ids[name], self.a.entries, group_id=self.a.group_id)
        view.keys = {self.a.epoch: self.a.key_for(self.a.epoch)}
        entry = view.enroll(ticket, name=name, now=3)
        self.spread(entry)
        view.ingest(view.head_seq + 1, [entry])
        self.views[name] = view
        return view


def test_an_enrollment_is_news_to_every_device_and_names_the_inviter() -> None:
    group = Group()
    b = group.views["b"]
    got = group.a.ingest(b.head_seq, [b.entries[-1]])  # held already: nothing new
    assert got.rows == [] and got.events == []
    c = group.enroll("c")
    assert [d.name for d in group.a.devices()] == ["a", "b", "c"]
    assert c.active and c.role() is Role.MEMBER and group.a.role() is Role.ADMIN
    assert c.log.head_hash == group.a.head_hash == b.head_hash


def test_events_of_an_enrollment() -> None:
    group = Group()
    ticket = TicketKey(os.urandom(32))
    group.spread(group.a.invite(ticket, role=Role.ADMIN, expires_at=FAR, now=5))
    c = Membership.start(group.ids["c"], group.a.entries)
    c.keys = {0: group.k0}
    got = group.a.ingest(c.head_seq + 1, [c.enroll(ticket, name="c", now=6)])
    assert got.events == [
        MembershipChanged("enrolled", group.ids["c"].device_id, group.ids["a"].device_id, 4)
    ]
    assert [r.seq for r in got.rows] == [4] and not got.new_epoch


def test_a_rotation_gives_every_member_the_new_key() -> None:
    group = Group()
    entry, keys = group.views["b"].rotate(reason="a leak", now=7)  # any member may rotate
    got_a = group.spread(entry)["a"]
    assert got_a.events == [KeyRotated(1, "a leak")]
    assert got_a.keys == keys  # unwrapped from the entry: A was a recipient
    assert group.a.key_for(1) == group.views["b"].key_for(1) == keys[1]


def test_a_device_joining_later_walks_back_to_older_keys() -> None:
    group = Group()
    entry, _ = group.a.rotate(reason="", now=7)
    group.spread(entry)
    entry, _ = group.a.rotate(reason="", now=8)
    group.spread(entry)
    c = group.enroll("c")  # its invite brings epoch 2's key only
    assert c.keys.keys() == {2}
    assert c.key_for(0) == group.k0
    assert c.key_for(1) == group.a.key_for(1)
    assert c.take_unsaved() == {0: group.k0, 1: group.a.key_for(1)}
    assert c.take_unsaved() == {}
    with pytest.raises(EpochKeyError, match="not in this device's log"):
        c.key_for(3)


def test_a_revoked_device_learns_it_and_never_gets_the_new_key() -> None:
    group = Group()
    b = group.views["b"]
    entry, keys = group.a.revoke([b.me], reason="lost", now=9)
    assert keys.keys() == {1}
    got = b.ingest(b.head_seq + 1, [entry])
    assert got.revocations == [(b.me, group.a.me, "lost")]
    assert KeyRotated(1, "revoked") in got.events
    assert got.keys == {} and not b.active
    with pytest.raises(EpochKeyError, match="no key of epoch 1"):
        b.key_for(1)
    with pytest.raises(MembershipError, match="not an active member"):
        b.rotate(reason="", now=10)


def test_revoking_itself_keeps_no_key() -> None:
    group = Group()
    b = group.views["b"]
    entry, keys = b.revoke([b.me], reason="leaving", now=9)
    assert keys == {}
    group.spread(entry)
    assert not b.active and group.a.active


def test_only_admins_invite_or_change_roles() -> None:
    group = Group()
    b = group.views["b"]
    with pytest.raises(MembershipError, match="only an admin") as caught:
        b.invite(TicketKey(os.urandom(32)), role=Role.MEMBER, expires_at=FAR, now=4)
    assert caught.value.reason == "unauthorized"
    with pytest.raises(MembershipError, match="only an admin"):
        b.set_role(group.a.me, Role.MEMBER, now=4)
    got = group.spread(group.a.set_role(b.me, Role.ADMIN, now=5))
    assert got["b"].events == [MembershipChanged("role", b.me, group.a.me, 3)]
    assert b.role() is Role.ADMIN


def test_a_recovery_reinstates_the_kept_devices_and_revokes_the_others() -> None:
    """The thief (A) revoked B; B takes the group back with the recovery key."""
    group = Group()
    b = group.views["b"]
    entry, _ = group.a.revoke([b.me], reason="the thief", now=9)
    group.spread(entry)
    assert b.unwrap_all(group.recovery) == {1: group.a.key_for(1)}  # epoch 0 it had
    with pytest.raises(MembershipError, match="not the recovery key"):
        b.recover(RecoveryKey.generate(), keep=[b.me], name="b", now=10)
    entry, keys = b.recover(group.recovery, keep=[b.me], name="b", now=10)
    got = b.ingest(b.head_seq + 1, [entry])
    assert got.reinstated and b.active and b.role() is Role.ADMIN
    assert MembershipChanged("reinstated", b.me, None, 4) in got.events
    assert MembershipChanged("revoked", group.a.me, None, 4) in got.events
    assert KeyRotated(2, "recovered") in got.events
    assert b.key_for(2) == keys[2]
    thief = group.a.ingest(group.a.head_seq + 1, [entry])
    assert thief.revocations == [(group.a.me, None, "recovered")]


def test_a_new_device_recovers_a_group_it_was_never_in() -> None:
    group = Group()
    newcomer = Membership.start(DeviceIdentity.generate(), group.a.entries)
    entry, keys = newcomer.recover(group.recovery, keep=[], name="new", now=10)
    got = newcomer.ingest(newcomer.head_seq + 1, [entry])
    assert MembershipChanged("enrolled", newcomer.me, None, 3) in got.events
    assert newcomer.active and newcomer.log.admission(group.a.me) == "revoked"
    assert newcomer.key_for(0) == group.k0  # the recovery key held epoch 0: prev_key chain
    assert keys.keys() == {1}


def test_another_entry_at_a_held_position_is_a_fork() -> None:
    group = Group()
    other = build.invite(
        Membership.start(group.ids["a"], group.a.entries[:1]).log,
        group.ids["a"].sign_public,
        group.ids["a"].sign,
        TicketKey(os.urandom(32)).public,
        role=Role.MEMBER,
        expires_at=FAR,
        now=99,
    )
    got = group.a.ingest(1, [other])
    assert isinstance(got.error, LogForkError) and got.error.seq == 1
    with pytest.raises(LogForkError):
        got.check()
    with pytest.raises(MembershipError, match="malformed"):
        group.a.ingest(1, [b"not an entry"]).check()


def test_what_came_before_a_bad_entry_is_taken_in_and_kept() -> None:
    group = Group()
    rotation, _ = group.a.rotate(reason="", now=7)
    got = group.views["b"].ingest(3, [rotation, b"garbage"])
    assert [r.seq for r in got.rows] == [3] and got.new_epoch
    assert got.error is not None and got.error.reason == "malformed"
    assert group.views["b"].epoch == 1


def test_entries_past_a_hole_wait_for_the_hole() -> None:
    group = Group()
    first, _ = group.a.rotate(reason="", now=7)
    view_b = group.views["b"]
    group.a.ingest(group.a.head_seq + 1, [first])
    second, _ = group.a.rotate(reason="", now=8)
    got = view_b.ingest(view_b.head_seq + 2, [second])
    assert got.gap and got.rows == [] and view_b.epoch == 0
    got = view_b.ingest(view_b.head_seq + 1, [first, second])
    assert not got.gap and view_b.epoch == 2


def test_a_saved_log_is_verified_again_when_loaded() -> None:
    group = Group()
    rows = group.a.rows()
    loaded = Membership.load(group.ids["a"], rows, {0: group.k0})
    assert loaded.head_hash == group.a.head_hash and loaded.keys == {0: group.k0}
    with pytest.raises(MembershipError, match="holes"):
        Membership.load(group.ids["a"], [rows[0], LogRow(2, rows[1].hash, rows[1].entry)], {})
    with pytest.raises(MembershipError):
        Membership.load(group.ids["a"], [rows[0], LogRow(1, rows[2].hash, rows[2].entry)], {})
