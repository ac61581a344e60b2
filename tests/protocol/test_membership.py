"""The membership log's rules (zerok.protocol.membership), without sockets or databases."""

from __future__ import annotations

import os

import msgspec
import pytest

from zerok.crypto.entry import TicketKey, entry_hash, sign_entry
from zerok.crypto.epoch import new_epoch_key, open_previous, seal_previous, unwrap_epoch_key
from zerok.crypto.identity import DeviceIdentity
from zerok.crypto.recovery import RecoveryKey
from zerok.errors import LogForkError, MembershipError, TicketError
from zerok.protocol import entries
from zerok.protocol import membership as membership_module
from zerok.protocol.membership import GroupLog
from zerok.wire.log import Member, Revoke, Role, decode_entry, encode_body, encode_entry

NOW = 1_700_000_000_000


class Device:
    def __init__(self, name: str) -> None:
        self.identity = DeviceIdentity.generate()
        self.name = name

    @property
    def id(self) -> bytes:
        return bytes(self.identity.device_id)

    @property
    def sign(self) -> bytes:
        return self.identity.sign_public

    def member(self) -> Member:
        return Member(
            device=self.id, sign=self.sign, wrap=self.identity.wrap_public, name=self.name
        )

    def signer(self, message: bytes) -> bytes:
        return self.identity.sign(message)


class Group:
    """A log and the keys of everyone in it, driven as the client would."""

    def __init__(self) -> None:
        self.owner = Device("laptop")
        self.recovery = RecoveryKey.generate()
        self.key = new_epoch_key()
        self.keys = {0: self.key}
        self.genesis = entries.genesis(
            self.owner.member(),
            self.owner.signer,
            recovery_sign=self.recovery.sign_public,
            recovery_wrap=self.recovery.wrap_public,
            epoch_key=self.key,
            now=NOW,
        )
        self.log = GroupLog.from_genesis(self.genesis)
        self.entries = [self.genesis]

    def append(self, entry: bytes, *, now: int | None = NOW) -> membership_module.Applied:
        applied = self.log.apply(entry, now=now)
        self.entries.append(entry)
        return applied

    def invite(self, by: Device, *, role: Role = Role.MEMBER, ttl: int = 600_000) -> TicketKey:
        ticket = TicketKey(os.urandom(32))
        self.append(
            entries.invite(
                self.log,
                by.sign,
                by.signer,
                ticket.public,
                role=role,
                expires_at=NOW + ttl,
                now=NOW,
            )
        )
        return ticket

    def join(self, name: str, *, by: Device | None = None, role: Role = Role.MEMBER) -> Device:
        device = Device(name)
        ticket = self.invite(by or self.owner, role=role)
        self.append(entries.enroll(self.log, device.member(), device.signer, ticket, now=NOW))
        return device

    def revoke(self, by: Device, *targets: Device) -> membership_module.Applied:
        new = new_epoch_key()
        entry = entries.revoke(
            self.log,
            by.sign,
            by.signer,
            [t.id for t in targets],
            old_key=self.key,
            new_key=new,
            reason="lost",
            now=NOW,
        )
        applied = self.append(entry)
        self.key = new
        self.keys[self.log.epoch] = new
        return applied


def test_the_group_id_is_the_hash_of_its_genesis_and_pins_it() -> None:
    group = Group()
    assert bytes(group.log.group_id) == entry_hash(decode_entry(group.genesis).body)
    assert group.log.admission(group.owner.id) == "member"
    assert group.log.member(group.owner.id).role is Role.ADMIN  # type: ignore[union-attr]
    GroupLog.from_genesis(group.genesis, group_id=group.log.group_id)
    other = Group()
    with pytest.raises(MembershipError) as info:
        GroupLog.from_genesis(other.genesis, group_id=group.log.group_id)
    assert info.value.reason == "group"


