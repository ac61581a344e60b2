"""Client layer: SyncClient, local state, pairing, membership."""

from zerok.client.content import ContentRef
from zerok.client.events import (
    BlobAvailable,
    BlobPushed,
    Connected,
    DeviceRevoked,
    Disconnected,
    Error,
    EventsDropped,
    IntegrityAlert,
    KeyRotated,
    MembershipChanged,
    StatusChanged,
    SyncEvent,
    SyncStatus,
)
from zerok.client.groups import NewGroup
from zerok.client.membership import Device
from zerok.client.pairing import Invite
from zerok.client.sync import (
    Blob,
    PullResult,
    PushResult,
    SyncClient,
)
from zerok.client.transfer import Progress
from zerok.crypto.recovery import RecoveryKey
from zerok.errors import (
    BlobTooLargeError,
    DeviceRevokedError,
    InviteError,
    MembershipError,
    NotConnectedError,
    StateError,
)
from zerok.protocol.integrity import KeepPolicy
from zerok.wire.log import Role

__all__ = [
    "Blob",
    "BlobAvailable",
    "BlobPushed",
    "BlobTooLargeError",
    "Connected",
    "ContentRef",
    "Device",
    "DeviceRevoked",
    "DeviceRevokedError",
    "Disconnected",
    "Error",
    "EventsDropped",
    "IntegrityAlert",
    "Invite",
    "InviteError",
    "KeepPolicy",
    "KeyRotated",
    "MembershipChanged",
    "MembershipError",
    "NewGroup",
    "NotConnectedError",
    "Progress",
    "PullResult",
    "PushResult",
    "RecoveryKey",
    "Role",
    "StateError",
    "StatusChanged",
    "SyncClient",
    "SyncEvent",
    "SyncStatus",
]
