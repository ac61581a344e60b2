"""Receiver integrity (SenderChains, rollback), repair requests and the sender's keep window.

Streams are built with the real chain hash of zerok.crypto.blob, so ``link`` and
``record_hash`` relate exactly as they do for opened blobs.
"""

from __future__ import annotations

import contextlib
import itertools

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zerok.crypto.blob import KIND_DATA, NO_LINK, SEQ_MAX, chain_hash
from zerok.errors import ConfigError, LocalProtocolError, StateError, WireError
from zerok.protocol.integrity import (
    MAX_REPAIR_RANGES,
    IntegrityAlert,
    KeepPolicy,
    SenderChains,
    SentRecord,
    Verdict,
    decode_repair,
    detect_reused_cursor,
    detect_rollback,
    encode_repair,
    expired,
    select_repair,
)
from zerok.wire.ids import BlobId, DeviceId

A = DeviceId(bytes([1]) * 32)
B = DeviceId(bytes([2]) * 32)
C = DeviceId(bytes([3]) * 32)

Record = tuple[int, bytes, bytes]  # seq, link, record hash


def stream(n: int, tag: bytes = b"") -> list[Record]:
    """A sender's blobs 1..n, each linking to the one before."""
    records: list[Record] = []
    link = NO_LINK
    for seq in range(1, n + 1):
        blob_id = BlobId(seq.to_bytes(16, "big"))
        record_hash = chain_hash(blob_id, seq, KIND_DATA, b"data %d" % seq + tag)
        records.append((seq, link, record_hash))
        link = record_hash
    return records


S = stream(20)
FORKED = stream(20, b" restored")  # another history of the same device


def feed(chains: SenderChains, sender: DeviceId, *records: Record) -> list[Verdict]:
    return [chains.observe(sender, *record)[0] for record in records]


def observe(
    chains: SenderChains, record: Record, sender: DeviceId = A
) -> tuple[Verdict, list[str]]:
    verdict, alerts = chains.observe(sender, *record)
    return verdict, [alert.kind for alert in alerts]


def at(seq: int) -> Record:
    return S[seq - 1]


# -- the rules -------------------------------------------------------------------------------


@pytest.mark.parametrize("first", [1, 2, 500])
def test_first_sighting_is_the_baseline(first: int) -> None:
    chains = SenderChains()
    record = stream(first)[-1]
    assert chains.observe(A, *record) == (Verdict.DELIVER, [])
    assert chains.missing() == {}
    assert A in chains


def test_in_order_stream_has_no_alerts() -> None:
    chains = SenderChains()
    for record in S:
        assert chains.observe(A, *record) == (Verdict.DELIVER, [])
    assert chains.missing() == {}


def test_gap_is_reported_delivered_and_missing() -> None:
    chains = SenderChains()
    feed(chains, A, at(1), at(2))
    verdict, alerts = chains.observe(A, *at(6))
    assert verdict is Verdict.DELIVER
    assert alerts == [IntegrityAlert("gap", A, 3, 5, alerts[0].detail)]
    assert A.short() in alerts[0].detail and "3–5" in alerts[0].detail
    assert chains.missing() == {A: [(3, 5)]}


def test_filling_a_gap_is_delivered_and_recovered() -> None:
    chains = SenderChains()
    feed(chains, A, at(1), at(6))
    verdict, alerts = chains.observe(A, *at(4))
    assert verdict is Verdict.DELIVER
    assert [(a.kind, a.sender, a.first, a.last) for a in alerts] == [("recovered", A, 4, 4)]
    assert chains.missing() == {A: [(2, 3), (5, 5)]}
    assert observe(chains, at(2)) == (Verdict.DELIVER, ["recovered"])
    assert observe(chains, at(5)) == (Verdict.DELIVER, ["recovered"])
    assert observe(chains, at(3)) == (Verdict.DELIVER, ["recovered"])
    assert chains.missing() == {}
    assert observe(chains, at(7)) == (Verdict.DELIVER, [])


def test_fork_at_the_next_position_is_delivered() -> None:
    chains = SenderChains()
    feed(chains, A, at(1), at(2), at(3))
    verdict, alerts = chains.observe(A, *FORKED[3])  # seq 4 linking to another seq 3
    assert verdict is Verdict.DELIVER
    assert [(a.kind, a.first, a.last) for a in alerts] == [("fork", 4, 4)]
    assert "restored from a backup" in alerts[0].detail


