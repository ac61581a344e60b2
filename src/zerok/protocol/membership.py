"""A group's membership, decided by its signed, hash-chained log (sans-I/O).

The relay and every device run the same rules over the same entries: the relay before it
stores an entry and when it admits a HELLO, a device over the whole log from the genesis
it pinned when it joined. So a relay cannot add a member (it cannot sign for an admin), it
can only withhold entries; and a device that is shown two different entries at one
position raises LogForkError.

The rules, per kind (the author is the entry's signing key; "active" means enrolled and
not revoked):

- genesis (entry 0): its author is its member, who becomes the first admin; it names the
  recovery key and wraps epoch 0's key for exactly those two. The group id is its hash.
- invite: an active admin opens a ticket (an Ed25519 public key, fresh in this log) with a
  role and an expiry.
- cancel: an active admin, or the ticket's issuer, closes an open ticket.
- enroll: signed by the new device and by an open ticket's key, before the ticket expires
  (by the relay's clock when it appends; by the entry's time when a device replays); the
  ticket is then used. A device id or signing key is never enrolled twice.
- revoke: an active admin revokes active devices (a member may revoke only itself); a new
  epoch starts, its key wrapped for exactly the remaining active devices and the recovery
  key.
- rotate: any active device starts a new epoch, wrapped likewise.
- role: an active admin changes an active device's role.
- recover: signed by the recovery key; membership becomes ``keep`` (known devices,
  reinstated if revoked) plus ``add`` (new ones), all admins, everyone else revoked; a new
  epoch starts, wrapped for them and the recovery key.

Every entry that starts an epoch closes all open tickets: an invite seen by a device that
was then revoked, or leaked, is worthless. No change may leave active devices without an
admin (the recovery key can always appoint one).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from zerok.crypto.entry import author_signed, entry_hash, ticket_signed
from zerok.errors import LogForkError, MembershipError, TicketError, WireError
from zerok.wire.ids import DeviceId, GroupId
from zerok.wire.log import (
    MAX_MEMBERS,
    AnyBody,
    Cancel,
    Enroll,
    Genesis,
    Invite,
    Member,
    Recover,
    Revoke,
    Role,
    Rotate,
    SetRole,
    SignedEntry,
    Wrap,
    decode_body,
    decode_entry,
)

MAX_LOG_ENTRIES = 100_000


@dataclass
class MemberState:
    device: DeviceId
    sign: bytes
    wrap: bytes
    name: str
    role: Role
    since: int  # the seq of the entry that enrolled it
    revoked_at: int | None = None  # the seq of the entry that revoked it
    revoked_by: bytes = b""  # that entry's author (a signing key)
    reason: str = ""

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass
class TicketState:
    ticket: bytes
    role: Role
    expires_at: int
    issuer: bytes  # signing key of the admin who opened it
    seq: int
    state: str = "open"  # open | used | cancelled | closed (an epoch started)
    used_by: DeviceId | None = None


@dataclass
class EpochState:
    number: int
    seq: int  # the entry that started it
    prev_key: bytes  # the previous epoch's key sealed under this one (b"" when not given)
    wraps: dict[bytes, bytes] = field(default_factory=dict)  # signing key -> wrapped key


@dataclass(frozen=True)
class Applied:
    """What one entry changed, for events and for the relay's connections."""

    seq: int
    hash: bytes
    body: AnyBody
    enrolled: tuple[DeviceId, ...] = ()
    revoked: tuple[DeviceId, ...] = ()
    epoch: int | None = None  # the epoch it started, if any

    @property
    def kind(self) -> str:
        return type(self.body).__name__.lower()


