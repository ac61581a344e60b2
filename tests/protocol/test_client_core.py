"""ClientCore: the client's rules with no socket, no SQLite and no clock (time is a number).

The outbox tests took over those of the old Outbox model (queued → sent → acked, the blob id
kept across reconnects), the cursor tests those of the old CursorTracker that still describe
the client: start from the saved cursor, never move backwards, tell new from seen.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zerok.errors import LocalProtocolError
from zerok.protocol import ClientCore, ClientTiming
from zerok.protocol.client_core import (
    DEFAULT_MAX_BLOB,
    MAX_IN_FLIGHT,
    OutboxEntry,
    Refusal,
    SyncStatus,
)
from zerok.wire import BlobId, DeviceId, ErrorCode, StoredBlob

ME = DeviceId(bytes([1]) * 32)
OTHER = DeviceId(bytes([2]) * 32)
NO_JITTER = ClientTiming(rng=lambda: 0.0)
T0 = 1000.0  # any clock: the core only compares and adds


def blob(n: int) -> BlobId:
    return BlobId(n.to_bytes(2, "big") * 8)


A, B, C, D = blob(1), blob(2), blob(3), blob(4)


def entry(blob_id: BlobId) -> OutboxEntry:
    return OutboxEntry(blob_id, b"sealed " + bytes(blob_id), ttl=60)


def stored(blob_id: BlobId, cursor: int, sender: DeviceId = OTHER) -> StoredBlob:
    return StoredBlob(blob_id=blob_id, cursor=cursor, sender=sender, ciphertext=b"c", timestamp=1)


def status_of(core: ClientCore) -> SyncStatus:
    """The status now (a call, so that mypy does not narrow it across steps)."""
    return core.status


def ids(entries: list[OutboxEntry]) -> list[BlobId]:
    return [e.blob_id for e in entries]


def online(*blobs: BlobId, timing: ClientTiming = NO_JITTER, cursor: int = 0) -> ClientCore:
    """A started core with ``blobs`` in its stored outbox, connected to its one relay."""
    core = ClientCore(ME, cursor=cursor, outbox=[entry(b) for b in blobs], timing=timing)
    core.relays = ["ws://one/"]
    core.start()
    core.connected(pending=0)
    return core


# -- sending --------------------------------------------------------------------------------


def test_nothing_goes_out_before_a_connection() -> None:
    core = ClientCore(ME, outbox=[entry(A)], timing=NO_JITTER)
    core.relays = ["ws://one/"]
    assert core.next_pushes(T0) == []
    core.start()
    assert core.next_pushes(T0) == []
    core.connected(pending=0)
    assert ids(core.next_pushes(T0)) == [A]


def test_the_stored_outbox_goes_out_oldest_first_with_its_blob_ids() -> None:
    core = online(C, A, D, B)
    sent = core.next_pushes(T0)
    assert ids(sent) == [C, A, D, B]
    assert sent[0] == OutboxEntry(C, entry(C).ciphertext, 60, attempts=1)
    assert core.pending_count == 4  # sent but not acked is still pending


def test_at_most_max_in_flight_and_an_answer_frees_a_slot() -> None:
    many = [blob(n) for n in range(1, MAX_IN_FLIGHT + 4)]
    core = online(*many)
    first = core.next_pushes(T0)
    assert ids(first) == many[:MAX_IN_FLIGHT]
    assert core.next_pushes(T0) == []
    assert core.push_acked(many[5])
    assert ids(core.next_pushes(T0)) == [many[MAX_IN_FLIGHT]]
    core.push_lost(first[0])
    assert ids(core.next_pushes(T0)) == [many[0]]  # back in line ahead of later pushes
    core.push_refused(first[1], ErrorCode.BLOB_TOO_LARGE, "too big", T0)
    assert ids(core.next_pushes(T0)) == [many[MAX_IN_FLIGHT + 1]]
    assert core.next_pushes(T0) == []


def test_never_the_same_blob_twice_at_once() -> None:
    core = online(A, B)
    assert ids(core.next_pushes(T0)) == [A, B]
    core.add(entry(C))
    assert ids(core.next_pushes(T0)) == [C]
    assert core.next_pushes(T0 + 3600) == []


def test_a_push_joins_the_outbox_once() -> None:
    core = online(A)
    with pytest.raises(LocalProtocolError):
        core.add(entry(A))
    core.next_pushes(T0)
    with pytest.raises(LocalProtocolError):
        core.add(OutboxEntry(A, b"other"))
    assert core.pending_count == 1
    assert core.push_acked(A)
    core.add(entry(A))  # the id is free again
    assert ids(core.next_pushes(T0)) == [A]


def test_an_ack_removes_the_entry_once() -> None:
    core = online(A, B, C)
    core.next_pushes(T0)
    assert status_of(core) is SyncStatus.SYNCING
    assert core.push_acked(A)
    assert not core.push_acked(A)
    assert not core.push_acked(D)
    assert core.pending_count == 2
    assert core.push_acked(C)
    assert core.push_acked(B)
    assert core.pending_count == 0
    assert status_of(core) is SyncStatus.SYNCED


def test_an_ack_of_an_entry_not_in_flight_counts_too() -> None:
    """The relay may have it from an earlier run: whichever send was answered, it is stored."""
    core = online(A, B)
    assert core.push_acked(B)
    assert ids(core.next_pushes(T0)) == [A]


def test_a_dropped_connection_requeues_in_flight_pushes_with_their_blob_ids() -> None:
    core = online(A, B, C)
    first = core.next_pushes(T0)
    core.push_acked(A)
    core.disconnected()
    core.add(entry(D))
    assert core.next_pushes(T0) == []  # offline
    assert core.pending_count == 3
    core.connected(pending=0)
    again = core.next_pushes(T0)
    assert ids(again) == [B, C, D]
    assert [(e.ciphertext, e.ttl) for e in again[:2]] == [(e.ciphertext, e.ttl) for e in first[1:]]
    assert [e.attempts for e in again] == [2, 2, 1]


def test_a_lost_push_is_resent_and_a_stale_loss_changes_nothing() -> None:
    core = online(A)
    (first,) = core.next_pushes(T0)
    core.push_lost(first)
    (second,) = core.next_pushes(T0)
    assert (second.blob_id, second.attempts) == (A, 2)
    core.push_lost(first)  # an older send's news: the second is still in flight
    assert core.next_pushes(T0) == []
    core.push_lost(second)
    assert core.next_pushes(T0)[0].attempts == 3


@pytest.mark.parametrize("code", [ErrorCode.RATE_LIMITED, ErrorCode.RELAY_OVERLOADED])
def test_later_means_after_the_retry_time_and_is_not_reported(code: ErrorCode) -> None:
    core = online(A, B)
    sent_a, _ = core.next_pushes(T0)
    assert core.push_refused(sent_a, code, "later", T0) == Refusal(False, None, T0 + 1.0)
    assert core.next_retry(T0) == T0 + 1.0
    assert core.next_pushes(T0 + 0.99) == []
    assert ids(core.next_pushes(T0 + 1.0)) == [A]
    assert core.next_retry(T0 + 1.0) is None
    assert core.pending_count == 2


def test_later_honours_the_relays_retry_after() -> None:
    core = online(A)
    (sent,) = core.next_pushes(T0)
    refusal = core.push_refused(sent, ErrorCode.RATE_LIMITED, "later", T0, retry_after=7)
    assert refusal.retry_at == T0 + 7
    assert core.next_pushes(T0 + 6.9) == []
    assert ids(core.next_pushes(T0 + 7)) == [A]


def test_a_full_group_quota_is_reported_and_retried_after_30_s() -> None:
    core = online(A)
    (sent,) = core.next_pushes(T0)
    refusal = core.push_refused(sent, ErrorCode.GROUP_QUOTA_EXCEEDED, "quota full", T0)
    assert refusal == Refusal(False, "quota full", T0 + 30.0)
    assert core.next_pushes(T0 + 29.9) == []
    assert core.pending_count == 1
    assert ids(core.next_pushes(T0 + 30.0)) == [A]


@pytest.mark.parametrize("code", [ErrorCode.BLOB_TOO_LARGE, ErrorCode.INVALID_MESSAGE])
def test_a_refusal_of_the_blob_itself_is_final(code: ErrorCode) -> None:
    core = online(A, B)
    sent_a, _ = core.next_pushes(T0)
    refusal = core.push_refused(sent_a, code, "no", T0)
    assert refusal == Refusal(True, f"push {A} refused: no", None)
    assert core.pending_count == 1
    assert not core.push_acked(A)
    core.disconnected()
    core.connected(pending=0)
    assert ids(core.next_pushes(T0 + 3600)) == [B]


@pytest.mark.parametrize("code", [ErrorCode.NOT_BLOB_OWNER, ErrorCode.UNKNOWN_GROUP, 4242])
def test_any_other_refusal_is_reported_kept_and_retried_after_5_s(code: int) -> None:
    core = online(A)
    (sent,) = core.next_pushes(T0)
    refusal = core.push_refused(sent, code, "odd", T0)
    assert refusal == Refusal(False, f"push {A} not accepted yet: odd", T0 + 5.0)
    assert core.next_pushes(T0 + 4.9) == []
    assert ids(core.next_pushes(T0 + 5.0)) == [A]


def test_a_stale_refusal_changes_nothing() -> None:
    core = online(A)
    (first,) = core.next_pushes(T0)
    core.disconnected()
    core.connected(pending=0)
    (second,) = core.next_pushes(T0)
    stale = core.push_refused(first, ErrorCode.BLOB_TOO_LARGE, "no", T0)
    assert stale == Refusal(False, None, None)
    assert core.pending_count == 1
    assert core.push_refused(second, ErrorCode.RATE_LIMITED, "later", T0).retry_at == T0 + 1
    assert core.push_refused(second, ErrorCode.RATE_LIMITED, "twice", T0) == stale
    assert core.push_acked(A)
    assert core.push_refused(second, ErrorCode.RATE_LIMITED, "gone", T0) == stale


def test_a_retry_time_outlives_a_reconnect() -> None:
    core = online(A)
    (sent,) = core.next_pushes(T0)
    core.push_refused(sent, ErrorCode.GROUP_QUOTA_EXCEEDED, "full", T0)
    core.disconnected()
    core.connected(pending=0)
    assert core.next_pushes(T0 + 1) == []
    assert core.next_retry(T0 + 1) == T0 + 30


def test_the_next_retry_is_the_earliest_one() -> None:
    core = online(A, B, C)
    sent_a, sent_b, _ = core.next_pushes(T0)
    core.push_refused(sent_a, ErrorCode.GROUP_QUOTA_EXCEEDED, "full", T0)
    core.push_refused(sent_b, 4242, "odd", T0 + 1)
    assert core.next_retry(T0 + 1) == T0 + 6
    assert core.next_retry(T0 + 6) == T0 + 30
    assert core.next_retry(T0 + 30) is None


def test_the_retry_delays_come_from_the_timing() -> None:
    timing = ClientTiming(retry_later=0.25, quota_retry=3.0, refused_retry=0.5)
    core = online(A, B, C, timing=timing)
    sent = core.next_pushes(T0)
    assert core.push_refused(sent[0], ErrorCode.RELAY_OVERLOADED, "", T0).retry_at == T0 + 0.25
    assert core.push_refused(sent[1], ErrorCode.GROUP_QUOTA_EXCEEDED, "", T0).retry_at == T0 + 3
    assert core.push_refused(sent[2], 4242, "", T0).retry_at == T0 + 0.5


def test_nothing_goes_out_once_stopped_or_revoked() -> None:
    core = online(A)
    core.stop()
    assert core.next_pushes(T0) == []
    core.start()
    assert core.device_revoked(ME)
    assert core.next_pushes(T0) == []
    assert core.pending_count == 1  # a revoked device's outbox stays as it was


def test_the_blob_size_limit_is_the_relays() -> None:
    core = online()
    assert core.max_blob == DEFAULT_MAX_BLOB
    assert core.fits(DEFAULT_MAX_BLOB)
    assert not core.fits(DEFAULT_MAX_BLOB + 1)
    core.connected(pending=0, max_blob=100)
    assert core.fits(100)
    assert not core.fits(101)
    core.connected(pending=0, max_blob=0)  # not announced: the last known limit stays
    assert core.max_blob == 100


# -- receiving ------------------------------------------------------------------------------


def test_a_blob_is_new_unless_it_is_our_own_or_delivered_before() -> None:
    core = ClientCore(ME, delivered=[(B, 4)])
    assert core.is_new(stored(A, 5))
    assert not core.is_new(stored(A, 5, sender=ME))
    assert not core.is_new(stored(B, 4))  # remembered from the stored list
    assert not core.is_new(stored(B, 9))  # the same blob under another cursor
    core.delivered(A, 5)
    assert not core.is_new(stored(A, 5))


def test_the_landmark_is_the_last_blob_received_at_or_below_the_saved_cursor() -> None:
    assert ClientCore(ME).landmark() is None
    core = ClientCore(ME, cursor=6, delivered=[(A, 3), (B, 6)])
    core.delivered(BlobId(bytes([7]) * 16), 8)  # beyond the saved cursor: not yet
    assert core.landmark() == (B, 6)


def test_the_cursor_starts_from_the_saved_one_and_never_moves_backwards() -> None:
    core = ClientCore(ME, cursor=10)
    assert core.cursor == 10
    assert not core.confirm(5)
    assert not core.confirm(10)
    assert core.cursor == 10
    assert core.confirm(11)
    assert core.cursor == 11


@pytest.mark.parametrize("start", [-1, -100])
def test_a_negative_saved_cursor_is_refused(start: int) -> None:
    with pytest.raises(LocalProtocolError):
        ClientCore(ME, cursor=start)


@given(start=st.integers(0, 5), confirms=st.lists(st.integers(-2, 30), max_size=50))
def test_the_saved_cursor_is_the_highest_confirmed(start: int, confirms: list[int]) -> None:
    core = ClientCore(ME, cursor=start)
    highest = start
    for cursor in confirms:
        assert core.confirm(cursor) is (cursor > highest)
        highest = max(highest, cursor)
        assert core.cursor == highest


def test_delivered_ids_are_forgotten_oldest_first_once_the_cursor_passed_them() -> None:
    core = ClientCore(ME, delivered=[(blob(n), n) for n in range(1, 6)], keep_delivered=3)
    core.confirm(2)
    assert [n for n in range(1, 6) if core.is_new(stored(blob(n), n))] == [1, 2]
    core.delivered(blob(6), 6)
    core.delivered(blob(7), 7)
    core.confirm(3)  # 4 of 5 remembered ids are above the cursor: kept over the limit
    assert [n for n in range(1, 8) if not core.is_new(stored(blob(n), n))] == [4, 5, 6, 7]


@given(keep=st.integers(1, 5), confirms=st.lists(st.booleans(), max_size=60))
def test_delivered_ids_stay_remembered_while_they_may_come_back(
    keep: int, confirms: list[bool]
) -> None:
    """Blob n is delivered at cursor n, and confirmed when the flag says so; forgetting
    happens when the cursor moves (the state file prunes then too)."""
    core = ClientCore(ME, keep_delivered=keep)
    for n, confirm in enumerate(confirms, start=1):
        core.delivered(blob(n), n)
        if confirm:
            core.confirm(n)
        remembered = [i for i in range(1, n + 1) if not core.is_new(stored(blob(i), i))]
        assert remembered == list(range(n - len(remembered) + 1, n + 1)), "not the newest"
        assert len(remembered) >= min(n, keep)
        assert set(range(core.cursor + 1, n + 1)) <= set(remembered)
        if confirm:
            assert len(remembered) <= max(keep, n - core.cursor)


def test_a_notify_is_news_when_another_device_pushed_past_the_cursor() -> None:
    core = online(cursor=5)
    assert not core.notified(OTHER, 5)
    assert not core.notified(OTHER, 3)
    assert not core.notified(ME, 9)
    assert status_of(core) is SyncStatus.SYNCED
    assert core.notified(OTHER, 8)
    assert status_of(core) is SyncStatus.SYNCING
    assert core.cursor == 5  # announced is not received


def test_a_page_that_reaches_the_end_from_the_cursor_leaves_nothing_pending() -> None:
    core = ClientCore(ME)
    core.relays = ["ws://one/"]
    core.start()
    core.connected(pending=3)
    assert status_of(core) is SyncStatus.SYNCING
    core.page_fetched(0, has_more=True)
    assert status_of(core) is SyncStatus.SYNCING
    core.confirm(5)
    core.page_fetched(2, has_more=False)  # an explicit ``after`` below the cursor
    assert status_of(core) is SyncStatus.SYNCING
    core.page_fetched(5, has_more=False)
    assert status_of(core) is SyncStatus.SYNCED


# -- connecting -----------------------------------------------------------------------------


def test_relays_in_order_the_next_at_once_then_the_backoff() -> None:
    core = ClientCore(ME, timing=NO_JITTER)
    core.relays = ["ws://one/", "ws://two/", "ws://three/"]
    core.start()
    rounds = []
    for _ in range(3):
        tried = []
        while True:
            tried.append(core.relay_to_try())
            delay = core.connect_failed()
            if delay is not None:
                break
        rounds.append((tried, delay))
    assert rounds == [(["ws://one/", "ws://two/", "ws://three/"], d) for d in (1.0, 2.0, 4.0)]


def test_the_backoff_schedule_starts_over_after_a_connection() -> None:
    core = ClientCore(ME, timing=NO_JITTER)
    core.relays = ["ws://one/", "ws://two/"]
    core.start()
    delays = []
    for _ in range(7):
        assert core.connect_failed() is None
        delays.append(core.connect_failed())
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert core.connect_failed() is None
    assert core.relay_to_try() == "ws://two/"
    core.connected(pending=0)
    assert core.connections == 1
    # After a live connection too, and from the first relay again.
    assert core.disconnected() == 1.0
    assert core.relay_to_try() == "ws://one/"
    assert status_of(core) is SyncStatus.CONNECTING
    assert core.connect_failed() is None
    assert core.connect_failed() == 2.0


def round_delays(timing: ClientTiming, rounds: int) -> list[float]:
    """The delays of ``rounds`` failed rounds through one relay."""
    core = ClientCore(ME, timing=timing)
    core.relays = ["ws://one/"]
    core.start()
    delays = [core.connect_failed() for _ in range(rounds)]
    assert None not in delays
    return [d or 0.0 for d in delays]


def test_the_delay_has_jitter_from_the_timings_rng() -> None:
    assert round_delays(ClientTiming(rng=lambda: 0.5), 2) == [1.0 + 2.5, 2.0 + 2.5]
    delays = round_delays(ClientTiming(rng=random.Random(7).random), 20)
    bases = [1.0, 2.0, 4.0, 8.0, 16.0] + [30.0] * 15
    assert all(b <= d < b + 5.0 for b, d in zip(bases, delays, strict=True))
    assert len(set(delays[5:])) > 1  # spread out, not one shared instant


def test_start_begins_a_fresh_round() -> None:
    core = ClientCore(ME, timing=NO_JITTER)
    core.relays = ["ws://one/", "ws://two/"]
    core.start()
    for _ in range(5):
        core.connect_failed()
    core.stop()
    core.start()
    assert core.relay_to_try() == "ws://one/"
    assert core.connect_failed() is None
    assert core.connect_failed() == 1.0


def test_no_relay_to_try_is_a_bug_of_the_caller() -> None:
    core = ClientCore(ME)
    core.start()
    with pytest.raises(LocalProtocolError):
        core.relay_to_try()


# -- status and revocation ------------------------------------------------------------------


def test_the_status_follows_the_state() -> None:
    core = ClientCore(ME, outbox=[entry(A)], timing=NO_JITTER)
    core.relays = ["ws://one/"]
    assert status_of(core) is SyncStatus.OFFLINE  # even with pushes waiting
    core.start()
    assert status_of(core) is SyncStatus.CONNECTING
    core.connected(pending=0)
    assert status_of(core) is SyncStatus.SYNCING
    core.next_pushes(T0)
    core.push_acked(A)
    assert status_of(core) is SyncStatus.SYNCED
    core.disconnected()
    assert status_of(core) is SyncStatus.CONNECTING
    core.stop()
    assert status_of(core) is SyncStatus.OFFLINE


def test_another_devices_revocation_is_news_every_time() -> None:
    core = online()
    assert core.device_revoked(OTHER)
    assert core.device_revoked(OTHER)
    assert core.active
    assert not core.revoked
    assert status_of(core) is SyncStatus.SYNCED


def test_this_devices_revocation_is_news_once_and_stops_everything() -> None:
    core = online(A)
    assert core.device_revoked(ME)
    assert not core.device_revoked(ME)  # the relay's refusal, after its DEVICE_REVOKED
    assert core.revoked
    assert not core.active
    assert status_of(core) is SyncStatus.REVOKED
    core.stop()
    assert status_of(core) is SyncStatus.REVOKED
    core.start()
    assert not core.active
    assert core.next_pushes(T0) == []


# -- epochs, forks, rollbacks, recovery -----------------------------------------------------


def sealed(blob_id: BlobId, epoch: int) -> OutboxEntry:
    return OutboxEntry(blob_id, b"sealed under %d" % epoch, epoch=epoch, seq=1)


def test_nothing_sealed_under_an_old_epoch_goes_out_until_it_is_sealed_again() -> None:
    core = online()
    core.add(sealed(A, 0))
    core.add(sealed(B, 1))
    core.epoch = 1
    assert core.stale() == [sealed(A, 0)]
    assert ids(core.next_pushes(T0)) == [B]
    core.replace(sealed(A, 1))
    assert core.stale() == []
    [again] = core.next_pushes(T0)
    assert again == replace(sealed(A, 1), attempts=1)
    with pytest.raises(LocalProtocolError):
        core.replace(sealed(C, 1))  # not queued


def test_epoch_stale_holds_the_entry_and_a_resealing_sends_it_at_once() -> None:
    core = online()
    core.add(sealed(A, 0))
    [sent] = core.next_pushes(T0)
    refusal = core.push_refused(sent, ErrorCode.EPOCH_STALE, "stale", T0)
    assert refusal == Refusal(False, None, T0 + NO_JITTER.refused_retry, stale=True)
    assert core.epoch == 1  # at least: the relay is past epoch 0
    assert core.next_pushes(T0 + 3600) == []  # held, however long, until re-sealed
    core.replace(sealed(A, 1))
    assert ids(core.next_pushes(T0)) == [A]
    assert core.pending_count == 1


def test_a_refusal_of_the_old_sealing_still_settles_its_send() -> None:
    """Re-sealed while the old sealing was in flight: the relay's answer to that send is
    still its own (the slot is freed, the new sealing goes out)."""
    core = online()
    core.add(sealed(A, 0))
    [sent] = core.next_pushes(T0)
    core.epoch = 1
    core.replace(sealed(A, 1))
    assert core.next_pushes(T0) == []  # still in flight
    core.push_refused(sent, ErrorCode.EPOCH_STALE, "stale", T0)
    [again] = core.next_pushes(T0)
    assert again.epoch == 1 and again.attempts == 2


def test_a_forsaken_relay_is_not_tried_again() -> None:
    core = ClientCore(ME, timing=NO_JITTER)
    core.relays = ["ws://one/", "ws://two/", "ws://three/"]
    core.start()
    assert core.relay_to_try() == "ws://one/"
    core.forsake("ws://one/")
    assert core.usable_relays == ["ws://two/", "ws://three/"]
    assert core.relay_to_try() == "ws://two/"
    assert core.connect_failed() is None
    assert core.relay_to_try() == "ws://three/"
    core.forsake("ws://three/")
    assert core.relay_to_try() == "ws://two/"
    core.forsake("ws://two/")
    with pytest.raises(LocalProtocolError, match="forked"):
        core.relay_to_try()


def test_a_rollback_reads_again_from_an_earlier_cursor_and_delivers_nothing_twice() -> None:
    core = online(cursor=0)
    core.delivered(A, 3)
    core.confirm(9)
    core.page_fetched(9, has_more=False)
    assert status_of(core) is SyncStatus.SYNCED
    core.restart_from(0)
    assert core.cursor == 0
    assert status_of(core) is SyncStatus.SYNCING  # the relay has things to read again
    assert not core.is_new(stored(A, 12))  # delivered before, at another cursor
    assert core.is_new(stored(B, 12))
    core.restart_from(5)  # never forwards
    assert core.cursor == 0
    with pytest.raises(LocalProtocolError):
        core.restart_from(-1)


def test_a_recovery_reinstates_a_revoked_device() -> None:
    core = online(A)
    assert core.device_revoked(ME)
    assert status_of(core) is SyncStatus.REVOKED
    core.reinstated()
    assert not core.revoked
    core.start()
    core.connected(pending=0)
    assert ids(core.next_pushes(T0)) == [A]