def test_replay_of_a_delivered_blob_is_dropped() -> None:
    chains = SenderChains()
    feed(chains, A, *S[:5])
    for seq in (5, 3, 1):
        verdict, alerts = chains.observe(A, *at(seq))
        assert verdict is Verdict.DROP
        assert [(a.kind, a.sender, a.first, a.last) for a in alerts] == [("replay", A, seq, seq)]
    assert chains.missing() == {}


def test_replay_after_recovery_is_dropped() -> None:
    chains = SenderChains()
    feed(chains, A, at(1), at(3), at(2))
    assert observe(chains, at(2)) == (Verdict.DROP, ["replay"])


def test_replay_older_than_the_recent_window_is_dropped() -> None:
    chains = SenderChains(recent_per_sender=2)
    feed(chains, A, *S[:10])
    assert observe(chains, at(1)) == (Verdict.DROP, ["replay"])
    # Below the window nothing tells a replay from a fork: both are refused.
    assert observe(chains, FORKED[0]) == (Verdict.DROP, ["replay"])


def test_blob_below_the_baseline_is_a_silent_gap() -> None:
    chains = SenderChains()
    feed(chains, A, at(6))
    assert chains.missing() == {}  # the relay may have cleaned them up: nothing to ask for
    verdict, alerts = chains.observe(A, *at(5))
    assert verdict is Verdict.DELIVER
    assert [(a.kind, a.first) for a in alerts] == [("reorder", 5)]
    assert observe(chains, at(5)) == (Verdict.DROP, ["replay"])
    assert observe(chains, at(1)) == (Verdict.DELIVER, ["reorder"])
    assert chains.missing() == {}


def test_silent_gap_checks_the_chain_at_its_edge() -> None:
    chains = SenderChains()
    feed(chains, A, at(6))
    assert observe(chains, FORKED[4]) == (Verdict.DELIVER, ["reorder", "fork"])


def test_fork_at_an_old_position_is_delivered_once() -> None:
    chains = SenderChains()
    feed(chains, A, *S[:5])
    verdict, alerts = chains.observe(A, *FORKED[2])
    assert (verdict, [a.kind for a in alerts]) == (Verdict.DELIVER, ["fork"])
    assert alerts[0].first == alerts[0].last == 3
    assert observe(chains, FORKED[2]) == (Verdict.DROP, ["replay"])
    assert observe(chains, at(3)) == (Verdict.DROP, ["replay"])


def test_gap_edges_check_the_chain() -> None:
    chains = SenderChains()
    feed(chains, A, at(1), at(2), at(6))  # gap 3..5
    # seq 3 must link to seq 2 as delivered; FORKED[2] links to another seq 2.
    assert observe(chains, FORKED[2]) == (Verdict.DELIVER, ["recovered", "fork"])
    # seq 5 must hash to what seq 6 linked to.
    assert observe(chains, FORKED[4]) == (Verdict.DELIVER, ["recovered", "fork"])
    # Between two blobs of the other history, only that history's seq 4 fits.
    probe = SenderChains.from_bytes(chains.to_bytes())
    assert observe(probe, at(4)) == (Verdict.DELIVER, ["recovered", "fork"])
    assert observe(chains, FORKED[3]) == (Verdict.DELIVER, ["recovered"])


def test_matching_gap_edges_raise_no_fork() -> None:
    chains = SenderChains()
    feed(chains, A, at(1), at(4))
    assert observe(chains, at(2)) == (Verdict.DELIVER, ["recovered"])
    assert observe(chains, at(3)) == (Verdict.DELIVER, ["recovered"])


def test_senders_are_tracked_apart() -> None:
    chains = SenderChains()
    feed(chains, A, at(1), at(2))
    feed(chains, B, at(1), at(4))
    assert observe(chains, at(3), A) == (Verdict.DELIVER, [])
    assert observe(chains, at(2), A) == (Verdict.DROP, ["replay"])
    assert chains.missing() == {B: [(2, 3)]}


def test_forget_starts_a_sender_over() -> None:
    chains = SenderChains()
    feed(chains, A, at(1), at(5))
    chains.forget(A)
    chains.forget(C)  # unknown: ignored
    assert A not in chains and chains.missing() == {}
    assert chains.observe(A, *at(2)) == (Verdict.DELIVER, [])


