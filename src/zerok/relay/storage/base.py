"""The relay's storage interface: what the relay needs, whatever the database.

``Storage`` below is the one description of the contract; the records it returns and the
events it delivers are defined here too. tests/relay/storage/test_contract.py holds every
backend to it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from zerok.wire import BlobId, DeviceId, GroupId, StoredBlob
from zerok.wire.manifest import MAX_SEALED_CHUNK
from zerok.wire.messages import STORED_BLOB_OVERHEAD


@dataclass(frozen=True, slots=True)
class GroupRecord:
    group_id: GroupId
    auth_key: bytes
    max_cursor: int
    bytes_stored: int
    created_at: int


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    group_id: GroupId
    device_id: DeviceId
    name: str
    last_seen: int
    acked_cursor: int
    revoked_at: int | None = None
    revoked_by: DeviceId | None = None
    revoke_reason: str | None = None
    push_token: str | None = None
    push_platform: str | None = None
    push_app_id: str | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True, slots=True)
class PushOutcome:
    """Where a pushed blob landed. ``duplicate``: the blob id was known, nothing stored."""

    cursor: int
    timestamp: int
    duplicate: bool = False
    quota_exceeded: bool = False


@dataclass(frozen=True, slots=True)
class PullPage:
    blobs: Sequence[StoredBlob]
    has_more: bool
    max_cursor: int


@dataclass(frozen=True, slots=True)
class DeleteOutcome:
    found: bool
    owner: bool
    deleted: bool


@dataclass(frozen=True, slots=True)
class InviteTake:
    """What fetching an invite found: ``status`` is ok (``payload`` set, now used up),
    used, cancelled, expired or unknown."""

    status: str
    payload: bytes | None = None


@dataclass(frozen=True, slots=True)
class CleanupStats:
    expired_blobs: int = 0
    acked_blobs: int = 0
    expired_invites: int = 0


@dataclass(frozen=True, slots=True)
class BlobStored:
    """Another relay stored a blob (shared databases only)."""

    group_id: GroupId
    blob_id: BlobId
    cursor: int
    sender: DeviceId
    timestamp: int
    size: int


@dataclass(frozen=True, slots=True)
class DeviceWasRevoked:
    """Another relay revoked a device (shared databases only)."""

    group_id: GroupId
    device_id: DeviceId
    revoked_by: DeviceId
    timestamp: int
    reason: str


@dataclass(frozen=True, slots=True)
class LogAppended:
    """Another relay appended to a group's membership log (shared databases only): the
    log now ends at ``seq`` (several records may have come in one append)."""

    group_id: GroupId
    seq: int


@dataclass(frozen=True, slots=True)
class Resync:
    """Events from other relays may have been missed (the listener reconnected): the relay
    must catch up from the database."""


StorageEvent = BlobStored | DeviceWasRevoked | LogAppended | Resync


LOG_HASH_BYTES = 32


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One entry of a group's membership log, as storage keeps it. The relay's protocol
    layer has verified the entry (signatures, chain, authority) and computed its hash;
    storage checks only the shape (``seq`` >= 0, a 32-byte ``hash``, bytes)."""

    seq: int  # 0: the genesis, then 1, 2, ... without gaps
    hash: bytes  # LOG_HASH_BYTES: the entry's hash
    entry: bytes  # the entry exactly as received (opaque to storage)


@dataclass(frozen=True, slots=True)
class LogConflict:
    """A ``log_append`` that did not start right after the stored head (it lost a race to
    another append, or the caller's view of the log is stale): nothing was stored.
    ``head`` is the group's last record now (None: the group has no log)."""

    head: LogRecord | None

    @property
    def next_seq(self) -> int:
        """The seq an append must start at now."""
        return 0 if self.head is None else self.head.seq + 1


# Large content (issue 13): a file's sealed chunks, addressed by the SHA-256 of their bytes.
CHUNK_ADDRESS_BYTES = 32
MAX_CHUNK_BYTES = MAX_SEALED_CHUNK  # a sealed chunk: 4 MiB of plaintext + 17
MAX_CHUNK_ADDRESSES = 16384  # per chunk_have or chunk_refs call: a manifest's chunk count
CHUNK_IDLE_MS = 24 * 3600 * 1000  # an upload (or unreferenced chunk) idle this long goes


