"""The relay's storage interface: what the relay needs, whatever the database.

Every method is a coroutine and does its database work off the event loop. Writes that
return are committed. Timestamps are milliseconds since the Unix epoch, passed in by the
caller, so behaviour over time is testable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from zerok.wire import BlobId, DeviceId, GroupId, StoredBlob
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
class Resync:
    """Events from other relays may have been missed (the listener reconnected): the relay
    must catch up from the database."""


StorageEvent = BlobStored | DeviceWasRevoked | Resync


def page_length(sizes: Sequence[int], limit: int, max_bytes: int) -> int:
    """How many of the next blobs (ciphertext ``sizes``, ascending by cursor) one PULL page
    takes: at most ``limit``, and beyond the first no more than ``max_bytes`` counting
    STORED_BLOB_OVERHEAD per blob, so that the page fits a frame of that size."""
    take, total = 0, 0
    for size in sizes[:limit]:
        total += size + STORED_BLOB_OVERHEAD
        if take and total > max_bytes:
            break
        take += 1
    return take


class Storage(Protocol):
    """Implemented by SQLiteStorage and (later) PostgresStorage."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    # groups and devices
    async def get_group(self, group_id: GroupId) -> GroupRecord | None: ...

    async def register_group(self, group_id: GroupId, auth_key: bytes, now: int) -> GroupRecord:
        """Create the group with this auth key unless it exists; return the stored record."""
        ...

    async def touch_device(
        self, group_id: GroupId, device_id: DeviceId, name: str, now: int
    ) -> DeviceRecord:
        """Record that the device connected (creating it on first sight)."""
        ...

    async def get_device(self, group_id: GroupId, device_id: DeviceId) -> DeviceRecord | None: ...

    async def list_devices(self, group_id: GroupId) -> list[DeviceRecord]: ...

    async def revoke_device(
        self, group_id: GroupId, device_id: DeviceId, by: DeviceId, reason: str, now: int
    ) -> DeviceRecord: ...

    async def set_push_token(
        self,
        group_id: GroupId,
        device_id: DeviceId,
        token: str | None,
        platform: str | None,
        app_id: str | None,
    ) -> None: ...

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
    ) -> PushOutcome: ...

    async def pull(self, group_id: GroupId, after: int, limit: int, max_bytes: int) -> PullPage:
        """Blobs after ``after``, ascending: at most ``limit`` of them and, beyond the first,
        no more than ``max_bytes`` in all, counting each blob's ciphertext plus
        STORED_BLOB_OVERHEAD (so a page fits a frame of that size)."""
        ...

    async def ack(self, group_id: GroupId, device_id: DeviceId, cursor: int) -> None: ...

    async def delete_blob(
        self, group_id: GroupId, blob_id: BlobId, device_id: DeviceId, *, force: bool
    ) -> DeleteOutcome: ...

    async def pending_for(self, group_id: GroupId, device_id: DeviceId) -> int: ...

    async def pending_by_device(self, group_id: GroupId) -> dict[DeviceId, int]:
        """``pending_for`` of every device of the group, in one query."""
        ...

    # invites
    async def put_invite(self, lookup: bytes, payload: bytes, expires_at: int) -> bool:
        """Store an invite; False if the lookup key is taken."""
        ...

    async def take_invite(self, lookup: bytes, now: int) -> InviteTake:
        """Hand out an open, unexpired invite once; later fetches learn why it is gone."""
        ...

    async def delete_invite(self, lookup: bytes) -> bool:
        """Cancel an open invite; False if there is none to cancel."""
        ...

    # housekeeping
    async def cleanup(self, now: int) -> CleanupStats: ...

    async def stats(self) -> tuple[int, int]:
        """(number of groups, number of buffered blobs)."""
        ...

    async def blobs_after(self, group_id: GroupId, after: int, limit: int) -> list[BlobStored]:
        """Metadata of live blobs after a cursor (to NOTIFY what another relay stored)."""
        ...

    def subscribe(self, handler: Callable[[StorageEvent], None]) -> None:
        """Receive what other relays sharing the database do; never called for this
        process's own writes. A single-relay backend never calls the handler."""
        ...