def test_missing_is_ascending_and_only_reported_gaps() -> None:
    chains = SenderChains()
    feed(chains, A, at(5), at(7), at(10), at(15))
    assert chains.missing() == {A: [(6, 6), (8, 9), (11, 14)]}


# -- bounds ----------------------------------------------------------------------------------


def test_too_many_gaps_merge_the_closest_without_losing_coverage() -> None:
    chains = SenderChains(max_ranges_per_sender=2)
    feed(chains, A, at(1), at(3), at(10), at(12))  # gaps 2, 4..9, 11
    assert chains.missing() == {A: [(2, 9), (11, 11)]}  # 2 and 4..9 were 1 apart
    # 3 lies inside the merged range but is known to be delivered: still a replay.
    assert observe(chains, at(3)) == (Verdict.DROP, ["replay"])
    assert observe(chains, at(2)) == (Verdict.DELIVER, ["recovered"])


def test_merging_keeps_the_ranges_bounded() -> None:
    chains = SenderChains(max_ranges_per_sender=3)
    feed(chains, A, *S[::2])  # every other seq: 9 gaps
    missing = chains.missing()[A]
    assert len(missing) == 3
    covered = {s for first, last in missing for s in range(first, last + 1)}
    assert set(range(2, 19, 2)) <= covered


def test_merging_a_silent_gap_into_a_reported_one_reports_it() -> None:
    chains = SenderChains(max_ranges_per_sender=1)
    feed(chains, A, at(5), at(8))
    assert chains.missing() == {A: [(1, 7)]}


def test_senders_over_the_cap_evict_the_least_recently_seen() -> None:
    chains = SenderChains(max_senders=2)
    feed(chains, A, at(1))
    feed(chains, B, at(1))
    feed(chains, A, at(2))  # A is now more recent than B
    feed(chains, C, at(1))
    assert len(chains) == 2
    assert A in chains and C in chains and B not in chains
    # B starts over: what it sends next is a new baseline.
    assert chains.observe(B, *at(9)) == (Verdict.DELIVER, [])


def test_recent_hashes_are_bounded() -> None:
    chains = SenderChains(recent_per_sender=4)
    feed(chains, A, *S)
    for other in range(10):  # many forks at one position
        fork = (20, S[18][2], chain_hash(BlobId(bytes(16)), 20, KIND_DATA, b"%d" % other))
        chains.observe(A, *fork)
    state = msgspec.msgpack.decode(chains.to_bytes())
    recent = state[1][0][4]
    assert sum(len(hashes) for _, hashes in recent) <= 4


@pytest.mark.parametrize(
    ("seq", "link", "record_hash"),
    [
        (0, NO_LINK, NO_LINK),
        (SEQ_MAX + 1, NO_LINK, NO_LINK),
        (1, bytes(31), NO_LINK),
        (1, NO_LINK, bytes(33)),
    ],
    ids=["seq-0", "seq-too-big", "short-link", "long-hash"],
)
def test_bad_observations_are_refused(seq: int, link: bytes, record_hash: bytes) -> None:
    with pytest.raises(LocalProtocolError):
        SenderChains().observe(A, seq, link, record_hash)


@pytest.mark.parametrize("limit", ["max_ranges_per_sender", "max_senders", "recent_per_sender"])
def test_limits_must_be_positive(limit: str) -> None:
    with pytest.raises(LocalProtocolError, match="at least 1"):
        SenderChains(**{limit: 0})


# -- rollback --------------------------------------------------------------------------------


def test_rollback_is_detected() -> None:
    alert = detect_rollback(saved_cursor=120, relay_head=100)
    assert alert is not None
    assert (alert.kind, alert.sender, alert.first, alert.last) == ("rollback", None, 101, 120)
    assert "100" in alert.detail and "120" in alert.detail


@pytest.mark.parametrize(("saved", "head"), [(0, 0), (100, 100), (100, 150), (0, 7)])
def test_no_rollback_when_the_relay_is_ahead(saved: int, head: int) -> None:
    assert detect_rollback(saved, head) is None


@pytest.mark.parametrize(("saved", "head"), [(-1, 0), (0, -1)])
def test_rollback_refuses_negative_cursors(saved: int, head: int) -> None:
    with pytest.raises(LocalProtocolError):
        detect_rollback(saved, head)


# -- persistence -----------------------------------------------------------------------------


def _busy() -> SenderChains:
    chains = SenderChains()
    feed(chains, A, at(3), at(4), at(9), at(6))
    feed(chains, B, *S[:5])
    return chains


