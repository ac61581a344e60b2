"""The rules of one syncing device, sans I/O: ``ClientCore``.

``zerok.client.SyncClient`` is the asyncio shell around it: the shell owns the connection,
the tasks and the SQLite file, tells the core what happened (with the time, from its event
loop's clock) and carries out what the core answers. The core never touches a socket, a
clock or a file, so every rule below is unit-tested with plain numbers for time
(tests/protocol/test_client_core.py):

- **Sending.** The outbox goes out oldest first, at most ``MAX_IN_FLIGHT`` pushes at once,
  never the same blob twice at once, and a push the relay refused "later" not before its
  retry time (``push_refused`` says what each refusal means). A push whose connection
  dropped stays queued and goes out again, with the same blob id, on the next connection.
- **Receiving.** A blob is new when it is not this device's own and was not delivered
  before (the ids of the last ``DELIVERED_KEEP`` deliveries are remembered). The saved
  cursor moves only past what the app has, and never backwards.
- **Connecting.** Relays are tried in their configured order, the next one at once when
  one fails; once every one failed, or after a live connection ended, the next round waits
  for the backoff delay (``ClientTiming``), which starts over after each connection.
- **Epochs.** Every push names the group epoch it is sealed under; an entry sealed under an
  older epoch than the group's current one (``epoch``) is held back until the shell has
  re-sealed it (``stale``, ``replace``), and a relay's EPOCH_STALE refusal puts it there.
- **Relays that lie.** A relay caught presenting a forked membership log is ``forsaken``:
  it is not tried again while the client runs.
- **Status and revocation.** The sync status is derived from all of the above; once this
  device is revoked, nothing is sent or tried again (until a recovery reinstates it).

The shell persists what the answers say changed: ``confirm`` returns whether the saved
cursor moved, a final refusal or an ack removes an outbox entry.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, replace

from zerok.errors import LocalProtocolError
from zerok.protocol.backoff import ClientTiming
from zerok.wire import BlobId, DeviceId, ErrorCode, StoredBlob

MAX_IN_FLIGHT = 32  # pushes sent before their acks
DEFAULT_MAX_BLOB = 1024 * 1024  # until a WELCOME announces the relay's own limit
DELIVERED_KEEP = 10_000  # ids remembered; older ones are below the cursor anyway

_RETRY_LATER = frozenset({ErrorCode.RATE_LIMITED, ErrorCode.RELAY_OVERLOADED})
_FINAL = frozenset({ErrorCode.BLOB_TOO_LARGE, ErrorCode.INVALID_MESSAGE})


class SyncStatus(enum.StrEnum):
    """How an app should show sync state (docs/client.md)."""

    OFFLINE = "offline"  # not connected and not trying (outside ``async with``)
    CONNECTING = "connecting"  # trying to reach a relay, or waiting to retry
    SYNCING = "syncing"  # connected; pushes waiting for their ack, or blobs to pull
    SYNCED = "synced"  # connected; nothing waiting in either direction
    REVOKED = "revoked"  # this device was removed from the group: it can no longer sync


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A sealed push as it is stored. ``attempts`` counts its sends; the entry handed out
    for a send is its ticket: results of an older send of the same blob are ignored.
    ``epoch`` is the group epoch it is sealed under, ``seq`` its place in this device's
    chain of blobs, ``repair`` whether it re-pushes a blob another device reported missing."""

    blob_id: BlobId
    ciphertext: bytes
    ttl: int = 0
    attempts: int = 0
    epoch: int = 0
    seq: int = 0
    repair: bool = False


@dataclass(frozen=True, slots=True)
class Refusal:
    """What a refused push means: ``final`` drops it from the outbox (its ``push()`` callers
    fail); ``report`` is the text of an Error event for the app; ``retry_at`` is when it
    may go out again (core time), None when it will not or when the refusal was stale."""

    final: bool
    report: str | None
    retry_at: float | None
    stale: bool = False  # sealed under an old epoch: learn the new one and re-seal it


@dataclass(slots=True)
class _Queued:
    """An outbox entry in flight (``sending``), or waiting until ``retry_at``."""

    entry: OutboxEntry
    sending: bool = False
    retry_at: float = 0.0


