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
    device_id: DeviceId
    revoked_by: DeviceId
    reason: str
    this_device: bool


@dataclass(frozen=True, slots=True)
class Error(SyncEvent):
    """Something went wrong that the app may want to show; syncing goes on if it can.

    ``code`` is the relay's error code (None: not from the relay); ``message`` the details
    for a log; ``reason`` a short text for a UI: "relay full", "too many devices from your
    network", "unreachable", "handshake failed", "connection lost", "refused", "push
    refused", "blob unreadable", "internal error" (docs/client.md lists them)."""

    code: int | None
    message: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class EventsDropped(SyncEvent):
    """The subscriber fell behind: ``count`` older events were dropped to keep its queue
    bounded (``EVENT_QUEUE_SIZE``). It comes first, before the events that were kept."""

    count: int
