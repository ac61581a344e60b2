"""Moving sealed chunks to and from a relay over one connection, resumably.

Upload: the relay is asked what it holds (CHUNK_HAVE, in batches, when the chunks are known
up front), chunks it holds whole are skipped, the others are begun (CHUNK_BEGIN says where
a partial upload stands) and sent in pieces from there (CHUNK_PUT). No byte the relay holds
is sent again, so an upload cut anywhere is finished by running it again. Download: a
chunk is read in ranges (CHUNK_GET, a few in flight), from where an earlier attempt
stopped, and checked against its address before it is returned.

The decisions (what a relay's answer means for the next piece, whether the bytes served
are the ones asked for) are plain functions; the coroutines only carry them out. Memory:
an upload holds one chunk and one piece at a time, a download one chunk and the pieces in
flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from zerok.errors import (
    DecryptionError,
    LocalProtocolError,
    RemoteError,
    RemoteProtocolError,
)
from zerok.wire import (
    ChunkBegin,
    ChunkData,
    ChunkGet,
    ChunkHave,
    ChunkInfo,
    ChunkPut,
    ChunkStatus,
    ErrorCode,
    Message,
)
from zerok.wire.manifest import ADDRESS_BYTES, CHUNK_OVERHEAD, MAX_SEALED_CHUNK, ChunkRef
from zerok.wire.messages import MAX_CHUNK_PIECE, MAX_CHUNK_QUERY

PIECE = MAX_CHUNK_PIECE
GET_WINDOW = 4  # CHUNK_GETs in flight: reads may be answered in any order, so they overlap
# CHUNK_PUTs of one chunk in flight: the relay writes them in the order they arrive
# (docs/protocol.md §10.11), so the next pieces go out before the earlier are answered.
PUT_WINDOW = 4
# CHUNK_PUTs are not pipelined: the relay runs requests as concurrent tasks, and a piece
# that overtakes the one before it lands at the wrong offset (ERROR 1011).
MAX_STALLS = 3  # CHUNK_BEGINs in a row after a refused piece, with no progress between

Chunk = tuple[bytes, bytes]  # (address, sealed bytes)


class ChunkConnection(Protocol):
    """What a transfer needs of a connection (``RelayConnection`` is one)."""

    async def request(self, message: Message) -> Message: ...


@dataclass(frozen=True)
class Progress:
    """Bytes (sealed) and chunks the relay holds, or this device received, of a transfer.
    An upload from an iterator learns its totals as it goes: they grow with each chunk."""

    done_bytes: int
    total_bytes: int
    chunks_done: int
    chunks_total: int


@dataclass(frozen=True)
class UploadReport:
    """What an upload did: ``bytes_sent`` of chunk data went out; ``skipped_chunks`` were
    held whole by the relay already (deduplicated); ``resumed_bytes`` were held by it from
    an earlier, interrupted upload and not sent again."""

    chunks: int
    total_bytes: int
    bytes_sent: int
    skipped_chunks: int
    resumed_bytes: int


# -- decisions (no I/O) ----------------------------------------------------------------------


def next_offset(info: ChunkInfo, address: bytes, size: int) -> int | None:
    """Where to send from, given the relay's state of an upload of ``size`` bytes after a
    CHUNK_BEGIN or CHUNK_PUT: None when it holds the chunk whole. RemoteProtocolError when
    the answer cannot be about this chunk."""
    name = address.hex()[:16]
    if info.address != address:
        raise RemoteProtocolError(
            f"the relay answered about chunk {info.address.hex()[:16]}, asked about {name}"
        )
    if info.size != size:
        # The address is the hash of the bytes: one address, one size.
        raise RemoteProtocolError(
            f"the relay holds chunk {name} as {info.size} bytes; it has {size}"
        )
    if info.complete:
        return None
    if not 0 <= info.received < size:
        raise RemoteProtocolError(
            f"the relay has {info.received} of the {size} bytes of chunk {name} but has not "
            "completed it: nothing is left to send"
        )
    return info.received


def held_whole(status: Message, addresses: Sequence[bytes], sizes: dict[bytes, int]) -> set[bytes]:
    """The addresses a CHUNK_HAVE answer says the relay holds whole (with the size we
    have for them: another size cannot be the same chunk)."""
    if not isinstance(status, ChunkStatus) or len(status.chunks) != len(addresses):
        raise RemoteProtocolError("the relay's CHUNK_STATUS does not answer the CHUNK_HAVE")
    whole = set()
    for address, info in zip(addresses, status.chunks, strict=True):
        if info.address != address:
            raise RemoteProtocolError("the relay's CHUNK_STATUS lists other chunks than asked")
        if info.complete and info.size == sizes[address]:
            whole.add(address)
    return whole


def checked_piece(answer: Message, address: bytes, offset: int, asked: int, total: int) -> bytes:
    """The bytes of a CHUNK_DATA answer to CHUNK_GET(offset, asked) of a chunk of ``total``
    bytes. A relay serving fewer than asked before ``total`` holds a chunk of another size
    than the manifest says: not the one addressed (DecryptionError)."""
    if not isinstance(answer, ChunkData) or answer.address != address or answer.offset != offset:
        raise RemoteProtocolError(
            f"the relay's CHUNK_DATA is not bytes {offset}.. of chunk {address.hex()[:16]}"
        )
    if len(answer.data) > asked:
        raise RemoteProtocolError(f"the relay sent {len(answer.data)} bytes, {asked} were asked")
    if len(answer.data) < asked:
        raise DecryptionError(
            f"the relay's chunk {address.hex()[:16]} ends at {offset + len(answer.data)} "
            f"bytes, the manifest says {total}: it is not the chunk addressed"
        )
    return answer.data


def checked_chunk(item: object) -> Chunk:
    """An (address, sealed bytes) pair to upload, the bytes made immutable;
    LocalProtocolError if it is not one, or if the bytes do not hash to the address (a
    damaged local copy, or a caller's bug: caught before anything is sent, rather than by
    the relay after all of it)."""
    if not isinstance(item, tuple) or len(item) != 2:
        raise LocalProtocolError(f"a chunk to upload is (address, sealed bytes), not {item!r:.80}")
    address, sealed = item
    if not isinstance(address, bytes) or len(address) != ADDRESS_BYTES:
        raise LocalProtocolError(f"a chunk address is {ADDRESS_BYTES} bytes")
    if not isinstance(sealed, bytes | bytearray | memoryview):
        raise LocalProtocolError(f"a sealed chunk is bytes, not {type(sealed).__name__}")
    data = bytes(sealed)  # a caller's buffer changing under the upload would not match
    if not 1 <= len(data) <= MAX_SEALED_CHUNK:
        raise LocalProtocolError(f"a sealed chunk is 1..{MAX_SEALED_CHUNK} bytes, not {len(data)}")
    if hashlib.sha256(data).digest() != address:
        raise LocalProtocolError(
            f"the bytes of chunk {address.hex()[:16]} do not hash to its address: the local "
            "copy is damaged, or it was sealed wrongly; nothing of it was sent"
        )
    return address, data


def _checked_piece_size(piece: int) -> int:
    if not isinstance(piece, int) or isinstance(piece, bool) or not 1 <= piece <= PIECE:
        raise LocalProtocolError(f"a piece is 1..{PIECE} bytes, not {piece!r}")
    return piece


# -- upload ----------------------------------------------------------------------------------


class _Tally:
    """The counts of one upload, and its progress reports (never going back)."""

    def __init__(self, progress: Callable[[Progress], None] | None, sizes: Sequence[int]) -> None:
        self.progress = progress
        self.known = bool(sizes)  # totals known up front
        self.total_bytes = sum(sizes)
        self.chunks_total = len(sizes)
        self.done_bytes = self.chunks_done = 0
        self.sent = self.skipped = self.resumed = 0
        self._reported = -1

    def arrived(self, size: int) -> None:
        if not self.known:
            self.total_bytes += size
            self.chunks_total += 1

    def report(self, partial: int = 0, *, force: bool = False) -> None:
        # A mismatch makes the relay drop a partial upload: its bytes are not reported
        # again until the new attempt passes them, so that progress never goes back.
        done = self.done_bytes + partial
        if self.progress is not None and (done > self._reported or force):
            self._reported = done
            self.progress(Progress(done, self.total_bytes, self.chunks_done, self.chunks_total))

    def finished(self, size: int) -> None:
        self.done_bytes += size
        self.chunks_done += 1
        self.report(force=True)


async def upload_chunks(
    conn: ChunkConnection,
    chunks: Iterable[Chunk] | AsyncIterable[Chunk],
    *,
    piece: int = PIECE,
    progress: Callable[[Progress], None] | None = None,
    window: int = PUT_WINDOW,
) -> UploadReport:
    """Make the relay hold each of ``chunks`` (address, sealed bytes) whole, sending only
    what it lacks, ``window`` pieces of a chunk in flight. A Sequence is asked about in
    batches first (no round trip for the chunks the relay holds); an iterator's chunks are
    read one at a time, each begun as it comes.

    Raises RemoteError with the relay's code when it refuses (quota 2002, rate 2000, ...;
    1010 when it finds bytes we checked do not match their address), ConnectError when the
    connection ends: what was sent stays, and the same call on a new connection resumes.
    """
    _checked_piece_size(piece)
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise LocalProtocolError(f"an upload keeps 1 or more pieces in flight, not {window!r}")
    whole: set[bytes] = set()
    sizes: list[int] = []
    source: AsyncIterator[Chunk]
    if isinstance(chunks, Sequence):
        checked = [checked_chunk(item) for item in chunks]
        sizes = [len(sealed) for _, sealed in checked]
        whole = await _held_whole(conn, checked)
        source = _each(checked)
    else:
        source = _each(chunks, check=True)
    tally = _Tally(progress, sizes)
    async for address, sealed in source:
        tally.arrived(len(sealed))
        if address in whole:
            tally.skipped += 1
        else:
            await _upload_one(conn, address, sealed, _ChunkUpload.Settings(piece, window), tally)
        tally.finished(len(sealed))
    return UploadReport(
        chunks=tally.chunks_done,
        total_bytes=tally.done_bytes,
        bytes_sent=tally.sent,
        skipped_chunks=tally.skipped,
        resumed_bytes=tally.resumed,
    )


async def _held_whole(conn: ChunkConnection, chunks: Sequence[Chunk]) -> set[bytes]:
    sizes = {address: len(sealed) for address, sealed in chunks}
    addresses = list(sizes)  # each once
    whole: set[bytes] = set()
    for start in range(0, len(addresses), MAX_CHUNK_QUERY):
        batch = addresses[start : start + MAX_CHUNK_QUERY]
        whole |= held_whole(await conn.request(ChunkHave(addresses=batch)), batch, sizes)
    return whole


async def _each(
    chunks: Iterable[Chunk] | AsyncIterable[Chunk], *, check: bool = False
) -> AsyncIterator[Chunk]:
    if isinstance(chunks, AsyncIterable):
        async for item in chunks:
            yield checked_chunk(item) if check else item
    elif isinstance(chunks, Iterable):
        for item in chunks:
            yield checked_chunk(item) if check else item
    else:
        raise LocalProtocolError(f"chunks to upload come in an iterable, not {chunks!r:.80}")


async def _upload_one(
    conn: ChunkConnection,
    address: bytes,
    sealed: bytes,
    settings: _ChunkUpload.Settings,
    tally: _Tally,
) -> None:
    """Begin (or resume) one chunk and send it from where the relay stands."""
    upload = _ChunkUpload(conn, address, sealed, settings, tally)
    held: int | None = None  # what the relay had when we began: resumed, not sent
    restarted = False
    stalls, best = 0, -1
    while True:
        start = await upload.begin()
        if start is None:
            if held is None:
                tally.skipped += 1  # held whole (deduplicated, or sent by another device)
            return
        held = start if held is None else held
        try:
            await upload.send_from(start)
        except RemoteError as exc:
            if exc.code == ErrorCode.CHUNK_MISMATCH and held > 0 and not restarted:
                # Our bytes hash right, so those the relay held were wrong (another device's
                # damaged upload); it dropped them all: once more, from 0.
                restarted, held = True, 0
                continue
            if exc.code == ErrorCode.CHUNK_MISMATCH:
                raise upload.mismatch(exc) from exc
            if exc.code != ErrorCode.CHUNK_UNKNOWN:
                raise
            # The upload moved on (another device sent the same piece) or was collected:
            # ask again where it stands; give up when that shows no progress, repeatedly.
            stalls = 0 if upload.at > best else stalls + 1
            best = max(best, upload.at)
            if stalls >= MAX_STALLS:
                raise
        else:
            tally.resumed += held
            return


class _ChunkUpload:
    """The requests of one chunk's upload; ``at`` is what the relay confirmed it holds."""

    @dataclass(frozen=True)
    class Settings:
        piece: int
        window: int

    def __init__(
        self,
        conn: ChunkConnection,
        address: bytes,
        sealed: bytes,
        settings: _ChunkUpload.Settings,
        tally: _Tally,
    ) -> None:
        self.conn, self.address, self.sealed = conn, address, sealed
        self.piece, self.window, self.tally = settings.piece, settings.window, tally
        self.size, self.name = len(sealed), address.hex()[:16]
        self.at = 0

    async def begin(self) -> int | None:
        begin = ChunkBegin(address=self.address, size=self.size)
        start = next_offset(await _status(self.conn, begin), self.address, self.size)
        if start is not None:
            self.tally.report(start)
        return start

    async def send_from(self, offset: int) -> None:
        """Send the chunk from ``offset``, ``window`` pieces in flight, each confirmed in
        order. On a refusal the pieces still in flight are answered (refused too) before
        the error goes up, so no answer is left waiting."""
        self.at = offset
        flight: deque[tuple[int, int, asyncio.Future[ChunkInfo]]] = deque()
        try:
            sent_to = offset
            while True:
                while sent_to < self.size and len(flight) < self.window:
                    data = self.sealed[sent_to : sent_to + self.piece]
                    put = ChunkPut(address=self.address, offset=sent_to, data=data)
                    self.tally.sent += len(data)  # also when refused: it went out
                    flight.append(
                        (sent_to, len(data), asyncio.ensure_future(_status(self.conn, put)))
                    )
                    sent_to += len(data)
                start, length, answer = flight.popleft()
                end = next_offset(await answer, self.address, self.size)
                if end is None:
                    self.tally.report(self.size)
                    return
                if end > start + length:  # another device sent these bytes too: follow it
                    self.at = end
                    raise RemoteError(ErrorCode.CHUNK_UNKNOWN, "the upload moved on meanwhile")
                if end < start + length:
                    raise RemoteProtocolError(
                        f"the relay took bytes {start}.. of chunk {self.name} and has {end} of it"
                    )
                self.tally.report(end)
                self.at = end
        finally:
            if flight:
                await asyncio.gather(*(f for _, _, f in flight), return_exceptions=True)

    def mismatch(self, exc: RemoteError) -> RemoteError:
        return RemoteError(
            exc.code,
            f"the relay found that chunk {self.name} does not hash to its address, though it "
            "did here before it was sent: the bytes changed on the way or at the relay, which "
            "kept nothing of them",
        )


