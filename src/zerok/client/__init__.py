"""Client layer: SyncClient, local state, pairing."""

from zerok.client.events import (
    BlobAvailable,
    BlobPushed,
    Connected,
    DeviceRevoked,
    Disconnected,
    Error,
    EventsDropped,
    StatusChanged,
    SyncEvent,
    SyncStatus,
)
from zerok.client.pairing import Invite
from zerok.client.sync import (
    Blob,
    PullResult,
    PushResult,
    SyncClient,
)
from zerok.errors import (
    BlobTooLargeError,
    DeviceRevokedError,
    InviteError,
    NotConnectedError,
    StateError,
)

__all__ = [
    "Blob",
    "BlobAvailable",
    "BlobPushed",
    "BlobTooLargeError",
    "Connected",
    "DeviceRevoked",
    "DeviceRevokedError",
    "Disconnected",
    "Error",
    "EventsDropped",
    "Invite",
    "InviteError",
    "NotConnectedError",
    "PullResult",
    "PushResult",
    "StateError",
    "StatusChanged",
    "SyncClient",
    "SyncEvent",
    "SyncStatus",
]
