"""What a SyncClient tells the app, for sync indicators and reactions (``client.events()``).

``SyncStatus`` is defined with the rules that derive it, in ``zerok.protocol.client_core``.
"""

from __future__ import annotations

from dataclasses import dataclass

from zerok.protocol.client_core import SyncStatus
from zerok.wire import BlobId, DeviceId

__all__ = [
    "BlobAvailable",
    "BlobPushed",
    "Connected",
    "DeviceRevoked",
    "Disconnected",
    "Error",
    "EventsDropped",
    "IntegrityAlert",
    "KeyRotated",
    "MembershipChanged",
    "StatusChanged",
    "SyncEvent",
    "SyncStatus",
]


@dataclass(frozen=True, slots=True)
class SyncEvent:
    """Base class of client events."""


@dataclass(frozen=True, slots=True)
class Connected(SyncEvent):
    relay: str


@dataclass(frozen=True, slots=True)
class Disconnected(SyncEvent):
    relay: str | None
    reason: str
    retry_in: float | None  # seconds until the next attempt; None when not retrying


@dataclass(frozen=True, slots=True)
class BlobAvailable(SyncEvent):
    """The relay has a new blob for the group (``changes()`` or ``pull()`` fetch it)."""

    cursor: int
    blob_id: BlobId
    sender: DeviceId


@dataclass(frozen=True, slots=True)
class BlobPushed(SyncEvent):
    """A push reached the relay and is durably stored."""

    blob_id: BlobId
    cursor: int


@dataclass(frozen=True, slots=True)
class StatusChanged(SyncEvent):
    status: SyncStatus
    pending: int


@dataclass(frozen=True, slots=True)
class DeviceRevoked(SyncEvent):
    """A device left the group (``this_device``: this one, which can no longer sync).
    ``revoked_by`` is the device that signed the revocation, None when the recovery key
    did, or when the relay refused this device before it could read the log."""

    device_id: DeviceId
    revoked_by: DeviceId | None
    reason: str
    this_device: bool


@dataclass(frozen=True, slots=True)
class MembershipChanged(SyncEvent):
    """The group's log changed who is in it: ``kind`` is "enrolled", "revoked",
    "reinstated" (kept by a recovery) or "role" (its role changed). ``by`` is the device
    that signed the entry (None: the recovery key, or the device itself for an
    enrollment); ``seq`` the entry's position in the log."""

    kind: str
    device_id: DeviceId
    by: DeviceId | None
    seq: int


@dataclass(frozen=True, slots=True)
class KeyRotated(SyncEvent):
    """A new epoch started: blobs pushed from now on are sealed under its key.
    ``reason``: "revoked" (a device was revoked), "recovered" (the recovery key took the
    group back), or the reason given to ``rotate_keys`` ("rotated" if none)."""

    epoch: int
    reason: str


@dataclass(frozen=True, slots=True)
class IntegrityAlert(SyncEvent):
    """Something a relay (or a device) did wrong, or that was set right, seen by this
    device. ``kind``: "gap" (blobs of ``sender`` ``first``..``last`` are missing: a repair
    is asked for), "recovered" (a missing blob arrived), "replay" (a blob came again and
    was ignored), "reorder", "fork" (a device sealed two histories; with ``sender`` None, a
    relay presented a membership log that contradicts the one this device holds at
    position ``first``: the client stops using that relay), "rollback" (the relay's
    history ends before what this device had synced: cursors ``first``..``last``; it reads
    again from the start and re-pushes what it keeps), "undecryptable" (the blob at cursor
    ``first`` could not be opened: no key for its epoch, or it was modified; it is skipped).
    ``relay`` is the relay it came from; ``detail`` one sentence for a person."""

    kind: str
    sender: DeviceId | None
    first: int
    last: int
    relay: str
    detail: str


@dataclass(frozen=True, slots=True)
class Error(SyncEvent):
    """Something went wrong that the app may want to show; syncing goes on if it can.

    ``code`` is the relay's error code (None: not from the relay); ``message`` the details
    for a log; ``reason`` a short text for a UI: "relay full", "too many devices from your
    network", "unreachable", "handshake failed", "connection lost", "refused", "push
    refused", "internal error" (docs/client.md lists them)."""

    code: int | None
    message: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class EventsDropped(SyncEvent):
    """The subscriber fell behind: ``count`` older events were dropped to keep its queue
    bounded (``EVENT_QUEUE_SIZE``). It comes first, before the events that were kept."""

    count: int