async def _status(conn: ChunkConnection, request: ChunkBegin | ChunkPut) -> ChunkInfo:
    answer = await conn.request(request)
    if not isinstance(answer, ChunkStatus) or len(answer.chunks) != 1:
        raise RemoteProtocolError(
            f"the relay's answer to {type(request).__name__} is not one chunk's status"
        )
    return answer.chunks[0]


# -- download --------------------------------------------------------------------------------


async def download_chunk(
    conn: ChunkConnection,
    ref: ChunkRef,
    *,
    into: bytearray | None = None,
    have: int = 0,
    piece: int = PIECE,
    progress: Callable[[Progress], None] | None = None,
    window: int = GET_WINDOW,
) -> bytes:
    """The sealed chunk ``ref`` addresses, read from the relay in ranges of ``piece`` bytes
    (``window`` of them in flight) and checked: its length and its SHA-256 against the
    address (DecryptionError otherwise; RemoteProtocolError for answers that are not the
    range asked). ``open_chunk`` turns it into the plaintext.

    ``into`` collects the bytes: its first ``have`` bytes are the chunk's already (from an
    earlier attempt), the rest are read. When the connection ends midway, it keeps what
    arrived, and a call with ``have=len(into)`` resumes there; when the whole does not match
    the address, it is emptied (the wrong bytes may be among those kept before).
    RemoteError 1011: the relay does not hold the chunk whole.
    """
    if not isinstance(ref, ChunkRef):
        raise LocalProtocolError(f"a chunk is downloaded by its ChunkRef, not {type(ref).__name__}")
    _checked_piece_size(piece)
    if not isinstance(window, int) or window < 1:
        raise LocalProtocolError(f"a download keeps 1 or more requests in flight, not {window!r}")
    total = ref.size + CHUNK_OVERHEAD
    buffer = bytearray() if into is None else into
    if not isinstance(buffer, bytearray):
        raise LocalProtocolError(
            f"a chunk is downloaded into a bytearray, not {type(into).__name__}"
        )
    if not isinstance(have, int) or not 0 <= have <= min(total, len(buffer)):
        raise LocalProtocolError(
            f"`have` counts the chunk's bytes already in `into` (0..{min(total, len(buffer))}), "
            f"not {have!r}"
        )
    del buffer[have:]
    await _read_ranges(
        conn, ref.address, buffer, total=total, piece=piece, window=window, progress=progress
    )
    if hashlib.sha256(buffer).digest() != ref.address:
        buffer.clear()
        raise DecryptionError(
            f"the relay served chunk {ref.address.hex()[:16]} with bytes that do not hash to "
            "its address: it was modified"
        )
    if progress is not None:
        progress(Progress(total, total, 1, 1))
    return bytes(buffer)


async def _read_ranges(
    conn: ChunkConnection,
    address: bytes,
    buffer: bytearray,
    *,
    total: int,
    piece: int,
    window: int,
    progress: Callable[[Progress], None] | None,
) -> None:
    """Append bytes len(buffer)..total to ``buffer`` in order, ``window`` reads at a time."""
    ranges = deque(
        (offset, min(piece, total - offset)) for offset in range(len(buffer), total, piece)
    )
    flight: deque[tuple[int, int, asyncio.Task[Message]]] = deque()
    try:
        while ranges or flight:
            while ranges and len(flight) < window:
                offset, length = ranges.popleft()
                get = ChunkGet(address=address, offset=offset, length=length)
                flight.append((offset, length, asyncio.create_task(conn.request(get))))
            offset, length, task = flight.popleft()
            buffer += checked_piece(await task, address, offset, length, total)
            if progress is not None and len(buffer) < total:
                progress(Progress(len(buffer), total, 0, 1))
    finally:
        for _, _, task in flight:
            task.cancel()
        for _, _, task in flight:
            with contextlib.suppress(BaseException):
                await task
