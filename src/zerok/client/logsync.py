"""Keeping a device's log and a relay's log the same, over one connection.

After WELCOME the device compares the relay's head (``log_seq``, ``log_hash``) with its
own (``reconcile``): a relay behind gets the entries it lacks (LOG_APPEND: a relay
restored from a backup heals), a relay ahead is read (LOG_GET, from the device's head so
that the entry both hold is compared), and a relay whose log contradicts the device's is
a fork (LogForkError). ``append`` writes one of this device's entries: built on the
head, re-built after catching up when another entry got there first (LOG_OUTDATED).

What was taken in goes to the ``absorb`` callback (which saves it and tells the app), so
that entries are handled the same wherever they came from.
"""

from __future__ import annotations

from collections.abc import Callable

from zerok.client.membership import Ingested, Membership
from zerok.errors import LogForkError, MembershipError, RemoteError, TicketError
from zerok.transport import RelayConnection
from zerok.wire import ErrorCode, Log, LogAppend, LogAppended, LogGet, Welcome
from zerok.wire.messages import MAX_APPEND_ENTRIES, MAX_LOG_PAGE

APPEND_ATTEMPTS = 5  # re-builds after LOG_OUTDATED before giving up
Absorb = Callable[[Ingested], object]

_TICKET_REASONS = {
    ErrorCode.TICKET_USED: "used",
    ErrorCode.TICKET_EXPIRED: "expired",
    ErrorCode.TICKET_CANCELLED: "cancelled",
}
_LOG_REFUSALS = frozenset({ErrorCode.LOG_REJECTED, *_TICKET_REASONS})


async def fetch(conn: RelayConnection, start: int) -> list[bytes]:
    """The relay's log entries from ``start`` on, every page of them."""
    entries: list[bytes] = []
    while True:
        reply = await conn.request(LogGet(start=start + len(entries), limit=MAX_LOG_PAGE))
        if not isinstance(reply, Log):
            raise MembershipError("malformed", "the relay answered LOG_GET with something else")
        if reply.start != start + len(entries):
            raise MembershipError("chain", "the relay's LOG answer starts at the wrong entry")
        entries += reply.entries
        if not reply.entries or start + len(entries) > reply.head_seq:
            return entries


async def catch_up(conn: RelayConnection, members: Membership, absorb: Absorb) -> None:
    """Read what the relay has beyond this device's head (and the head itself, to compare)."""
    await catch_up_from(conn, members, members.head_seq, absorb)


async def reconcile(
    conn: RelayConnection, welcome: Welcome, members: Membership, absorb: Absorb
) -> None:
    """Bring the relay's log and this device's to the same head (module docstring)."""
    if welcome.log_seq > members.head_seq:
        await catch_up(conn, members, absorb)
        return
    if welcome.log_seq == members.head_seq and welcome.log_hash != members.head_hash:
        raise LogForkError(
            f"the relay's log has another entry at position {welcome.log_seq} than this "
            "device's: it is presenting a different history of the group",
            seq=welcome.log_seq,
        )
    members.log.check_known(welcome.log_seq, welcome.log_hash)
    await heal(conn, members, welcome.log_seq, absorb)


async def heal(conn: RelayConnection, members: Membership, relay_head: int, absorb: Absorb) -> None:
    """Append the entries the relay lacks after ``relay_head``, a page at a time."""
    start = relay_head + 1
    while start <= members.head_seq:
        chunk = members.entries[start : start + MAX_APPEND_ENTRIES]
        try:
            reply = await conn.request(LogAppend(entries=chunk))
        except RemoteError as exc:
            if exc.code != ErrorCode.LOG_OUTDATED:
                raise
            # Someone else appended meanwhile: read it (a fork if it contradicts ours).
            await catch_up_from(conn, members, start, absorb)
            return
        if not isinstance(reply, LogAppended):
            raise MembershipError("malformed", "the relay answered LOG_APPEND with something else")
        start += len(chunk)


async def catch_up_from(
    conn: RelayConnection, members: Membership, start: int, absorb: Absorb
) -> None:
    entries = await fetch(conn, start)
    got = members.ingest(start, entries)
    absorb(got)
    got.check()


async def append(
    conn: RelayConnection,
    members: Membership,
    build: Callable[[], tuple[bytes, dict[int, bytes]]],
    absorb: Absorb,
) -> int:
    """Append the entry ``build`` makes on the current head (with the epoch keys it
    brings); re-build after catching up when the relay's log moved. Returns the entry's
    position. MembershipError (TicketError for a ticket refused) if the relay refuses it."""
    for _ in range(APPEND_ATTEMPTS):
        entry, keys = build()
        seq = members.head_seq + 1
        try:
            reply = await conn.request(LogAppend(entries=[entry]))
        except RemoteError as exc:
            if exc.code == ErrorCode.LOG_OUTDATED:
                await catch_up(conn, members, absorb)
                continue
            if exc.code in _LOG_REFUSALS:
                raise refusal(exc) from None
            raise
        if not isinstance(reply, LogAppended):
            raise MembershipError("malformed", "the relay answered LOG_APPEND with something else")
        members.keys |= keys
        got = members.ingest(seq, [entry])
        got.keys |= keys
        absorb(got)
        got.check()
        return seq
    raise MembershipError(
        "chain", f"the group's log kept changing: {APPEND_ATTEMPTS} attempts to append failed"
    )


def refusal(exc: RemoteError) -> MembershipError:
    """The error a refused LOG_APPEND (or a HELLO with a ticket) stands for."""
    for code, reason in _TICKET_REASONS.items():
        if exc.code == code:
            return TicketError(reason, exc.message)
    return MembershipError("rejected", f"the relay refused the entry: {exc.message}")
