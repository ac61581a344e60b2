"""``LocalState``: a device's state file, directly (the client tests reach it end to end).

Kept to the state's own promises: the outbox keeps its order, epochs and seqs and counts
attempts, the cursor never moves backwards (but for a rollback's rewind), delivered ids are
pruned to the newest ``DELIVERED_KEEP``, a group record with its log and keys survives a
reopen, the chain and keep window are written with the outbox, a corrupt, older (protocol
1) or newer file is a StateError, the file is its owner's only. The delivered table is read
with SQL: how the client reads it back is the client's business.
"""

from __future__ import annotations

import sqlite3
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from zerok.client.state import (
    FIRST_SEQ,
    NO_HASH,
    STATE_VERSION,
    GroupMeta,
    JournalBatch,
    LocalState,
    LogRow,
    SentRow,
)
from zerok.errors import StateError
from zerok.protocol.client_core import DELIVERED_KEEP, OutboxEntry
from zerok.wire import BlobId, GroupId


@pytest.fixture
def state(tmp_path: Path) -> Iterator[LocalState]:
    opened = LocalState(tmp_path / "device")
    yield opened
    opened.close()


def entry(n: int, *, epoch: int = 0) -> OutboxEntry:
    return OutboxEntry(
        blob_id=BlobId(bytes([n]) * 16), ciphertext=b"sealed %d" % n, ttl=n, epoch=epoch, seq=n
    )


def outbox(state: LocalState) -> list[tuple[BlobId, bytes, int, int]]:
    return [(e.blob_id, e.ciphertext, e.ttl, e.attempts) for e in state.outbox_load()]


def adds(*entries: OutboxEntry) -> JournalBatch:
    return JournalBatch(adds=[(e, 1000 + e.seq) for e in entries])


def deliver(state: LocalState, cursors: range) -> None:
    """Mark blobs delivered: the bulk in one transaction (one fsync), the last few one by
    one through the state's own method."""
    *bulk, last = [(c.to_bytes(16, "big"), c) for c in cursors]
    with sqlite3.connect(state.path) as db:
        db.executemany("INSERT INTO delivered (blob_id, cursor) VALUES (?, ?)", bulk[:-3])
    for blob_id, cursor in [*bulk[-3:], last]:
        state.mark_delivered(blob_id, cursor)


def delivered_rows(state: LocalState) -> list[tuple[bytes, int]]:
    with sqlite3.connect(state.path) as db:
        rows = db.execute("SELECT blob_id, cursor FROM delivered ORDER BY cursor").fetchall()
    return [(bytes(r[0]), int(r[1])) for r in rows]


def test_outbox_keeps_the_order_of_adding_counts_attempts_and_survives_a_reopen(
    tmp_path: Path,
) -> None:
    state = LocalState(tmp_path)
    for n in (3, 1, 2):  # ids out of order: the order is the adding order
        state.outbox_add(entry(n, epoch=n), now_ms=1000 + n)
    state.outbox_attempt(entry(1).blob_id)
    state.outbox_attempt(entry(1).blob_id)
    state.outbox_attempt(BlobId(bytes(16)))  # not queued: nothing happens
    state.outbox_remove(entry(3).blob_id)
    state.outbox_remove(entry(3).blob_id)  # already gone: nothing happens
    state.close()

    again = LocalState(tmp_path)
    try:
        assert outbox(again) == [
            (entry(1).blob_id, b"sealed 1", 1, 2),
            (entry(2).blob_id, b"sealed 2", 2, 0),
        ]
        assert [(e.epoch, e.seq, e.repair) for e in again.outbox_load()] == [
            (1, 1, False),
            (2, 2, False),
        ]
        again.outbox_add(entry(3), now_ms=2000)  # re-added: goes to the end
        assert [e.blob_id for e in again.outbox_load()] == [
            entry(1).blob_id,
            entry(2).blob_id,
            entry(3).blob_id,
        ]
        with pytest.raises(sqlite3.IntegrityError):  # one entry per blob id
            again.outbox_add(entry(2), now_ms=3000)
    finally:
        again.close()


def test_cursor_never_moves_backwards(state: LocalState) -> None:
    assert state.cursor == 0
    state.save_cursor(5)
    assert state.cursor == 5
    state.save_cursor(3)
    assert state.cursor == 5
    state.save_cursor(5)
    assert state.cursor == 5
    state.save_cursor(9)
    assert state.cursor == 9


