"""Relay storage: one interface, SQLite by default."""

from zerok.relay.storage.base import (
    CleanupStats,
    DeleteOutcome,
    DeviceRecord,
    GroupRecord,
    InviteTake,
    PullPage,
    PushOutcome,
    Storage,
)
from zerok.relay.storage.schema import SCHEMA_VERSION, StorageError
from zerok.relay.storage.sqlite import SQLiteStorage

__all__ = [
    "SCHEMA_VERSION",
    "CleanupStats",
    "DeleteOutcome",
    "DeviceRecord",
    "GroupRecord",
    "InviteTake",
    "PullPage",
    "PushOutcome",
    "SQLiteStorage",
    "Storage",
    "StorageError",
]
