"""SyncClient's group management: creating a group, inviting and enrolling devices,
revoking them, rotating keys, changing roles, recovering with the recovery key.

Every change is an entry of the group's signed log, built on this device's head and
appended at a relay (``zerok.client.logsync.append``): through the running connection
when the client syncs, else through a connection of its own for the call. Nothing is
taken as done before the relay stored the entry and this device's state holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from zerok.client import logsync, mailbox, pairing
from zerok.client.membership import Device, Ingested, Membership, member_of
from zerok.client.pairing import Invite, InvitePayload
from zerok.client.state import GroupMeta, LocalState
from zerok.crypto.entry import Signer, TicketKey
from zerok.crypto.epoch import new_epoch_key, open_previous
from zerok.crypto.identity import DeviceIdentity
from zerok.crypto.recovery import RecoveryKey
from zerok.errors import (
    ConnectError,
    DeviceRevokedError,
    EpochKeyError,
    InviteError,
    MembershipError,
    NotConnectedError,
    RelayUnreachableError,
    RemoteError,
    StateError,
    SyncError,
    TicketError,
)
from zerok.protocol import entries as build
from zerok.protocol.client_core import ClientCore
from zerok.transport import RelayConnection
from zerok.wire import DeviceId, Devices, ErrorCode, GroupId, ListDevices
from zerok.wire.log import Role

MAX_INVITE_TTL = 600  # seconds: the relay's default mailbox TTL
_NOT_THE_RECOVERY_KEY = "this is not the recovery key of this group: check the words"
_BUSY = frozenset(
    {ErrorCode.RATE_LIMITED, ErrorCode.RELAY_OVERLOADED, ErrorCode.RELAY_SHUTTING_DOWN}
)

Session = tuple[RelayConnection, str]


@dataclass(frozen=True)
class NewGroup:
    """What ``create_group`` made: the group's id and its recovery key, which is shown to
    the user once (its words, its QR code) and never stored on the device."""

    group_id: GroupId
    recovery: RecoveryKey


class GroupOps:
    """The group-management half of ``SyncClient`` (which provides what is declared under
    TYPE_CHECKING)."""

    if TYPE_CHECKING:
        _state: LocalState
        _identity: DeviceIdentity
        _members: Membership | None
        _core: ClientCore
        device_name: str
        _clock: Callable[[], int]

        @property
        def running(self) -> bool: ...
        @property
        def relays(self) -> list[str]: ...
        def _require_group(self) -> Membership: ...
        def _adopt(self, members: Membership, relays: list[str]) -> None: ...
        def _absorber(self, relay: str) -> Callable[[Ingested], object]: ...
        async def _flush(self) -> None: ...
        async def _live(self) -> Session: ...
        async def _dial(
            self,
            url: str,
            *,
            signer: tuple[bytes, Signer] | None = None,
            group_id: GroupId | None = None,
        ) -> RelayConnection: ...

    # -- sessions for log changes -----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _log_session(
        self,
        *,
        signer: tuple[bytes, Signer] | None = None,
        relays: Sequence[str] = (),
        group_id: GroupId | None = None,
    ) -> AsyncIterator[Session]:
        """A connection whose log agrees with this device's: the running one, or one opened
        for the call (with ``signer``: provisional, the log as the relay has it)."""
        if signer is None and self.running:
            yield await self._live()
            return
        conn, url = await self._dial_first(
            list(relays) or self.relays, signer=signer, group_id=group_id
        )
        try:
            if signer is None:
                members = self._require_group()
                assert conn.welcome is not None
                await logsync.reconcile(conn, conn.welcome, members, self._absorber(url))
            yield conn, url
        finally:
            await conn.close()

    async def _dial_first(
        self, relays: list[str], *, signer: tuple[bytes, Signer] | None, group_id: GroupId | None
    ) -> Session:
        failures: list[str] = []
        for url in relays:
            try:
                return await self._dial(url, signer=signer, group_id=group_id), url
            except ConnectError as exc:
                failures.append(f"{url}: {exc}")
            except RemoteError as exc:
                if exc.code == ErrorCode.DEVICE_REVOKED:
                    raise DeviceRevokedError(f"this device was revoked: {exc.message}") from None
                if exc.code not in _BUSY:  # about this device or group: the next says the same
                    raise
                failures.append(f"{url}: {exc}")
        raise NotConnectedError(f"no relay of the group could be reached ({'; '.join(failures)})")

    async def _append(self, make: Callable[[Membership], tuple[bytes, dict[int, bytes]]]) -> int:
        """Append the entry ``make`` builds on the head; durable here before returning."""
        members = self._require_group()
        async with self._log_session() as (conn, url):
            seq = await logsync.append(conn, members, lambda: make(members), self._absorber(url))
        await self._flush()
        return seq

    # -- creating and joining ---------------------------------------------------------------

    async def create_group(self, relays: list[str], *, name: str = "") -> NewGroup:
        """Start a new group synced through ``relays`` (tried in order), with this device
        as its first admin. Nothing is sent yet: the first relay this device connects to
        learns the group from it. Show ``NewGroup.recovery`` to the user once."""
        if self._state.has_group():
            raise StateError(f"{self._state.dir} already belongs to a group")
        _check_relays(relays)
        recovery = RecoveryKey.generate()
        key = new_epoch_key()
        genesis = build.genesis(
            member_of(self._identity, self.device_name),
            self._identity.sign,
            recovery_sign=recovery.sign_public,
            recovery_wrap=recovery.wrap_public,
            epoch_key=key,
            now=self._clock(),
        )
        members = Membership.start(self._identity, [genesis])
        members.keys = {0: key}
        group = GroupMeta(members.group_id, list(relays), name[:64])
        await asyncio.wrap_future(self._state.start_group_later(group, members.rows(), {0: key}))
        self._adopt(members, list(relays))
        return NewGroup(members.group_id, recovery)

    async def join(self, code_or_url: str, *, relay: str | None = None) -> GroupId:
        """Join the group of an invite URL or short code (a short code needs the relay:
        ``relay=`` or ``SYNC_RELAY_URL``): enroll this device with the invite's ticket."""
        if self._state.has_group():
            raise StateError(f"{self._state.dir} already belongs to a group")
        payload = await self._invite_payload(code_or_url, relay)
        ticket = TicketKey(payload.ticket)
        group_id = GroupId(payload.group)
        signer = (ticket.public, ticket.sign)
        failures: list[str] = []
        for url in payload.relays:
            try:
                conn = await self._dial(url, signer=signer, group_id=group_id)
            except RemoteError as exc:
                raise _join_refusal(exc) from None
            except ConnectError as exc:
                failures.append(f"{url}: {exc}")
                continue
            try:
                members = await self._enroll(conn, payload, ticket)
            finally:
                await conn.close()
            break
        else:
            raise NotConnectedError(
                f"no relay of the invite could be reached ({'; '.join(failures)})"
            )
        group = GroupMeta(group_id, list(payload.relays))
        await asyncio.wrap_future(
            self._state.start_group_later(group, members.rows(), members.keys)
        )
        self._adopt(members, list(payload.relays))
        return group_id

    async def _invite_payload(self, code_or_url: str, relay: str | None) -> InvitePayload:
        if pairing.is_url(code_or_url):
            return pairing.parse_url(code_or_url, now_ms=self._clock())
        lookup = pairing.code_lookup(code_or_url)  # InviteError('mistyped') first
        relay = relay or os.environ.get("SYNC_RELAY_URL")
        if not relay:
            raise InviteError(
                "invalid", "a short code needs the relay URL: pass --relay or set SYNC_RELAY_URL"
            )
        sealed = await mailbox.take_invite(relay, lookup)
        now = self._clock()
        return await asyncio.to_thread(pairing.open_with_code, code_or_url, sealed, now_ms=now)

    async def _enroll(
        self, conn: RelayConnection, payload: InvitePayload, ticket: TicketKey
    ) -> Membership:
        entries = await logsync.fetch(conn, 0)
        members = Membership.start(self._identity, entries, group_id=payload.group)
        _check_ticket(members, payload, ticket)
        members.keys[payload.epoch] = payload.key

        def enroll() -> tuple[bytes, dict[int, bytes]]:
            _check_ticket(members, payload, ticket)  # again after catching up
            return members.enroll(ticket, name=self.device_name, now=self._clock()), {}

        try:
            await logsync.append(conn, members, enroll, _ignore)
        except TicketError as exc:
            raise InviteError(exc.reason, str(exc)) from None
        return members

    # -- invites ----------------------------------------------------------------------------

    async def create_invite(
        self, ttl: float = MAX_INVITE_TTL, *, role: Role = Role.MEMBER
    ) -> Invite:
        """An invite for another device (admins only): a ticket in the group's log, a URL
        (for a QR code) and a short code whose sealed invite waits in the mailbox of the
        group's first relay."""
        members = self._require_group()
        if members.role() is not Role.ADMIN:
            raise MembershipError(
                "unauthorized", "only an admin device may invite; ask an admin of the group"
            )
        if not 0 < ttl <= MAX_INVITE_TTL:
            raise SyncError(
                f"an invite lives at most {MAX_INVITE_TTL} seconds (the relay's mailbox TTL)"
            )
        ticket = TicketKey(os.urandom(32))
        expires = self._clock() + int(ttl * 1000)
        await self._append(
            lambda m: (m.invite(ticket, role=role, expires_at=expires, now=self._clock()), {})
        )
        payload = InvitePayload(
            v=pairing.INVITE_VERSION,
            relays=self.relays,
            group=bytes(members.group_id),
            ticket=ticket.seed,
            epoch=members.epoch,
            key=members.key_for(members.epoch),
            expires_at=expires,
            inviter=bytes(self._identity.device_id),
        )
        code = pairing.new_short_code()
        sealed = await asyncio.to_thread(pairing.seal_for_code, code, payload)
        relay = self.relays[0]
        await mailbox.post_invite(relay, pairing.code_lookup(code), sealed)
        invite = Invite(pairing.invite_url(payload), code, expires / 1000, relay, ticket.public)
        record = [code, relay, invite.expires_at, ticket.public.hex()]
        self._state.set_value("last_invite", json.dumps(record))
        return invite

    def last_invite(self) -> Invite | None:
        """The invite this device made last (its URL is not kept: it holds a key)."""
        raw = self._state.get_value("last_invite")
        if raw is None:
            return None
        code, relay, expires_at, ticket = json.loads(raw)
        return Invite("", str(code), float(expires_at), str(relay), bytes.fromhex(ticket))

    async def cancel_invite(self, invite: Invite) -> bool:
        """Withdraw an invite: its ticket is cancelled in the group's log (so its URL and
        QR code are worthless too) and its short code leaves the mailbox. True if it was
        still open."""
        members = self._require_group()
        cancelled = False
        ticket = members.log.tickets.get(invite.ticket) if invite.ticket else None
        if ticket is not None:
            try:
                await self._append(lambda m: (_cancel(m, invite.ticket, self._clock()), {}))
                cancelled = True
            except TicketError:
                cancelled = False  # used, cancelled or closed already
        waiting = False
        if invite.short_code:
            try:
                lookup = pairing.code_lookup(invite.short_code)
                waiting = await mailbox.cancel_invite(invite.relay, lookup)
            except RelayUnreachableError:
                if not cancelled:
                    raise
        return cancelled or waiting

    # -- devices, keys and roles ------------------------------------------------------------

    async def list_devices(self) -> list[Device]:
        """Every device the group's log knows (revoked ones too), with what the relay sees
        of each (online, last seen, blobs pending)."""
        members = self._require_group()
        async with self._log_session() as (conn, _):
            reply = await conn.request(ListDevices())
        seen = {d.device_id: d for d in reply.devices} if isinstance(reply, Devices) else {}
        result = []
        for device in members.devices():
            info = seen.get(device.device_id)
            if info is not None:
                device = replace(
                    device, online=info.online, last_seen=info.last_seen, pending=info.pending
                )
            result.append(device)
        return result

    def _resolve_device(self, device: DeviceId | str) -> DeviceId:
        """A device of the log by id, or by a unique prefix of its base32 form."""
        if isinstance(device, DeviceId):
            return device
        text = device.strip().lower()
        if len(text) == 52:
            return DeviceId.parse(text)
        members = self._require_group()
        matches = [d.device_id for d in members.devices() if str(d.device_id).startswith(text)]
        if len(matches) != 1:
            found = "no device" if not matches else f"{len(matches)} devices"
            raise SyncError(f"{found} of this group has an id starting with {text!r}")
        return matches[0]

    async def revoke_device(self, device: DeviceId | str, reason: str = "lost") -> None:
        """Remove a device from the group for good: a new epoch starts whose key it never
        gets, and relays refuse it. ``device`` may be a unique prefix of its id."""
        # Resolved on the log as the relay has it: a prefix may name a device enrolled since.
        await self._append(
            lambda m: m.revoke(
                [self._resolve_device(device)], reason=reason[:256], now=self._clock()
            )
        )

    async def rotate_keys(self, reason: str = "") -> int:
        """Start a new epoch (a suspected leak); returns its number."""
        await self._append(lambda m: m.rotate(reason=reason[:256], now=self._clock()))
        return self._require_group().epoch

    async def set_role(self, device: DeviceId | str, role: Role | str) -> None:
        """Make a device an admin or a member (admins only)."""
        wanted = Role(role)
        await self._append(
            lambda m: (m.set_role(self._resolve_device(device), wanted, now=self._clock()), {})
        )

    async def recover(
        self,
        recovery: RecoveryKey | str,
        *,
        keep: Sequence[DeviceId | str] | None = None,
        relays: Sequence[str] = (),
        group_id: GroupId | None = None,
    ) -> GroupId:
        """Take the group back with its recovery key (its 24 words, or the key): the
        devices of ``keep`` (default: this one) stay or come back as admins, every other
        device is revoked, a new epoch starts. Works on a device that was revoked (by a
        thief), and on a new device (give ``relays`` and ``group_id``). Then ``connect()``."""
        key = recovery if isinstance(recovery, RecoveryKey) else RecoveryKey.from_words(recovery)
        fresh = self._members is None
        if self._members is not None and key.sign_public != self._members.log.recovery_sign:
            raise MembershipError("unauthorized", _NOT_THE_RECOVERY_KEY)
        if fresh and (not relays or group_id is None):
            raise StateError(
                "this device is in no group: give the group's relays and its id to recover it"
            )
        urls = list(relays) or self.relays
        _check_relays(urls)
        try:
            members = await self._recover_at(key, urls, group_id, keep)
        except RemoteError as exc:
            if exc.code != ErrorCode.UNAUTHORIZED:
                raise
            raise MembershipError("unauthorized", f"{_NOT_THE_RECOVERY_KEY} ({exc})") from None
        if fresh:
            assert group_id is not None
            group = GroupMeta(group_id, urls)
            await asyncio.wrap_future(
                self._state.start_group_later(group, members.rows(), members.keys)
            )
            self._adopt(members, urls)
        await self._flush()
        return members.group_id

    async def _recover_at(
        self,
        key: RecoveryKey,
        relays: list[str],
        group_id: GroupId | None,
        keep: Sequence[DeviceId | str] | None,
    ) -> Membership:
        """Append a Recover entry through a session the recovery key opens (provisional:
        this device may be revoked, or unknown to the log)."""
        signer = (key.sign_public, key.sign)
        async with self._log_session(signer=signer, relays=relays, group_id=group_id) as (
            conn,
            url,
        ):
            absorb: Callable[[Ingested], object] = _ignore
            if self._members is None:
                entries = await logsync.fetch(conn, 0)
                members = Membership.start(self._identity, entries, group_id=group_id)
            else:
                members = self._members
                absorb = self._absorber(url)
                await logsync.catch_up(conn, members, absorb)
            kept = self._kept(members, keep)
            await logsync.append(
                conn,
                members,
                lambda: members.recover(key, keep=kept, name=self.device_name, now=self._clock()),
                absorb,
            )
        return members

    def _kept(self, members: Membership, keep: Sequence[DeviceId | str] | None) -> list[DeviceId]:
        if keep is None:
            me = self._identity.device_id
            return [me] if members.log.member(me) is not None else []
        known = {str(d.device_id): d.device_id for d in members.devices()}
        result = []
        for item in keep:
            if isinstance(item, DeviceId):
                result.append(item)
                continue
            text = item.strip().lower()
            matches = [device for name, device in known.items() if name.startswith(text)]
            if len(matches) != 1:
                raise SyncError(f"no single device of this group has an id starting with {text!r}")
            result.append(matches[0])
        return result


