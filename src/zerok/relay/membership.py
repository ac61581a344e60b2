"""The relay's view of each group's membership log: verified entries in storage, and the
state they lead to (``GroupLog``) cached in memory for the groups in use.

Every change goes through ``append``: one at a time per group (a lock), verified against
the cached state, then stored with compare-and-append; if another relay on the same
database appended first, the cache is reloaded and the caller told to rebuild on the new
head. A failure part-way leaves memory ahead of storage, so the group's state is dropped
and read again on next use: storage is the truth.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from zerok.crypto.entry import entry_hash
from zerok.errors import MembershipError, StorageError, WireError
from zerok.protocol.membership import Applied, GroupLog
from zerok.relay.locks import KeyedLocks
from zerok.relay.storage import LogConflict, LogRecord, Storage
from zerok.wire import GroupId
from zerok.wire.log import Recover, Revoke, decode_body, decode_entry

READ_PAGE = 512  # records per storage read when loading a log
READ_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class AppendResult:
    log: GroupLog
    applied: list[Applied]
    start: int  # seq of the first appended entry
    entries: list[bytes]  # the appended entries, as stored


class GroupLogs:
    """Cached GroupLogs, at most ``capacity`` of them beyond those ``pinned`` (groups with
    devices connected here)."""

    def __init__(self, storage: Storage, *, capacity: int = 1024) -> None:
        self.storage = storage
        self.capacity = capacity
        self._cache: OrderedDict[GroupId, GroupLog] = OrderedDict()
        self._locks: KeyedLocks[GroupId] = KeyedLocks()
        self.pinned: set[GroupId] = set()

    def cached(self, group_id: GroupId) -> GroupLog | None:
        return self._cache.get(group_id)

    def drop(self, group_id: GroupId) -> None:
        self._cache.pop(group_id, None)

    def _keep(self, group_id: GroupId, log: GroupLog) -> GroupLog:
        self._cache[group_id] = log
        self._cache.move_to_end(group_id)
        over = len(self._cache) - self.capacity - len(self.pinned)
        for old in list(self._cache):
            if over <= 0:
                break
            if old not in self.pinned and old != group_id:
                del self._cache[old]
                over -= 1
        return log

    async def get(self, group_id: GroupId) -> GroupLog | None:
        """The group's state, loaded from storage if not cached; None: no log here. One
        state per group: a load waits for a registration or an append in progress, which
        would otherwise leave two states, one of them stale."""
        log = self._cache.get(group_id)
        if log is not None:
            self._cache.move_to_end(group_id)
            return log
        async with self._locks.hold(group_id):
            return await self._held(group_id)

    async def _held(self, group_id: GroupId) -> GroupLog | None:
        """``get`` for a caller that holds the group's lock."""
        log = self._cache.get(group_id)
        if log is not None:
            self._cache.move_to_end(group_id)
            return log
        return await self._load(group_id)

    async def _load(self, group_id: GroupId) -> GroupLog | None:
        records = await self._read(group_id, -1)
        if not records:
            return None
        try:
            # Entries were verified when stored; a log that no longer verifies means a
            # damaged database, which the operator must hear about.
            log = GroupLog.replay((r.entry for r in records), group_id=group_id, keep_wraps=False)
        except MembershipError as exc:
            raise StorageError(
                f"the stored log of group {group_id.short()} does not verify: {exc}"
            ) from None
        return self._keep(group_id, log)

    async def _read(self, group_id: GroupId, after: int) -> list[LogRecord]:
        records: list[LogRecord] = []
        while True:
            page = await self.storage.log_read(group_id, after, READ_PAGE, READ_BYTES)
            records.extend(page)
            if len(page) < READ_PAGE:
                return records
            after = page[-1].seq

    async def refresh(self, group_id: GroupId) -> tuple[int, list[Applied], list[bytes]]:
        """Apply what another relay appended: (first new seq, what it changed, entries)."""
        async with self._locks.hold(group_id):
            log = self._cache.get(group_id)
            if log is None:
                return 0, [], []
            start = log.head_seq + 1
            records = await self._read(group_id, log.head_seq)
            applied: list[Applied] = []
            try:
                applied.extend(log.apply(r.entry) for r in records)
            except MembershipError:
                self.drop(group_id)
                raise
            return start, applied, [r.entry for r in records]

    async def create(
        self, group_id: GroupId, entries: Sequence[bytes], now: int | None
    ) -> AppendResult | None:
        """Register a new group from its log (genesis first): the genesis must hash to the
        group id, so a stranger who knows only the id cannot register it. None: the group
        was registered meanwhile (by another HELLO, or another relay): append instead."""
        async with self._locks.hold(group_id):
            if await self._held(group_id) is not None:
                return None
            log = GroupLog.from_genesis(entries[0], group_id=group_id, keep_wraps=False)
            applied = [log.apply(e, now=now) for e in entries[1:]]
            if await self._store(group_id, log, list(entries), 0, now or 0) is None:
                return None
            return AppendResult(self._keep(group_id, log), applied, 0, list(entries))

    async def append(
        self, group_id: GroupId, entries: Sequence[bytes], now: int | None, *, stored_at: int
    ) -> AppendResult:
        """Verify and store entries that follow the head; MembershipError (nothing stored)
        if one may not be appended. ``now`` checks tickets against the relay's clock (None:
        against each entry's own time, for history a member brings back)."""
        result = await self._append(group_id, entries, now, stored_at, known_ok=False)
        assert result is not None  # only entries already held make None
        return result

    async def bring(
        self, group_id: GroupId, entries: Sequence[bytes], now: int | None, *, stored_at: int
    ) -> AppendResult | None:
        """``append`` for a log a device brings whole (in HELLO): entries the log holds
        already are passed over (LogForkError if one differs); None when none was new."""
        return await self._append(group_id, entries, now, stored_at, known_ok=True)

    async def _append(
        self,
        group_id: GroupId,
        entries: Sequence[bytes],
        now: int | None,
        stored_at: int,
        *,
        known_ok: bool,
    ) -> AppendResult | None:
        async with self._locks.hold(group_id):
            log = await self._held(group_id)
            if log is None:
                raise MembershipError("group", f"no log for group {group_id.short()}")
            if known_ok:
                entries = self.beyond(log, entries)
                if not entries:
                    return None
            start = log.head_seq + 1
            try:
                applied = [log.apply(e, now=now) for e in entries]
            except MembershipError:
                if log.head_seq >= start:  # some were applied in memory only
                    self.drop(group_id)
                raise
            result = await self._store(group_id, log, list(entries), start, stored_at)
            if result is None:
                raise MembershipError(
                    "chain",
                    "another device changed the log first: fetch it and try again",
                    seq=start,
                )
            return AppendResult(log, applied, start, list(entries))

    async def _store(
        self, group_id: GroupId, log: GroupLog, entries: list[bytes], start: int, now: int
    ) -> LogRecord | None:
        records = [
            LogRecord(start + i, entry_hash(decode_entry(e).body), e) for i, e in enumerate(entries)
        ]
        try:
            outcome = await self.storage.log_append(group_id, records, now)
        except BaseException:
            self.drop(group_id)
            raise
        if isinstance(outcome, LogConflict):
            self.drop(group_id)
            return None
        return outcome

    @staticmethod
    def beyond(log: GroupLog, entries: Sequence[bytes]) -> list[bytes]:
        """Of entries a client brings, those beyond the head (LogForkError if one it holds
        differs from ours)."""
        beyond: list[bytes] = []
        for data in entries:
            try:
                seq, digest = _position(data)
            except MembershipError:
                beyond.append(data)  # apply() will say what is wrong with it
                continue
            if seq == 0 and log.hashes[0] != digest:
                raise MembershipError(
                    "group",
                    f"this log's genesis is not the one of group {log.group_id.short()}: "
                    "knowing a group's id is not enough to join or register it",
                    seq=0,
                )
            if seq <= log.head_seq:
                log.check_known(seq, digest)
            else:
                beyond.append(data)
        return beyond


def _position(data: bytes) -> tuple[int, bytes]:
    try:
        entry = decode_entry(data)
        return decode_body(entry.body).seq, entry_hash(entry.body)
    except WireError as exc:
        raise MembershipError("malformed", str(exc)) from None


def is_removal(data: bytes) -> bool:
    """Whether an entry revokes devices (a Revoke or a Recover): those may pass the log
    limits by a margin, so that filling a log cannot stop its owner revoking the filler."""
    try:
        return isinstance(decode_body(decode_entry(data).body), Revoke | Recover)
    except WireError:
        return False
