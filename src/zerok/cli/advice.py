"""What to do next, for the errors a user can act on: the client's messages say what went
wrong; the command line knows which command sets it right."""

from __future__ import annotations

from zerok.errors import (
    DeviceRevokedError,
    EpochKeyError,
    InviteError,
    LogForkError,
    MembershipError,
    RecoveryKeyError,
    SyncError,
    TicketError,
)

NEW_INVITE = "on a device of the group, `zerok pair create` makes a new invite"

_INVITE: dict[str, str] = {
    "expired": NEW_INVITE,
    "used": f"an invite enrolls one device; {NEW_INVITE}",
    "cancelled": NEW_INVITE,
    "wrong": "check the code as the inviting device shows it",
    "unknown": f"check the code and --relay (the relay of the inviting device); {NEW_INVITE}",
}

_REVOKED = (
    "if nobody you trust revoked it (a stolen device?), take the group back with its "
    "recovery words: `zerok group recover`; otherwise start over as a new device "
    "(`zerok init` in another --home) and ask an admin for an invite"
)
_ROLES = "`zerok devices` shows which devices are admins"
_FORK = (
    "a relay that shows two different logs is not to be trusted: stop using it "
    "(`zerok relays remove URL`) and tell its operator"
)
_BROKEN_LOG = "`zerok doctor` checks this device's log and its relays"


def hint(exc: SyncError) -> str:
    """The next step for ``exc``, or "" when its message says it already."""
    if isinstance(exc, InviteError | TicketError):
        return _INVITE.get(exc.reason, "")
    if isinstance(exc, DeviceRevokedError):
        return _REVOKED
    if isinstance(exc, RecoveryKeyError):
        return "nothing was changed"
    if isinstance(exc, EpochKeyError):
        return _BROKEN_LOG
    if isinstance(exc, LogForkError):
        return _FORK
    if isinstance(exc, MembershipError):
        if exc.reason == "unauthorized":
            return "" if "recovery key" in str(exc) else _ROLES
        if exc.reason == "rejected":
            return "`zerok devices` shows each device's role and state"
        return _BROKEN_LOG
    return ""


def explain(exc: SyncError, message: str) -> str:
    """``message`` (``exc``'s, cleaned up) and what to do next."""
    advice = hint(exc)
    if not advice or advice in message:
        return message
    return f"{message} — {advice}"