def test_round_trip_keeps_every_decision() -> None:
    original = _busy()
    loaded = SenderChains.from_bytes(original.to_bytes())
    assert loaded.missing() == original.missing() == {A: [(5, 5), (7, 8)]}
    assert loaded.to_bytes() == original.to_bytes()
    probes = [(A, at(5)), (A, at(6)), (A, at(1)), (A, FORKED[9]), (B, at(2)), (B, FORKED[5])]
    for sender, record in probes:
        assert loaded.observe(sender, *record) == original.observe(sender, *record)


def test_empty_state_round_trips() -> None:
    loaded = SenderChains.from_bytes(SenderChains().to_bytes())
    assert len(loaded) == 0 and loaded.missing() == {}


def test_loading_under_smaller_limits_rebounds() -> None:
    chains = SenderChains()
    feed(chains, A, *S[::2])
    feed(chains, B, at(1))
    feed(chains, C, at(1))
    loaded = SenderChains.from_bytes(
        chains.to_bytes(), max_ranges_per_sender=2, max_senders=2, recent_per_sender=1
    )
    assert len(loaded) == 2 and A not in loaded  # A was the least recently seen
    assert loaded.missing() == {}


def _state(chains: list[list[object]], version: int = 1) -> bytes:
    return msgspec.msgpack.encode([version, chains])


H = bytes(32)
GOOD_CHAIN: list[object] = [bytes(A), 10, H, [[2, 3, True, H, None]], [[10, [H]]]]


def _chain(**changes: object) -> list[object]:
    fields = ["sender", "top", "head", "gaps", "recent"]
    return [changes.get(name, value) for name, value in zip(fields, GOOD_CHAIN, strict=True)]


def test_the_hand_made_state_is_valid() -> None:
    assert SenderChains.from_bytes(_state([GOOD_CHAIN])).missing() == {A: [(2, 3)]}


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        b"not msgpack at all",
        _state([GOOD_CHAIN]) + b"\x00",
        msgspec.msgpack.encode({"version": 1, "chains": []}),
        _state([[*GOOD_CHAIN, 1]]),
        _state([_chain(sender=bytes(31))]),
        _state([_chain(top=0)]),
        _state([_chain(head=bytes(31))]),
        _state([_chain(gaps=[[3, 2, True, None, None]])]),
        _state([_chain(gaps=[[0, 2, True, None, None]])]),
        _state([_chain(gaps=[[2, 10, True, None, None]])]),
        _state([_chain(gaps=[[2, 4, True, None, None], [5, 6, True, None, None]])]),
        _state([_chain(gaps=[[5, 6, True, None, None], [2, 3, True, None, None]])]),
        _state([_chain(gaps=[[2, 3, 1, None, None]])]),
        _state([_chain(gaps=[[2, 3, True, bytes(5), None]])]),
        _state([_chain(recent=[[11, [H]]])]),
        _state([_chain(recent=[[9, [H]], [9, [H]]])]),
        _state([_chain(recent=[[9, []]])]),
        _state([GOOD_CHAIN, GOOD_CHAIN]),
        _state([GOOD_CHAIN], version=2),
    ],
    ids=[
        "empty",
        "reserved-byte",
        "text",
        "trailing",
        "map",
        "extra-field",
        "short-sender",
        "top-zero",
        "short-head",
        "gap-reversed",
        "gap-at-zero",
        "gap-reaches-top",
        "gaps-adjacent",
        "gaps-out-of-order",
        "reported-not-bool",
        "short-edge-hash",
        "recent-above-top",
        "recent-twice",
        "recent-empty",
        "sender-twice",
        "version",
    ],
)
def test_corrupt_state_is_refused(data: bytes) -> None:
    with pytest.raises(StateError, match="saved integrity state"):
        SenderChains.from_bytes(data)


# -- properties ------------------------------------------------------------------------------

SCHEDULES = st.integers(1, 30).flatmap(
    lambda n: st.tuples(st.just(n), st.lists(st.integers(1, n), max_size=60))
)


