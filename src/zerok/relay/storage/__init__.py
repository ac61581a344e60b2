"""Relay storage: one interface (``Storage``), backends chosen by URL (``open_storage``)."""

from zerok.errors import StorageError
from zerok.relay.storage.base import (
    BlobStored,
    CleanupStats,
    DeleteOutcome,
    DeviceRecord,
    DeviceWasRevoked,
    GroupRecord,
    InviteTake,
    LogAppended,
    LogConflict,
    LogRecord,
    PullPage,
    PushOutcome,
    Resync,
    Storage,
    StorageEvent,
)
from zerok.relay.storage.registry import (
    StorageOptions,
    default_key_path,
    known_schemes,
    open_storage,
    register_backend,
)
from zerok.relay.storage.schema import SCHEMA_VERSION
from zerok.relay.storage.sqlite import SQLiteStorage

__all__ = [
    "SCHEMA_VERSION",
    "BlobStored",
    "CleanupStats",
    "DeleteOutcome",
    "DeviceRecord",
    "DeviceWasRevoked",
    "GroupRecord",
    "InviteTake",
    "LogAppended",
    "LogConflict",
    "LogRecord",
    "PullPage",
    "PushOutcome",
    "Resync",
    "SQLiteStorage",
    "Storage",
    "StorageError",
    "StorageEvent",
    "StorageOptions",
    "default_key_path",
    "known_schemes",
    "open_storage",
    "register_backend",
]
