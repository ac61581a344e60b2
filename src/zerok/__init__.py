"""0k-Sync: zero-knowledge sync for local-first applications."""

__version__ = "0.1.0"

from zerok.client import (
    Blob,
    Invite,
    PullResult,
    PushResult,
    SyncClient,
    SyncStatus,
)

__all__ = [
    "Blob",
    "Invite",
    "PullResult",
    "PushResult",
    "SyncClient",
    "SyncStatus",
    "__version__",
]
