"""The storage logic both SQL backends share, written once.

Each operation is a *procedure*: a generator that yields the queries it needs and is sent
back each one's result. Queries use ``?`` placeholders and SQL that SQLite and PostgreSQL
both accept, so the rules (retention, group totals, invite states, delete decisions) live
here once, while each backend keeps its own I/O: SQLite runs procedures on its writer
thread inside a group commit, PostgreSQL on a pooled connection inside a transaction.
``SQLStorage`` turns the procedures into the Storage methods on top of two primitives.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterable, Sequence
from functools import partial
from typing import Any, NamedTuple, TypeVar

from zerok.errors import StorageError
from zerok.relay.storage.base import (
    LOG_HASH_BYTES,
    BlobStored,
    CleanupStats,
    DeleteOutcome,
    DeviceRecord,
    GroupRecord,
    InviteTake,
    LogConflict,
    LogRecord,
    PullPage,
    PushOutcome,
    page_length,
)
from zerok.wire import BlobId, DeviceId, GroupId, StoredBlob

T = TypeVar("T")
Row = tuple[Any, ...]

INVITE_TOMBSTONE_MS = 24 * 3600 * 1000  # how long a used, cancelled or expired invite is remembered


class Fetch(enum.Enum):
    ONE = "one"  # the first row, or None
    ALL = "all"  # every row
    COUNT = "count"  # how many rows the statement changed


class Query(NamedTuple):  # one per statement: a tuple builds faster than a frozen dataclass
    sql: str  # ``?`` placeholders; no other ``?`` anywhere in the text
    args: tuple[Any, ...]
    fetch: Fetch
    # Lock the rows read until commit. PostgreSQL needs it (FOR UPDATE) where another relay
    # could change them between the read and the write; SQLite's one writer does not.
    lock: bool = False


Proc = Generator[Query, Any, T]


def one(sql: str, *args: Any, lock: bool = False) -> Proc[Row | None]:
    row: Row | None = yield Query(sql, args, Fetch.ONE, lock)
    return row


def rows(sql: str, *args: Any) -> Proc[list[Row]]:
    found: list[Row] = yield Query(sql, args, Fetch.ALL)
    return found


def execute(sql: str, *args: Any) -> Proc[int]:
    count: int = yield Query(sql, args, Fetch.COUNT)
    return count


# -- rows and records -------------------------------------------------------------------------

GROUP_COLUMNS = "group_id, auth_key, max_cursor, bytes_stored, created_at"
DEVICE_COLUMNS = (
    "group_id, device_id, name, last_seen, acked_cursor, revoked_at, revoked_by,"
    " revoke_reason, push_token, push_platform, push_app_id"
)
PULL_COLUMNS = "blob_id, cursor, sender, ciphertext, created_at"
EVENT_COLUMNS = "blob_id, cursor, sender, created_at, size"


def group_from_row(r: Row) -> GroupRecord:
    return GroupRecord(GroupId(r[0]), bytes(r[1]), r[2], r[3], r[4])


def device_from_row(r: Row) -> DeviceRecord:
    return DeviceRecord(
        group_id=GroupId(r[0]),
        device_id=DeviceId(r[1]),
        name=r[2],
        last_seen=r[3],
        acked_cursor=r[4],
        revoked_at=r[5],
        revoked_by=DeviceId(r[6]) if r[6] is not None else None,
        revoke_reason=r[7],
        push_token=r[8],
        push_platform=r[9],
        push_app_id=r[10],
    )


def stored_blob_from_row(r: Row) -> StoredBlob:
    return StoredBlob(
        blob_id=BlobId(r[0]),
        cursor=r[1],
        sender=DeviceId(r[2]),
        ciphertext=bytes(r[3]),
        timestamp=r[4],
    )


def blob_stored_from_row(group_id: GroupId, r: Row) -> BlobStored:
    return BlobStored(group_id, BlobId(r[0]), r[1], DeviceId(r[2]), r[3], r[4])


# -- decisions --------------------------------------------------------------------------------


def push_outcome(
    group_id: bytes, now: int, *, cursor: int | None, known_at: int | None, group_exists: bool
) -> PushOutcome:
    """Where a push landed: ``known_at`` is the first push's time when the blob id was
    already known (``cursor`` is then its cursor), ``cursor`` None when nothing was stored."""
    if known_at is not None:
        assert cursor is not None
        return PushOutcome(cursor, known_at, duplicate=True)
    if cursor is None:
        if not group_exists:
            raise StorageError(f"unknown group {GroupId(group_id)}")
        return PushOutcome(0, now, quota_exceeded=True)
    return PushOutcome(cursor, now)


def judge_delete(found: Row | None, device_id: bytes) -> DeleteOutcome | None:
    """The outcome of a delete decided by the blob's row (cursor, sender, live) alone, or
    None when the owner's live blob is to be retired (if the rules allow)."""
    if found is None:
        return DeleteOutcome(found=False, owner=False, deleted=False)
    _, sender, live = found
    if bytes(sender) != bytes(device_id):
        return DeleteOutcome(found=True, owner=False, deleted=False)
    if not live:
        return DeleteOutcome(found=True, owner=True, deleted=True)  # already gone: idempotent
    return None


