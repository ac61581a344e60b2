"""A device's local state in its data directory: one SQLite file, readable only by its owner.

It holds the group (root key, KDF parameters, relay URLs), the saved cursor, the durable
outbox and the ids of blobs already handed to the app (so a blob delivered twice by the
relay reaches the app once). The client reads the last three once, when it starts, into
its ClientCore, and writes every change back.

Writes from a running client do not block its event loop: they go to one writer thread
(``submit``), which runs whatever is queued in one transaction with ``synchronous=FULL``
(group commit: several pushes' outbox inserts, a page of delivered ids and its cursor, one
fsync). The futures ``submit`` returns are done once their write is durable. The in-memory
outbox is the ClientCore's; this file is its journal. The synchronous methods (group, key
and value, the outbox and the cursor for tools and tests) write at once under the same
lock.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
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
MAX_BATCH = 512  # writes per group commit

log = logging.getLogger("zerok.client.state")

Write = Callable[[sqlite3.Connection], object]


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
        self._writes: queue.SimpleQueue[tuple[Write, Future[object]] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_guard = threading.Lock()
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
        """Finish every queued write, stop the writer thread and close the file."""
        self.stop_writer()
        with self._lock:
            self._db.close()

    # -- the writer thread (group commit) ---------------------------------------------------

    def submit(self, write: Write) -> Future[object]:
        """Run ``write(db)`` on the writer thread, in a transaction with whatever else is
        queued; the future is done once it is committed (or failed: StateError)."""
        future: Future[object] = Future()
        with self._writer_guard:
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._write_loop, name="zerok-state-writer", daemon=True
                )
                self._writer.start()
            self._writes.put((write, future))
        return future

    def stop_writer(self) -> None:
        """Wait for every queued write and end the writer thread (it starts again on the
        next ``submit``)."""
        with self._writer_guard:
            writer, self._writer = self._writer, None
            if writer is not None:
                self._writes.put(None)
        if writer is not None:
            writer.join()

    def _write_loop(self) -> None:
        while True:
            first = self._writes.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < MAX_BATCH:
                try:
                    item = self._writes.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[tuple[Write, Future[object]]]) -> None:
        results: list[tuple[Future[object], object, BaseException | None]] = []
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for write, future in batch:
                    self._db.execute("SAVEPOINT one")
                    try:
                        results.append((future, write(self._db), None))
                        self._db.execute("RELEASE one")
                    except sqlite3.Error as exc:
                        self._db.execute("ROLLBACK TO one")
                        self._db.execute("RELEASE one")
                        results.append((future, None, StateError(f"local state: {exc}")))
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                failure = StateError(f"cannot write the local state {self.path}: {exc}")
                log.error("%s", failure)
                results = [(future, None, failure) for _, future in batch]
        for future, result, error in results:
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

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
                _advance_cursor(self._db, cursor)
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

    def save_page_later(
        self, delivered: Iterable[tuple[BlobId, int]], cursor: int | None
    ) -> Future[object]:
        """Delivered ids and the new cursor (None: unchanged) in one commit."""
        rows = list(delivered)

        def write(db: sqlite3.Connection) -> None:
            db.executemany("INSERT OR IGNORE INTO delivered (blob_id, cursor) VALUES (?, ?)", rows)
            if cursor is not None:
                _advance_cursor(db, cursor)

        return self.submit(write)

    def journal_later(
        self,
        adds: list[tuple[OutboxEntry, int]],
        removes: list[BlobId],
        attempts: list[BlobId],
    ) -> Future[object]:
        """Outbox inserts (entry, created_at ms), deletes and send counts, in one write."""

        def write(db: sqlite3.Connection) -> None:
            if adds:
                db.executemany(
                    "INSERT INTO outbox (blob_id, ciphertext, ttl, created_at) VALUES (?, ?, ?, ?)",
                    [(e.blob_id, e.ciphertext, e.ttl, at) for e, at in adds],
                )
            if attempts:
                db.executemany(
                    "UPDATE outbox SET attempts = attempts + 1 WHERE blob_id = ?",
                    [(b,) for b in attempts],
                )
            if removes:
                db.executemany("DELETE FROM outbox WHERE blob_id = ?", [(b,) for b in removes])

        return self.submit(write)

    def outbox_load(self) -> list[OutboxEntry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT blob_id, ciphertext, ttl, attempts FROM outbox ORDER BY seq"
            ).fetchall()
        return [OutboxEntry(BlobId(r[0]), bytes(r[1]), r[2], r[3]) for r in rows]


def _advance_cursor(db: sqlite3.Connection, cursor: int) -> None:
    """Inside a transaction: the saved cursor to ``cursor`` unless it is past it already,
    and the delivered ids below it forgotten, but for the last ``DELIVERED_KEEP``."""
    row = db.execute("SELECT value FROM meta WHERE key = 'cursor'").fetchone()
    if cursor > int(row[0] if row else 0):
        db.execute(
            "INSERT INTO meta (key, value) VALUES ('cursor', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(cursor),),
        )
    db.execute(
        "DELETE FROM delivered WHERE cursor <= ? AND blob_id NOT IN"
        " (SELECT blob_id FROM delivered ORDER BY cursor DESC LIMIT ?)",
        (cursor, DELIVERED_KEEP),
    )
