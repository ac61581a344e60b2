"""Relay storage: one interface (``Storage``), backends chosen by URL (``open_storage``)."""

from zerok.errors import StorageError
from zerok.relay.storage.base import (
    CHUNK_ADDRESS_BYTES,
    CHUNK_IDLE_MS,
    MAX_CHUNK_BYTES,
    BlobStored,
    ChunkState,
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
    "CHUNK_ADDRESS_BYTES",
    "CHUNK_IDLE_MS",
    "MAX_CHUNK_BYTES",
    "SCHEMA_VERSION",
    "BlobStored",
    "ChunkState",
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