def judge_take(found: Row | None, now: int) -> tuple[InviteTake, str | None]:
    """What fetching an invite (row: payload, expires_at, state) finds, and the state it
    moves to (None: it stays as it is). Only an open invite changes, and only once."""
    if found is None:
        return InviteTake("unknown"), None
    payload, expires_at, state = found
    if state != "open":
        return InviteTake(state), None
    if expires_at <= now:
        return InviteTake("expired"), "expired"
    return InviteTake("ok", bytes(payload)), "used"


def group_totals(gone: Iterable[Row]) -> dict[bytes, tuple[int, int]]:
    """(count, bytes) per group of blobs (rows: group_id, size) that stopped being live."""
    totals: dict[bytes, tuple[int, int]] = {}
    for group_id, size in gone:
        count, total = totals.get(bytes(group_id), (0, 0))
        totals[bytes(group_id)] = (count + 1, total + int(size))
    return totals


# -- procedures -------------------------------------------------------------------------------

# A live blob every device of its group has: at least one device besides its sender is
# known, and every known, non-revoked device besides the sender acknowledged past it (a
# device has its own blobs). A lone device's blobs wait for the devices it will pair.
DELIVERED = (
    "EXISTS (SELECT 1 FROM devices d WHERE d.group_id = blobs.group_id"
    " AND d.device_id <> blobs.sender AND d.revoked_at IS NULL)"
    " AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.group_id = blobs.group_id"
    " AND d.device_id <> blobs.sender AND d.revoked_at IS NULL"
    " AND d.acked_cursor < blobs.cursor)"
)


def get_group(group_id: GroupId) -> Proc[GroupRecord | None]:
    row = yield from one(f"SELECT {GROUP_COLUMNS} FROM groups WHERE group_id = ?", group_id)
    return group_from_row(row) if row else None


def register_group(group_id: GroupId, auth_key: bytes, now: int) -> Proc[GroupRecord]:
    yield from execute(
        "INSERT INTO groups (group_id, auth_key, created_at) VALUES (?, ?, ?)"
        " ON CONFLICT (group_id) DO NOTHING",
        group_id,
        auth_key,
        now,
    )
    record = yield from get_group(group_id)
    assert record is not None
    return record


def get_device(group_id: GroupId, device_id: DeviceId) -> Proc[DeviceRecord | None]:
    row = yield from one(
        f"SELECT {DEVICE_COLUMNS} FROM devices WHERE group_id = ? AND device_id = ?",
        group_id,
        device_id,
    )
    return device_from_row(row) if row else None


def _stored_device(group_id: GroupId, device_id: DeviceId) -> Proc[DeviceRecord]:
    record = yield from get_device(group_id, device_id)
    assert record is not None
    return record


def touch_device(group_id: GroupId, device_id: DeviceId, name: str, now: int) -> Proc[DeviceRecord]:
    yield from execute(
        "INSERT INTO devices (group_id, device_id, name, first_seen, last_seen)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (group_id, device_id) DO UPDATE SET"
        " last_seen = excluded.last_seen,"
        " name = CASE WHEN excluded.name = '' THEN devices.name ELSE excluded.name END",
        group_id,
        device_id,
        name,
        now,
        now,
    )
    return (yield from _stored_device(group_id, device_id))


def list_devices(group_id: GroupId) -> Proc[list[DeviceRecord]]:
    found = yield from rows(
        f"SELECT {DEVICE_COLUMNS} FROM devices WHERE group_id = ? ORDER BY first_seen, device_id",
        group_id,
    )
    return [device_from_row(r) for r in found]


