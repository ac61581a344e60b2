"""What a receiver concludes from the sequence numbers and hash chains of v2 blobs, sans I/O.

Every v2 blob carries, under its AEAD, the sender's sequence number ``seq`` (1, 2, 3, ...)
and ``link``, the chain hash of the sender's previous blob (zerok.crypto.blob). The relay
cannot change either, so a receiver that remembers, per sender, how far it got can tell
when the relay drops, replays or rolls back blobs. ``SenderChains`` holds that memory and
decides, blob by blob, whether to deliver it to the app:

State per sender: ``top`` (the highest seq delivered) and ``head`` (its chain hash),
``gaps`` (seqs below ``top`` not delivered yet, as disjoint ranges) and ``recent`` (the
chain hashes delivered at the last few positions). ``observe(sender, seq, link, hash)``:

1. **New sender**: any seq is the baseline (a device that joins late, or after the relay
   cleaned up old blobs, must not cry wolf): DELIVER, no alert. Seqs below the baseline
   become a *silent* gap: never reported by ``missing()``, but deliverable once each.
2. **Known blob** (``hash`` already delivered at ``seq``, per ``recent``): "replay", DROP.
3. ``seq == top + 1``: DELIVER; "fork" if ``link != head`` (the sender sealed two
   different blobs at one position, e.g. a device restored from an old backup).
4. ``seq > top + 1``: DELIVER; "gap" for ``top+1 .. seq-1``, which joins ``missing()``.
5. ``seq`` inside a gap: DELIVER and take it out of the gap. "recovered" for a reported
   gap, "reorder" for a silent one (a blob older than the first one seen from its sender
   arrived after it). The chain is checked at the gap's edges: "fork" if the blob does not
   link to the one delivered before the gap, or if the one delivered after the gap does
   not link to it.
6. ``seq`` below ``top``, not in a gap, other hashes delivered there (``recent``): a fork at
   an old position, DELIVER with "fork": its data is new, and authentic.
7. Anything else below ``top``: "replay", DROP (an old blob re-served under a new cursor).

Hence nothing is delivered twice (a blob is delivered only at a position above ``top``, in
a gap, or as a hash not yet seen at a recent position), every dropped blob followed by a
later one is named by a "gap" alert (sender and range), and a blob filling a gap is
delivered. A "gap" followed by "recovered" within one pull means the relay stored two pushes
out of order (a retried push): the client should ask for repairs only for what
``missing()`` still lists once a pull is processed.

Bounds: at most ``max_ranges_per_sender`` gaps per sender; over it the two closest gaps
merge (coverage is never lost, but the merged range also covers the delivered seqs between
them: those are refused as replays while they are in ``recent``, and otherwise the client's
blob-id dedup is the backstop). ``recent`` keeps ``recent_per_sender`` hashes, forgetting
the lowest positions first: a blob at a forgotten position is a replay (rule 7). At most
``max_senders`` senders: the least recently seen one is evicted and starts over from a new
baseline if it is seen again. The state persists with ``to_bytes``/``from_bytes``; save it
together with the cursor, or the two disagree after a crash.

``detect_rollback`` compares the saved cursor with the relay's head. Repair requests
(``encode_repair``/``decode_repair``) are the data of kind-1 blobs; ``expired`` and
``select_repair`` are the sender's decisions over the blobs it keeps for re-pushing.
"""

from __future__ import annotations

import bisect
import enum
import itertools
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import msgspec

from zerok.crypto.blob import HASH_BYTES, SEQ_MAX
from zerok.errors import ConfigError, LocalProtocolError, StateError, WireError
from zerok.wire.ids import BlobId, DeviceId

MAX_REPAIR_RANGES = 64
_STATE_VERSION = 1


class Verdict(enum.Enum):
    DELIVER = "deliver"
    DROP = "drop"


@dataclass(frozen=True)
class IntegrityAlert:
    """Something the relay (or a sender) did wrong, or that was set right. ``kind`` is gap,
    replay, reorder, fork, rollback or recovered; ``first``..``last`` is the range of
    sequence numbers (for rollback: of relay cursors, the relay's head + 1 .. the saved
    cursor); ``sender`` is None for a rollback, which concerns the relay's whole stream."""

    kind: str
    sender: DeviceId | None
    first: int
    last: int
    detail: str


# -- receiver state ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Gap:
    """Seqs ``first..last`` not delivered. ``before``: the link ``first`` must carry (the
    hash of ``first - 1``) when known; ``after``: the hash ``last`` must have (the link of
    ``last + 1``) when known. ``reported``: False for the silent gap below a baseline."""

    first: int
    last: int
    reported: bool
    before: bytes | None
    after: bytes | None


