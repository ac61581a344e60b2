"""Outbox: each push goes queued → sent → acked and keeps its blob id across reconnects."""

from __future__ import annotations

import pytest

from zerok.errors import ProtocolError
from zerok.protocol import Outbox, OutboxEntry, OutboxState
from zerok.wire import BlobId


def _blob(n: int) -> BlobId:
    return BlobId(bytes([n]) * 16)


A, B, C, D = _blob(1), _blob(2), _blob(3), _blob(4)


def test_add_queues() -> None:
    box = Outbox()
    entry = box.add(A, b"sealed", ttl=60)
    assert entry == OutboxEntry(A, b"sealed", 60, OutboxState.QUEUED, 0, None)
    assert A in box
    assert len(box) == 1
    assert box.pending_count == 1
    assert box.queued() == [entry]


def test_queued_sent_acked() -> None:
    box = Outbox()
    box.add(A, b"a")
    sent = box.mark_sent(A)
    assert sent.state is OutboxState.SENT
    assert sent.attempts == 1
    assert box.queued() == []
    assert box.pending_count == 1  # sent but not acked is still pending
    acked = box.mark_acked(A, cursor=17)
    assert acked.state is OutboxState.ACKED
    assert acked.cursor == 17
    assert acked.blob_id == A
    assert A not in box
    assert len(box) == 0
    assert box.pending_count == 0
    assert box.queued() == []


def test_acked_entry_is_gone() -> None:
    box = Outbox()
    box.add(A, b"a")
    box.mark_sent(A)
    box.mark_acked(A, 1)
    with pytest.raises(ProtocolError):
        box.mark_acked(A, 1)
    with pytest.raises(ProtocolError):
        box.mark_sent(A)
    box.add(A, b"a again")  # the id is free again
    assert A in box


def test_requeue_after_disconnect_keeps_the_blob_id() -> None:
    box = Outbox()
    box.add(A, b"a")
    box.add(B, b"b")
    box.add(C, b"c")
    box.mark_sent(A)
    box.mark_sent(B)
    box.mark_acked(A, 1)
    assert box.requeue_unacked() == 1  # only B was in flight
    assert [e.blob_id for e in box.queued()] == [B, C]
    entry = box.queued()[0]
    assert entry.state is OutboxState.QUEUED
    assert entry.attempts == 1
    again = box.mark_sent(B)
    assert again.blob_id == B
    assert again.ciphertext == b"b"
    assert again.attempts == 2
    assert box.requeue_unacked() == 1
    assert box.mark_sent(B).attempts == 3


def test_requeue_with_nothing_sent() -> None:
    box = Outbox()
    assert box.requeue_unacked() == 0
    box.add(A, b"a")
    assert box.requeue_unacked() == 0
    assert box.queued()[0].attempts == 0


def test_restore_sent_requeues() -> None:
    box = Outbox()
    entry = OutboxEntry(A, b"a", ttl=5, state=OutboxState.SENT, attempts=2)
    box.restore(entry)
    assert A in box
    assert box.queued() == [entry]
    assert entry.state is OutboxState.QUEUED
    assert entry.attempts == 2
    assert box.mark_sent(A).attempts == 3


def test_restore_queued_keeps_it_queued() -> None:
    box = Outbox()
    entry = OutboxEntry(A, b"a")
    box.restore(entry)
    assert box.queued() == [entry]


def test_restore_acked_drops_it() -> None:
    box = Outbox()
    box.restore(OutboxEntry(A, b"a", state=OutboxState.ACKED, attempts=1, cursor=9))
    assert A not in box
    assert len(box) == 0
    assert box.pending_count == 0
    assert box.queued() == []


def test_duplicate_add_is_refused() -> None:
    box = Outbox()
    box.add(A, b"a")
    with pytest.raises(ProtocolError):
        box.add(A, b"other")
    box.mark_sent(A)
    with pytest.raises(ProtocolError):
        box.add(A, b"other")
    assert len(box) == 1
    assert box._get(A).ciphertext == b"a"


@pytest.mark.parametrize("times", [1, 2])
def test_mark_sent_needs_a_queued_entry(times: int) -> None:
    box = Outbox()
    box.add(A, b"a")
    box.mark_sent(A)
    for _ in range(times):
        with pytest.raises(ProtocolError):
            box.mark_sent(A)
    entry = box._get(A)
    assert entry.state is OutboxState.SENT
    assert entry.attempts == 1


def test_unknown_blob_is_refused() -> None:
    box = Outbox()
    box.add(A, b"a")
    with pytest.raises(ProtocolError):
        box.mark_sent(B)
    with pytest.raises(ProtocolError):
        box.mark_acked(B, 1)
    assert B not in box
    assert len(box) == 1


def test_order_is_preserved() -> None:
    box = Outbox()
    for blob in (C, A, D, B):
        box.add(blob, bytes(blob))
    assert [e.blob_id for e in box.queued()] == [C, A, D, B]
    box.mark_sent(C)
    box.mark_sent(A)
    assert [e.blob_id for e in box.queued()] == [D, B]
    box.requeue_unacked()
    # Requeued entries keep their original place, ahead of later pushes.
    assert [e.blob_id for e in box.queued()] == [C, A, D, B]
    box.mark_sent(C)
    box.mark_acked(C, 1)
    assert [e.blob_id for e in box.queued()] == [A, D, B]


def test_pending_count_counts_queued_and_sent() -> None:
    box = Outbox()
    assert box.pending_count == 0
    for blob in (A, B, C):
        box.add(blob, b"x")
    assert box.pending_count == 3
    box.mark_sent(A)
    box.mark_sent(B)
    assert box.pending_count == 3
    box.mark_acked(A, 1)
    assert box.pending_count == 2
    box.mark_acked(C, 2)  # acked straight from queued (the relay had it from before)
    assert box.pending_count == 1
    assert len(box) == 1
    assert B in box
    assert "not a blob id" not in box