def revoke_device(
    group_id: GroupId, device_id: DeviceId, by: DeviceId, reason: str, now: int
) -> Proc[DeviceRecord]:
    # A device never seen here can still be revoked in advance. A second revocation keeps
    # the first one's who, when and why.
    yield from execute(
        "INSERT INTO devices (group_id, device_id, first_seen, last_seen,"
        " revoked_at, revoked_by, revoke_reason) VALUES (?, ?, ?, 0, ?, ?, ?)"
        " ON CONFLICT (group_id, device_id) DO UPDATE SET"
        " revoked_at = COALESCE(devices.revoked_at, excluded.revoked_at),"
        " revoked_by = COALESCE(devices.revoked_by, excluded.revoked_by),"
        " revoke_reason = COALESCE(devices.revoke_reason, excluded.revoke_reason),"
        " push_token = NULL, push_platform = NULL, push_app_id = NULL",
        group_id,
        device_id,
        now,
        now,
        by,
        reason,
    )
    return (yield from _stored_device(group_id, device_id))


def set_push_token(
    group_id: GroupId,
    device_id: DeviceId,
    token: str | None,
    platform: str | None,
    app_id: str | None,
) -> Proc[None]:
    yield from execute(
        "UPDATE devices SET push_token = ?, push_platform = ?, push_app_id = ?"
        " WHERE group_id = ? AND device_id = ?",
        token,
        platform,
        app_id,
        group_id,
        device_id,
    )


def pull(group_id: GroupId, after: int, limit: int, max_bytes: int) -> Proc[PullPage]:
    # Sizes first, so that a page never loads more ciphertext than it will send.
    sizes = yield from rows(
        "SELECT cursor, size FROM blobs WHERE group_id = ? AND cursor > ?"
        " AND ciphertext IS NOT NULL ORDER BY cursor LIMIT ?",
        group_id,
        after,
        limit + 1,
    )
    take = page_length([size for _, size in sizes], limit, max_bytes)
    group = yield from one("SELECT max_cursor FROM groups WHERE group_id = ?", group_id)
    max_cursor = int(group[0]) if group else 0
    if not take:
        return PullPage([], False, max_cursor)
    found = yield from rows(
        f"SELECT {PULL_COLUMNS} FROM blobs WHERE group_id = ? AND cursor > ? AND cursor <= ?"
        " AND ciphertext IS NOT NULL ORDER BY cursor",
        group_id,
        after,
        sizes[take - 1][0],
    )
    return PullPage([stored_blob_from_row(r) for r in found], len(sizes) > take, max_cursor)


def ack(group_id: GroupId, device_id: DeviceId, cursor: int) -> Proc[None]:
    # acked_cursor = max(acked_cursor, min(cursor, max_cursor)), in SQL both dialects speak
    # (and as fast on SQLite as its own MAX/MIN).
    max_cursor = "(SELECT max_cursor FROM groups WHERE group_id = devices.group_id)"
    yield from execute(
        "UPDATE devices SET acked_cursor = (SELECT CASE WHEN ? < max_cursor THEN ? ELSE"
        " max_cursor END FROM groups WHERE group_id = devices.group_id)"
        " WHERE group_id = ? AND device_id = ? AND acked_cursor < ?"
        f" AND acked_cursor < {max_cursor}",
        cursor,
        cursor,
        group_id,
        device_id,
        cursor,
    )


def subtract_from_groups(gone: Iterable[Row]) -> Proc[None]:
    """Take blobs that stopped being live (rows: group_id, size) off their groups' totals."""
    totals = group_totals(gone)
    for group_id in sorted(totals):  # one lock order for every writer: relays cannot deadlock
        count, size = totals[group_id]
        yield from execute(
            "UPDATE groups SET bytes_stored = bytes_stored - ?, blob_count = blob_count - ?"
            " WHERE group_id = ?",
            size,
            count,
            group_id,
        )


# A blob's id outlives its row: once a blob stops being live (delivered or withdrawn) its
# row is DELETED, so that its pages are freed, and a compact record (blob_ids: group, id,
# cursor, sender, times; about 100 bytes with its indexes, against the ciphertext's
# kilobytes) remembers it until its expires_at, so that a retried PUSH still gets its
# first cursor. The move is one transaction, so a reader sees the id in one of the two.
RETIRED_COLUMNS = "group_id, blob_id, cursor, sender, created_at, expires_at"