@dataclass(slots=True)
class _Chain:
    top: int
    head: bytes
    gaps: list[_Gap]
    recent: dict[int, list[bytes]]


class SenderChains:
    """Per-sender sequence and chain tracking of one group (rules in the module docstring)."""

    def __init__(
        self,
        *,
        max_ranges_per_sender: int = 64,
        max_senders: int = 10_000,
        recent_per_sender: int = 32,
    ) -> None:
        if max_ranges_per_sender < 1 or max_senders < 1 or recent_per_sender < 1:
            raise LocalProtocolError("SenderChains limits must be at least 1")
        self.max_ranges_per_sender = max_ranges_per_sender
        self.max_senders = max_senders
        self.recent_per_sender = recent_per_sender
        self._chains: OrderedDict[DeviceId, _Chain] = OrderedDict()  # least recent first

    def __len__(self) -> int:
        return len(self._chains)

    def __contains__(self, sender: object) -> bool:
        return sender in self._chains

    def observe(
        self, sender: DeviceId, seq: int, link: bytes, record_hash: bytes
    ) -> tuple[Verdict, list[IntegrityAlert]]:
        """Decide about one opened blob: ``seq`` and ``link`` from its header,
        ``record_hash`` its own chain hash (``OpenedBlob.record_hash``)."""
        if not 1 <= seq <= SEQ_MAX:
            raise LocalProtocolError(f"sequence number {seq} is outside 1..{SEQ_MAX}")
        if len(link) != HASH_BYTES or len(record_hash) != HASH_BYTES:
            raise LocalProtocolError(f"link and record hash must be {HASH_BYTES} bytes")
        chain = self._chains.get(sender)
        if chain is None:
            self._admit(sender, seq, link, record_hash)
            return Verdict.DELIVER, []
        self._chains.move_to_end(sender)
        seen = chain.recent.get(seq)
        if seen is not None and record_hash in seen:
            return Verdict.DROP, [_replay(sender, seq)]
        if seq > chain.top:
            alerts = self._extend(chain, sender, seq, link)
            chain.top, chain.head = seq, bytes(record_hash)
        else:
            index = _gap_index(chain.gaps, seq)
            if index is not None:
                alerts = self._fill(chain, index, sender, seq=seq, link=link, hash_=record_hash)
            elif seen is not None:
                alerts = [_alert("fork", sender, seq, seq, _FORK_OLD)]
            else:
                return Verdict.DROP, [_replay(sender, seq)]
        self._remember(chain, seq, record_hash)
        return Verdict.DELIVER, alerts

    def missing(self) -> dict[DeviceId, list[tuple[int, int]]]:
        """The reported gaps per sender: inclusive ranges, ascending (for repair requests)."""
        result: dict[DeviceId, list[tuple[int, int]]] = {}
        for sender, chain in self._chains.items():
            ranges = [(gap.first, gap.last) for gap in chain.gaps if gap.reported]
            if ranges:
                result[sender] = ranges
        return result

    def received(self) -> dict[DeviceId, int]:
        """The highest seq received from each sender: after a relay rollback, what to ask
        every sender for again (the relay may have lost any of it)."""
        return {sender: chain.top for sender, chain in self._chains.items()}

    def forget(self, sender: DeviceId) -> None:
        """Stop tracking ``sender`` (a revoked device); unknown senders are ignored."""
        self._chains.pop(sender, None)

    # -- the rules ----------------------------------------------------------------------------

    def _admit(self, sender: DeviceId, seq: int, link: bytes, record_hash: bytes) -> None:
        while len(self._chains) >= self.max_senders:
            self._chains.popitem(last=False)
        gaps = [_Gap(1, seq - 1, False, None, bytes(link))] if seq > 1 else []
        self._chains[sender] = _Chain(top=seq, head=bytes(record_hash), gaps=gaps, recent={})
        self._remember(self._chains[sender], seq, record_hash)

    def _extend(
        self, chain: _Chain, sender: DeviceId, seq: int, link: bytes
    ) -> list[IntegrityAlert]:
        if seq == chain.top + 1:
            if link != chain.head:
                return [_alert("fork", sender, seq, seq, _FORK_NEXT)]
            return []
        first, last = chain.top + 1, seq - 1
        chain.gaps.append(_Gap(first, last, True, chain.head, bytes(link)))
        self._bound(chain)
        return [_alert("gap", sender, first, last, _GAP)]

    def _fill(
        self, chain: _Chain, index: int, sender: DeviceId, *, seq: int, link: bytes, hash_: bytes
    ) -> list[IntegrityAlert]:
        gap = chain.gaps[index]
        kind, text = ("recovered", _RECOVERED) if gap.reported else ("reorder", _REORDER)
        alerts = [_alert(kind, sender, seq, seq, text)]
        broken_before = seq == gap.first and gap.before is not None and link != gap.before
        broken_after = seq == gap.last and gap.after is not None and hash_ != gap.after
        if broken_before or broken_after:
            alerts.append(_alert("fork", sender, seq, seq, _FORK_GAP))
        pieces = []
        if seq > gap.first:
            pieces.append(_Gap(gap.first, seq - 1, gap.reported, gap.before, bytes(link)))
        if seq < gap.last:
            pieces.append(_Gap(seq + 1, gap.last, gap.reported, bytes(hash_), gap.after))
        chain.gaps[index : index + 1] = pieces
        self._bound(chain)
        return alerts

    def _bound(self, chain: _Chain) -> None:
        """Merge the two closest gaps until the count fits: coverage over precision."""
        gaps = chain.gaps
        while len(gaps) > self.max_ranges_per_sender:
            i = min(range(len(gaps) - 1), key=lambda j: gaps[j + 1].first - gaps[j].last)
            left, right = gaps[i], gaps[i + 1]
            reported = left.reported or right.reported
            gaps[i : i + 2] = [_Gap(left.first, right.last, reported, left.before, right.after)]

    def _remember(self, chain: _Chain, seq: int, record_hash: bytes) -> None:
        chain.recent.setdefault(seq, []).append(bytes(record_hash))
        self._trim(chain)

    def _trim(self, chain: _Chain) -> None:
        held = sum(len(hashes) for hashes in chain.recent.values())
        while held > self.recent_per_sender:
            # Whole positions go, lowest first: a position still held lists every hash
            # delivered there, which rule 6 relies on.
            held -= len(chain.recent.pop(min(chain.recent)))

    # -- persistence --------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        chains = [
            _ChainRecord(
                sender=bytes(sender),
                top=chain.top,
                head=chain.head,
                gaps=[
                    _GapRecord(g.first, g.last, g.reported, g.before, g.after) for g in chain.gaps
                ],
                recent=[_SeenRecord(seq, hashes) for seq, hashes in sorted(chain.recent.items())],
            )
            for sender, chain in self._chains.items()
        ]
        return _state_encoder.encode(_State(version=_STATE_VERSION, chains=chains))

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        *,
        max_ranges_per_sender: int = 64,
        max_senders: int = 10_000,
        recent_per_sender: int = 32,
    ) -> SenderChains:
        """Load what ``to_bytes`` saved; StateError if it is not such a state. A state saved
        under larger limits is brought within these ones (gaps merged, senders evicted)."""
        try:
            state = _state_decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise StateError(f"saved integrity state is corrupt: {exc}") from None
        if state.version != _STATE_VERSION:
            raise StateError(f"saved integrity state has unknown version {state.version}")
        chains = cls(
            max_ranges_per_sender=max_ranges_per_sender,
            max_senders=max_senders,
            recent_per_sender=recent_per_sender,
        )
        for record in state.chains:
            sender = DeviceId(record.sender)
            if sender in chains._chains:
                raise StateError(f"saved integrity state lists device {sender} twice")
            chain = _load_chain(record)
            chains._bound(chain)
            chains._trim(chain)
            chains._chains[sender] = chain
        while len(chains._chains) > max_senders:
            chains._chains.popitem(last=False)
        return chains


