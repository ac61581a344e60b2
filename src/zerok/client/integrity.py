"""Healing: what a device does about blobs a relay dropped, replayed or rolled back.

The decisions are ``zerok.protocol.integrity``'s (``SenderChains``, ``detect_rollback``,
``select_repair``, ``expired``); this is the device's memory around them, without I/O:

- Receiving: each opened blob goes through ``SenderChains``; its alerts become
  ``IntegrityAlert`` events. Replays that are expected are not reported: blobs read again
  after a relay rollback (up to the cursor this device had reached) and blobs another
  device asked their sender to push again (a repair request names them; every device
  sees it).
- Asking: once a page is processed, the gaps ``SenderChains`` still lists become one
  repair request per sender (``repairs_due``), asked again only when the gaps change or on
  a new connection: a bounded number of requests, however many blobs are missing.
- Answering: this device keeps what it pushed (the keep window, pruned by a
  ``KeepPolicy``) and re-pushes what a repair request names (``select``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from zerok.client.events import IntegrityAlert
from zerok.client.state import SentRow
from zerok.crypto.blob import OpenedBlob
from zerok.protocol.integrity import (
    MAX_REPAIR_RANGES,
    KeepPolicy,
    SenderChains,
    SentRecord,
    Verdict,
    expired,
    select_repair,
)
from zerok.protocol.integrity import IntegrityAlert as Alert
from zerok.wire import BlobId, DeviceId, StoredBlob

MAX_EXPECTED = 1024  # senders whose requested repairs are remembered
REPAIR_LIMIT = 1000  # blobs re-pushed for one request (the rest is asked for again)


class Healing:
    """One device's integrity memory for its group."""

    def __init__(
        self,
        chains: SenderChains,
        sent: Iterable[SentRow],
        *,
        policy: KeepPolicy,
        quiet_until: int = 0,
    ) -> None:
        self.chains = chains
        self.policy = policy
        self.quiet_until = quiet_until  # replays up to this cursor are expected
        self.dirty = False  # chains changed since the last snapshot
        self._sent: OrderedDict[int, SentRow] = OrderedDict((r.seq, r) for r in sent)
        self._bytes = sum(r.size for r in self._sent.values())
        self._requested: dict[DeviceId, list[tuple[int, int]]] = {}
        # After a rollback: every sender is asked for everything this device got from it,
        # since the relay may have lost any of it for devices that did not get it yet.
        self._resend: dict[DeviceId, list[tuple[int, int]]] = {}
        self._expected: OrderedDict[DeviceId, list[tuple[int, int]]] = OrderedDict()

    # -- receiving --------------------------------------------------------------------------

    def observe(
        self, stored: StoredBlob, opened: OpenedBlob, relay: str
    ) -> tuple[bool, list[IntegrityAlert]]:
        """Whether the blob may be delivered, and what to tell the app about it."""
        header = opened.header
        verdict, alerts = self.chains.observe(
            stored.sender, header.seq, header.link, opened.record_hash
        )
        self.dirty = True
        shown = [
            _event(alert, relay)
            for alert in alerts
            if not (alert.kind == "replay" and self._expected_replay(stored, header.seq))
        ]
        return verdict is Verdict.DELIVER, shown

    def _expected_replay(self, stored: StoredBlob, seq: int) -> bool:
        if stored.cursor <= self.quiet_until:
            return True
        ranges = self._expected.get(stored.sender, [])
        return any(first <= seq <= last for first, last in ranges)

    def expect(self, sender: DeviceId, ranges: list[tuple[int, int]]) -> None:
        """Another device asked ``sender`` to push ``ranges`` again: their blobs will come
        a second time, which is no replay by the relay."""
        known = self._expected.pop(sender, [])
        self._expected[sender] = (known + ranges)[-MAX_REPAIR_RANGES:]
        while len(self._expected) > MAX_EXPECTED:
            self._expected.popitem(last=False)

    def rolled_back(self, saved_cursor: int) -> None:
        """The relay lost blobs up to ``saved_cursor``: reading again from 0, replays up
        to it are expected; and each sender is asked to push again what this device got
        from it (what it still keeps): the relay may have lost it for the others."""
        self.quiet_until = max(self.quiet_until, saved_cursor)
        self._resend = {sender: [(1, top)] for sender, top in self.chains.received().items()}

    def snapshot(self) -> bytes:
        return self.chains.to_bytes()

    def restore(self, saved: bytes) -> None:
        """Back to a snapshot: an observed blob the app never took comes again."""
        self.chains = SenderChains.from_bytes(
            saved,
            max_ranges_per_sender=self.chains.max_ranges_per_sender,
            max_senders=self.chains.max_senders,
            recent_per_sender=self.chains.recent_per_sender,
        )

    def new_connection(self) -> None:
        """Ask again for what is still missing: a request may have been lost with a relay."""
        self._requested.clear()

    def repairs_due(self, me: DeviceId) -> list[tuple[DeviceId, list[tuple[int, int]]]]:
        """Repair requests to push now: one per sender whose gaps changed since they were
        last asked for (this device's own gaps are not asked of itself)."""
        due = [(s, r) for s, r in self._resend.items() if s != me]
        self._resend = {}
        for sender, ranges in self.chains.missing().items():
            ranges = ranges[:MAX_REPAIR_RANGES]
            if sender == me or self._requested.get(sender) == ranges:
                continue
            self._requested[sender] = ranges
            due.append((sender, ranges))
        return due

    # -- the keep window --------------------------------------------------------------------

    def kept(self, row: SentRow) -> None:
        self._sent[row.seq] = row
        self._bytes += row.size

    def rows(self) -> list[SentRow]:
        return list(self._sent.values())

    def select(self, ranges: list[tuple[int, int]]) -> list[SentRow]:
        """The kept blobs a repair request asks for (at most REPAIR_LIMIT)."""
        chosen = select_repair(_records(self._sent.values()), ranges, limit=REPAIR_LIMIT)
        return [self._sent[record.seq] for record in chosen]

    def drop(self, seqs: Iterable[int]) -> None:
        for seq in seqs:
            row = self._sent.pop(seq, None)
            if row is not None:
                self._bytes -= row.size

    def prune(self, now_ms: int) -> list[int]:
        """The keep-window seqs the policy lets go (dropped here; the caller deletes
        them from disk)."""
        if not self._sent:
            return []
        oldest = next(iter(self._sent.values()))
        within = (
            len(self._sent) <= self.policy.max_count
            and self._bytes <= self.policy.max_bytes
            and oldest.created_at >= now_ms - self.policy.max_age_ms
        )
        if within:
            return []
        gone = expired(_records(self._sent.values()), now_ms, self.policy)
        self.drop(gone)
        return gone

    def blob_ids(self) -> set[BlobId]:
        return {row.blob_id for row in self._sent.values()}


def _records(rows: Iterable[SentRow]) -> list[SentRecord]:
    return [SentRecord(r.seq, r.blob_id, r.created_at, r.size) for r in rows]


def _event(alert: Alert, relay: str) -> IntegrityAlert:
    return IntegrityAlert(alert.kind, alert.sender, alert.first, alert.last, relay, alert.detail)


def rollback_event(alert: Alert, relay: str) -> IntegrityAlert:
    return _event(alert, relay)