def test_a_stranger_cannot_forge_a_genesis_for_a_known_group_id() -> None:
    group = Group()
    stranger = Group()  # a genesis of the stranger's own, presented under the owner's id
    with pytest.raises(MembershipError, match="genesis is not the one"):
        GroupLog.replay([stranger.genesis], group_id=group.log.group_id)


def test_epoch_zero_is_wrapped_for_the_creator_and_the_recovery_key() -> None:
    group = Group()
    wraps = group.log.epochs[0].wraps
    assert set(wraps) == {group.owner.sign, group.recovery.sign_public}
    for sign, wrap_key in (
        (group.owner.sign, group.owner.identity.wrap_key),
        (group.recovery.sign_public, group.recovery.wrap_key),
    ):
        key = unwrap_epoch_key(wraps[sign], epoch=0, recipient=sign, wrap_key=wrap_key)
        assert key == group.keys[0]


def test_a_tampered_genesis_is_refused() -> None:
    group = Group()
    entry = decode_entry(group.genesis)
    forged = encode_entry(msgspec.structs.replace(entry, sig=bytes(64)))
    with pytest.raises(MembershipError) as info:
        GroupLog.from_genesis(forged)
    assert info.value.reason == "signature"
    with pytest.raises(MembershipError) as info:
        GroupLog.from_genesis(b"\x93garbage")
    assert info.value.reason == "malformed"


def test_enrollment_with_a_ticket_and_its_single_use() -> None:
    group = Group()
    phone = Device("phone")
    ticket = group.invite(group.owner)
    applied = group.append(entries.enroll(group.log, phone.member(), phone.signer, ticket, now=NOW))
    assert applied.enrolled == (phone.id,)
    assert group.log.admission(phone.id) == "member"
    assert group.log.tickets[ticket.public].state == "used"
    # The same ticket again, for another device: refused with its reason.
    tablet = Device("tablet")
    with pytest.raises(TicketError) as info:
        group.log.apply(entries.enroll(group.log, tablet.member(), tablet.signer, ticket, now=NOW))
    assert info.value.reason == "used"
    assert group.log.admission(tablet.id) == "unknown"


def test_an_expired_ticket_is_refused_by_the_relays_clock() -> None:
    group = Group()
    ticket = group.invite(group.owner, ttl=1000)
    phone = Device("phone")
    entry = entries.enroll(group.log, phone.member(), phone.signer, ticket, now=NOW)
    with pytest.raises(TicketError) as info:
        group.log.apply(entry, now=NOW + 1001)
    assert info.value.reason == "expired"
    group.log.apply(entry, now=NOW + 1000)


def test_a_cancelled_ticket_is_refused() -> None:
    group = Group()
    ticket = group.invite(group.owner)
    group.append(
        entries.cancel(group.log, group.owner.sign, group.owner.signer, ticket.public, now=NOW)
    )
    phone = Device("phone")
    with pytest.raises(TicketError) as info:
        group.log.apply(entries.enroll(group.log, phone.member(), phone.signer, ticket, now=NOW))
    assert info.value.reason == "cancelled"


def test_enrollment_needs_the_tickets_signature() -> None:
    group = Group()
    ticket = group.invite(group.owner)
    phone = Device("phone")
    wrong = TicketKey(os.urandom(32))
    forged = decode_entry(entries.enroll(group.log, phone.member(), phone.signer, wrong, now=NOW))
    real_body = decode_entry(
        entries.enroll(group.log, phone.member(), phone.signer, ticket, now=NOW)
    ).body
    # The body names the real ticket but the ticket signature is by another key.
    spliced = msgspec.structs.replace(forged, body=real_body, sig=phone.signer(b"x" * 8))
    with pytest.raises(MembershipError):
        group.log.apply(encode_entry(spliced))
    unknown = TicketKey(os.urandom(32))
    with pytest.raises(TicketError) as info:
        group.log.apply(entries.enroll(group.log, phone.member(), phone.signer, unknown, now=NOW))
    assert info.value.reason == "unknown"