# No upper bound: msgspec cannot express u64 max, and MessagePack integers stop there anyway.
_Seq = Annotated[int, msgspec.Meta(ge=1)]
_Hash = Annotated[bytes, msgspec.Meta(min_length=HASH_BYTES, max_length=HASH_BYTES)]
_Device = Annotated[bytes, msgspec.Meta(min_length=DeviceId.SIZE, max_length=DeviceId.SIZE)]


class _GapRecord(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    first: _Seq
    last: _Seq
    reported: bool
    before: _Hash | None
    after: _Hash | None


class _SeenRecord(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    seq: _Seq
    hashes: Annotated[list[_Hash], msgspec.Meta(min_length=1)]


class _ChainRecord(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    sender: _Device
    top: _Seq
    head: _Hash
    gaps: list[_GapRecord]
    recent: list[_SeenRecord]


class _State(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    version: int
    chains: list[_ChainRecord]


_state_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(_State)


def _load_chain(record: _ChainRecord) -> _Chain:
    """Check what the struct types cannot: gaps ascending, apart and below ``top``."""
    gaps = [_Gap(g.first, g.last, g.reported, g.before, g.after) for g in record.gaps]
    floor = 1
    for gap in gaps:
        if gap.first < floor or gap.last < gap.first or gap.last >= record.top:
            raise StateError(
                f"saved integrity state is corrupt: gap {gap.first}..{gap.last} is out of "
                f"order or not below the top {record.top}"
            )
        floor = gap.last + 2  # a delivered seq always separates two gaps
    recent: dict[int, list[bytes]] = {}
    for seen in record.recent:
        if seen.seq > record.top or seen.seq in recent:
            raise StateError(f"saved integrity state is corrupt: bad recent seq {seen.seq}")
        recent[seen.seq] = list(seen.hashes)
    return _Chain(top=record.top, head=record.head, gaps=gaps, recent=recent)


def _gap_index(gaps: list[_Gap], seq: int) -> int | None:
    index = bisect.bisect_right(gaps, seq, key=lambda gap: gap.first) - 1
    if index >= 0 and gaps[index].last >= seq:
        return index
    return None


# -- alerts -------------------------------------------------------------------------------------

_GAP = (
    "blobs {range} from device {device} are missing: the relay has not delivered them; "
    "this device asks the sender to push them again."
)
_RECOVERED = "missing blob {range} from device {device} arrived and was delivered."
_REORDER = (
    "blob {range} from device {device}, older than the first one seen from it, arrived "
    "late and was delivered."
)
_REPLAY = (
    "blob {range} from device {device} was delivered before: the relay served it again, "
    "and it was ignored."
)
_RESTORED = "(for example after being restored from a backup)"
_FORK_NEXT = (
    "device {device} sealed blob {range} on top of a different history than this device "
    f"has {_RESTORED}; it was delivered anyway."
)
_FORK_GAP = (
    "blob {range} from device {device} does not fit the blobs around it: the device "
    f"sealed two different histories {_RESTORED}; it was delivered anyway."
)
_FORK_OLD = (
    f"device {{device}} sealed a second, different blob {{range}} {_RESTORED}; "
    "it was delivered too."
)
_REUSED = (
    "the relay holds another blob at cursor {cursor} than the one this device received "
    "there: it was restored from an older copy; this device reads the group again from the "
    "start and pushes its recent blobs again."
)
_ROLLBACK = (
    "the relay's history ends at {head}, before {saved} which this device had already "
    "synced: the relay lost or rolled back blobs; syncing goes on from its head, and "
    "missing blobs are asked for again."
)


def _alert(kind: str, sender: DeviceId, first: int, last: int, text: str) -> IntegrityAlert:
    span = f"{first}" if first == last else f"{first}–{last}"
    return IntegrityAlert(kind, sender, first, last, text.format(range=span, device=sender.short()))


def _replay(sender: DeviceId, seq: int) -> IntegrityAlert:
    return _alert("replay", sender, seq, seq, _REPLAY)


def detect_rollback(saved_cursor: int, relay_head: int) -> IntegrityAlert | None:
    """A "rollback" alert if the relay's newest cursor is below the one this device saved."""
    if saved_cursor < 0 or relay_head < 0:
        raise LocalProtocolError("cursors are non-negative")
    if relay_head >= saved_cursor:
        return None
    detail = _ROLLBACK.format(head=relay_head, saved=saved_cursor)
    return IntegrityAlert("rollback", None, relay_head + 1, saved_cursor, detail)


def detect_reused_cursor(
    expected: BlobId, cursor: int, saved_cursor: int, found: BlobId | None, found_at: int
) -> IntegrityAlert | None:
    """A "rollback" alert if the relay holds another blob at a cursor where this device
    received ``expected``: a relay restored from an old backup, whose cursor has since
    climbed past the one this device saved, so that ``detect_rollback`` cannot see it.
    ``found``/``found_at``: the first blob the relay has from ``cursor`` on (None: none)."""
    if found is None or found_at != cursor or found == expected:
        return None
    detail = _REUSED.format(cursor=cursor)
    return IntegrityAlert("rollback", None, cursor, saved_cursor, detail)


# -- repair requests ----------------------------------------------------------------------------


class _Repair(msgspec.Struct, forbid_unknown_fields=True):
    sender: _Device
    ranges: Annotated[
        list[tuple[_Seq, _Seq]], msgspec.Meta(min_length=1, max_length=MAX_REPAIR_RANGES)
    ]


_repair_decoder = msgspec.msgpack.Decoder(_Repair)


def _range_problem(ranges: Sequence[tuple[int, int]]) -> str | None:
    """Ranges must be 1 <= a <= b, ascending and disjoint."""
    floor = 1
    for first, last in ranges:
        if not floor <= first <= last <= SEQ_MAX:
            return f"range {first}..{last} is empty, out of order or outside 1..{SEQ_MAX}"
        floor = last + 1
    return None


def encode_repair(sender: DeviceId, ranges: list[tuple[int, int]]) -> bytes:
    """The data of a repair-request blob (kind 1) asking ``sender`` to push ``ranges``
    again: 1 to 64 inclusive ranges, ascending and disjoint (as ``missing()`` gives them)."""
    if not 1 <= len(ranges) <= MAX_REPAIR_RANGES:
        raise LocalProtocolError(f"a repair request holds 1 to {MAX_REPAIR_RANGES} ranges")
    problem = _range_problem(ranges)
    if problem:
        raise LocalProtocolError(f"cannot request repair: {problem}")
    pairs = [(first, last) for first, last in ranges]
    return msgspec.msgpack.encode(_Repair(sender=bytes(sender), ranges=pairs))


def decode_repair(data: bytes) -> tuple[DeviceId, list[tuple[int, int]]]:
    """Read a repair request; WireError if it is malformed or out of bounds."""
    try:
        repair = _repair_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise WireError(f"malformed repair request: {exc}") from None
    except RecursionError:
        raise WireError("malformed repair request: nested too deeply") from None
    problem = _range_problem(repair.ranges)
    if problem:
        raise WireError(f"malformed repair request: {problem}")
    return DeviceId(repair.sender), list(repair.ranges)


# -- the sender's keep window -----------------------------------------------------------------


@dataclass(frozen=True)
class SentRecord:
    """One blob this device pushed and keeps for re-pushing: ``created_at`` in ms (any
    clock the caller keeps consistent), ``size`` its sealed size in bytes."""

    seq: int
    blob_id: BlobId
    created_at: int
    size: int

    def __post_init__(self) -> None:
        if not 1 <= self.seq <= SEQ_MAX or self.created_at < 0 or self.size < 0:
            raise LocalProtocolError(f"invalid sent record for seq {self.seq}")


@dataclass(frozen=True)
class KeepPolicy:
    """How long and how much a sender keeps for repairs; the first limit reached wins."""

    max_age_ms: int = 7 * 24 * 3600 * 1000
    max_count: int = 10_000
    max_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.max_age_ms < 0 or self.max_count < 0 or self.max_bytes < 0:
            raise ConfigError("keep policy limits must be non-negative")


def _by_seq(records: Sequence[SentRecord]) -> list[SentRecord]:
    ordered = sorted(records, key=lambda record: record.seq)
    for older, newer in itertools.pairwise(ordered):
        if older.seq == newer.seq:
            raise LocalProtocolError(f"two sent records have seq {older.seq}")
    return ordered


def expired(records: Sequence[SentRecord], now_ms: int, policy: KeepPolicy) -> list[int]:
    """The seqs to forget, ascending: every record older than ``max_age_ms``, then the
    oldest (lowest seq) until the rest fits ``max_count`` and ``max_bytes``."""
    horizon = now_ms - policy.max_age_ms
    drop: list[int] = []
    kept: list[SentRecord] = []
    for record in _by_seq(records):
        if record.created_at < horizon:
            drop.append(record.seq)
        else:
            kept.append(record)
    count, size = len(kept), sum(record.size for record in kept)
    for record in kept:
        if count <= policy.max_count and size <= policy.max_bytes:
            break
        drop.append(record.seq)
        count, size = count - 1, size - record.size
    return sorted(drop)


def select_repair(
    records: Sequence[SentRecord], ranges: list[tuple[int, int]], *, limit: int = 1000
) -> list[SentRecord]:
    """The kept records a repair request asks for, ascending, at most ``limit`` (the lowest
    first: what is left stays missing at the receiver, which asks again)."""
    if limit < 0:
        raise LocalProtocolError("limit must be non-negative")
    for first, last in ranges:
        if not 1 <= first <= last:
            raise LocalProtocolError(f"range {first}..{last} is empty or starts below 1")
    ordered = _by_seq(records)
    seqs = [record.seq for record in ordered]
    chosen: list[SentRecord] = []
    done = 0  # records below this index were taken or passed: overlapping ranges add nothing
    for first, last in sorted(ranges):
        low = max(bisect.bisect_left(seqs, first), done)
        high = bisect.bisect_right(seqs, last)
        chosen.extend(ordered[low : max(low, high)])
        done = max(done, high)
        if len(chosen) >= limit:
            break
    return chosen[:limit]