class ClientCore:
    """One device's sync rules. Times (``now``) are seconds on any monotonic clock."""

    def __init__(
        self,
        device_id: DeviceId,
        *,
        cursor: int = 0,
        outbox: Iterable[OutboxEntry] = (),
        delivered: Iterable[tuple[BlobId, int]] = (),
        timing: ClientTiming | None = None,
        keep_delivered: int = DELIVERED_KEEP,
    ) -> None:
        """``cursor``, ``outbox`` and ``delivered`` (oldest first) are what was saved."""
        if cursor < 0:
            raise LocalProtocolError("cursor must be non-negative")
        self.device_id = device_id
        self.timing = timing or ClientTiming()
        self.relays: list[str] = []
        self.max_blob = DEFAULT_MAX_BLOB
        self.connections = 0  # counts accepted connections, so a waiter can tell a new one
        self.epoch = 0  # the group's current epoch: nothing older goes out
        self._forsaken: set[str] = set()
        self._cursor = cursor
        self._outbox: dict[BlobId, _Queued] = {}  # insertion order is send order
        self._in_flight = 0
        for entry in outbox:
            self.add(entry)
        self._delivered = dict(delivered)  # insertion order is delivery order
        self._keep_delivered = keep_delivered
        self._backoff = self.timing.backoff()
        self._next_relay = 0
        self._running = False
        self._connected = False
        self._remote_pending = False  # the relay holds blobs of others beyond our cursor
        self._revoked = False

    # -- lifecycle and status ---------------------------------------------------------------

    def start(self) -> None:
        """Begin syncing: a fresh round from the first relay, the schedule from its start."""
        self._running = True
        self._next_relay = 0
        self._backoff.reset()

    def stop(self) -> None:
        self._running = False

    @property
    def active(self) -> bool:
        """Whether connections should be tried and kept."""
        return self._running and not self._revoked

    @property
    def revoked(self) -> bool:
        return self._revoked

    @property
    def status(self) -> SyncStatus:
        if self._revoked:
            return SyncStatus.REVOKED
        if not self._running:
            return SyncStatus.OFFLINE
        if not self._connected:
            return SyncStatus.CONNECTING
        if self._outbox or self._remote_pending:
            return SyncStatus.SYNCING
        return SyncStatus.SYNCED

    def device_revoked(self, device_id: DeviceId) -> bool:
        """A device of the group was revoked; True if the app should hear of it (always for
        another device, the first time for this one: it may be told twice, by the log entry
        and then by the relay's refusal)."""
        if device_id != self.device_id:
            return True
        if self._revoked:
            return False
        self._revoked = True
        return True

    def reinstated(self) -> None:
        """A recovery kept this device: it may sync again (``start`` to do so)."""
        self._revoked = False

    # -- connecting -------------------------------------------------------------------------

    @property
    def usable_relays(self) -> list[str]:
        """The relays still worth trying: all but the forsaken ones, in order."""
        return [url for url in self.relays if url not in self._forsaken]

    def relay_to_try(self) -> str:
        relays = self.usable_relays
        if not relays:
            if self.relays:
                raise LocalProtocolError(
                    "every relay of the group presented a forked membership log: none is tried"
                )
            raise LocalProtocolError("the group has no relay to connect to")
        return relays[self._next_relay % len(relays)]

    def connect_failed(self) -> float | None:
        """The relay of ``relay_to_try`` could not be reached or refused this device. None:
        try the next one at once; else every one failed: the seconds before the next round."""
        self._next_relay += 1
        if self._next_relay < len(self.usable_relays):
            return None
        self._next_relay = 0
        return self._backoff.next_delay()

    def forsake(self, url: str) -> None:
        """``url`` equivocated about the group's log: never try it again in this run (the
        relays after it are tried next, at once)."""
        self._forsaken.add(url)
        if self._next_relay >= len(self.usable_relays):
            self._next_relay = 0

    def connected(self, *, pending: int, max_blob: int = 0) -> None:
        """A relay accepted this device (WELCOME): ``pending`` blobs of others wait there and
        it takes blobs up to ``max_blob`` bytes (0: not announced)."""
        self._connected = True
        self.connections += 1
        self._backoff.reset()
        self._remote_pending = pending > 0
        if max_blob:
            self.max_blob = max_blob

    def disconnected(self) -> float:
        """The connection ended. Pushes in flight are queued again; returns the seconds
        before the next round, which starts at the first relay. The delay applies after a
        live connection too: its jitter keeps a restarting relay's devices from all coming
        back at the same instant."""
        self._connected = False
        for queued in self._outbox.values():
            queued.sending = False
        self._in_flight = 0
        self._next_relay = 0
        return self._backoff.next_delay()

    # -- sending ----------------------------------------------------------------------------

    @property
    def pending_count(self) -> int:
        return len(self._outbox)

    def fits(self, sealed_size: int) -> bool:
        return sealed_size <= self.max_blob

    def add(self, entry: OutboxEntry) -> None:
        """A new push (already stored durably)."""
        if entry.blob_id in self._outbox:
            raise LocalProtocolError(f"blob {entry.blob_id} is already in the outbox")
        self._outbox[entry.blob_id] = _Queued(entry)

    def queued(self, blob_id: BlobId) -> bool:
        return blob_id in self._outbox

    def stale(self) -> list[OutboxEntry]:
        """The entries sealed under an epoch older than ``epoch``: to be re-sealed."""
        return [q.entry for q in self._outbox.values() if q.entry.epoch < self.epoch]

    def replace(self, entry: OutboxEntry) -> None:
        """The same blob, re-sealed (under a newer epoch): it keeps its place in line, and a
        send of the old sealing still in flight is still answered as its own."""
        queued = self._outbox.get(entry.blob_id)
        if queued is None:
            raise LocalProtocolError(f"blob {entry.blob_id} is not in the outbox")
        queued.entry = replace(entry, attempts=queued.entry.attempts)
        queued.retry_at = 0.0

    def next_pushes(self, now: float) -> list[OutboxEntry]:
        """The entries to send now, oldest first; each counts as in flight until its result
        (``push_acked``, ``push_refused``, ``push_lost``) or the end of the connection.
        Entries sealed under an old epoch wait for ``replace``."""
        if not (self._connected and self.active):
            return []
        out: list[OutboxEntry] = []
        for queued in self._outbox.values():
            if self._in_flight + len(out) >= MAX_IN_FLIGHT:
                break
            if queued.sending or queued.retry_at > now or queued.entry.epoch < self.epoch:
                continue
            queued.entry = replace(queued.entry, attempts=queued.entry.attempts + 1)
            queued.sending = True
            out.append(queued.entry)
        self._in_flight += len(out)
        return out

    def next_retry(self, now: float) -> float | None:
        """When an entry waiting for its retry time may go out, if one waits."""
        waiting = [q.retry_at for q in self._outbox.values() if q.retry_at > now]
        return min(waiting, default=None)

    def push_acked(self, blob_id: BlobId) -> bool:
        """The relay stored the blob (from whichever send): True if it was still queued."""
        queued = self._outbox.pop(blob_id, None)
        if queued is None:
            return False
        if queued.sending:
            self._in_flight -= 1
        return True

    def push_lost(self, entry: OutboxEntry) -> None:
        """The send's connection dropped before an answer: the entry waits for the next."""
        if self._current(entry) is not None:
            self._settle(entry, retry_at=0.0)

    def push_refused(
        self,
        entry: OutboxEntry,
        code: int,
        message: str,
        now: float,
        *,
        retry_after: float = 0,
    ) -> Refusal:
        """The relay answered this send with ERROR ``code`` (a frame too large to send at
        all counts as BLOB_TOO_LARGE). Rate limited or overloaded: again after the relay's
        ``retry_after``, else ``timing.retry_later``. Group quota full: reported, kept, again
        after ``timing.quota_retry``. The blob too large or invalid: final. Sealed under an
        old epoch: kept, not reported, ``stale`` (it goes out again once re-sealed under
        the epoch the shell learns from the log). Anything else is not about this blob:
        reported, kept, again after ``timing.refused_retry``."""
        if self._current(entry) is None:
            return Refusal(final=False, report=None, retry_at=None)
        if code == ErrorCode.EPOCH_STALE:
            # Held until ``replace`` brings it under the new epoch; if the log shows none
            # (the shell sets ``epoch`` back), it is tried again after the usual delay.
            self.epoch = max(self.epoch, entry.epoch + 1)
            resealed = self._outbox[entry.blob_id].entry.epoch > entry.epoch
            retry_at = now if resealed else now + self.timing.refused_retry
            self._settle(entry, retry_at=retry_at)
            return Refusal(False, None, retry_at, stale=True)
        if code in _FINAL:  # it would be refused again
            del self._outbox[entry.blob_id]
            self._in_flight -= 1
            return Refusal(True, f"push {entry.blob_id} refused: {message}", None)
        if code in _RETRY_LATER:
            report, delay = None, retry_after or self.timing.retry_later
        elif code == ErrorCode.GROUP_QUOTA_EXCEEDED:
            report, delay = message, self.timing.quota_retry
        else:
            report = f"push {entry.blob_id} not accepted yet: {message}"
            delay = self.timing.refused_retry
        self._settle(entry, retry_at=now + delay)
        return Refusal(False, report, now + delay)

    def _current(self, entry: OutboxEntry) -> _Queued | None:
        """The entry's state if ``entry`` is its send in flight now, not an older one."""
        queued = self._outbox.get(entry.blob_id)
        if queued is None or not queued.sending or queued.entry.attempts != entry.attempts:
            return None
        return queued

    def _settle(self, entry: OutboxEntry, *, retry_at: float) -> None:
        queued = self._outbox[entry.blob_id]
        queued.sending = False
        queued.retry_at = retry_at
        self._in_flight -= 1

    # -- receiving --------------------------------------------------------------------------

    @property
    def cursor(self) -> int:
        """The saved cursor: the app has everything up to it (or it was not for the app)."""
        return self._cursor

    def is_new(self, stored: StoredBlob) -> bool:
        """Whether the app should get this blob: another device's, not delivered before."""
        return stored.sender != self.device_id and stored.blob_id not in self._delivered

    def delivered(self, blob_id: BlobId, cursor: int) -> None:
        """The app has this blob."""
        self._delivered.setdefault(blob_id, cursor)

    def landmark(self) -> tuple[BlobId, int] | None:
        """The delivered blob with the highest cursor at or below the saved one: what a
        relay that still holds its history must hold at that cursor (None: nothing
        remembered to compare)."""
        best: tuple[BlobId, int] | None = None
        for blob_id, at in self._delivered.items():
            if at <= self._cursor and (best is None or at > best[1]):
                best = (blob_id, at)
        return best

    def restart_from(self, cursor: int) -> None:
        """The relay lost what this device had synced (a rollback): read again from
        ``cursor``, the one move backwards there is. Delivered ids are kept: nothing
        reaches the app twice."""
        if cursor < 0:
            raise LocalProtocolError("cursor must be non-negative")
        self._cursor = min(self._cursor, cursor)
        self._remote_pending = True

    def confirm(self, cursor: int) -> bool:
        """The app is done with everything up to ``cursor``; True if the saved cursor moved
        (never backwards), so the shell saves it."""
        if cursor <= self._cursor:
            return False
        self._cursor = cursor
        # The oldest ids go first, but only those the cursor has passed: those above it
        # may still come back on a page.
        while len(self._delivered) > self._keep_delivered:
            oldest, at = next(iter(self._delivered.items()))
            if at > self._cursor:
                break
            del self._delivered[oldest]
        return True

    def notified(self, sender: DeviceId, cursor: int) -> bool:
        """The relay announced a blob (NOTIFY); True if it is another device's, beyond the
        saved cursor: something for the app to fetch."""
        if sender == self.device_id or cursor <= self._cursor:
            return False
        self._remote_pending = True
        return True

    def page_fetched(self, after: int, has_more: bool) -> None:
        """A PULL page after ``after`` arrived; one that reaches the end of what the relay
        has, from the saved cursor on, leaves nothing pending there."""
        if not has_more and after >= self._cursor:
            self._remote_pending = False