def test_delivered_ids_are_pruned_to_the_newest_delivered_keep(state: LocalState) -> None:
    total = DELIVERED_KEEP + 5
    deliver(state, range(1, total + 1))
    state.mark_delivered((1).to_bytes(16, "big"), 1)  # again: still one row
    assert len(delivered_rows(state)) == total
    state.save_cursor(total)
    rows = delivered_rows(state)
    assert [cursor for _, cursor in rows] == list(range(6, total + 1))
    assert rows[0] == ((6).to_bytes(16, "big"), 6)


def test_delivered_ids_above_the_saved_cursor_are_kept(state: LocalState) -> None:
    deliver(state, range(1, DELIVERED_KEEP + 11))
    state.save_cursor(5)  # ids past the cursor stay, however many there are
    rows = delivered_rows(state)
    assert [cursor for _, cursor in rows] == list(range(6, DELIVERED_KEEP + 11))


def test_delivered_ids_read_back_oldest_first(state: LocalState) -> None:
    """What the client loads into its ClientCore when it starts."""
    for cursor in (3, 1, 2):
        state.mark_delivered(BlobId(bytes([cursor]) * 16), cursor)
    loaded = state.delivered_load()
    assert loaded == [(BlobId(bytes([c]) * 16), c) for c in (1, 2, 3)]
    assert all(isinstance(blob_id, BlobId) for blob_id, _ in loaded)


def test_group_log_and_keys_round_trip_and_relays_can_change(tmp_path: Path) -> None:
    group = GroupMeta(GroupId(bytes(range(32))), ["ws://a.example/", "ws://b.example/"], "home")
    rows = [LogRow(0, b"h0" * 16, b"genesis"), LogRow(1, b"h1" * 16, b"invite")]
    state = LocalState(tmp_path)
    assert not state.has_group()
    with pytest.raises(StateError, match="no group"):
        state.load_group()
    state.start_group_later(group, rows, {0: b"k0" * 16}).result(5)
    with pytest.raises(StateError, match="already belongs"):  # one group per device
        state.start_group_later(group, rows, {}).result(5)
    state.save_membership_later([LogRow(2, b"h2" * 16, b"enroll")], {3: b"k3" * 16}).result(5)
    # A key held already is kept: keys only come in, never change.
    state.save_membership_later([], {0: b"other" * 6 + b"xx"}).result(5)
    state.close()

    again = LocalState(tmp_path)
    try:
        assert again.has_group()
        assert again.load_group() == group
        assert [r.entry for r in again.log_load()] == [b"genesis", b"invite", b"enroll"]
        assert again.log_load()[2] == LogRow(2, b"h2" * 16, b"enroll")
        assert again.keys_load() == {0: b"k0" * 16, 3: b"k3" * 16}
        again.set_relays(["ws://c.example/"])
        assert again.load_group() == GroupMeta(group.group_id, ["ws://c.example/"], "home")
    finally:
        again.close()


@pytest.mark.parametrize(
    "record",
    [
        "not json",
        '{"relays": []}',
        '{"group_id": "zz", "relays": []}',
        '{"group_id": "%s", "relays": 5}' % ("00" * 32),
    ],
    ids=["not-json", "no-group-id", "bad-hex", "relays-not-a-list"],
)
def test_corrupt_group_record_is_a_state_error(state: LocalState, record: str) -> None:
    state.set_value("group", record)
    with pytest.raises(StateError, match="corrupt"):
        state.load_group()


def test_a_protocol_1_state_file_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    """zerok 0.1's file: its tables as they were, state version 1, a root key."""
    (tmp_path / "state.db").touch(mode=0o600)
    with sqlite3.connect(tmp_path / "state.db") as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY, blob_id BLOB, ciphertext BLOB)")
        db.execute("INSERT INTO meta VALUES ('state_version', '1'), ('group', '{}')")
    with pytest.raises(StateError, match=r"zerok 0\.1 for protocol 1; move it away and pair"):
        LocalState(tmp_path)
    with sqlite3.connect(tmp_path / "state.db") as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"meta", "outbox"}, "the old file was changed"