def test_only_admins_invite_and_members_revoke_only_themselves() -> None:
    group = Group()
    phone = group.join("phone")
    tablet = group.join("tablet")
    with pytest.raises(MembershipError) as info:
        group.invite(phone)
    assert info.value.reason == "unauthorized"
    with pytest.raises(MembershipError) as info:
        group.revoke(phone, tablet)
    assert info.value.reason == "unauthorized"
    applied = group.revoke(phone, phone)  # leaving is allowed
    assert applied.revoked == (phone.id,)


def test_revocation_starts_an_epoch_the_revoked_device_cannot_open() -> None:
    group = Group()
    phone = group.join("phone")
    tablet = group.join("tablet")
    old = group.key
    applied = group.revoke(group.owner, phone)
    assert applied.epoch == 1 and group.log.epoch == 1
    assert group.log.admission(phone.id) == "revoked"
    wraps = group.log.epochs[1].wraps
    assert phone.sign not in wraps
    assert set(wraps) == {group.owner.sign, tablet.sign, group.recovery.sign_public}
    got = unwrap_epoch_key(
        wraps[tablet.sign], epoch=1, recipient=tablet.sign, wrap_key=tablet.identity.wrap_key
    )
    assert got == group.key != old
    # Whoever holds the new key reads the old one (history), not the other way round.
    assert open_previous(group.log.epochs[1].prev_key, new_key=got, epoch=1) == old


def test_a_revoked_device_can_write_nothing_and_its_tickets_close() -> None:
    group = Group()
    phone = group.join("phone", role=Role.ADMIN)
    seen = group.invite(group.owner)  # an invite the phone saw, never used
    group.revoke(group.owner, phone)
    assert group.log.tickets[seen.public].state == "closed"
    with pytest.raises(MembershipError) as info:
        group.invite(phone)
    assert info.value.reason == "unauthorized"
    fresh = Device("thief")
    with pytest.raises(TicketError):
        group.log.apply(entries.enroll(group.log, fresh.member(), fresh.signer, seen, now=NOW))
    # Nor can it re-enroll its own key with a new invite.
    ticket = group.invite(group.owner)
    with pytest.raises(MembershipError, match="already enrolled"):
        group.log.apply(entries.enroll(group.log, phone.member(), phone.signer, ticket, now=NOW))


def test_an_entry_built_on_an_old_head_is_refused_as_outdated() -> None:
    group = Group()
    phone = group.join("phone")
    stale = entries.rotate(
        group.log,
        group.owner.sign,
        group.owner.signer,
        old_key=group.key,
        new_key=new_epoch_key(),
        reason="",
        now=NOW,
    )
    group.revoke(group.owner, phone)
    with pytest.raises(MembershipError) as info:
        group.log.apply(stale)
    assert info.value.reason == "chain"


def test_wraps_must_cover_exactly_the_remaining_devices() -> None:
    group = Group()
    phone = group.join("phone")
    tablet = group.join("tablet")
    new = new_epoch_key()
    everyone = [(d.sign, d.identity.wrap_public) for d in (group.owner, phone, tablet)]
    recovery = (group.recovery.sign_public, group.recovery.wrap_public)
    for recipients in ([*everyone, recovery], [everyone[0], recovery], everyone[:2]):
        body = Revoke(
            group=bytes(group.log.group_id),
            seq=group.log.head_seq + 1,
            prev=group.log.head_hash,
            time=NOW,
            author=group.owner.sign,
            devices=[phone.id],
            epoch=1,
            wraps=entries.wraps_for(new, 1, recipients),
            prev_key=seal_previous(group.key, new_key=new, epoch=1),
        )
        entry = encode_entry(sign_entry(encode_body(body), group.owner.signer))
        with pytest.raises(MembershipError) as info:
            group.log.apply(entry)
        assert info.value.reason == "epoch"
    assert group.log.admission(phone.id) == "member"