class GroupLog:
    """The state of one group's log after its verified entries. Build it with
    ``from_genesis`` and feed it every later entry, in order, with ``apply``."""

    def __init__(self, genesis: Genesis, sig_entry: SignedEntry, *, keep_wraps: bool) -> None:
        self.keep_wraps = keep_wraps  # off: no wrapped keys nor wrap public keys kept
        self.group_id = GroupId(entry_hash(sig_entry.body))
        self.hashes: list[bytes] = [bytes(self.group_id)]
        self.recovery_sign = genesis.recovery_sign
        self.recovery_wrap = genesis.recovery_wrap
        self.members: dict[DeviceId, MemberState] = {}
        self._by_sign: dict[bytes, DeviceId] = {}
        self.tickets: dict[bytes, TicketState] = {}
        self.epochs: dict[int, EpochState] = {}
        self._add_member(genesis.member, Role.ADMIN, 0)
        self._start_epoch(0, 0, b"", genesis.wraps)

    # -- building ------------------------------------------------------------------------

    @classmethod
    def from_genesis(
        cls, data: bytes, *, group_id: bytes | None = None, keep_wraps: bool = True
    ) -> GroupLog:
        """Verify a log's first entry; ``group_id`` pins the group it must start."""
        entry, body = _decode(data, 0)
        if not isinstance(body, Genesis):
            raise MembershipError("chain", "a log must start with a genesis entry", seq=0)
        if body.seq != 0 or body.group or body.prev:
            raise MembershipError(
                "chain", "a genesis entry has seq 0 and names no group or previous entry", seq=0
            )
        if body.author != body.member.sign:
            raise MembershipError("unauthorized", "the genesis must be signed by its member", seq=0)
        if not author_signed(entry, body.author):
            raise MembershipError("signature", "the genesis signature does not verify", seq=0)
        if body.recovery_sign == body.member.sign:
            raise MembershipError("malformed", "the recovery key must differ from the creator's")
        _check_wraps(body.wraps, {body.member.sign, body.recovery_sign}, 0)
        log = cls(body, entry, keep_wraps=keep_wraps)
        if group_id is not None and bytes(group_id) != bytes(log.group_id):
            raise MembershipError(
                "group",
                f"this log's genesis is not the one of group {GroupId(bytes(group_id)).short()}: "
                "someone is presenting another group's log",
                seq=0,
            )
        return log

    @classmethod
    def replay(
        cls, entries: Iterable[bytes], *, group_id: bytes | None = None, keep_wraps: bool = True
    ) -> GroupLog:
        """Verify a whole log from its genesis (a device joining, a relay loading a log)."""
        it = iter(entries)
        first = next(it, None)
        if first is None:
            raise MembershipError("chain", "the log is empty: it has no genesis")
        log = cls.from_genesis(first, group_id=group_id, keep_wraps=keep_wraps)
        for data in it:
            log.apply(data)
        return log

    # -- reading -------------------------------------------------------------------------

    @property
    def head_seq(self) -> int:
        return len(self.hashes) - 1

    @property
    def head_hash(self) -> bytes:
        return self.hashes[-1]

    @property
    def epoch(self) -> int:
        return max(self.epochs)

    def active(self) -> list[MemberState]:
        return [m for m in self.members.values() if m.active]

    def member(self, device: bytes) -> MemberState | None:
        return self.members.get(DeviceId(bytes(device)))

    def by_sign(self, sign: bytes) -> MemberState | None:
        device = self._by_sign.get(bytes(sign))
        return None if device is None else self.members[device]

    def admission(self, device: bytes) -> str:
        """ "member", "revoked" or "unknown": what the relay answers a HELLO from it."""
        state = self.member(device)
        if state is None:
            return "unknown"
        return "member" if state.active else "revoked"

    def recipients(self, *, without: Iterable[bytes] = ()) -> set[bytes]:
        """The signing keys a new epoch's key must be wrapped for: every active device
        (but ``without``, device ids being revoked) and the recovery key."""
        gone = {bytes(d) for d in without}
        keys = {m.sign for m in self.active() if bytes(m.device) not in gone}
        return keys | {self.recovery_sign}

    def open_tickets(self) -> list[TicketState]:
        return [t for t in self.tickets.values() if t.state == "open"]

    def check_known(self, seq: int, digest: bytes) -> None:
        """LogForkError if we hold a different entry at ``seq``."""
        if 0 <= seq < len(self.hashes) and self.hashes[seq] != bytes(digest):
            raise LogForkError(
                f"two different entries at position {seq} of the log of group "
                f"{self.group_id.short()}: a relay or a device is equivocating",
                seq=seq,
            )

    # -- applying ------------------------------------------------------------------------

    def apply(self, data: bytes, *, now: int | None = None) -> Applied:
        """Verify the next entry and apply it; MembershipError (state unchanged) if it
        may not be appended. ``now`` is the relay's clock, for ticket expiry."""
        seq = self.head_seq + 1
        if seq >= MAX_LOG_ENTRIES:
            raise MembershipError("limit", f"the log is full ({MAX_LOG_ENTRIES} entries)", seq=seq)
        entry, body = _decode(data, seq)
        if body.seq != seq or body.prev != self.head_hash or body.group != bytes(self.group_id):
            # Building on an old head is a lost race, not equivocation: forks are what a
            # device finds with check_known when a relay serves another entry it holds.
            raise MembershipError(
                "chain",
                f"entry {body.seq} does not follow this log's head {self.head_seq}: "
                "fetch the log and build on its head",
                seq=body.seq,
            )
        if isinstance(body, Genesis):
            raise MembershipError("chain", "a log has exactly one genesis", seq=seq)
        if not author_signed(entry, body.author):
            raise MembershipError("signature", f"entry {seq}'s signature does not verify", seq=seq)
        applied = self._apply(entry, body, seq, now)
        self.hashes.append(entry_hash(entry.body))
        return applied

    def _apply(self, entry: SignedEntry, body: AnyBody, seq: int, now: int | None) -> Applied:
        digest = entry_hash(entry.body)
        if isinstance(body, Recover):
            return self._recover(body, seq, digest)
        author = self.by_sign(body.author)
        if author is None or not author.active:
            if isinstance(body, Enroll):
                return self._enroll(entry, body, seq, digest, now)
            raise MembershipError(
                "unauthorized", f"entry {seq} is signed by no active device of the group", seq=seq
            )
        if isinstance(body, Invite):
            self._require_admin(author, seq, "open invites")
            if body.ticket in self.tickets or self._key_in_use(body.ticket):
                raise MembershipError("malformed", "this ticket key is already known", seq=seq)
            if body.expires_at <= body.time:
                raise MembershipError("malformed", "the invite expires before it is made", seq=seq)
            self.tickets[body.ticket] = TicketState(
                body.ticket, body.role, body.expires_at, body.author, seq
            )
            return Applied(seq, digest, body)
        if isinstance(body, Cancel):
            ticket = self.tickets.get(body.ticket)
            if ticket is None:
                raise TicketError("unknown", "no such ticket in this group", seq=seq)
            if author.role is not Role.ADMIN and ticket.issuer != body.author:
                raise MembershipError(
                    "unauthorized", "only an admin or its issuer may cancel a ticket", seq=seq
                )
            _require_open(ticket, seq)
            ticket.state = "cancelled"
            return Applied(seq, digest, body)
        if isinstance(body, Enroll):
            raise MembershipError(
                "unauthorized", "an enrollment is signed by the new device itself", seq=seq
            )
        if isinstance(body, Revoke):
            return self._revoke(author, body, seq, digest)
        if isinstance(body, Rotate):
            self._check_epoch(body.epoch, body.wraps, self.recipients(), seq)
            self._start_epoch(body.epoch, seq, body.prev_key, body.wraps)
            return Applied(seq, digest, body, epoch=body.epoch)
        if isinstance(body, SetRole):
            self._require_admin(author, seq, "change roles")
            target = self.member(body.device)
            if target is None or not target.active:
                raise MembershipError("malformed", "no such active device", seq=seq)
            roles = {m.device: m.role for m in self.active()} | {target.device: body.role}
            _require_an_admin(roles.values(), seq)
            target.role = body.role
            return Applied(seq, digest, body)
        raise MembershipError("malformed", f"unexpected entry kind at {seq}", seq=seq)

    def _enroll(
        self, entry: SignedEntry, body: Enroll, seq: int, digest: bytes, now: int | None
    ) -> Applied:
        ticket = self.tickets.get(body.ticket)
        if ticket is None:
            raise TicketError("unknown", "this invite's ticket is not in the group's log", seq=seq)
        _require_open(ticket, seq)
        deadline = body.time if now is None else now
        if deadline > ticket.expires_at:
            raise TicketError("expired", "this invite has expired: ask for a new one", seq=seq)
        if body.author != body.member.sign:
            raise MembershipError("unauthorized", "an enrollment is signed by its device", seq=seq)
        if not ticket_signed(entry, body.ticket):
            raise MembershipError(
                "signature", "the enrollment is not signed by the invite's ticket", seq=seq
            )
        self._check_new_member(body.member, seq, extra=1)
        ticket.state = "used"
        ticket.used_by = DeviceId(body.member.device)
        self._add_member(body.member, ticket.role, seq)
        return Applied(seq, digest, body, enrolled=(DeviceId(body.member.device),))

    def _revoke(self, author: MemberState, body: Revoke, seq: int, digest: bytes) -> Applied:
        targets = [DeviceId(d) for d in body.devices]
        if not targets or len(set(targets)) != len(targets):
            raise MembershipError("malformed", "a revocation names distinct devices", seq=seq)
        for device in targets:
            state = self.members.get(device)
            if state is None or not state.active:
                raise MembershipError(
                    "malformed", f"device {device.short()} is not an active device", seq=seq
                )
        if author.role is not Role.ADMIN and targets != [author.device]:
            raise MembershipError(
                "unauthorized", "a member may revoke only itself; ask an admin", seq=seq
            )
        remaining = [m for m in self.active() if m.device not in targets]
        _require_an_admin((m.role for m in remaining), seq)
        self._check_epoch(body.epoch, body.wraps, self.recipients(without=targets), seq)
        for device in targets:
            self._mark_revoked(device, seq, body.author, body.reason)
        self._start_epoch(body.epoch, seq, body.prev_key, body.wraps)
        return Applied(seq, digest, body, revoked=tuple(targets), epoch=body.epoch)

    def _recover(self, body: Recover, seq: int, digest: bytes) -> Applied:
        if body.author != self.recovery_sign:
            raise MembershipError(
                "unauthorized", "a recovery is signed by the group's recovery key", seq=seq
            )
        keep = [DeviceId(d) for d in body.keep]
        if len(set(keep)) != len(keep) or any(d not in self.members for d in keep):
            raise MembershipError("malformed", "a recovery keeps distinct, known devices", seq=seq)
        if not keep and not body.add:
            raise MembershipError("malformed", "a recovery must leave at least one device", seq=seq)
        added: set[bytes] = set()
        for member in body.add:
            self._check_new_member(member, seq, extra=len(body.add))
            if member.device in added or member.sign in added:
                raise MembershipError("malformed", "a device is added twice", seq=seq)
            added |= {member.device, member.sign}
        expected = {self.members[d].sign for d in keep} | {m.sign for m in body.add}
        self._check_epoch(body.epoch, body.wraps, expected | {self.recovery_sign}, seq)
        revoked = [m.device for m in self.active() if m.device not in keep]
        for device in revoked:
            self._mark_revoked(device, seq, body.author, "recovered")
        for device in keep:
            state = self.members[device]
            state.revoked_at, state.revoked_by, state.reason = None, b"", ""
            state.role = Role.ADMIN
        for member in body.add:
            self._add_member(member, Role.ADMIN, seq)
        self._start_epoch(body.epoch, seq, body.prev_key, body.wraps)
        enrolled = tuple(DeviceId(m.device) for m in body.add)
        return Applied(
            seq, digest, body, enrolled=enrolled, revoked=tuple(revoked), epoch=body.epoch
        )

    # -- helpers -------------------------------------------------------------------------

    def _require_admin(self, author: MemberState, seq: int, what: str) -> None:
        if author.role is not Role.ADMIN:
            raise MembershipError("unauthorized", f"only an admin may {what}", seq=seq)

    def _key_in_use(self, key: bytes) -> bool:
        return key in self._by_sign or key == self.recovery_sign

    def _check_new_member(self, member: Member, seq: int, *, extra: int) -> None:
        if DeviceId(member.device) in self.members:
            raise MembershipError(
                "malformed", "this device was already enrolled in the group once", seq=seq
            )
        if self._key_in_use(member.sign) or member.sign in self.tickets:
            raise MembershipError("malformed", "this signing key is already in use", seq=seq)
        if len(self.members) + extra > MAX_MEMBERS:
            raise MembershipError(
                "limit",
                f"a group has at most {MAX_MEMBERS} devices, revoked ones included",
                seq=seq,
            )

    def _check_epoch(self, epoch: int, wraps: list[Wrap], expected: set[bytes], seq: int) -> None:
        if epoch != self.epoch + 1:
            raise MembershipError(
                "epoch", f"entry {seq} starts epoch {epoch}; the next is {self.epoch + 1}", seq=seq
            )
        _check_wraps(wraps, expected, seq)

    def _add_member(self, member: Member, role: Role, seq: int) -> None:
        device = DeviceId(member.device)
        # Wrap keys serve only whoever writes an epoch's wraps: a relay (keep_wraps off)
        # would hold 1.2 KiB per device for nothing.
        wrap = member.wrap if self.keep_wraps else b""
        self.members[device] = MemberState(device, member.sign, wrap, member.name, role, seq)
        self._by_sign[member.sign] = device

    def _mark_revoked(self, device: DeviceId, seq: int, by: bytes, reason: str) -> None:
        state = self.members[device]
        state.revoked_at, state.revoked_by, state.reason = seq, by, reason

    def _start_epoch(self, number: int, seq: int, prev_key: bytes, wraps: list[Wrap]) -> None:
        kept = {w.to: w.key for w in wraps} if self.keep_wraps else {}
        self.epochs[number] = EpochState(number, seq, prev_key, kept)
        for ticket in self.open_tickets():
            if ticket.seq < seq:
                ticket.state = "closed"