@dataclass(frozen=True, slots=True)
class ChunkState:
    """What the relay holds of one chunk: ``received`` of its ``size`` bytes, ``complete``
    once committed (verified against its address). ``mismatch``: a commit found bytes that
    do not hash to the address, and dropped them (``received`` 0, nothing stored)."""

    address: bytes
    size: int
    received: int
    complete: bool
    mismatch: bool = False


def page_length(
    sizes: Sequence[int], limit: int, max_bytes: int, overhead: int = STORED_BLOB_OVERHEAD
) -> int:
    """How many of the next items (``sizes``, in order) one page takes: at most ``limit``,
    and beyond the first no more than ``max_bytes`` counting ``overhead`` per item. For a
    PULL page, blobs' ciphertext sizes with STORED_BLOB_OVERHEAD, so that the page fits a
    frame of that size."""
    take, total = 0, 0
    for size in sizes[:limit]:
        total += size + overhead
        if take and total > max_bytes:
            break
        take += 1
    return take


class Storage(Protocol):
    """What the relay needs from a database. Implemented by SQLiteStorage (one relay per
    file) and PostgresStorage (several relays may share a database); ``open_storage``
    picks one by URL.

    General rules, for every method:

    * It is a coroutine and does its database work off the event loop.
    * A write that returns has committed: any connection, another relay on the same
      database, or this one after a restart sees it. A write that raises changed nothing.
    * Failures raise ``zerok.errors.StorageError`` and nothing else: the database is
      unreachable, unusable or has a newer schema, the storage is not open (before
      ``open``, after ``close``), or a misuse named below.
    * Timestamps (``now``, ``expires_at``) are milliseconds since the Unix epoch, passed in
      by the caller, so behaviour over time is testable; storage never reads the clock.
    * Ids compare as bytes. A blob id is unique within its group, not across groups.

    Invariants:

    * Cursors: each group's blobs are numbered 1, 2, 3, ... in commit order, without gaps
      or repeats, however many pushes (and relays) run at once. A refused push consumes no
      cursor. A group's ``max_cursor`` is the last cursor it gave, whatever became of the
      blob since.
    * A blob is *live* (pulled, pending, counted in ``bytes_stored`` and ``stats``) until
      it expires, is delivered, or its sender deletes it. Delivered means: at least one
      known, non-revoked device other than its sender exists, and every such device acked
      its cursor (the sender has its own blobs; a lone device's blobs wait, until their
      TTL, for the devices it will pair). Cleanup deletes delivered blobs, and a withdrawn
      blob is deleted at once; either way the blob is *retired*: its row and ciphertext
      go (their space is freed), its id, cursor and sender are remembered until its
      ``expires_at``, so that a retried PUSH still gets its first cursor. At
      ``expires_at`` (``expires_at <= now``) a live blob is deleted, and a retired blob's
      id forgotten.
    * Acks never move backwards and never pass the group's ``max_cursor``.
    * Revocation is for good and idempotent: the first revoker, time and reason stay, and
      a revoked device keeps no push token.
    * Invites are one-shot: open, then used, cancelled or expired (tombstones without the
      payload, remembered for a day past their expiry so that a late fetch learns why).
    * Chunks (large content) are stored once per group and address (the SHA-256 of their
      bytes), outside the change stream: begun (the declared size is counted in the
      group's ``bytes_stored`` and in ``usage`` at once, so that uploads cannot pass the
      quota), appended in order, then committed, which verifies the bytes against the
      address. A live blob may reference chunks (``chunk_refs``); a blob that stops being
      live (retired, expired) drops its references with it. ``chunk_gc`` deletes, and
      uncounts, complete chunks that no live blob references and partial uploads, once
      either was left idle (no ``chunk_begin``) since ``stale_before``; a chunk that is
      referenced when it would be deleted stays, however the two race.
    * Membership logs: a group's log holds records 0 (the genesis), 1, 2, ... without gaps,
      and never two different records at one seq, however many appends (and relays) race:
      an append lands only right after the head it found, atomically. The caller verified
      every entry before; storage keeps them as given. Records are never changed, nor
      deleted by cleanup or retention (the log is the group's membership); they go only
      with their group.
    """

    async def open(self) -> None:
        """Connect, and create or migrate the schema (several relays starting at once on
        one database migrate it once). Returns when the storage serves every method and,
        for a shared database, hears other relays' events. StorageError: the database is
        unreachable or its schema is newer than this code."""
        ...

    async def close(self) -> None:
        """Let writes already submitted finish (and answer their callers), then release
        every connection. Idempotent. Any method called afterwards raises StorageError."""
        ...

    async def maintain(self) -> None:
        """Backend-specific upkeep, run by the relay after each ``cleanup``: SQLite returns
        free pages to the file system when configured to (``vacuum``); PostgreSQL has
        nothing to do. Changes nothing a reader can see."""
        ...

    def degraded(self) -> str | None:
        """Why the storage cannot take new blobs right now (e.g. the disk is full), or None
        when it can. Cheap (no I/O): /health reads it on every request."""
        ...

    # groups and devices
    async def get_group(self, group_id: GroupId) -> GroupRecord | None:
        """The group, or None if it was never registered."""
        ...

    async def register_group(self, group_id: GroupId, auth_key: bytes, now: int) -> GroupRecord:
        """Create the group with this auth key and ``created_at`` unless it exists; return
        the stored record (the first registration's key and time win)."""
        ...

    async def touch_device(
        self, group_id: GroupId, device_id: DeviceId, name: str, now: int
    ) -> DeviceRecord:
        """Record that the device connected: create it on first sight (acked_cursor 0), set
        ``last_seen`` to ``now``, and its name unless ``name`` is empty. Returns the record."""
        ...

    async def get_device(self, group_id: GroupId, device_id: DeviceId) -> DeviceRecord | None:
        """The device, or None if the group never saw (nor revoked) it."""
        ...

    async def list_devices(self, group_id: GroupId) -> list[DeviceRecord]:
        """Every device of the group, revoked ones too, in the order first seen (an unknown
        group has none)."""
        ...

    async def revoke_device(
        self, group_id: GroupId, device_id: DeviceId, by: DeviceId, reason: str, now: int
    ) -> DeviceRecord:
        """Revoke the device, creating its record if it was never seen (revoked in
        advance). Revoking again keeps the first ``revoked_by``, ``revoked_at`` and
        ``revoke_reason``; every revocation clears the push token. Returns the record.
        Other relays on the same database get a DeviceWasRevoked."""
        ...

    async def set_push_token(
        self,
        group_id: GroupId,
        device_id: DeviceId,
        token: str | None,
        platform: str | None,
        app_id: str | None,
    ) -> None:
        """Set (or, with Nones, clear) a known device's push token; an unknown device is
        ignored."""
        ...

    # blobs
    async def push(
        self,
        group_id: GroupId,
        blob_id: BlobId,
        sender: DeviceId,
        ciphertext: bytes,
        *,
        now: int,
        expires_at: int,
        max_group_bytes: int,
        max_group_blobs: int = 0,
        blob_overhead: int = 0,
        repair: bool = False,
    ) -> PushOutcome:
        """Store a blob under the group's next cursor, timestamped ``now``.

        Idempotent by blob id: if the group knows the id (live or retired blob), nothing
        is stored and the outcome is the first push's cursor and timestamp with
        ``duplicate``. With ``repair`` (a device re-pushes a blob another device reported
        missing) only a live blob counts: a retired id is stored again, under a new
        cursor, and its retired record dropped. Each live blob costs its ciphertext plus
        ``blob_overhead`` bytes: if
        the group's live blobs plus this one would cost more than ``max_group_bytes``, or
        the group holds ``max_group_blobs`` live blobs already (0: no count limit), nothing
        is stored: ``quota_exceeded``, cursor 0. The check and the insert are one
        transaction, so concurrent pushes (and relays) cannot pass the quota together.
        StorageError: the group is not registered. Other relays on the same database get a
        BlobStored."""
        ...

    async def pull(self, group_id: GroupId, after: int, limit: int, max_bytes: int) -> PullPage:
        """Live blobs with a cursor above ``after``, ascending (retired ones are gone): at
        most ``limit`` of them and, beyond the first, no more than ``max_bytes`` in all,
        counting each blob's ciphertext plus STORED_BLOB_OVERHEAD (``page_length``), so a
        page fits a frame of that size. ``has_more``: live blobs beyond the page remain.
        ``max_cursor``: the group's (0 for an unknown group)."""
        ...

    async def ack(self, group_id: GroupId, device_id: DeviceId, cursor: int) -> None:
        """The device has every blob up to ``cursor``: its acked_cursor becomes
        max(acked_cursor, min(cursor, the group's max_cursor)). An unknown device is
        ignored."""
        ...

    async def delete_blob(
        self, group_id: GroupId, blob_id: BlobId, device_id: DeviceId, *, force: bool
    ) -> DeleteOutcome:
        """The sender withdraws a blob: it is retired (deleted, its id still known).

        ``found``: the group knows the blob id. ``owner``: ``device_id`` sent it (only the
        sender may delete). ``deleted``: it is no longer live, now or already. Without
        ``force`` a live blob goes only once it is delivered (see retention); with it,
        at once."""
        ...

    async def pending_for(self, group_id: GroupId, device_id: DeviceId) -> int:
        """How many live blobs from other senders lie above the device's ack (above 0 for a
        device the group does not know)."""
        ...

    async def pending_by_device(self, group_id: GroupId) -> dict[DeviceId, int]:
        """``pending_for`` of every known device of the group (revoked ones too), in one
        query."""
        ...

    async def blobs_after(self, group_id: GroupId, after: int, limit: int) -> list[BlobStored]:
        """Metadata of up to ``limit`` live blobs above ``after``, ascending: how a relay
        catches up, after a Resync, on what other relays stored."""
        ...

    # membership logs
    async def log_head(self, group_id: GroupId) -> LogRecord | None:
        """The group's last log record, or None when the group has no log (also an unknown
        group, or one only ``register_group`` created)."""
        ...

    async def log_append(
        self, group_id: GroupId, records: Sequence[LogRecord], now: int
    ) -> LogRecord | LogConflict:
        """Append consecutive ``records`` atomically, all or nothing, if and only if the
        first one's seq is the head's plus one (0 when the group has no log); return the
        new head (the last record). Otherwise return LogConflict with the current head and
        change nothing: of concurrent appends at one seq, on any relays, exactly one wins.
        Appending seq 0 creates the group if it does not exist (as ``register_group`` would,
        with an empty auth key and ``created_at`` ``now``). StorageError for misuse: no
        records, seqs that are negative or not consecutive, a hash that is not 32 bytes,
        fields that are not bytes. StorageFullError when the disk is full (nothing stored,
        as for a push). Other relays on the same database get a LogAppended."""
        ...

    async def log_read(
        self, group_id: GroupId, after: int, limit: int, max_bytes: int
    ) -> list[LogRecord]:
        """Records with seq above ``after``, ascending (``after`` -1: from the genesis): at
        most ``limit`` of them and, beyond the first, no more than ``max_bytes`` of entries
        in all, so that an answer fits a frame of that size (the caller leaves room in
        ``max_bytes`` for its own per-record framing). An unknown group has none.
        StorageError for ``after`` below -1, or a negative ``limit`` or ``max_bytes``."""
        ...

    async def log_size(self, group_id: GroupId) -> tuple[int, int]:
        """(number of records, total bytes of their entries) of the group's log, (0, 0)
        without one: for the relay's per-group log limits."""
        ...

    # chunks (large content)
    async def chunk_begin(
        self,
        group_id: GroupId,
        address: bytes,
        size: int,
        now: int,
        *,
        max_group_bytes: int,
        blob_overhead: int = 0,
    ) -> ChunkState | None:
        """Start, or find, the upload of a chunk of ``size`` bytes (1 to MAX_CHUNK_BYTES)
        at ``address`` (CHUNK_ADDRESS_BYTES). A complete chunk comes back complete at once
        (an equal chunk is stored once per group); a partial one with what it has
        (``received``: resume there). Either way the chunk counts as used at ``now`` (see
        ``chunk_gc``). A new upload counts its whole ``size`` in the group's
        ``bytes_stored``: None, and nothing begun, when the group's live blobs (each
        costing ``blob_overhead`` more, as for a push), chunks and uploads would then cost
        more than ``max_group_bytes``. StorageError: the group is not registered, the
        address or size is malformed, or differs from the size the chunk was begun with.
        StorageFullError: the disk is full (as for a push)."""
        ...

    async def chunk_write(
        self, group_id: GroupId, address: bytes, offset: int, data: bytes
    ) -> ChunkState:
        """Append ``data`` to a begun upload; ``offset`` must be what it has received
        (StorageError otherwise: out of order), and the chunk's size is never passed. Only
        once the bytes are on disk does the write return (the new state). StorageError: no
        upload is under way (never begun, complete, or dropped by ``chunk_gc``).
        StorageFullError: the disk is full; nothing of ``data`` was kept."""
        ...

    async def chunk_commit(self, group_id: GroupId, address: bytes) -> ChunkState:
        """Finish an upload that has all its bytes: if they hash (SHA-256) to the address,
        the chunk is complete (and stays so: committing again is harmless); if not, they
        are dropped, and uncounted, and the state says ``mismatch``. StorageError: no such
        chunk, or it lacks bytes."""
        ...

    async def chunk_have(
        self, group_id: GroupId, addresses: Sequence[bytes]
    ) -> dict[bytes, ChunkState]:
        """The state of each of ``addresses`` (at most MAX_CHUNK_ADDRESSES) the group
        holds, complete or partial; the others are absent from the answer."""
        ...

    async def chunk_read(
        self, group_id: GroupId, address: bytes, offset: int, length: int
    ) -> bytes:
        """Bytes ``offset`` to ``offset + length`` of a complete chunk (fewer past its
        end). StorageError: the group has no complete chunk there, or a negative offset or
        length, or an offset past the end."""
        ...

    async def chunk_refs(
        self, group_id: GroupId, blob_id: BlobId, addresses: Sequence[bytes]
    ) -> None:
        """Record that the live blob ``blob_id`` references these chunks (at most
        MAX_CHUNK_ADDRESSES; chunks not stored yet too), keeping them from ``chunk_gc``
        while it lives. Called after its push: for a retired blob (a retried push)
        nothing is recorded. StorageError: the group never had this blob."""
        ...

    async def chunk_gc(self, now: int, limit: int, *, stale_before: int | None = None) -> int:
        """Delete, in small transactions, up to ``limit`` chunks idle (not begun) since
        ``stale_before`` (default: ``now`` - CHUNK_IDLE_MS): complete ones that no live
        blob references, and partial uploads. Return how many. The space and the quota
        they took are freed. A chunk referenced before its deletion commits is kept, also
        when the reference comes from another relay in the middle of the collection."""
        ...

    # invites
    async def put_invite(self, lookup: bytes, payload: bytes, expires_at: int) -> bool:
        """Store an open invite; False (nothing stored) if the lookup key is taken, also by
        a used, cancelled or expired invite that is still remembered."""
        ...

    async def take_invite(self, lookup: bytes, now: int) -> InviteTake:
        """Hand out an open invite once: "ok" with the payload if ``expires_at > now``
        (it becomes used), else "expired" (it becomes expired). Later fetches learn why it
        is gone ("used", "cancelled", "expired"); a key never stored, or forgotten, is
        "unknown". Only the first of concurrent fetches gets the payload."""
        ...

    async def delete_invite(self, lookup: bytes) -> bool:
        """Cancel an open invite (its payload is wiped); False if there is none to cancel."""
        ...

    # housekeeping
    async def cleanup(self, now: int) -> CleanupStats:
        """Apply retention: delete live blobs with ``expires_at <= now``
        (``expired_blobs``) and forget retired ids past theirs, retire delivered blobs
        (``acked_blobs``), expire open invites with ``expires_at <= now``
        (``expired_invites``) and forget invites a day past their expiry. Group totals
        follow. Runs as many short transactions (writes of others go between them), each
        consistent on its own; safe to run on several relays at once."""
        ...

    async def stats(self) -> tuple[int, int]:
        """(number of groups, number of live blobs)."""
        ...

    async def ping(self) -> None:
        """Return once the database answered the cheapest query it can; StorageError (or
        StorageUnavailableError) when it cannot. For health checks."""
        ...

    async def usage(self) -> tuple[int, int]:
        """(ciphertext bytes of live blobs, number of live blobs), all groups together."""
        ...

    def subscribe(self, handler: Callable[[StorageEvent], None]) -> None:
        """Call ``handler`` (on the event loop) with what other relays sharing the database
        do: BlobStored after their pushes commit, DeviceWasRevoked after their
        revocations, LogAppended after their log appends, and Resync when events may have
        been missed (the relay must then catch up from the tables: ``blobs_after``,
        ``get_device``, ``log_head``). Never called for this instance's own writes; a
        single-relay backend never calls it. A handler that raises is logged and skipped."""
        ...