@settings(max_examples=150, deadline=None)
@given(schedule=SCHEDULES)
def test_any_delivery_pattern(schedule: tuple[int, list[int]]) -> None:
    """Whatever the relay drops, duplicates or reorders: each blob is delivered at most once,
    every delivered seq was its first arrival, and what is missing is exactly what was
    skipped between the baseline and the newest blob."""
    n, order = schedule
    records = stream(n)
    chains = SenderChains()
    delivered: list[int] = []
    gap_alerted: set[int] = set()
    for seq in order:
        verdict, alerts = chains.observe(A, *records[seq - 1])
        if verdict is Verdict.DELIVER:
            delivered.append(seq)
        for alert in alerts:
            assert alert.sender == A and alert.kind != "fork"
            if alert.kind == "gap":
                gap_alerted.update(range(alert.first, alert.last + 1))
    assert len(delivered) == len(set(delivered))
    assert set(delivered) == set(order)
    if order:
        baseline, top = order[0], max(order)
        skipped = set(range(baseline + 1, top)) - set(order)
        assert skipped <= gap_alerted
        reported = {s for a, b in chains.missing().get(A, []) for s in range(a, b + 1)}
        assert reported == skipped


@settings(max_examples=100, deadline=None)
@given(
    schedule=SCHEDULES,
    max_ranges=st.integers(1, 3),
    recent=st.integers(1, 4),
)
def test_bounds_never_lose_coverage(
    schedule: tuple[int, list[int]], max_ranges: int, recent: int
) -> None:
    n, order = schedule
    records = stream(n)
    chains = SenderChains(max_ranges_per_sender=max_ranges, recent_per_sender=recent)
    for seq in order:
        chains.observe(A, *records[seq - 1])
    ranges = chains.missing().get(A, [])
    assert len(ranges) <= max_ranges
    assert ranges == sorted(ranges)
    if order:
        covered = {s for a, b in ranges for s in range(a, b + 1)}
        assert set(range(order[0] + 1, max(order))) - set(order) <= covered


@settings(max_examples=60, deadline=None)
@given(schedule=SCHEDULES, cut=st.integers(0, 60))
def test_persisting_midway_changes_nothing(schedule: tuple[int, list[int]], cut: int) -> None:
    n, order = schedule
    records = stream(n)
    straight, saved = SenderChains(), SenderChains()
    for index, seq in enumerate(order):
        if index == cut:
            saved = SenderChains.from_bytes(saved.to_bytes())
        record = records[seq - 1]
        assert saved.observe(A, *record) == straight.observe(A, *record)
    assert saved.to_bytes() == straight.to_bytes()


@settings(max_examples=60, deadline=None)
@given(order=st.permutations(list(itertools.product((A, B), range(1, 8)))))
def test_interleaved_senders_all_arrive_once(order: list[tuple[DeviceId, int]]) -> None:
    chains = SenderChains()
    for sender, seq in order:
        assert chains.observe(sender, *at(seq))[0] is Verdict.DELIVER
    for sender, seq in order:
        assert chains.observe(sender, *at(seq))[0] is Verdict.DROP
    assert chains.missing() == {}


# -- repair requests -------------------------------------------------------------------------


def test_repair_round_trip_and_layout() -> None:
    data = encode_repair(A, [(3, 5), (9, 9)])
    assert msgspec.msgpack.decode(data) == {"sender": bytes(A), "ranges": [[3, 5], [9, 9]]}
    sender, ranges = decode_repair(data)
    assert (sender, ranges) == (A, [(3, 5), (9, 9)])
    assert isinstance(sender, DeviceId)


def test_repair_takes_what_missing_gives() -> None:
    chains = SenderChains()
    feed(chains, A, at(1), at(4), at(9))
    assert decode_repair(encode_repair(A, chains.missing()[A]))[1] == [(2, 3), (5, 8)]


RANGES = st.lists(
    st.integers(1, 2**64 - 1), min_size=2, max_size=2 * MAX_REPAIR_RANGES, unique=True
)


