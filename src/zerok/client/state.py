"""A device's local state in its data directory: one SQLite file, readable only by its owner.

It holds the group (root key, KDF parameters, relay URLs), the saved cursor, the durable
outbox and the ids of blobs already handed to the app (so a blob delivered twice by the
relay reaches the app once). The client reads the last three once, when it starts, into
its ClientCore, and writes every change back. Writes are small and rare next to the
network, so they run synchronously with ``synchronous=FULL``: what ``push()`` promised is
on disk.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from zerok.crypto.keys import GroupKeys, KdfParams
from zerok.errors import StateError
from zerok.protocol.client_core import DELIVERED_KEEP, OutboxEntry
from zerok.wire import BlobId

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    blob_id    BLOB NOT NULL UNIQUE,
    ciphertext BLOB NOT NULL,
    ttl        INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS delivered (
    blob_id BLOB PRIMARY KEY,
    cursor  INTEGER NOT NULL
) WITHOUT ROWID;
"""
STATE_VERSION = "1"


@dataclass(frozen=True)
class GroupConfig:
    keys: GroupKeys
    relays: list[str]
    kdf: KdfParams | None


class LocalState:
    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(data_dir)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = self.dir / "state.db"
        new = not self.path.exists()
        if new:
            # Created 0600 before SQLite opens it: it will hold the group's root key.
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise StateError(f"cannot open the local state {self.path}: {exc}") from None
        version = self.get_value("state_version")
        if version is None:
            self.set_value("state_version", STATE_VERSION)
        elif version != STATE_VERSION:
            raise StateError(
                f"{self.path} was written by a newer zerok (state version {version}); upgrade"
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- key/value ------------------------------------------------------------------------

    def get_value(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_value(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    # -- group ----------------------------------------------------------------------------

    def has_group(self) -> bool:
        return self.get_value("group") is not None

    def save_group(self, keys: GroupKeys, relays: list[str]) -> None:
        doc = {
            "root_key": keys.root_key.hex(),
            "relays": relays,
            "kdf": keys.kdf.to_dict() if keys.kdf else None,
        }
        self.set_value("group", json.dumps(doc))

    def load_group(self) -> GroupConfig:
        raw = self.get_value("group")
        if raw is None:
            raise StateError("this device is in no group yet: create one or join one")
        try:
            doc = json.loads(raw)
            kdf = KdfParams.from_dict(doc["kdf"]) if doc.get("kdf") else None
            keys = GroupKeys(bytes.fromhex(doc["root_key"]), kdf)
            relays = [str(r) for r in doc["relays"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise StateError(f"the group record in {self.path} is corrupt: {exc}") from None
        return GroupConfig(keys, relays, kdf)

    def set_relays(self, relays: list[str]) -> None:
        group = self.load_group()
        self.save_group(group.keys, relays)

    # -- cursor and delivered ids -----------------------------------------------------------

    @property
    def cursor(self) -> int:
        return int(self.get_value("cursor") or 0)

    def delivered_load(self) -> list[tuple[BlobId, int]]:
        """The remembered ids of delivered blobs with their cursors, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT blob_id, cursor FROM delivered ORDER BY cursor"
            ).fetchall()
        return [(BlobId(r[0]), int(r[1])) for r in rows]

    def mark_delivered(self, blob_id: bytes, cursor: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO delivered (blob_id, cursor) VALUES (?, ?)",
                (blob_id, cursor),
            )

    def save_cursor(self, cursor: int) -> None:
        """Advance the saved cursor (never backwards) and forget old delivered ids."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT value FROM meta WHERE key = 'cursor'").fetchone()
                if cursor > int(row[0] if row else 0):
                    self._db.execute(
                        "INSERT INTO meta (key, value) VALUES ('cursor', ?)"
                        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (str(cursor),),
                    )
                self._db.execute(
                    "DELETE FROM delivered WHERE cursor <= ? AND blob_id NOT IN"
                    " (SELECT blob_id FROM delivered ORDER BY cursor DESC LIMIT ?)",
                    (cursor, DELIVERED_KEEP),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # -- outbox ---------------------------------------------------------------------------

    def outbox_add(self, entry: OutboxEntry, now_ms: int) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO outbox (blob_id, ciphertext, ttl, created_at) VALUES (?, ?, ?, ?)",
                (entry.blob_id, entry.ciphertext, entry.ttl, now_ms),
            )

    def outbox_attempt(self, blob_id: BlobId) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE outbox SET attempts = attempts + 1 WHERE blob_id = ?", (blob_id,)
            )

    def outbox_remove(self, blob_id: BlobId) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE blob_id = ?", (blob_id,))

    def outbox_load(self) -> list[OutboxEntry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT blob_id, ciphertext, ttl, attempts FROM outbox ORDER BY seq"
            ).fetchall()
        return [OutboxEntry(BlobId(r[0]), bytes(r[1]), r[2], r[3]) for r in rows]