def _decode(data: bytes, seq: int) -> tuple[SignedEntry, AnyBody]:
    try:
        entry = decode_entry(data)
        return entry, decode_body(entry.body)
    except WireError as exc:
        raise MembershipError("malformed", str(exc), seq=seq) from None


def _check_wraps(wraps: list[Wrap], expected: set[bytes], seq: int) -> None:
    recipients = [w.to for w in wraps]
    if len(set(recipients)) != len(recipients) or set(recipients) != expected:
        raise MembershipError(
            "epoch",
            f"entry {seq} must wrap the new epoch key for exactly the remaining devices and the "
            f"recovery key ({len(expected)} recipients, got {len(recipients)})",
            seq=seq,
        )


def _require_open(ticket: TicketState, seq: int) -> None:
    if ticket.state == "open":
        return
    messages = {
        "used": "this invite was already used: ask for a new one",
        "cancelled": "this invite was cancelled",
        "closed": "this invite was closed when the group's keys were rotated: ask for a new one",
    }
    reason = "cancelled" if ticket.state == "closed" else ticket.state
    raise TicketError(reason, messages[ticket.state], seq=seq)


def _require_an_admin(roles: Iterable[Role], seq: int) -> None:
    roles = list(roles)
    if roles and Role.ADMIN not in roles:
        raise MembershipError(
            "unauthorized", "the group would have no admin left: appoint another first", seq=seq
        )