@given(bounds=RANGES)
def test_repair_round_trip_property(bounds: list[int]) -> None:
    points = sorted(bounds)[: len(bounds) // 2 * 2]
    ranges = [(points[i], points[i + 1]) for i in range(0, len(points), 2)]
    assert decode_repair(encode_repair(B, ranges)) == (B, ranges)


@pytest.mark.parametrize(
    "ranges",
    [
        [],
        [(0, 1)],
        [(2, 1)],
        [(1, 3), (3, 4)],
        [(5, 6), (1, 2)],
        [(1, SEQ_MAX + 1)],
        [(i, i) for i in range(1, MAX_REPAIR_RANGES + 2)],
    ],
    ids=["none", "zero", "reversed", "overlap", "unordered", "too-big", "too-many"],
)
def test_encode_refuses_bad_ranges(ranges: list[tuple[int, int]]) -> None:
    with pytest.raises(LocalProtocolError):
        encode_repair(A, ranges)


def _repair(**fields: object) -> bytes:
    return msgspec.msgpack.encode({"sender": bytes(A), "ranges": [[1, 2]], **fields})


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80",
        _repair() + b"\x00",
        _repair(sender="x" * 32),
        _repair(sender=bytes(31)),
        _repair(ranges=[]),
        _repair(ranges=[[1, 2, 3]]),
        _repair(ranges=[[0, 2]]),
        _repair(ranges=[[3, 2]]),
        _repair(ranges=[[1, 3], [2, 4]]),
        _repair(ranges=[[True, 2]]),
        _repair(ranges=[[1.0, 2]]),
        _repair(ranges=[[-1, 2]]),
        _repair(ranges=[[i, i] for i in range(1, MAX_REPAIR_RANGES + 2)]),
        _repair(extra=1),
        msgspec.msgpack.encode([bytes(A), [[1, 2]]]),
        b"\x91" * 2000,
    ],
    ids=[
        "empty",
        "empty-map",
        "trailing",
        "text-sender",
        "short-sender",
        "no-ranges",
        "triple",
        "zero",
        "reversed",
        "overlap",
        "bool",
        "float",
        "negative",
        "too-many",
        "unknown-field",
        "array",
        "deep",
    ],
)
def test_decode_refuses_malformed_requests(data: bytes) -> None:
    with pytest.raises(WireError, match="malformed repair request"):
        decode_repair(data)


@given(data=st.binary(max_size=200))
def test_decode_raises_only_wire_errors(data: bytes) -> None:
    with contextlib.suppress(WireError):
        decode_repair(data)


# -- the sender's keep window ----------------------------------------------------------------

DAY = 24 * 3600 * 1000


def sent(seq: int, created_at: int = 0, size: int = 100) -> SentRecord:
    return SentRecord(
        seq=seq, blob_id=BlobId(seq.to_bytes(16, "big")), created_at=created_at, size=size
    )


def test_default_policy() -> None:
    assert KeepPolicy() == KeepPolicy(max_age_ms=7 * DAY, max_count=10_000, max_bytes=64 << 20)


def test_old_records_expire() -> None:
    records = [sent(1, 0), sent(2, 2 * DAY), sent(3, 9 * DAY)]
    assert expired(records, 10 * DAY, KeepPolicy()) == [1, 2]
    assert expired(records, 9 * DAY, KeepPolicy()) == [1]
    assert expired(records, 7 * DAY, KeepPolicy()) == []  # exactly max_age: still kept


def test_count_and_size_drop_the_oldest_first() -> None:
    records = [sent(seq, size=10) for seq in (5, 3, 4, 1, 2)]  # order does not matter
    assert expired(records, 0, KeepPolicy(max_count=3)) == [1, 2]
    assert expired(records, 0, KeepPolicy(max_bytes=25)) == [1, 2, 3]
    assert expired(records, 0, KeepPolicy(max_count=0)) == [1, 2, 3, 4, 5]
    assert expired([], 0, KeepPolicy(max_count=0)) == []


def test_age_and_size_combine() -> None:
    records = [sent(1, 0, 10), sent(2, 5 * DAY, 10), sent(3, 8 * DAY, 50), sent(4, 9 * DAY, 50)]
    assert expired(records, 10 * DAY, KeepPolicy(max_bytes=60)) == [1, 2, 3]


@settings(max_examples=50)
@given(
    records=st.lists(st.tuples(st.integers(0, 20 * DAY), st.integers(0, 1000)), max_size=40),
    now=st.integers(0, 30 * DAY),
    policy=st.builds(
        KeepPolicy,
        max_age_ms=st.integers(0, 10 * DAY),
        max_count=st.integers(0, 40),
        max_bytes=st.integers(0, 20_000),
    ),
)
def test_what_is_left_fits_the_policy(
    records: list[tuple[int, int]], now: int, policy: KeepPolicy
) -> None:
    kept_records = [sent(i + 1, created, size) for i, (created, size) in enumerate(records)]
    dropped = expired(kept_records, now, policy)
    assert dropped == sorted(set(dropped))
    left = [r for r in kept_records if r.seq not in dropped]
    assert len(left) <= policy.max_count
    assert sum(r.size for r in left) <= policy.max_bytes
    assert all(now - r.created_at <= policy.max_age_ms for r in left)
    # Nothing more than needed: keeping the newest dropped one too would not fit.
    young = [r for r in kept_records if now - r.created_at <= policy.max_age_ms]
    spared = [r for r in young if r.seq in dropped]
    if spared:
        newest = spared[-1]
        fits = len(left) + 1 <= policy.max_count and (
            sum(r.size for r in left) + newest.size <= policy.max_bytes
        )
        assert not fits