def _ignore(got: Ingested) -> None:
    """A log taken in whole before the device is in the group: saved at the end."""


def _check_relays(relays: list[str]) -> None:
    if not relays:
        raise SyncError("a group needs at least one relay URL")
    for relay in relays:
        mailbox.http_base(relay)  # validates the URL


def _cancel(members: Membership, ticket: bytes, now: int) -> bytes:
    state = members.log.tickets.get(ticket)
    if state is not None and state.state != "open":
        raise TicketError(state.state, f"this invite is {state.state} already")
    return members.cancel(ticket, now=now)


def _check_ticket(members: Membership, payload: InvitePayload, ticket: TicketKey) -> None:
    """InviteError unless the invite's ticket is open in the log and its key is the key of
    the log's current epoch."""
    state = members.log.tickets.get(ticket.public)
    if state is None:
        raise InviteError("unknown", "this invite's ticket is not in the group's log")
    if state.state != "open":
        reason = "cancelled" if state.state == "closed" else state.state
        raise InviteError(reason, f"this invite was {state.state}: ask for a new one")
    if payload.epoch != members.epoch:
        raise InviteError(
            "cancelled",
            "this invite was closed when the group's keys were rotated: ask for a new one",
        )
    prev = members.log.epochs[payload.epoch].prev_key
    if payload.epoch and prev:
        try:
            open_previous(prev, new_key=payload.key, epoch=payload.epoch)
        except EpochKeyError:
            raise InviteError("invalid", "the invite's key is not the group's key") from None


def _join_refusal(exc: RemoteError) -> SyncError:
    if exc.code in (ErrorCode.TICKET_USED, ErrorCode.TICKET_EXPIRED, ErrorCode.TICKET_CANCELLED):
        ticket = logsync.refusal(exc)
        return InviteError(ticket.reason, exc.message)
    if exc.code in (ErrorCode.UNAUTHORIZED, ErrorCode.UNKNOWN_GROUP):
        return InviteError("unknown", f"the relay knows no such invite: {exc.message}")
    return exc
