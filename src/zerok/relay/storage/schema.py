"""SQLite schema and its versioned migrations."""

from __future__ import annotations

import sqlite3

from zerok.errors import StorageError

# Each entry upgrades the schema from version i to i + 1; never edit a released one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE groups (
        group_id     BLOB PRIMARY KEY,
        auth_key     BLOB NOT NULL,
        max_cursor   INTEGER NOT NULL DEFAULT 0,
        bytes_stored INTEGER NOT NULL DEFAULT 0,
        blob_count   INTEGER NOT NULL DEFAULT 0,
        created_at   INTEGER NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE devices (
        group_id      BLOB NOT NULL,
        device_id     BLOB NOT NULL,
        name          TEXT NOT NULL DEFAULT '',
        first_seen    INTEGER NOT NULL,
        last_seen     INTEGER NOT NULL,
        acked_cursor  INTEGER NOT NULL DEFAULT 0,
        revoked_at    INTEGER,
        revoked_by    BLOB,
        revoke_reason TEXT,
        push_token    TEXT,
        push_platform TEXT,
        push_app_id   TEXT,
        PRIMARY KEY (group_id, device_id)
    ) WITHOUT ROWID;

    -- A blob whose ciphertext is NULL is a tombstone: delivered to everyone or deleted,
    -- kept until it expires so that a retried PUSH still finds its original cursor.
    CREATE TABLE blobs (
        group_id   BLOB NOT NULL,
        cursor     INTEGER NOT NULL,
        blob_id    BLOB NOT NULL,
        sender     BLOB NOT NULL,
        size       INTEGER NOT NULL,
        ciphertext BLOB,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        PRIMARY KEY (group_id, cursor)
    );
    CREATE UNIQUE INDEX blobs_by_id ON blobs (group_id, blob_id);
    CREATE INDEX blobs_by_expiry ON blobs (expires_at);

    CREATE TABLE invites (
        lookup     BLOB PRIMARY KEY,
        payload    BLOB NOT NULL,
        expires_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
    # 2: invites leave a tombstone (used, cancelled, expired) so that a late fetch can be
    # told why the code no longer works; the payload itself is wiped at once.
    """
    CREATE TABLE invites_v2 (
        lookup     BLOB PRIMARY KEY,
        payload    BLOB,
        expires_at INTEGER NOT NULL,
        state      TEXT NOT NULL DEFAULT 'open'
    ) WITHOUT ROWID;
    INSERT INTO invites_v2 (lookup, payload, expires_at)
        SELECT lookup, payload, expires_at FROM invites;
    DROP TABLE invites;
    ALTER TABLE invites_v2 RENAME TO invites;
    """,
    # 3: a blob that stops being live (delivered or withdrawn) loses its row, which frees
    # its pages; its id is remembered in blob_ids until it expires, so that a retried PUSH
    # still gets its first cursor. Tombstones (ciphertext NULL) move there.
    """
    CREATE TABLE blob_ids (
        group_id   BLOB NOT NULL,
        blob_id    BLOB NOT NULL,
        cursor     INTEGER NOT NULL,
        sender     BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        PRIMARY KEY (group_id, blob_id)
    ) WITHOUT ROWID;
    CREATE INDEX blob_ids_by_expiry ON blob_ids (expires_at);
    INSERT INTO blob_ids (group_id, blob_id, cursor, sender, created_at, expires_at)
        SELECT group_id, blob_id, cursor, sender, created_at, expires_at FROM blobs
        WHERE ciphertext IS NULL;
    DELETE FROM blobs WHERE ciphertext IS NULL;
    """,
    # 4: each group's membership log, verified by the relay before it is stored. A rowid
    # table, not WITHOUT ROWID: entries (a rotation wraps a key for every member) can be
    # many kilobytes, and WITHOUT ROWID suits only rows far smaller than a page. The
    # records go with their group, never with cleanup.
    """
    CREATE TABLE group_log (
        group_id   BLOB NOT NULL REFERENCES groups (group_id) ON DELETE CASCADE,
        seq        INTEGER NOT NULL,
        hash       BLOB NOT NULL,
        entry      BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (group_id, seq)
    );
    """,
    # 5: chunks of large content. Their bytes live in files beside the database
    # (chunk_files.py); a row says how much of a chunk is there and whether it was verified.
    # touched_at: the last chunk_begin, for collecting idle uploads and unreferenced chunks.
    # chunk_refs: which live blob references which chunk (declared in clear with the push).
    """
    CREATE TABLE chunks (
        group_id   BLOB NOT NULL,
        address    BLOB NOT NULL,
        size       INTEGER NOT NULL,
        received   INTEGER NOT NULL DEFAULT 0,
        complete   INTEGER NOT NULL DEFAULT 0,
        touched_at INTEGER NOT NULL,
        PRIMARY KEY (group_id, address)
    ) WITHOUT ROWID;
    CREATE TABLE chunk_refs (
        group_id BLOB NOT NULL,
        blob_id  BLOB NOT NULL,
        address  BLOB NOT NULL,
        PRIMARY KEY (group_id, blob_id, address)
    ) WITHOUT ROWID;
    CREATE INDEX chunk_refs_by_chunk ON chunk_refs (group_id, address);
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the database to SCHEMA_VERSION; return the version it had before.

    ``conn`` must be in autocommit mode (isolation_level=None): each migration runs in
    its own transaction together with the version bump.
    """
    (current,) = conn.execute("PRAGMA user_version").fetchone()
    if current > SCHEMA_VERSION:
        raise StorageError(
            f"the database has schema version {current}, newer than this relay's "
            f"{SCHEMA_VERSION}; upgrade zerok or use another database file"
        )
    if current == 0:
        # Only possible before the first table exists; lets cleanup return freed pages.
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("VACUUM")
    for version in range(current, SCHEMA_VERSION):
        try:
            script = MIGRATIONS[version]
            conn.executescript(
                f"BEGIN IMMEDIATE; {script} PRAGMA user_version = {version + 1}; COMMIT;"
            )
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StorageError(f"migration to schema version {version + 1} failed: {exc}") from exc
    return int(current)