def test_state_of_a_newer_version_is_refused(tmp_path: Path) -> None:
    state = LocalState(tmp_path)
    assert state.get_value("state_version") == STATE_VERSION
    state.set_value("state_version", str(int(STATE_VERSION) + 1))
    state.close()
    with pytest.raises(StateError, match="newer"):
        LocalState(tmp_path)


def test_state_file_is_for_its_owner_only(tmp_path: Path) -> None:
    state = LocalState(tmp_path / "new")
    try:
        assert stat.S_IMODE(state.path.stat().st_mode) == 0o600
        assert stat.S_IMODE(state.dir.stat().st_mode) == 0o700
    finally:
        state.close()


# -- the writer thread: group commit ---------------------------------------------------------


def test_queued_writes_share_one_commit(state: LocalState) -> None:
    commits: list[int] = []
    started = threading.Event()
    release = threading.Event()

    def blocker(db: sqlite3.Connection) -> None:
        started.set()
        release.wait(5)

    first = state.submit(blocker)
    assert started.wait(5)
    # Queued while the first commit runs: they all go into the next one.
    futures = [state.journal_later(adds(entry(n))) for n in range(20)]
    futures.append(state.save_page_later([(BlobId(bytes([7]) * 16), 5)], 5, b"chains"))
    state._db.set_trace_callback(lambda sql: commits.append(1) if sql == "COMMIT" else None)
    release.set()
    for future in [first, *futures]:
        future.result(5)
    assert len(commits) == 2  # the blocker's own, then one for all 21 queued behind it
    assert [row[0] for row in outbox(state)] == [entry(n).blob_id for n in range(20)]
    assert state.cursor == 5
    assert state.delivered_load() == [(BlobId(bytes([7]) * 16), 5)]
    assert state.chains_load() == b"chains"


def test_a_failed_write_fails_alone(state: LocalState) -> None:
    state.journal_later(adds(entry(1))).result(5)
    again = state.journal_later(adds(entry(1)))  # the same blob id: UNIQUE fails
    other = state.journal_later(JournalBatch(adds=[(entry(2), 3)], removes=[entry(1).blob_id]))
    with pytest.raises(StateError):
        again.result(5)
    other.result(5)
    assert [row[0] for row in outbox(state)] == [entry(2).blob_id]


def test_a_new_blob_its_keep_row_and_the_chain_are_written_together(state: LocalState) -> None:
    assert state.sender_load() == (FIRST_SEQ, NO_HASH)
    row = SentRow(1, entry(1).blob_id, 0, 1000, 8)
    batch = adds(entry(1))
    batch.sent.append((row, b"sealed 1"))
    batch.sender = (2, b"h" * 32)
    state.journal_later(batch).result(5)
    assert state.sender_load() == (2, b"h" * 32)
    assert state.sent_load() == [row]
    assert state.sent_ciphertexts([1, 9]) == {1: b"sealed 1"}
    # Re-sealed under a newer epoch: the outbox entry changes, the kept copy does not.
    resealed = OutboxEntry(entry(1).blob_id, b"resealed", 1, epoch=4, seq=1)
    state.journal_later(JournalBatch(reseals=[resealed])).result(5)
    [loaded] = state.outbox_load()
    assert (loaded.ciphertext, loaded.epoch, loaded.seq) == (b"resealed", 4, 1)
    assert state.sent_ciphertexts([1]) == {1: b"sealed 1"}
    state.journal_later(JournalBatch(forget=[1], removes=[loaded.blob_id])).result(5)
    assert state.sent_load() == [] and state.outbox_load() == []


def test_a_rollback_rewinds_the_cursor_and_remembers_where_it_was(state: LocalState) -> None:
    state.save_cursor(40)
    state.rewind_later(0, 40).result(5)
    assert (state.cursor, state.quiet_until) == (0, 40)
    state.save_cursor(3)
    assert state.cursor == 3


def test_close_waits_for_queued_writes(tmp_path: Path) -> None:
    state = LocalState(tmp_path / "s")
    futures = [state.journal_later(adds(entry(n))) for n in range(50)]
    state.close()
    assert all(f.done() and f.exception() is None for f in futures)
    again = LocalState(tmp_path / "s")
    assert len(again.outbox_load()) == 50
    again.close()
