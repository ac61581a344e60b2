"""A device's local state in its data directory: one SQLite file, readable only by its owner.

It holds the group (its id, relays and name), the verified membership log and the epoch
keys this device holds, the saved cursor, the durable outbox, the ids of blobs already
handed to the app (so a blob delivered twice by the relay reaches the app once), this
device's own chain of blobs (the next sequence number and the hash of the last blob) with
the blobs it keeps for re-pushing (the keep window), and what it learnt of the other
devices' chains (``SenderChains``). The client reads all of it once, when it starts, and
writes every change back.

Writes from a running client do not block its event loop: they go to one writer thread
(``submit``), which runs whatever is queued in one transaction with ``synchronous=FULL``
(group commit: several pushes' outbox inserts, a page of delivered ids and its cursor, one
fsync). The futures ``submit`` returns are done once their write is durable. The in-memory
outbox is the ClientCore's; this file is its journal. The synchronous methods (key and
value, the outbox and the cursor for tools and tests) write at once under the same lock.

A file made by zerok 0.1 (state version 1, protocol 1: a group root key, no log) is
refused: v2 groups are joined with an invite, there is nothing to carry over.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zerok.errors import StateError
from zerok.protocol.client_core import DELIVERED_KEEP, OutboxEntry
from zerok.wire import BlobId, GroupId

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    blob_id    BLOB NOT NULL UNIQUE,
    ciphertext BLOB NOT NULL,
    ttl        INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    epoch      INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    repair     INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS delivered (
    blob_id BLOB PRIMARY KEY,
    cursor  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log (
    seq   INTEGER PRIMARY KEY,
    hash  BLOB NOT NULL,
    entry BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS epoch_keys (
    epoch INTEGER PRIMARY KEY,
    key   BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS sent (
    seq        INTEGER PRIMARY KEY,
    blob_id    BLOB NOT NULL,
    epoch      INTEGER NOT NULL,
    ciphertext BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    size       INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sender (
    id        INTEGER PRIMARY KEY CHECK (id = 0),
    next_seq  INTEGER NOT NULL,
    last_hash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS chains (
    id   INTEGER PRIMARY KEY CHECK (id = 0),
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS blob_chunks (
    blob_id   BLOB PRIMARY KEY,
    addresses BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS uploads (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    path       TEXT NOT NULL,
    name       TEXT NOT NULL,
    media_type TEXT NOT NULL
);
"""
STATE_VERSION = "2"
MAX_BATCH = 512  # writes per group commit
FIRST_SEQ = 1
NO_HASH = bytes(32)

log = logging.getLogger("zerok.client.state")

Write = Callable[[sqlite3.Connection], object]


@dataclass(frozen=True)
class GroupMeta:
    """The group this device belongs to, as it is kept locally."""

    group_id: GroupId
    relays: list[str]
    name: str = ""


@dataclass(frozen=True)
class LogRow:
    """One verified entry of the group's log."""

    seq: int
    hash: bytes
    entry: bytes


@dataclass(frozen=True)
class SentRow:
    """A blob this device pushed and keeps for re-pushing (its ciphertext stays on disk)."""

    seq: int
    blob_id: BlobId
    epoch: int
    created_at: int  # ms
    size: int


@dataclass(frozen=True)
class UploadRow:
    """A file being put (``put_file`` from a path): finished by ``resume_uploads``."""

    id: int
    path: str
    name: str
    media_type: str


@dataclass
class JournalBatch:
    """What one loop turn changed in the outbox and this device's chain, written at once.

    ``adds`` are new outbox entries with their creation time (ms), ``reseals`` entries
    sealed again under a newer epoch, ``sent`` new keep-window rows with their ciphertext,
    ``forget`` the keep-window seqs to drop, ``sender`` the chain's new (next seq, last
    hash)."""

    adds: list[tuple[OutboxEntry, int]] = field(default_factory=list)
    removes: list[BlobId] = field(default_factory=list)
    attempts: list[BlobId] = field(default_factory=list)
    reseals: list[OutboxEntry] = field(default_factory=list)
    sent: list[tuple[SentRow, bytes]] = field(default_factory=list)
    forget: list[int] = field(default_factory=list)
    sender: tuple[int, bytes] | None = None

    def __bool__(self) -> bool:
        return bool(
            self.adds
            or self.removes
            or self.attempts
            or self.reseals
            or self.sent
            or self.forget
            or self.sender is not None
        )


