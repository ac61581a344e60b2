"""0k-Sync: zero-knowledge sync for local-first applications."""

from zerok.client import (
    Blob,
    Invite,
    PullResult,
    PushResult,
    SyncClient,
    SyncStatus,
)
from zerok.version import __version__

__all__ = [
    "Blob",
    "Invite",
    "PullResult",
    "PushResult",
    "SyncClient",
    "SyncStatus",
    "__version__",
]
