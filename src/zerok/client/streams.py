"""The client's two queues: events to the app (``EventStream``) and writes to the local
state (``Journal``), each bounded or batched so that neither blocks the event loop."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from concurrent.futures import Future

from zerok.client.events import EventsDropped, SyncEvent
from zerok.client.state import JournalBatch, LocalState, SentRow
from zerok.protocol.client_core import OutboxEntry
from zerok.wire import BlobId

EVENT_QUEUE_SIZE = 1000  # events kept for a subscriber that does not keep up


def _now_ms() -> int:
    return int(time.time() * 1000)


class EventStream:
    """An async iterator over a client's events, subscribed from its creation.

    Its queue is bounded: past ``limit`` unread events the oldest are dropped, and the
    next read returns ``EventsDropped(count)`` before the events that were kept. An
    abandoned stream therefore holds at most ``limit`` events; ``aclose()`` unsubscribes.
    """

    def __init__(self, subscribers: set[EventStream], limit: int = EVENT_QUEUE_SIZE) -> None:
        self._subscribers = subscribers
        self._events: collections.deque[SyncEvent] = collections.deque()
        self._limit = limit
        self._ready = asyncio.Event()
        self.dropped = 0  # dropped since the last EventsDropped was returned
        subscribers.add(self)

    def put(self, event: SyncEvent) -> None:
        if len(self._events) >= self._limit:
            self._events.popleft()
            self.dropped += 1
        self._events.append(event)
        self._ready.set()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> SyncEvent:
        while not self._events and not self.dropped:
            self._ready.clear()
            await self._ready.wait()
        if self.dropped:
            count, self.dropped = self.dropped, 0
            return EventsDropped(count)
        return self._events.popleft()

    async def aclose(self) -> None:
        self._subscribers.discard(self)


class Journal:
    """The outbox's and this device's chain's writes of one loop turn, gathered into one
    write for the state's writer thread (which commits several of them at once). ``add``
    returns a future done once the insert is durable, shared by every push of the same
    turn; ``pending`` holds the ids added but not yet durable."""

    def __init__(self, state: LocalState) -> None:
        self._state = state
        self._batch = JournalBatch()
        self._durable: asyncio.Future[object] | None = None
        self._scheduled = False
        self.pending: set[BlobId] = set()

    def add(
        self,
        entry: OutboxEntry,
        *,
        sent: tuple[SentRow, bytes] | None = None,
        sender: tuple[int, bytes] | None = None,
    ) -> asyncio.Future[object]:
        """A new outbox entry, with (for a new blob) its keep-window row and the chain's
        new state: all durable together."""
        self._batch.adds.append((entry, _now_ms()))
        if sent is not None:
            self._batch.sent.append(sent)
        if sender is not None:
            self._batch.sender = sender
        self.pending.add(entry.blob_id)
        if self._durable is None:
            self._durable = asyncio.get_running_loop().create_future()
        self._schedule()
        durable = self._durable
        durable.add_done_callback(lambda _: self.pending.discard(entry.blob_id))
        return durable

    def remove(self, blob_id: BlobId) -> None:
        self._batch.removes.append(blob_id)
        self._schedule()

    def attempted(self, blob_ids: list[BlobId]) -> None:
        self._batch.attempts += blob_ids
        self._schedule()

    def reseal(self, entry: OutboxEntry) -> None:
        self._batch.reseals.append(entry)
        self._schedule()

    def forget(self, seqs: list[int]) -> None:
        """Keep-window rows to delete."""
        if seqs:
            self._batch.forget += seqs
            self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._submit)

    def _submit(self) -> None:
        self._scheduled = False
        batch, self._batch = self._batch, JournalBatch()
        durable, self._durable = self._durable, None
        written = self._state.journal_later(batch)
        if durable is not None:
            loop = asyncio.get_running_loop()

            def back_on_loop(done: Future[object]) -> None:
                with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                    loop.call_soon_threadsafe(_copy_outcome, done, durable)

            written.add_done_callback(back_on_loop)


def _copy_outcome(source: Future[object], target: asyncio.Future[object]) -> None:
    if target.done():
        return
    error = source.exception()
    if error is None:
        target.set_result(source.result())
    else:
        target.set_exception(error)