def retire(where: str, *args: Any) -> Proc[int]:
    """Delete the live blobs matching ``where``, remember their ids; return how many.

    The rows come back from the DELETE itself, so a blob another relay retired at the same
    moment is counted once, by whoever removed it."""
    gone = yield from rows(
        f"DELETE FROM blobs WHERE {where} RETURNING {RETIRED_COLUMNS}, size", *args
    )
    if not gone:
        return 0
    marks = ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(gone))
    yield from execute(
        f"INSERT INTO blob_ids ({RETIRED_COLUMNS}) VALUES {marks}"
        " ON CONFLICT (group_id, blob_id) DO NOTHING",
        *(value for r in gone for value in r[:6]),
    )
    yield from drop_chunk_refs((r[0], r[1]) for r in gone)
    yield from subtract_from_groups((r[0], r[6]) for r in gone)
    return len(gone)


def drop_chunk_refs(blobs: Iterable[Row]) -> Proc[None]:
    """Forget the chunk references of blobs (rows: group_id, blob_id) that stopped being
    live, in the transaction that ends them: their chunks become collectable."""
    keys = [value for r in blobs for value in (r[0], r[1])]
    if keys:
        marks = ", ".join(["(?, ?)"] * (len(keys) // 2))
        yield from execute(
            f"DELETE FROM chunk_refs WHERE (group_id, blob_id) IN (VALUES {marks})", *keys
        )


def delete_blob(
    group_id: GroupId, blob_id: BlobId, device_id: DeviceId, force: bool
) -> Proc[DeleteOutcome]:
    found = yield from one(
        "SELECT cursor, sender, 1 FROM blobs WHERE group_id = ? AND blob_id = ?",
        group_id,
        blob_id,
        lock=True,
    )
    if found is None:  # not live: perhaps retired, its id still remembered
        found = yield from one(
            "SELECT cursor, sender, 0 FROM blob_ids WHERE group_id = ? AND blob_id = ?",
            group_id,
            blob_id,
        )
    decided = judge_delete(found, device_id)
    if decided is not None:
        return decided
    assert found is not None
    where = "group_id = ? AND cursor = ?" + ("" if force else f" AND {DELIVERED}")
    gone = yield from retire(where, group_id, found[0])
    return DeleteOutcome(found=True, owner=True, deleted=gone > 0)


def pending_for(group_id: GroupId, device_id: DeviceId) -> Proc[int]:
    row = yield from one(
        "SELECT COUNT(*) FROM blobs WHERE group_id = ? AND ciphertext IS NOT NULL"
        " AND sender <> ? AND cursor > COALESCE((SELECT acked_cursor FROM devices"
        " WHERE group_id = ? AND device_id = ?), 0)",
        group_id,
        device_id,
        group_id,
        device_id,
    )
    return int(row[0]) if row else 0


def pending_by_device(group_id: GroupId) -> Proc[dict[DeviceId, int]]:
    found = yield from rows(
        "SELECT d.device_id, COUNT(b.cursor) FROM devices d"
        " LEFT JOIN blobs b ON b.group_id = d.group_id AND b.ciphertext IS NOT NULL"
        " AND b.sender <> d.device_id AND b.cursor > d.acked_cursor"
        " WHERE d.group_id = ? GROUP BY d.device_id",
        group_id,
    )
    return {DeviceId(r[0]): int(r[1]) for r in found}


def blobs_after(group_id: GroupId, after: int, limit: int) -> Proc[list[BlobStored]]:
    found = yield from rows(
        f"SELECT {EVENT_COLUMNS} FROM blobs WHERE group_id = ? AND cursor > ?"
        " AND ciphertext IS NOT NULL ORDER BY cursor LIMIT ?",
        group_id,
        after,
        limit,
    )
    return [blob_stored_from_row(group_id, r) for r in found]


def put_invite(lookup: bytes, payload: bytes, expires_at: int) -> Proc[bool]:
    added = yield from execute(
        "INSERT INTO invites (lookup, payload, expires_at) VALUES (?, ?, ?)"
        " ON CONFLICT (lookup) DO NOTHING",
        lookup,
        payload,
        expires_at,
    )
    return added == 1


def take_invite(lookup: bytes, now: int) -> Proc[InviteTake]:
    found = yield from one(
        "SELECT payload, expires_at, state FROM invites WHERE lookup = ?", lookup, lock=True
    )
    taken, state = judge_take(found, now)
    if state is not None:
        yield from execute(
            "UPDATE invites SET payload = NULL, state = ? WHERE lookup = ?", state, lookup
        )
    return taken


def delete_invite(lookup: bytes) -> Proc[bool]:
    cancelled = yield from execute(
        "UPDATE invites SET payload = NULL, state = 'cancelled'"
        " WHERE lookup = ? AND state = 'open'",
        lookup,
    )
    return cancelled == 1


# Cleanup runs as many small transactions, each touching at most CLEANUP_BATCH rows, so
# that it never holds the (SQLite: single) writer for more than a few milliseconds and
# pushes interleave with it. Retention is computed per group from its devices' acks, not
# per blob against every device: O(devices + blobs retired), not O(blobs x devices).
# 64: retiring a blob rewrites a page of each index keyed by its random id (~10 KiB of WAL
# per blob), so 256 took 25-70 ms of the writer at 200k blobs, 64 takes 5-15 ms.
CLEANUP_BATCH = 64


def expire_blobs(now: int, limit: int) -> Proc[int]:
    """Delete up to ``limit`` live blobs past their TTL; return how many."""
    gone = yield from rows(
        "DELETE FROM blobs WHERE (group_id, cursor) IN (SELECT group_id, cursor FROM blobs"
        " WHERE expires_at <= ? LIMIT ?) RETURNING group_id, size, blob_id",
        now,
        limit,
    )
    yield from drop_chunk_refs((r[0], r[2]) for r in gone)
    yield from subtract_from_groups((r[0], r[1]) for r in gone)
    return len(gone)


def forget_blob_ids(now: int, limit: int) -> Proc[int]:
    """Forget up to ``limit`` retired blob ids past their TTL; return how many."""
    return (
        yield from execute(
            "DELETE FROM blob_ids WHERE (group_id, blob_id) IN (SELECT group_id, blob_id"
            " FROM blob_ids WHERE expires_at <= ? LIMIT ?)",
            now,
            limit,
        )
    )


def groups_with_blobs(after: bytes, limit: int) -> Proc[list[bytes]]:
    found = yield from rows(
        "SELECT group_id FROM groups WHERE blob_count > 0 AND group_id > ?"
        " ORDER BY group_id LIMIT ?",
        after,
        limit,
    )
    return [bytes(r[0]) for r in found]


class Retention(NamedTuple):
    """A group's retention rule, from the acks of its known, non-revoked devices: a live
    blob is delivered once every such device besides its sender acked past it, and at
    least one exists. With ``slowest`` the device with the lowest ack (``first``) and
    ``second`` the next lowest ack (None with one device): a blob is delivered if its
    cursor is at most ``first`` and it is not the lone device's own, or if ``slowest``
    sent it and its cursor is at most ``second``."""

    slowest: bytes
    first: int
    second: int | None

    @property
    def top(self) -> int:
        """No blob above this cursor is delivered."""
        return self.first if self.second is None else self.second


def group_retention(acks: Iterable[Row]) -> Retention | None:
    """The rule for a group whose devices (rows: device_id, acked_cursor) are given; None
    when it has no device that could receive anything."""
    ordered = sorted((int(r[1]), bytes(r[0])) for r in acks)
    if not ordered:
        return None
    first, slowest = ordered[0]
    return Retention(slowest, first, ordered[1][0] if len(ordered) > 1 else None)


def first_window(group_id: bytes) -> Proc[int | None]:
    """Where a group's delivered blobs start (the ``after`` of its first window), or None
    when it has none now. A read: most groups have nothing to deliver at most cleanups,
    and finding that out should not take a turn at the writer."""
    acks = yield from rows(
        "SELECT device_id, acked_cursor FROM devices WHERE group_id = ? AND revoked_at IS NULL",
        group_id,
    )
    rule = group_retention(acks)
    if rule is None:
        return None
    oldest = yield from one("SELECT MIN(cursor) FROM blobs WHERE group_id = ?", group_id)
    if oldest is None or oldest[0] is None or int(oldest[0]) > rule.top:
        return None
    return int(oldest[0]) - 1


def deliver_window(group_id: bytes, after: int, limit: int) -> Proc[tuple[int, int | None]]:
    """Retire the delivered blobs of one group among cursors ``after + 1 ..
    after + limit``; return how many, and where the next window starts (None: done).
    The rule is read again in every window, inside its transaction, so a window never acts
    on acks or revocations older than itself."""
    acks = yield from rows(
        "SELECT device_id, acked_cursor FROM devices WHERE group_id = ? AND revoked_at IS NULL",
        group_id,
    )
    rule = group_retention(acks)
    if rule is None or after >= rule.top:
        return 0, None
    end = min(after + limit, rule.top)
    # Cursors are gap-free, so the window holds at most ``limit`` rows however the rule
    # filters them: a group with a silent device costs a bounded scan per window.
    if rule.second is None:
        gone = yield from retire(
            "group_id = ? AND cursor > ? AND cursor <= ? AND sender <> ?",
            group_id,
            after,
            min(end, rule.first),
            rule.slowest,
        )
    else:
        gone = yield from retire(
            "group_id = ? AND cursor > ? AND cursor <= ?"
            " AND (cursor <= ? OR (sender = ? AND cursor <= ?))",
            group_id,
            after,
            end,
            rule.first,
            rule.slowest,
            rule.second,
        )
    return gone, (end if end < rule.top else None)


def expire_invites(now: int) -> Proc[int]:
    invites = yield from execute(
        "UPDATE invites SET payload = NULL, state = 'expired'"
        " WHERE state = 'open' AND expires_at <= ?",
        now,
    )
    yield from execute("DELETE FROM invites WHERE expires_at <= ?", now - INVITE_TOMBSTONE_MS)
    return invites


def usage() -> Proc[tuple[int, int]]:
    row = yield from one(
        "SELECT COALESCE(SUM(bytes_stored), 0), COALESCE(SUM(blob_count), 0) FROM groups"
    )
    assert row is not None
    return int(row[0]), int(row[1])


def ping() -> Proc[None]:
    yield from one("SELECT 1")


def stats() -> Proc[tuple[int, int]]:
    row = yield from one("SELECT COUNT(*), COALESCE(SUM(blob_count), 0) FROM groups")
    assert row is not None
    return int(row[0]), int(row[1])


# -- membership logs ---------------------------------------------------------------------------

LOG_COLUMNS = "seq, hash, entry"
# Records per INSERT statement: 5 parameters each stays far below SQLite's 32766 and
# PostgreSQL's 65535 bound parameters, whatever the size of one append.
LOG_INSERT_BATCH = 256


def log_record_from_row(r: Row) -> LogRecord:
    return LogRecord(int(r[0]), bytes(r[1]), bytes(r[2]))


def checked_log_records(records: Sequence[LogRecord]) -> tuple[LogRecord, ...]:
    """``records`` as an append may store them, or StorageError naming the misuse. A copy:
    the caller's list may change while the append waits for the database."""
    if not records:
        raise StorageError("a log append needs at least one record")
    previous: int | None = None
    for record in records:
        if not isinstance(record, LogRecord):
            raise StorageError(f"log records must be LogRecord, not {type(record).__name__}")
        seq = record.seq
        if type(seq) is not int or seq < 0:  # a bool is an int, but no seq
            raise StorageError(f"a log record's seq must be an int >= 0, not {seq!r}")
        if previous is not None and seq != previous + 1:
            raise StorageError(f"log records must have consecutive seqs: {seq} follows {previous}")
        previous = seq
        if not isinstance(record.hash, bytes) or len(record.hash) != LOG_HASH_BYTES:
            raise StorageError(
                f"the hash of log record {seq} must be {LOG_HASH_BYTES} bytes,"
                f" not {_described(record.hash)}"
            )
        if not isinstance(record.entry, bytes):
            raise StorageError(
                f"the entry of log record {seq} must be bytes, not {type(record.entry).__name__}"
            )
    return tuple(records)


def _described(value: object) -> str:
    return f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__


def check_log_read(after: int, limit: int, max_bytes: int) -> None:
    if after < -1 or limit < 0 or max_bytes < 0:
        raise StorageError(
            f"log_read needs after >= -1, limit >= 0 and max_bytes >= 0, not after={after},"
            f" limit={limit}, max_bytes={max_bytes}"
        )


def log_head(group_id: GroupId) -> Proc[LogRecord | None]:
    row = yield from one(
        f"SELECT {LOG_COLUMNS} FROM group_log WHERE group_id = ? ORDER BY seq DESC LIMIT 1",
        group_id,
    )
    return log_record_from_row(row) if row else None


def log_append(
    group_id: GroupId, records: Sequence[LogRecord], now: int
) -> Proc[LogRecord | LogConflict]:
    """Compare and append: ``records`` (checked) go in only right after the stored head.

    Appends to one group serialise on the group's row lock (PostgreSQL; SQLite has one
    writer anyway), taken before the head is read: the head is then the latest committed,
    and nobody can append between the read and the insert. Behind that, the primary key
    (group_id, seq) refuses a second record at one seq whatever happens (as an error)."""
    if records[0].seq == 0:  # a genesis brings its group into being
        yield from execute(
            "INSERT INTO groups (group_id, auth_key, created_at) VALUES (?, ?, ?)"
            " ON CONFLICT (group_id) DO NOTHING",
            group_id,
            b"",
            now,
        )
    group = yield from one("SELECT 1 FROM groups WHERE group_id = ?", group_id, lock=True)
    head = yield from log_head(group_id)
    conflict = LogConflict(head)
    if group is None or records[0].seq != conflict.next_seq:
        return conflict
    for start in range(0, len(records), LOG_INSERT_BATCH):
        batch = records[start : start + LOG_INSERT_BATCH]
        marks = ", ".join(["(?, ?, ?, ?, ?)"] * len(batch))
        yield from execute(
            f"INSERT INTO group_log (group_id, seq, hash, entry, created_at) VALUES {marks}",
            *(value for r in batch for value in (group_id, r.seq, r.hash, r.entry, now)),
        )
    return records[-1]


def log_read(group_id: GroupId, after: int, limit: int, max_bytes: int) -> Proc[list[LogRecord]]:
    # Sizes first, as for a pull, so that a page never loads entries it will not send.
    # Records are never changed or deleted, so the two reads agree without a transaction.
    sizes = yield from rows(
        "SELECT seq, length(entry) FROM group_log WHERE group_id = ? AND seq > ?"
        " ORDER BY seq LIMIT ?",
        group_id,
        after,
        limit,
    )
    take = page_length([int(size) for _, size in sizes], limit, max_bytes, overhead=0)
    if not take:
        return []
    found = yield from rows(
        f"SELECT {LOG_COLUMNS} FROM group_log WHERE group_id = ? AND seq > ? AND seq <= ?"
        " ORDER BY seq",
        group_id,
        after,
        sizes[take - 1][0],
    )
    return [log_record_from_row(r) for r in found]


def log_size(group_id: GroupId) -> Proc[tuple[int, int]]:
    row = yield from one(
        "SELECT COUNT(*), COALESCE(SUM(length(entry)), 0) FROM group_log WHERE group_id = ?",
        group_id,
    )
    assert row is not None
    return int(row[0]), int(row[1])


# -- the methods ------------------------------------------------------------------------------


class SQLStorage(ABC):
    """The Storage methods both SQL backends share. A backend adds its I/O (the two
    primitives below), ``open``, ``close``, ``push``, ``subscribe`` and ``maintain``, and
    may wrap the log append (``_log_append_proc``)."""

    @abstractmethod
    async def _read_proc(self, proc: Proc[T]) -> T:
        """Run a procedure that only reads (no transaction needed); StorageError on failure."""

    @abstractmethod
    async def _write_proc(self, make: Callable[[], Proc[T]]) -> T:
        """Run the procedure ``make()`` in one transaction and return once it committed;
        if it raises, nothing of it is kept. StorageError on failure. A factory, not a
        procedure: a backend may have to run it again (SQLite, when a full disk rolled
        back the transaction it shared)."""

    def degraded(self) -> str | None:
        return None

    async def get_group(self, group_id: GroupId) -> GroupRecord | None:
        return await self._read_proc(get_group(group_id))

    async def register_group(self, group_id: GroupId, auth_key: bytes, now: int) -> GroupRecord:
        return await self._write_proc(lambda: register_group(group_id, auth_key, now))

    async def touch_device(
        self, group_id: GroupId, device_id: DeviceId, name: str, now: int
    ) -> DeviceRecord:
        return await self._write_proc(lambda: touch_device(group_id, device_id, name, now))

    async def get_device(self, group_id: GroupId, device_id: DeviceId) -> DeviceRecord | None:
        return await self._read_proc(get_device(group_id, device_id))

    async def list_devices(self, group_id: GroupId) -> list[DeviceRecord]:
        return await self._read_proc(list_devices(group_id))

    async def revoke_device(
        self, group_id: GroupId, device_id: DeviceId, by: DeviceId, reason: str, now: int
    ) -> DeviceRecord:
        return await self._write_proc(lambda: revoke_device(group_id, device_id, by, reason, now))

    async def set_push_token(
        self,
        group_id: GroupId,
        device_id: DeviceId,
        token: str | None,
        platform: str | None,
        app_id: str | None,
    ) -> None:
        await self._write_proc(lambda: set_push_token(group_id, device_id, token, platform, app_id))

    async def pull(self, group_id: GroupId, after: int, limit: int, max_bytes: int) -> PullPage:
        return await self._read_proc(pull(group_id, after, limit, max_bytes))

    async def ack(self, group_id: GroupId, device_id: DeviceId, cursor: int) -> None:
        await self._write_proc(lambda: ack(group_id, device_id, cursor))

    async def delete_blob(
        self, group_id: GroupId, blob_id: BlobId, device_id: DeviceId, *, force: bool
    ) -> DeleteOutcome:
        return await self._write_proc(lambda: delete_blob(group_id, blob_id, device_id, force))

    async def pending_for(self, group_id: GroupId, device_id: DeviceId) -> int:
        return await self._read_proc(pending_for(group_id, device_id))

    async def pending_by_device(self, group_id: GroupId) -> dict[DeviceId, int]:
        return await self._read_proc(pending_by_device(group_id))

    async def blobs_after(self, group_id: GroupId, after: int, limit: int) -> list[BlobStored]:
        return await self._read_proc(blobs_after(group_id, after, limit))

    def _log_append_proc(
        self, group_id: GroupId, records: Sequence[LogRecord], now: int
    ) -> Proc[LogRecord | LogConflict]:
        """The append's procedure: a backend wraps it to refuse it (a full disk) or to tell
        other relays of it, in the same transaction."""
        return log_append(group_id, records, now)

    async def log_head(self, group_id: GroupId) -> LogRecord | None:
        return await self._read_proc(log_head(group_id))

    async def log_append(
        self, group_id: GroupId, records: Sequence[LogRecord], now: int
    ) -> LogRecord | LogConflict:
        checked = checked_log_records(records)
        return await self._write_proc(lambda: self._log_append_proc(group_id, checked, now))

    async def log_read(
        self, group_id: GroupId, after: int, limit: int, max_bytes: int
    ) -> list[LogRecord]:
        check_log_read(after, limit, max_bytes)
        return await self._read_proc(log_read(group_id, after, limit, max_bytes))

    async def log_size(self, group_id: GroupId) -> tuple[int, int]:
        return await self._read_proc(log_size(group_id))

    async def put_invite(self, lookup: bytes, payload: bytes, expires_at: int) -> bool:
        return await self._write_proc(lambda: put_invite(lookup, payload, expires_at))

    async def take_invite(self, lookup: bytes, now: int) -> InviteTake:
        return await self._write_proc(lambda: take_invite(lookup, now))

    async def delete_invite(self, lookup: bytes) -> bool:
        return await self._write_proc(lambda: delete_invite(lookup))

    async def cleanup(self, now: int) -> CleanupStats:
        # Many small transactions, each its own turn at the writer (see CLEANUP_BATCH).
        expired = await self._drain(lambda: expire_blobs(now, CLEANUP_BATCH))
        await self._drain(lambda: forget_blob_ids(now, CLEANUP_BATCH))
        acked = 0
        after_group = b""
        while groups := await self._read_proc(groups_with_blobs(after_group, CLEANUP_BATCH)):
            for group_id in groups:
                window = await self._read_proc(first_window(group_id))
                while window is not None:
                    gone, window = await self._write_proc(
                        partial(deliver_window, group_id, window, CLEANUP_BATCH)
                    )
                    acked += gone
            after_group = groups[-1]
        invites = await self._write_proc(lambda: expire_invites(now))
        return CleanupStats(expired, acked, invites)

    async def _drain(self, step: Callable[[], Proc[int]]) -> int:
        """Run ``step`` until a run finds fewer than a full batch; return the total."""
        total = 0
        while True:
            done = await self._write_proc(step)
            total += done
            if done < CLEANUP_BATCH:
                return total

    async def stats(self) -> tuple[int, int]:
        return await self._read_proc(stats())

    async def ping(self) -> None:
        await self._read_proc(ping())

    async def usage(self) -> tuple[int, int]:
        return await self._read_proc(usage())
