"""Writing membership log entries: each builder returns the encoded entry that follows the
given log's head (GroupLog.apply checks it like anyone else's)."""

from __future__ import annotations

import os
from collections.abc import Iterable

from zerok.crypto.entry import Signer, TicketKey, sign_entry
from zerok.crypto.epoch import seal_previous, wrap_epoch_key
from zerok.protocol.membership import GroupLog
from zerok.wire.log import (
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
    Wrap,
    encode_body,
    encode_entry,
)


def _sealed(body: AnyBody, author: Signer, *, ticket: Signer | None = None) -> bytes:
    return encode_entry(sign_entry(encode_body(body), author, ticket=ticket))


def wraps_for(
    epoch_key: bytes, epoch: int, recipients: Iterable[tuple[bytes, bytes]]
) -> list[Wrap]:
    """The epoch key wrapped for each (signing key, X-Wing public key), in a stable order."""
    return [
        Wrap(
            to=sign,
            key=wrap_epoch_key(epoch_key, epoch=epoch, recipient=sign, recipient_wrap_public=wrap),
        )
        for sign, wrap in sorted(recipients)
    ]


def genesis(
    member: Member,
    author: Signer,
    *,
    recovery_sign: bytes,
    recovery_wrap: bytes,
    epoch_key: bytes,
    now: int,
) -> bytes:
    body = Genesis(
        seq=0,
        time=now,
        author=member.sign,
        nonce=os.urandom(16),
        member=member,
        recovery_sign=recovery_sign,
        recovery_wrap=recovery_wrap,
        wraps=wraps_for(epoch_key, 0, [(member.sign, member.wrap), (recovery_sign, recovery_wrap)]),
    )
    return _sealed(body, author)


def _next(log: GroupLog) -> tuple[bytes, int, bytes]:
    return bytes(log.group_id), log.head_seq + 1, log.head_hash


def invite(
    log: GroupLog,
    author_sign: bytes,
    author: Signer,
    ticket: bytes,
    *,
    role: Role,
    expires_at: int,
    now: int,
) -> bytes:
    group, seq, prev = _next(log)
    body = Invite(
        group=group,
        seq=seq,
        prev=prev,
        time=now,
        author=author_sign,
        ticket=ticket,
        role=role,
        expires_at=expires_at,
    )
    return _sealed(body, author)


def cancel(log: GroupLog, author_sign: bytes, author: Signer, ticket: bytes, *, now: int) -> bytes:
    group, seq, prev = _next(log)
    body = Cancel(group=group, seq=seq, prev=prev, time=now, author=author_sign, ticket=ticket)
    return _sealed(body, author)


def enroll(log: GroupLog, member: Member, author: Signer, ticket: TicketKey, *, now: int) -> bytes:
    group, seq, prev = _next(log)
    body = Enroll(
        group=group,
        seq=seq,
        prev=prev,
        time=now,
        author=member.sign,
        ticket=ticket.public,
        member=member,
    )
    return _sealed(body, author, ticket=ticket.sign)


def _next_epoch(
    log: GroupLog, new_key: bytes, old_key: bytes, without: Iterable[bytes] = ()
) -> tuple[int, list[Wrap], bytes]:
    """The next epoch's number, its key wrapped for everyone who stays (every active
    device but ``without``, and the recovery key), and the previous key sealed under it."""
    epoch = log.epoch + 1
    keys = log.recipients(without=without)
    wraps = {m.sign: m.wrap for m in log.members.values()} | {log.recovery_sign: log.recovery_wrap}
    recipients = [(k, wraps[k]) for k in keys]
    prev_key = seal_previous(old_key, new_key=new_key, epoch=epoch)
    return epoch, wraps_for(new_key, epoch, recipients), prev_key


def revoke(
    log: GroupLog,
    author_sign: bytes,
    author: Signer,
    devices: list[bytes],
    *,
    old_key: bytes,
    new_key: bytes,
    reason: str,
    now: int,
) -> bytes:
    group, seq, prev = _next(log)
    epoch, wraps, prev_key = _next_epoch(log, new_key, old_key, devices)
    body = Revoke(
        group=group,
        seq=seq,
        prev=prev,
        time=now,
        author=author_sign,
        devices=list(devices),
        reason=reason,
        epoch=epoch,
        wraps=wraps,
        prev_key=prev_key,
    )
    return _sealed(body, author)


def rotate(
    log: GroupLog,
    author_sign: bytes,
    author: Signer,
    *,
    old_key: bytes,
    new_key: bytes,
    reason: str,
    now: int,
) -> bytes:
    group, seq, prev = _next(log)
    epoch, wraps, prev_key = _next_epoch(log, new_key, old_key)
    body = Rotate(
        group=group,
        seq=seq,
        prev=prev,
        time=now,
        author=author_sign,
        reason=reason,
        epoch=epoch,
        wraps=wraps,
        prev_key=prev_key,
    )
    return _sealed(body, author)


def set_role(
    log: GroupLog, author_sign: bytes, author: Signer, device: bytes, role: Role, *, now: int
) -> bytes:
    group, seq, prev = _next(log)
    body = SetRole(
        group=group, seq=seq, prev=prev, time=now, author=author_sign, device=device, role=role
    )
    return _sealed(body, author)


def recover(
    log: GroupLog,
    recovery_sign: bytes,
    author: Signer,
    *,
    keep: list[bytes],
    add: list[Member],
    new_key: bytes,
    old_key: bytes | None,
    now: int,
) -> bytes:
    group, seq, prev = _next(log)
    epoch = log.epoch + 1
    kept = {bytes(d) for d in keep}
    keys = {m.sign: m.wrap for m in log.members.values() if bytes(m.device) in kept}
    keys |= {m.sign: m.wrap for m in add} | {log.recovery_sign: log.recovery_wrap}
    body = Recover(
        group=group,
        seq=seq,
        prev=prev,
        time=now,
        author=recovery_sign,
        keep=list(keep),
        add=list(add),
        epoch=epoch,
        wraps=wraps_for(new_key, epoch, keys.items()),
        prev_key=b"" if old_key is None else seal_previous(old_key, new_key=new_key, epoch=epoch),
    )
    return _sealed(body, author)
