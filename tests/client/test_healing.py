"""``Healing``: a device's integrity memory, without a relay: which alerts reach the app,
which repairs it asks for (and how often), what it keeps to push again."""

from __future__ import annotations

from zerok.client.events import IntegrityAlert
from zerok.client.integrity import Healing
from zerok.client.state import SentRow
from zerok.crypto.blob import NO_LINK, BlobHeader, OpenedBlob
from zerok.protocol.integrity import KeepPolicy, SenderChains
from zerok.wire import BlobId, DeviceId, StoredBlob

ME = DeviceId(bytes([1]) * 32)
OTHER = DeviceId(bytes([2]) * 32)
THIRD = DeviceId(bytes([3]) * 32)
RELAY = "ws://relay/"


def chain(sender: DeviceId, count: int) -> list[OpenedBlob]:
    """``count`` blobs of one sender, each linking to the one before."""
    blobs: list[OpenedBlob] = []
    link = NO_LINK
    for seq in range(1, count + 1):
        blob = OpenedBlob(
            BlobHeader(epoch=0, kind=0, seq=seq, link=link),
            b"data %d" % seq,
            BlobId(bytes([sender[0], seq]) * 8),
        )
        blobs.append(blob)
        link = blob.record_hash
    return blobs


def at(cursor: int, blob: OpenedBlob, sender: DeviceId = OTHER) -> StoredBlob:
    return StoredBlob(
        blob_id=blob.blob_id, cursor=cursor, sender=sender, ciphertext=b"", timestamp=1
    )


def healing(*, quiet_until: int = 0, rows: list[SentRow] | None = None) -> Healing:
    return Healing(SenderChains(), rows or [], policy=KeepPolicy(), quiet_until=quiet_until)


def kinds(alerts: list[IntegrityAlert]) -> list[tuple[str, int, int]]:
    return [(a.kind, a.first, a.last) for a in alerts]


def test_a_gap_is_reported_once_and_asked_for_once_per_connection() -> None:
    h = healing()
    blobs = chain(OTHER, 5)
    assert h.observe(at(1, blobs[0]), blobs[0], RELAY) == (True, [])
    deliver, alerts = h.observe(at(2, blobs[3]), blobs[3], RELAY)
    assert deliver and kinds(alerts) == [("gap", 2, 3)]
    assert alerts[0].relay == RELAY and alerts[0].sender == OTHER
    assert h.repairs_due(ME) == [(OTHER, [(2, 3)])]
    assert h.repairs_due(ME) == []  # asked already
    h.new_connection()
    assert h.repairs_due(ME) == [(OTHER, [(2, 3)])]  # the request may have been lost
    deliver, alerts = h.observe(at(3, blobs[1]), blobs[1], RELAY)
    assert deliver and kinds(alerts) == [("recovered", 2, 2)]
    assert h.repairs_due(ME) == [(OTHER, [(3, 3)])]  # what is missing changed


def test_this_devices_own_gaps_are_not_asked_of_itself() -> None:
    h = healing()
    blobs = chain(ME, 3)
    h.observe(at(1, blobs[0], ME), blobs[0], RELAY)
    h.observe(at(2, blobs[2], ME), blobs[2], RELAY)
    assert h.repairs_due(ME) == []


def test_a_replay_is_reported_unless_it_was_expected() -> None:
    blobs = chain(OTHER, 3)
    h = healing()
    for cursor, blob in enumerate(blobs, start=1):
        h.observe(at(cursor, blob), blob, RELAY)
    deliver, alerts = h.observe(at(9, blobs[0]), blobs[0], RELAY)
    assert not deliver and kinds(alerts) == [("replay", 1, 1)]
    # Another device asked OTHER to push 1..2 again: seeing them again is no news.
    h.expect(OTHER, [(1, 2)])
    assert h.observe(at(10, blobs[1]), blobs[1], RELAY) == (False, [])
    assert kinds(h.observe(at(11, blobs[2]), blobs[2], RELAY)[1]) == [("replay", 3, 3)]


def test_after_a_rollback_replays_up_to_the_old_cursor_are_quiet() -> None:
    blobs = chain(OTHER, 2)
    h = healing()
    h.observe(at(1, blobs[0]), blobs[0], RELAY)
    h.observe(at(2, blobs[1]), blobs[1], RELAY)
    h.rolled_back(7)
    assert h.quiet_until == 7
    assert h.observe(at(1, blobs[0]), blobs[0], RELAY) == (False, [])
    assert h.observe(at(7, blobs[1]), blobs[1], RELAY) == (False, [])
    assert kinds(h.observe(at(8, blobs[1]), blobs[1], RELAY)[1]) == [("replay", 2, 2)]


def test_a_snapshot_takes_back_a_blob_the_app_never_took() -> None:
    blobs = chain(OTHER, 2)
    h = healing()
    h.observe(at(1, blobs[0]), blobs[0], RELAY)
    before = h.snapshot()
    assert h.observe(at(2, blobs[1]), blobs[1], RELAY) == (True, [])
    h.restore(before)
    assert h.observe(at(2, blobs[1]), blobs[1], RELAY) == (True, [])


def rows(count: int, *, size: int = 10, start_ms: int = 0) -> list[SentRow]:
    return [
        SentRow(seq, BlobId(seq.to_bytes(16, "big")), 0, start_ms + seq, size)
        for seq in range(1, count + 1)
    ]


def test_the_keep_window_answers_repairs_and_is_pruned_by_its_policy() -> None:
    kept = rows(5)
    h = Healing(SenderChains(), kept, policy=KeepPolicy(max_count=3, max_age_ms=1000))
    assert [r.seq for r in h.select([(2, 3), (5, 9)])] == [2, 3, 5]
    assert h.prune(now_ms=10) == [1, 2]  # over the count
    assert [r.seq for r in h.rows()] == [3, 4, 5]
    assert h.prune(now_ms=10) == []
    h.kept(SentRow(6, BlobId(bytes(16)), 1, 2000, 10))
    assert h.prune(now_ms=1004 + 1) == [3, 4]  # too old (and then within the count)
    assert [r.seq for r in h.rows()] == [5, 6]
    h.drop([5])
    assert [r.seq for r in h.select([(1, 10)])] == [6]


def test_the_keep_window_is_bounded_in_bytes() -> None:
    h = Healing(SenderChains(), rows(4, size=100), policy=KeepPolicy(max_bytes=250))
    assert h.prune(now_ms=10) == [1, 2]