class LocalState:
    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(data_dir)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = self.dir / "state.db"
        new = not self.path.exists()
        if new:
            # Created 0600 before SQLite opens it: it will hold the group's epoch keys.
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._lock = threading.Lock()
        self._writes: queue.SimpleQueue[tuple[Write, Future[object]] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_guard = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._check_version()
            self._db.executescript(SCHEMA)
        except sqlite3.Error as exc:
            self._db.close()
            raise StateError(f"cannot open the local state {self.path}: {exc}") from None
        except StateError:
            self._db.close()
            raise
        if self.get_value("state_version") is None:
            self.set_value("state_version", STATE_VERSION)

    def _check_version(self) -> None:
        """Before any table is made: an older file must stay as it is, for the user to move."""
        has_meta = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
        ).fetchone()
        if not has_meta:
            return
        row = self._db.execute("SELECT value FROM meta WHERE key = 'state_version'").fetchone()
        version = None if row is None else str(row[0])
        if version == "1":
            raise StateError(
                f"{self.path} was made by zerok 0.1 for protocol 1; move it away and pair "
                "this device again"
            )
        if version is not None and version != STATE_VERSION:
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
        queued; the future is done once it is committed (or failed: StateError, which a
        write may also raise to refuse)."""
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
                    except (sqlite3.Error, StateError) as exc:
                        # A write that fails (or refuses: StateError) fails alone.
                        self._db.execute("ROLLBACK TO one")
                        self._db.execute("RELEASE one")
                        refused = exc if isinstance(exc, StateError) else None
                        failure = refused or StateError(f"local state: {exc}")
                        results.append((future, None, failure))
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                broken = StateError(f"cannot write the local state {self.path}: {exc}")
                log.error("%s", broken)
                results = [(future, None, broken) for _, future in batch]
        for future, result, error in results:
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

    def _rows(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())

    # -- key/value ------------------------------------------------------------------------

    def get_value(self, key: str) -> str | None:
        rows = self._rows("SELECT value FROM meta WHERE key = ?", (key,))
        return None if not rows else str(rows[0][0])

    def set_value(self, key: str, value: str) -> None:
        with self._lock:
            _set(self._db, key, value)

    # -- group, log and epoch keys ----------------------------------------------------------

    def has_group(self) -> bool:
        return self.get_value("group") is not None

    def load_group(self) -> GroupMeta:
        raw = self.get_value("group")
        if raw is None:
            raise StateError("this device is in no group yet: create one or join one")
        corrupt = f"the group record in {self.path} is corrupt"
        try:
            doc = json.loads(raw)
            group_id = GroupId(bytes.fromhex(doc["group_id"]))
            relays = doc["relays"]
            name = str(doc.get("name", ""))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StateError(f"{corrupt}: {exc}") from None
        if not isinstance(relays, list) or not all(isinstance(r, str) for r in relays):
            raise StateError(f"{corrupt}: its relays are not a list of URLs")
        return GroupMeta(group_id, relays, name)

    def set_relays(self, relays: list[str]) -> None:
        group = self.load_group()
        self.set_value("group", _group_doc(GroupMeta(group.group_id, relays, group.name)))

    def start_group_later(
        self, group: GroupMeta, rows: Iterable[LogRow], keys: dict[int, bytes]
    ) -> Future[object]:
        """The group record, its log and keys, in one commit: a device is in a group, with
        all it needs, or in none."""
        records = list(rows)

        def write(db: sqlite3.Connection) -> None:
            if db.execute("SELECT 1 FROM meta WHERE key = 'group'").fetchone():
                raise StateError(f"{self.dir} already belongs to a group")
            _set(db, "group", _group_doc(group))
            _write_membership(db, records, keys)

        return self.submit(write)

    def save_membership_later(
        self, rows: Iterable[LogRow], keys: dict[int, bytes]
    ) -> Future[object]:
        """New log entries and epoch keys (existing ones are kept as they are)."""
        records = list(rows)
        return self.submit(lambda db: _write_membership(db, records, keys))

    def log_load(self) -> list[LogRow]:
        rows = self._rows("SELECT seq, hash, entry FROM log ORDER BY seq")
        return [LogRow(int(r[0]), bytes(r[1]), bytes(r[2])) for r in rows]

    def keys_load(self) -> dict[int, bytes]:
        rows = self._rows("SELECT epoch, key FROM epoch_keys")
        return {int(r[0]): bytes(r[1]) for r in rows}

    # -- cursor, delivered ids and the other devices' chains --------------------------------

    @property
    def cursor(self) -> int:
        return int(self.get_value("cursor") or 0)

    @property
    def quiet_until(self) -> int:
        """After a relay rollback: replays are expected up to this cursor (0: none)."""
        return int(self.get_value("quiet_until") or 0)

    def delivered_load(self) -> list[tuple[BlobId, int]]:
        """The remembered ids of delivered blobs with their cursors, oldest first."""
        rows = self._rows("SELECT blob_id, cursor FROM delivered ORDER BY cursor")
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

    def save_page_later(
        self,
        delivered: Iterable[tuple[BlobId, int]],
        cursor: int | None,
        chains: bytes | None = None,
    ) -> Future[object]:
        """Delivered ids, the new cursor (None: unchanged) and the other devices' chains
        (None: unchanged), in one commit: the three must agree after a crash."""
        rows = list(delivered)

        def write(db: sqlite3.Connection) -> None:
            db.executemany("INSERT OR IGNORE INTO delivered (blob_id, cursor) VALUES (?, ?)", rows)
            if cursor is not None:
                _advance_cursor(db, cursor)
            if chains is not None:
                db.execute("INSERT OR REPLACE INTO chains (id, data) VALUES (0, ?)", (chains,))

        return self.submit(write)

    def rewind_later(self, cursor: int, quiet_until: int) -> Future[object]:
        """The relay rolled back: read again from ``cursor`` (the only move backwards)."""

        def write(db: sqlite3.Connection) -> None:
            _set(db, "cursor", str(cursor))
            _set(db, "quiet_until", str(quiet_until))

        return self.submit(write)

    def chains_load(self) -> bytes | None:
        rows = self._rows("SELECT data FROM chains WHERE id = 0")
        return None if not rows else bytes(rows[0][0])

    # -- large content: chunks a blob refers to, files being put -----------------------------

    def blob_chunks_add(self, blob_id: BlobId, addresses: list[bytes]) -> None:
        """The chunks a blob of this device's refers to (its PUSH declares them, also when
        it is pushed again for a repair). Written at once: before the blob may go out."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO blob_chunks (blob_id, addresses) VALUES (?, ?)",
                (blob_id, b"".join(addresses)),
            )

    def blob_chunks_load(self) -> dict[BlobId, list[bytes]]:
        rows = self._rows("SELECT blob_id, addresses FROM blob_chunks")
        return {
            BlobId(r[0]): [bytes(r[1][i : i + 32]) for i in range(0, len(r[1]), 32)] for r in rows
        }

    def upload_add(self, path: str, name: str, media_type: str) -> int:
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO uploads (path, name, media_type) VALUES (?, ?, ?)",
                (path, name, media_type),
            )
            return int(cursor.lastrowid or 0)

    def upload_remove(self, upload_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))

    def uploads_load(self) -> list[UploadRow]:
        rows = self._rows("SELECT id, path, name, media_type FROM uploads ORDER BY id")
        return [UploadRow(r[0], r[1], r[2], r[3]) for r in rows]

    # -- outbox, keep window and this device's chain ----------------------------------------

    def outbox_add(self, entry: OutboxEntry, now_ms: int) -> None:
        with self._lock:
            _insert_outbox(self._db, [(entry, now_ms)])

    def outbox_attempt(self, blob_id: BlobId) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE outbox SET attempts = attempts + 1 WHERE blob_id = ?", (blob_id,)
            )

    def outbox_remove(self, blob_id: BlobId) -> None:
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE blob_id = ?", (blob_id,))

    def outbox_load(self) -> list[OutboxEntry]:
        rows = self._rows(
            "SELECT blob_id, ciphertext, ttl, attempts, epoch, seq, repair FROM outbox ORDER BY id"
        )
        return [
            OutboxEntry(BlobId(r[0]), bytes(r[1]), r[2], r[3], r[4], r[5], bool(r[6])) for r in rows
        ]

    def journal_later(self, batch: JournalBatch) -> Future[object]:
        """One loop turn's outbox and chain changes, in one write."""
        return self.submit(lambda db: _write_journal(db, batch))

    def sender_load(self) -> tuple[int, bytes]:
        """This device's chain: the seq its next blob gets and the last blob's chain hash."""
        rows = self._rows("SELECT next_seq, last_hash FROM sender WHERE id = 0")
        if not rows:
            return FIRST_SEQ, NO_HASH
        return int(rows[0][0]), bytes(rows[0][1])

    def sent_load(self) -> list[SentRow]:
        """The keep window, without the ciphertexts, oldest first."""
        rows = self._rows("SELECT seq, blob_id, epoch, created_at, size FROM sent ORDER BY seq")
        return [SentRow(int(r[0]), BlobId(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows]

    def sent_ciphertexts(self, seqs: Iterable[int]) -> dict[int, bytes]:
        """The sealed blobs of these keep-window seqs (those still kept)."""
        wanted = list(seqs)
        found: dict[int, bytes] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for seq, data in self._rows(
                f"SELECT seq, ciphertext FROM sent WHERE seq IN ({marks})", tuple(chunk)
            ):
                found[int(seq)] = bytes(data)
        return found


def log_failure(written: Future[object]) -> None:
    """A done-callback for writes nobody waits for: their failure is logged, not lost."""
    error = written.exception()
    if error is not None:
        log.error("the local state could not be written: %s", error)


def _set(db: sqlite3.Connection, key: str, value: str) -> None:
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def _group_doc(group: GroupMeta) -> str:
    return json.dumps(
        {"group_id": bytes(group.group_id).hex(), "relays": group.relays, "name": group.name}
    )


def _write_membership(db: sqlite3.Connection, rows: list[LogRow], keys: dict[int, bytes]) -> None:
    # An entry already held at a seq is the same entry (the log was verified before): keep.
    db.executemany(
        "INSERT OR IGNORE INTO log (seq, hash, entry) VALUES (?, ?, ?)",
        [(r.seq, r.hash, r.entry) for r in rows],
    )
    db.executemany(
        "INSERT OR IGNORE INTO epoch_keys (epoch, key) VALUES (?, ?)", list(keys.items())
    )


def _insert_outbox(db: sqlite3.Connection, adds: list[tuple[OutboxEntry, int]]) -> None:
    db.executemany(
        "INSERT INTO outbox (blob_id, ciphertext, ttl, created_at, epoch, seq, repair)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(e.blob_id, e.ciphertext, e.ttl, at, e.epoch, e.seq, int(e.repair)) for e, at in adds],
    )


def _write_journal(db: sqlite3.Connection, batch: JournalBatch) -> None:
    if batch.sent:
        db.executemany(
            "INSERT OR REPLACE INTO sent (seq, blob_id, epoch, ciphertext, created_at, size)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [(r.seq, r.blob_id, r.epoch, data, r.created_at, r.size) for r, data in batch.sent],
        )
    if batch.sender is not None:
        db.execute(
            "INSERT OR REPLACE INTO sender (id, next_seq, last_hash) VALUES (0, ?, ?)",
            batch.sender,
        )
    if batch.adds:
        _insert_outbox(db, batch.adds)
    if batch.reseals:
        db.executemany(
            "UPDATE outbox SET ciphertext = ?, epoch = ? WHERE blob_id = ?",
            [(e.ciphertext, e.epoch, e.blob_id) for e in batch.reseals],
        )
    if batch.attempts:
        db.executemany(
            "UPDATE outbox SET attempts = attempts + 1 WHERE blob_id = ?",
            [(b,) for b in batch.attempts],
        )
    if batch.removes:
        db.executemany("DELETE FROM outbox WHERE blob_id = ?", [(b,) for b in batch.removes])
    if batch.forget:
        db.executemany("DELETE FROM sent WHERE seq = ?", [(s,) for s in batch.forget])


def _advance_cursor(db: sqlite3.Connection, cursor: int) -> None:
    """Inside a transaction: the saved cursor to ``cursor`` unless it is past it already,
    and the delivered ids below it forgotten, but for the last ``DELIVERED_KEEP``."""
    row = db.execute("SELECT value FROM meta WHERE key = 'cursor'").fetchone()
    if cursor > int(row[0] if row else 0):
        _set(db, "cursor", str(cursor))
    db.execute(
        "DELETE FROM delivered WHERE cursor <= ? AND blob_id NOT IN"
        " (SELECT blob_id FROM delivered ORDER BY cursor DESC LIMIT ?)",
        (cursor, DELIVERED_KEEP),
    )
