"""Content-defined chunking: where a large file is cut into chunks.

FastCDC 2020 (Xia et al., IEEE TPDS 2020; pyfastcdc's Cython implementation, normalized
chunking level 1) with a minimum of 256 KiB, an average of 1 MiB and a maximum of 4 MiB
(MAX_CHUNK). Boundaries follow the content, so an edit, an insertion or a deletion in the
middle of a file changes only the chunks around it; the chunks before and after stay equal,
seal to equal bytes (``zerok.crypto.content``) and need not be sent again.

Boundaries are a sender's choice: a receiver takes whatever chunks a manifest lists, so
these parameters are not part of the format. Devices of a group should use the same ones
(and the same seed) so that equal files give equal chunks.

Sans I/O in the sense of the protocol layer: the only I/O is reading the stream the caller
hands in, a window at a time (never the whole file: at most 2 x MAX_CHUNK buffered).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final, Literal, Protocol

from pyfastcdc import FastCDC

from zerok.errors import LocalProtocolError
from zerok.wire.manifest import MAX_CHUNK

MIN_CHUNK = 256 * 1024
AVG_CHUNK = 1024 * 1024  # FastCDC's target: chunks of random data average about 1.2 MiB
NORMALIZED_CHUNKING: Final[Literal[1]] = 1
MAX_SEED = 2**63 - 1


class BinaryStream(Protocol):
    """What ``chunks`` reads: a binary stream (a file opened with "rb", io.BytesIO, ...).
    ``readinto`` is used when the stream has it (one copy fewer)."""

    def read(self, size: int = ..., /) -> bytes | None: ...


def chunks(stream: BinaryStream, *, seed: int = 0) -> Iterator[bytes]:
    """The chunks of ``stream`` from its current position to its end, each 1..MAX_CHUNK
    bytes, in order; nothing for an empty stream. ``seed`` keys the boundaries
    (``zerok.crypto.content.chunking_seed``; 0: FastCDC's public gear table).

    Reads lazily: a chunk is read when it is asked for, so memory stays bounded (about
    3 x MAX_CHUNK) whatever the size of the stream.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise LocalProtocolError(f"a chunking seed is 0..{MAX_SEED}, not {seed!r}")
    source = _Source(stream)
    # Not shared between calls: pyfastcdc's chunker is not safe to use from two threads.
    cdc = FastCDC(
        AVG_CHUNK,
        min_size=MIN_CHUNK,
        max_size=MAX_CHUNK,
        normalized_chunking=NORMALIZED_CHUNKING,
        seed=seed,
    )
    return _copied(cdc, source)


def _copied(cdc: FastCDC, source: _Source) -> Iterator[bytes]:
    for chunk in cdc.cut_stream(source):
        # The view points into pyfastcdc's window, which the next chunk overwrites.
        yield bytes(chunk.data)


class _Source:
    """The stream seen through ``readinto``, with the ways a caller's stream can go wrong
    (text mode, non-blocking, a read larger than asked) turned into clear errors."""

    def __init__(self, stream: Any) -> None:
        read = getattr(stream, "read", None)
        if not callable(read):
            raise LocalProtocolError(
                f"cannot chunk {type(stream).__name__}: it is not a readable binary stream"
            )
        readinto = getattr(stream, "readinto", None)
        self._read = read
        self._readinto = readinto if callable(readinto) else None

    def readinto(self, buffer: memoryview) -> int:
        if self._readinto is not None:
            count = self._readinto(buffer)
            if count is None:
                raise _would_block()
            if not isinstance(count, int) or not 0 <= count <= len(buffer):
                raise LocalProtocolError(f"the stream's readinto returned {count!r}")
            return count
        data = self._read(len(buffer))
        if data is None:
            raise _would_block()
        if not isinstance(data, bytes | bytearray | memoryview):
            raise LocalProtocolError(
                f"the stream gave {type(data).__name__}, not bytes: open the file in binary mode"
            )
        if len(data) > len(buffer):
            raise LocalProtocolError("the stream returned more bytes than were asked for")
        buffer[: len(data)] = data
        return len(data)


def _would_block() -> LocalProtocolError:
    return LocalProtocolError("the stream would block: chunk a blocking stream")
