"""What to do next, by error (zerok.cli.advice): every reason a user can act on gets a
step, none is said twice."""

from __future__ import annotations

import pytest

from zerok.cli.advice import NEW_INVITE, explain, hint
from zerok.errors import (
    DeviceRevokedError,
    EpochKeyError,
    InviteError,
    LogForkError,
    MembershipError,
    NotConnectedError,
    RecoveryKeyError,
    SyncError,
    TicketError,
)


@pytest.mark.parametrize("reason", ["expired", "used", "cancelled"])
def test_a_spent_invite_says_how_to_get_a_new_one(reason: str) -> None:
    assert NEW_INVITE in hint(InviteError(reason, "x"))
    assert NEW_INVITE in hint(TicketError(reason, "x"))


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (InviteError("unknown", "no such invite"), "--relay"),
        (InviteError("wrong", "the code is wrong"), "as the inviting device shows it"),
        (DeviceRevokedError("revoked"), "zerok group recover"),
        (RecoveryKeyError("word 3"), "nothing was changed"),
        (EpochKeyError("no key"), "zerok doctor"),
        (LogForkError("two entries", seq=3), "zerok relays remove"),
        (MembershipError("unauthorized", "only an admin may"), "which devices are admins"),
        (MembershipError("rejected", "the relay refused"), "role and state"),
        (MembershipError("signature", "bad"), "zerok doctor"),
    ],
)
def test_errors_get_their_next_step(error: SyncError, words: str) -> None:
    assert words in explain(error, str(error))
    assert explain(error, str(error)).startswith(f"{error} — ")


def test_no_step_where_the_message_has_one_or_none_applies() -> None:
    for error in (
        InviteError("mistyped", "check each character"),
        InviteError("invalid", "damaged"),
        MembershipError("unauthorized", "this is not the recovery key of this group"),
        NotConnectedError("no relay reachable"),
        SyncError("plain"),
    ):
        assert explain(error, str(error)) == str(error)
    said = f"this invite was used: {NEW_INVITE}"
    assert explain(InviteError("cancelled", said), said) == said
