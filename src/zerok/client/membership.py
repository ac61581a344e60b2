"""The group's membership as one device holds it: the verified log and its epoch keys.

No I/O here (``zerok.client.logsync`` talks to relays, ``SyncClient`` persists and emits):
``Membership`` takes in entries from any source in log order (``ingest``: entries it holds
already are compared, new ones verified with ``GroupLog`` and applied), unwraps the key of
every epoch this device is a recipient of, finds the key of an older epoch by walking the
``prev_key`` chain back from a newer one, and writes this device's own entries on top of
its head. What changed comes back as an ``Ingested``: rows and keys to save, events for
the app, and whether this device was revoked or reinstated.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from zerok.client.events import KeyRotated, MembershipChanged, SyncEvent
from zerok.client.state import LogRow
from zerok.crypto.entry import TicketKey, entry_hash
from zerok.crypto.epoch import blob_key, new_epoch_key, open_previous, unwrap_epoch_key
from zerok.crypto.identity import DeviceIdentity
from zerok.crypto.recovery import RecoveryKey
from zerok.errors import EpochKeyError, MembershipError, WireError
from zerok.protocol import entries as build
from zerok.protocol.membership import Applied, GroupLog
from zerok.wire import DeviceId, GroupId
from zerok.wire.log import (
    Enroll,
    Member,
    Recover,
    Revoke,
    Role,
    Rotate,
    SetRole,
    decode_body,
    decode_entry,
)


@dataclass(frozen=True)
class Device:
    """One device of the group: what the log says of it, and what the relay sees of it
    (``online``, ``last_seen`` in ms, ``pending`` blobs; zeros when the relay does not
    know it). ``enrolled_at``/``revoked_at`` are log positions; ``revoked_by`` is None
    when the recovery key revoked it."""

    device_id: DeviceId
    name: str
    role: Role
    active: bool
    enrolled_at: int
    revoked_at: int | None = None
    revoked_by: DeviceId | None = None
    reason: str = ""
    online: bool = False
    last_seen: int = 0
    pending: int = 0
    this_device: bool = False

    @property
    def revoked(self) -> bool:
        return not self.active


@dataclass
class Ingested:
    """What taking in entries changed. ``gap``: entries beyond the head were skipped
    because those between were not given (fetch them). ``revocations`` are (device, by,
    reason), this device's included. ``error``: an entry that could not be taken in (a
    fork, or one that breaks the rules); what came before it was taken in, and is here."""

    rows: list[LogRow] = field(default_factory=list)
    keys: dict[int, bytes] = field(default_factory=dict)
    events: list[SyncEvent] = field(default_factory=list)
    revocations: list[tuple[DeviceId, DeviceId | None, str]] = field(default_factory=list)
    reinstated: bool = False
    new_epoch: bool = False
    gap: bool = False
    error: MembershipError | None = None

    def merge(self, other: Ingested) -> None:
        self.rows += other.rows
        self.keys |= other.keys
        self.events += other.events
        self.revocations += other.revocations
        self.reinstated = self.reinstated or other.reinstated
        self.new_epoch = self.new_epoch or other.new_epoch

    def check(self) -> Ingested:
        """Raise the error, if any (once the rest was saved and announced)."""
        if self.error is not None:
            raise self.error
        return self


class Membership:
    """The verified log of this device's group and the epoch keys it holds."""

    def __init__(self, identity: DeviceIdentity, log: GroupLog, entries: Sequence[bytes]) -> None:
        self.identity = identity
        self.log = log
        self.entries = list(entries)  # as received, for relays that lack some
        self.keys: dict[int, bytes] = {}
        self.unsaved: dict[int, bytes] = {}  # keys found by walking back, not yet saved

    @classmethod
    def load(
        cls, identity: DeviceIdentity, rows: Sequence[LogRow], keys: dict[int, bytes]
    ) -> Membership:
        """The saved log, verified again from its genesis (a state file is not trusted
        more than a relay)."""
        entries = [row.entry for row in rows]
        log = GroupLog.replay(entries)
        if [row.seq for row in rows] != list(range(len(rows))):
            raise MembershipError("chain", "the saved log has holes")
        members = cls(identity, log, entries)
        members.keys = dict(keys)
        return members

    @classmethod
    def start(
        cls, identity: DeviceIdentity, entries: Sequence[bytes], *, group_id: bytes | None = None
    ) -> Membership:
        """A log received whole (joining, or recovering on a new device), pinned to
        ``group_id``: a relay cannot present another group's log."""
        log = GroupLog.replay(entries, group_id=group_id)
        return cls(identity, log, entries)

    # -- reading ------------------------------------------------------------------------

    @property
    def group_id(self) -> GroupId:
        return self.log.group_id

    @property
    def epoch(self) -> int:
        return self.log.epoch

    @property
    def head_seq(self) -> int:
        return self.log.head_seq

    @property
    def head_hash(self) -> bytes:
        return self.log.head_hash

    @property
    def me(self) -> DeviceId:
        return self.identity.device_id

    @property
    def active(self) -> bool:
        """Whether this device is an active member (enrolled, not revoked)."""
        return self.log.admission(self.me) == "member"

    def rows(self) -> list[LogRow]:
        return [LogRow(seq, self.log.hashes[seq], entry) for seq, entry in enumerate(self.entries)]

    def device_of(self, sign: bytes) -> DeviceId | None:
        """The device whose signing key this is (None: the recovery key, or unknown)."""
        state = self.log.by_sign(sign)
        return None if state is None else state.device

    def role(self) -> Role | None:
        state = self.log.member(self.me)
        return None if state is None or not state.active else state.role

    def devices(self) -> list[Device]:
        """Every device the log knows, in enrollment order."""
        return [
            Device(
                device_id=m.device,
                name=m.name,
                role=m.role,
                active=m.active,
                enrolled_at=m.since,
                revoked_at=m.revoked_at,
                revoked_by=self.device_of(m.revoked_by) if m.revoked_by else None,
                reason=m.reason,
                this_device=m.device == self.me,
            )
            for m in sorted(self.log.members.values(), key=lambda m: m.since)
        ]

    # -- keys -----------------------------------------------------------------------------

    def key_for(self, epoch: int) -> bytes:
        """The key of ``epoch``: held, unwrapped from the log, or opened from a newer one
        through the ``prev_key`` chain (found keys join ``unsaved``); EpochKeyError when
        this device cannot have it."""
        if epoch in self.keys:
            return self.keys[epoch]
        if epoch not in self.log.epochs:
            raise EpochKeyError(
                f"epoch {epoch} is not in this device's log of the group (it is at "
                f"epoch {self.epoch}): fetch the log first"
            )
        own = self._unwrap(epoch)
        if own is not None:
            self._found({epoch: own})
            return own
        for later in sorted(e for e in self.keys if e > epoch):
            found = self._walk_back(later, epoch)
            if found is not None:
                self._found(found)
                return found[epoch]
        raise EpochKeyError(
            f"this device holds no key of epoch {epoch}: it was not a member then, and no "
            "later key it holds leads back to it"
        )

    def blob_key(self, epoch: int) -> bytes:
        return blob_key(self.key_for(epoch))

    def _found(self, keys: dict[int, bytes]) -> None:
        self.keys |= keys
        self.unsaved |= keys

    def take_unsaved(self) -> dict[int, bytes]:
        found, self.unsaved = self.unsaved, {}
        return found

    def _unwrap(self, epoch: int) -> bytes | None:
        wrapped = self.log.epochs[epoch].wraps.get(self.identity.sign_public)
        if wrapped is None:
            return None
        try:
            return unwrap_epoch_key(
                wrapped,
                epoch=epoch,
                recipient=self.identity.sign_public,
                wrap_key=self.identity.wrap_key,
            )
        except EpochKeyError:
            return None  # a bad wrap for us: the key is missing, and blobs say so

    def _walk_back(self, start: int, target: int) -> dict[int, bytes] | None:
        found: dict[int, bytes] = {}
        key = self.keys[start]
        for number in range(start, target, -1):
            sealed = self.log.epochs[number].prev_key
            if not sealed:
                return None  # a recovery that did not hold the old key breaks the chain
            try:
                key = open_previous(sealed, new_key=key, epoch=number)
            except EpochKeyError:
                return None
            found[number - 1] = key
        return found

    def unwrap_all(self, recovery: RecoveryKey) -> dict[int, bytes]:
        """Every epoch key the recovery key was given (every epoch's, unless a wrap is
        bad) that this device lacks; they are added to ``keys``."""
        found: dict[int, bytes] = {}
        for number, state in self.log.epochs.items():
            wrapped = state.wraps.get(recovery.sign_public)
            if number in self.keys or wrapped is None:
                continue
            try:
                found[number] = unwrap_epoch_key(
                    wrapped,
                    epoch=number,
                    recipient=recovery.sign_public,
                    wrap_key=recovery.wrap_key,
                )
            except EpochKeyError:
                continue
        self._found(found)
        return found

    # -- taking entries in ----------------------------------------------------------------

    def ingest(self, start: int, entries: Sequence[bytes]) -> Ingested:
        """Entries at ``start``, ``start + 1``, ...: those held already must be the same
        (else a LogForkError), the next ones are verified and applied (else a
        MembershipError: an entry that breaks the rules). The error comes in ``error``,
        with what was taken in before it."""
        result = Ingested()
        for offset, data in enumerate(entries):
            seq = start + offset
            try:
                if seq <= self.head_seq:
                    self.log.check_known(seq, _hash_of(data, seq))
                    continue
                if seq > self.head_seq + 1:
                    result.gap = True
                    break
                result.merge(self._apply(data))
            except MembershipError as exc:
                result.error = exc
                break
        return result

    def _apply(self, data: bytes) -> Ingested:
        revoked_before = {d for d, m in self.log.members.items() if not m.active}
        applied = self.log.apply(data)
        self.entries.append(data)
        result = Ingested(rows=[LogRow(applied.seq, applied.hash, data)])
        author = self.device_of(applied.body.author)
        body = applied.body
        if isinstance(body, Enroll):
            ticket = self.log.tickets[body.ticket]
            by = self.device_of(ticket.issuer)
            result.events.append(
                MembershipChanged("enrolled", DeviceId(body.member.device), by, applied.seq)
            )
        elif isinstance(body, SetRole):
            result.events.append(
                MembershipChanged("role", DeviceId(body.device), author, applied.seq)
            )
        elif isinstance(body, Revoke | Recover):
            self._removals(applied, author, body, revoked_before, result)
        if applied.epoch is not None:
            self._epoch_started(applied, result)
        return result

    def _removals(
        self,
        applied: Applied,
        author: DeviceId | None,
        body: Revoke | Recover,
        revoked_before: set[DeviceId],
        result: Ingested,
    ) -> None:
        reason = body.reason if isinstance(body, Revoke) else "recovered"
        by = author if isinstance(body, Revoke) else None
        for device in applied.revoked:
            result.events.append(MembershipChanged("revoked", device, by, applied.seq))
            result.revocations.append((device, by, reason))
        if isinstance(body, Recover):
            for device in (DeviceId(d) for d in body.keep):
                if device in revoked_before:
                    result.events.append(MembershipChanged("reinstated", device, None, applied.seq))
                    result.reinstated = result.reinstated or device == self.me
            for device in applied.enrolled:
                result.events.append(MembershipChanged("enrolled", device, None, applied.seq))

    def _epoch_started(self, applied: Applied, result: Ingested) -> None:
        epoch = applied.epoch
        assert epoch is not None
        key = self.keys.get(epoch) or self._unwrap(epoch)
        if key is not None and epoch not in self.keys:
            self.keys[epoch] = key
            result.keys[epoch] = key
        body = applied.body
        if isinstance(body, Revoke):
            reason = "revoked"
        elif isinstance(body, Recover):
            reason = "recovered"
        else:
            reason = (body.reason if isinstance(body, Rotate) else "") or "rotated"
        result.events.append(KeyRotated(epoch, reason))
        result.new_epoch = True

    # -- writing this device's entries ----------------------------------------------------

    def _require_admin(self, what: str) -> None:
        if self.role() is not Role.ADMIN:
            raise MembershipError(
                "unauthorized", f"only an admin device may {what}; this device is not one"
            )

    def _require_active(self) -> None:
        if not self.active:
            raise MembershipError(
                "unauthorized", "this device is not an active member of the group"
            )

    def invite(self, ticket: TicketKey, *, role: Role, expires_at: int, now: int) -> bytes:
        self._require_admin("invite devices")
        return build.invite(
            self.log,
            self.identity.sign_public,
            self.identity.sign,
            ticket.public,
            role=role,
            expires_at=expires_at,
            now=now,
        )

    def cancel(self, ticket: bytes, *, now: int) -> bytes:
        self._require_active()
        return build.cancel(
            self.log, self.identity.sign_public, self.identity.sign, ticket, now=now
        )

    def member(self, name: str) -> Member:
        return member_of(self.identity, name)

    def enroll(self, ticket: TicketKey, *, name: str, now: int) -> bytes:
        return build.enroll(self.log, self.member(name), self.identity.sign, ticket, now=now)

    def revoke(
        self, devices: list[DeviceId], *, reason: str, now: int
    ) -> tuple[bytes, dict[int, bytes]]:
        """A Revoke entry and the new epoch's key (for this device to keep unless it
        revoked itself)."""
        self._require_active()
        new_key = new_epoch_key()
        entry = build.revoke(
            self.log,
            self.identity.sign_public,
            self.identity.sign,
            [bytes(d) for d in devices],
            old_key=self.key_for(self.epoch),
            new_key=new_key,
            reason=reason,
            now=now,
        )
        keep = {} if self.me in devices else {self.epoch + 1: new_key}
        return entry, keep

    def rotate(self, *, reason: str, now: int) -> tuple[bytes, dict[int, bytes]]:
        self._require_active()
        new_key = new_epoch_key()
        entry = build.rotate(
            self.log,
            self.identity.sign_public,
            self.identity.sign,
            old_key=self.key_for(self.epoch),
            new_key=new_key,
            reason=reason,
            now=now,
        )
        return entry, {self.epoch + 1: new_key}

    def set_role(self, device: DeviceId, role: Role, *, now: int) -> bytes:
        self._require_admin("change roles")
        return build.set_role(
            self.log, self.identity.sign_public, self.identity.sign, bytes(device), role, now=now
        )

    def recover(
        self, recovery: RecoveryKey, *, keep: Iterable[DeviceId], name: str, now: int
    ) -> tuple[bytes, dict[int, bytes]]:
        """A Recover entry signed by the recovery key: ``keep`` (known devices) stay or come
        back, this device is added if the log does not know it, everyone else is revoked."""
        if recovery.sign_public != self.log.recovery_sign:
            raise MembershipError(
                "unauthorized", "this is not the recovery key of this group: check the words"
            )
        kept = list(dict.fromkeys(keep))
        add = [] if self.log.member(self.me) is not None else [self.member(name)]
        self.unwrap_all(recovery)
        old_key = self.keys.get(self.epoch)
        new_key = new_epoch_key()
        entry = build.recover(
            self.log,
            recovery.sign_public,
            recovery.sign,
            keep=[bytes(d) for d in kept],
            add=add,
            new_key=new_key,
            old_key=old_key,
            now=now,
        )
        return entry, {self.epoch + 1: new_key}


def member_of(identity: DeviceIdentity, name: str) -> Member:
    """This device as the log knows it."""
    return Member(
        device=bytes(identity.device_id),
        sign=identity.sign_public,
        wrap=identity.wrap_public,
        name=name[:64],
    )


def _hash_of(data: bytes, seq: int) -> bytes:
    try:
        entry = decode_entry(data)
        decode_body(entry.body)
    except WireError as exc:
        raise MembershipError(
            "malformed", f"log entry {seq} is malformed: {exc}", seq=seq
        ) from None
    return entry_hash(entry.body)