@pytest.mark.parametrize(
    "policy",
    [{"max_age_ms": -1}, {"max_count": -1}, {"max_bytes": -1}],
)
def test_policy_refuses_negative_limits(policy: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        KeepPolicy(**policy)


def test_duplicate_seqs_are_refused() -> None:
    with pytest.raises(LocalProtocolError, match="seq 2"):
        expired([sent(2), sent(1), sent(2)], 0, KeepPolicy())
    with pytest.raises(LocalProtocolError, match="seq 2"):
        select_repair([sent(2), sent(2)], [(1, 3)])


@pytest.mark.parametrize(
    "fields", [{"seq": 0}, {"seq": SEQ_MAX + 1}, {"created_at": -1}, {"size": -1}]
)
def test_sent_record_is_checked(fields: dict[str, int]) -> None:
    values: dict[str, object] = {"seq": 1, "blob_id": BlobId(bytes(16)), "created_at": 0, "size": 0}
    with pytest.raises(LocalProtocolError):
        SentRecord(**{**values, **fields})  # type: ignore[arg-type]


def test_select_repair_picks_what_was_asked() -> None:
    records = [sent(seq) for seq in (7, 1, 2, 3, 5, 9)]  # 4, 6, 8 already forgotten
    chosen = select_repair(records, [(2, 4), (6, 8)])
    assert [r.seq for r in chosen] == [2, 3, 7]
    assert select_repair(records, [(10, 20)]) == []
    assert select_repair([], [(1, 5)]) == []


def test_select_repair_is_bounded_lowest_first() -> None:
    records = [sent(seq) for seq in range(1, 101)]
    assert [r.seq for r in select_repair(records, [(1, 100)], limit=5)] == [1, 2, 3, 4, 5]
    assert select_repair(records, [(1, 100)], limit=0) == []
    assert len(select_repair(records, [(1, 100)])) == 100


@pytest.mark.parametrize("ranges", [[(0, 3)], [(5, 4)]])
def test_select_repair_refuses_bad_ranges(ranges: list[tuple[int, int]]) -> None:
    with pytest.raises(LocalProtocolError):
        select_repair([sent(1)], ranges)


def test_select_repair_refuses_negative_limit() -> None:
    with pytest.raises(LocalProtocolError):
        select_repair([sent(1)], [(1, 1)], limit=-1)


@settings(max_examples=50)
@given(
    seqs=st.sets(st.integers(1, 60), max_size=40),
    ranges=st.lists(st.tuples(st.integers(1, 60), st.integers(0, 10)), max_size=8),
    limit=st.integers(0, 50),
)
def test_select_repair_property(seqs: set[int], ranges: list[tuple[int, int]], limit: int) -> None:
    asked = [(first, first + length) for first, length in ranges]  # may overlap
    records = [sent(seq) for seq in seqs]
    wanted = sorted(s for s in seqs if any(a <= s <= b for a, b in asked))
    assert [r.seq for r in select_repair(records, asked, limit=limit)] == wanted[:limit]


def test_a_rewritten_history_shows_where_the_device_received_its_last_blob() -> None:
    mine, other = BlobId(bytes(16)), BlobId(bytes([9]) * 16)
    alert = detect_reused_cursor(mine, 7, 9, other, 7)
    assert alert is not None and (alert.kind, alert.sender, alert.first, alert.last) == (
        "rollback",
        None,
        7,
        9,
    )
    assert "cursor 7" in alert.detail
    assert detect_reused_cursor(mine, 7, 9, mine, 7) is None  # the same history
    assert detect_reused_cursor(mine, 7, 9, other, 8) is None  # retired: nothing to compare
    assert detect_reused_cursor(mine, 7, 9, None, 0) is None


def test_received_names_the_highest_seq_of_each_sender() -> None:
    chains = SenderChains()
    feed(chains, A, *S[:5])
    feed(chains, B, S[2])
    assert chains.received() == {A: 5, B: 3}