def test_the_thief_races_and_the_recovery_key_answers() -> None:
    group = Group()
    phone = group.join("phone", role=Role.ADMIN)
    tablet = group.join("tablet")
    # The thief, holding the phone, revokes the owner's other devices first.
    group.revoke(phone, group.owner, tablet)
    assert group.log.admission(group.owner.id) == "revoked"
    # The owner, with the recovery words, takes the group back on the laptop.
    recovery = RecoveryKey.from_words(" ".join(group.recovery.words()))
    new = new_epoch_key()
    applied = group.append(
        entries.recover(
            group.log,
            recovery.sign_public,
            recovery.sign,
            keep=[group.owner.id, tablet.id],
            add=[],
            new_key=new,
            old_key=None,
            now=NOW,
        )
    )
    assert applied.revoked == (phone.id,)
    assert group.log.admission(phone.id) == "revoked"
    assert group.log.admission(group.owner.id) == "member"
    assert group.log.member(tablet.id).role is Role.ADMIN  # type: ignore[union-attr]
    assert phone.sign not in group.log.epochs[group.log.epoch].wraps
    # The thief's counter-move is refused: it is no longer a member.
    group.key = new
    with pytest.raises(MembershipError) as info:
        group.revoke(phone, group.owner)
    assert info.value.reason == "unauthorized"


def test_only_the_recovery_key_may_recover() -> None:
    group = Group()
    new = new_epoch_key()
    fake = RecoveryKey.generate()
    entry = entries.recover(
        group.log,
        fake.sign_public,
        fake.sign,
        keep=[group.owner.id],
        add=[],
        new_key=new,
        old_key=group.key,
        now=NOW,
    )
    with pytest.raises(MembershipError) as info:
        group.log.apply(entry)
    assert info.value.reason in {"unauthorized", "epoch"}


def test_no_change_may_leave_the_group_without_an_admin() -> None:
    group = Group()
    phone = group.join("phone")
    with pytest.raises(MembershipError, match="no admin"):
        group.append(
            entries.set_role(
                group.log,
                group.owner.sign,
                group.owner.signer,
                group.owner.id,
                Role.MEMBER,
                now=NOW,
            )
        )
    group.append(
        entries.set_role(
            group.log, group.owner.sign, group.owner.signer, phone.id, Role.ADMIN, now=NOW
        )
    )
    assert group.log.member(phone.id).role is Role.ADMIN  # type: ignore[union-attr]


def test_chain_rules_and_forks() -> None:
    group = Group()
    group.join("phone")
    other = Group()
    alien = entries.invite(
        other.log,
        other.owner.sign,
        other.owner.signer,
        os.urandom(32),
        role=Role.MEMBER,
        expires_at=NOW + 1,
        now=NOW,
    )
    with pytest.raises(MembershipError) as info:
        group.log.apply(alien)
    assert info.value.reason == "chain"
    # Replaying an entry we hold is a chain error; a different one at that place a fork.
    with pytest.raises(MembershipError):
        group.log.apply(group.entries[1])
    with pytest.raises(LogForkError) as fork:
        group.log.check_known(1, b"\x00" * 32)
    assert fork.value.seq == 1
    group.log.check_known(1, group.log.hashes[1])


def test_replay_rebuilds_the_same_state() -> None:
    group = Group()
    phone = group.join("phone")
    group.join("tablet")
    group.revoke(group.owner, phone)
    again = GroupLog.replay(group.entries, group_id=group.log.group_id, keep_wraps=False)
    assert again.head_hash == group.log.head_hash
    assert again.epoch == 1
    assert {d: m.active for d, m in again.members.items()} == {
        d: m.active for d, m in group.log.members.items()
    }
    assert again.epochs[1].wraps == {}  # a relay does not keep them


def test_the_member_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(membership_module, "MAX_MEMBERS", 3)
    group = Group()
    group.join("a")
    group.join("b")
    with pytest.raises(MembershipError) as info:
        group.join("c")
    assert info.value.reason == "limit"
