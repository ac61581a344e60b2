"""The outbox model: each push goes queued → sent → acked, and keeps its blob id.

A push that was sent but not acknowledged when the connection dropped goes back to queued
and is sent again with the same blob id, so the relay stores it once (PUSH is idempotent by
blob id). The client persists this model; here it is pure state.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from zerok.errors import LocalProtocolError
from zerok.wire import BlobId


class OutboxState(enum.Enum):
    QUEUED = "queued"
    SENT = "sent"
    ACKED = "acked"


@dataclass
class OutboxEntry:
    blob_id: BlobId
    ciphertext: bytes
    ttl: int = 0
    state: OutboxState = OutboxState.QUEUED
    attempts: int = 0
    cursor: int | None = None


class Outbox:
    def __init__(self) -> None:
        self._entries: dict[BlobId, OutboxEntry] = {}  # insertion order is send order

    def add(self, blob_id: BlobId, ciphertext: bytes, ttl: int = 0) -> OutboxEntry:
        if blob_id in self._entries:
            raise LocalProtocolError(f"blob {blob_id} is already in the outbox")
        entry = OutboxEntry(blob_id, ciphertext, ttl)
        self._entries[blob_id] = entry
        return entry

    def restore(self, entry: OutboxEntry) -> None:
        """Put back an entry loaded from storage; a SENT one is queued again."""
        if entry.state is OutboxState.SENT:
            entry.state = OutboxState.QUEUED
        if entry.state is not OutboxState.ACKED:
            self._entries[entry.blob_id] = entry

    def queued(self) -> list[OutboxEntry]:
        """Entries waiting to be sent, oldest first."""
        return [e for e in self._entries.values() if e.state is OutboxState.QUEUED]

    def mark_sent(self, blob_id: BlobId) -> OutboxEntry:
        entry = self._get(blob_id)
        if entry.state is not OutboxState.QUEUED:
            raise LocalProtocolError(f"blob {blob_id} is {entry.state.value}, not queued")
        entry.state = OutboxState.SENT
        entry.attempts += 1
        return entry

    def mark_acked(self, blob_id: BlobId, cursor: int) -> OutboxEntry:
        """Record the relay's ack; the entry leaves the outbox."""
        entry = self._get(blob_id)
        entry.state = OutboxState.ACKED
        entry.cursor = cursor
        del self._entries[blob_id]
        return entry

    def requeue_unacked(self) -> int:
        """After a disconnect: every sent entry is queued again. Returns how many."""
        count = 0
        for entry in self._entries.values():
            if entry.state is OutboxState.SENT:
                entry.state = OutboxState.QUEUED
                count += 1
        return count

    def __contains__(self, blob_id: object) -> bool:
        return blob_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def pending_count(self) -> int:
        return len(self._entries)

    def _get(self, blob_id: BlobId) -> OutboxEntry:
        try:
            return self._entries[blob_id]
        except KeyError:
            raise LocalProtocolError(f"blob {blob_id} is not in the outbox") from None
