"""Content-defined chunking: bounds, streaming equal to cutting the whole buffer, edits
that touch only the chunks around them, bounded reading, frozen boundaries, bad streams."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from pyfastcdc import FastCDC

from zerok.errors import LocalProtocolError
from zerok.protocol.chunking import AVG_CHUNK, MAX_SEED, MIN_CHUNK, chunks
from zerok.wire.manifest import MAX_CHUNK

MiB = 1024 * 1024
SEED = 0x35C500618959E081  # chunking_seed of tests/crypto/test_content.py's content key

# Frozen boundaries, for other implementations of the chunker: the chunk sizes of
# SHAKE128("0k-sync/v2/chunking-vector") truncated to 16 MiB, without and with SEED.
VECTOR_SIZES = {
    0: [2198617, 1290133, 1293375, 1230066, 2234355, 2107338, 497773, 1350805, 1137164,
        2173291, 571547, 271073, 421679],
    SEED: [1492142, 1715842, 614459, 1983421, 418336, 1567845, 420532, 1168093, 1692349,
           1073735, 743427, 1601639, 1222691, 557387, 505318],
}  # fmt: skip


def pseudo_random(size: int, label: bytes = b"") -> bytes:
    """``size`` deterministic bytes that look random (ChaCha20's key stream; fast)."""
    key = hashlib.sha256(label).digest()
    return Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor().update(bytes(size))


@cache
def file_64mib() -> bytes:
    return pseudo_random(64 * MiB, b"64 MiB file")


@cache
def cut_64mib() -> list[bytes]:
    return cut(file_64mib(), seed=SEED)


def cut(data: bytes, *, seed: int = 0) -> list[bytes]:
    return list(chunks(io.BytesIO(data), seed=seed))


def test_parameters() -> None:
    assert MIN_CHUNK == 256 * 1024
    assert MiB == AVG_CHUNK
    assert 4 * MiB == MAX_CHUNK


@pytest.mark.parametrize("seed", sorted(VECTOR_SIZES))
def test_vector(seed: int) -> None:
    data = hashlib.shake_128(b"0k-sync/v2/chunking-vector").digest(16 * MiB)
    assert [len(chunk) for chunk in cut(data, seed=seed)] == VECTOR_SIZES[seed]


@pytest.mark.parametrize("seed", [0, SEED])
def test_chunks_cover_the_stream_within_the_bounds(seed: int) -> None:
    data = file_64mib()[: 24 * MiB + 12345]
    pieces = cut(data, seed=seed)
    assert b"".join(pieces) == data
    assert all(MIN_CHUNK <= len(piece) <= MAX_CHUNK for piece in pieces[:-1])
    assert 1 <= len(pieces[-1]) <= MAX_CHUNK
    assert all(type(piece) is bytes for piece in pieces)
    mean = len(data) / len(pieces)
    assert AVG_CHUNK * 0.8 < mean < AVG_CHUNK * 1.6


class ShortReads:
    """A stream that hands out at most ``step`` bytes a call, through ``read`` only or
    through ``readinto`` only: chunk windows then never line up with what a read returns."""

    def __init__(self, data: bytes, step: int, *, readinto: bool) -> None:
        self._data, self._pos, self._step = data, 0, step
        if readinto:
            self.readinto = self._readinto

    def _next(self, size: int) -> bytes:
        piece = self._data[self._pos : self._pos + min(size, self._step)]
        self._pos += len(piece)
        return piece

    def _readinto(self, buffer: Any) -> int:
        piece = self._next(len(buffer))
        buffer[: len(piece)] = piece
        return len(piece)

    def read(self, size: int = -1, /) -> bytes:
        assert not hasattr(self, "readinto"), "readinto() was to be used"
        return self._next(size)


@pytest.mark.parametrize("readinto", [True, False])
@pytest.mark.parametrize("step", [1000, 3 * MiB + 7])
def test_streaming_cuts_where_the_whole_buffer_is_cut(readinto: bool, step: int) -> None:
    data = file_64mib()[: 20 * MiB]
    cdc = FastCDC(AVG_CHUNK, min_size=MIN_CHUNK, max_size=MAX_CHUNK, seed=SEED)
    whole = [bytes(chunk.data) for chunk in cdc.cut_buf(data)]
    assert len(whole) > 10
    assert list(chunks(ShortReads(data, step, readinto=readinto), seed=SEED)) == whole


def test_a_real_file(tmp_path: Path) -> None:
    data = file_64mib()[: 9 * MiB]
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    with path.open("rb") as f:
        assert list(chunks(f, seed=SEED)) == cut(data, seed=SEED)
    with path.open("rb", buffering=0) as raw:
        assert list(chunks(raw)) == cut(data)


def test_chunking_starts_at_the_stream_position() -> None:
    data = file_64mib()[: 2 * MiB]
    stream = io.BytesIO(data)
    stream.seek(1000)
    assert list(chunks(stream)) == cut(data[1000:])


@pytest.mark.parametrize(("data", "expected"), [(b"", []), (b"x", [b"x"])])
def test_tiny_streams(data: bytes, expected: list[bytes]) -> None:
    assert cut(data) == expected
    small = file_64mib()[: MIN_CHUNK - 1]
    assert cut(small) == [small]


# -- edits touch only the chunks around them ---------------------------------------------------


def _changed(before: list[bytes], after: list[bytes]) -> tuple[int, int, int]:
    """(chunks shared at the front, new chunks in ``after``, chunks shared at the end)."""
    front = 0
    while front < min(len(before), len(after)) and before[front] == after[front]:
        front += 1
    back = 0
    while back < min(len(before), len(after)) - front and before[-1 - back] == after[-1 - back]:
        back += 1
    return front, len(after) - front - back, back


EDITS: dict[str, Callable[[bytes, int], bytes]] = {
    "overwrite": lambda data, at: data[:at] + bytes(100) + data[at + 100 :],
    "insert": lambda data, at: data[:at] + b"inserted " * 1000 + data[at:],
    "delete": lambda data, at: data[:at] + data[at + 5000 :],
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_an_edit_in_the_middle_changes_only_the_chunks_around_it(edit: str) -> None:
    data = file_64mib()
    at = len(data) // 2 + 12345
    before, after = cut_64mib(), cut(EDITS[edit](data, at), seed=SEED)
    front, new, back = _changed(before, after)
    assert new <= 2, f"{new} new chunks for one edit"
    assert len(before) - front - back <= 2
    # The unchanged chunks reach right up to the edit on both sides.
    assert sum(map(len, before[:front])) > at - 2 * MAX_CHUNK
    assert sum(map(len, before[-back:])) > len(data) - at - 3 * MAX_CHUNK
    assert len(before) > 40  # and the file really was cut into many chunks


def test_equal_content_at_another_offset_gives_equal_chunks() -> None:
    data = file_64mib()[: 16 * MiB]
    shifted = cut(b"a header of another file" + data)
    common = set(cut(data)) & set(shifted)
    assert len(common) >= len(shifted) - 2


# -- bounded reading ---------------------------------------------------------------------------


class Endless(io.RawIOBase):
    """Random-looking bytes without end, counting what was read."""

    def __init__(self) -> None:
        self.read_bytes = 0
        self._block = pseudo_random(MiB, b"endless")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        size = min(len(buffer), MiB)
        offset = (self.read_bytes * 7919) % MiB  # not periodic at chunk sizes
        piece = (self._block[offset:] + self._block[:offset])[:size]
        buffer[:size] = piece
        self.read_bytes += size
        return size


def test_chunks_are_read_as_they_are_asked_for() -> None:
    stream = Endless()
    produced = chunks(stream)
    assert stream.read_bytes == 0
    first = next(produced)
    assert stream.read_bytes <= 2 * MAX_CHUNK
    taken = len(first) + sum(len(next(produced)) for _ in range(9))
    assert stream.read_bytes <= taken + 2 * MAX_CHUNK  # a bounded window, never the stream


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [-1, MAX_SEED + 1, True, 1.5])
def test_bad_seeds_are_refused(seed: object) -> None:
    with pytest.raises(LocalProtocolError, match="seed"):
        chunks(io.BytesIO(b"x"), seed=seed)  # type: ignore[arg-type]


def test_not_a_stream() -> None:
    with pytest.raises(LocalProtocolError, match="not a readable binary stream"):
        chunks(b"bytes are not a stream")  # type: ignore[arg-type]


def test_a_text_stream() -> None:
    with pytest.raises(LocalProtocolError, match="binary mode"):
        list(chunks(io.StringIO("text")))  # type: ignore[arg-type]


class Misbehaving(io.RawIOBase):
    def __init__(self, answer: object) -> None:
        self._answer = answer

    def readinto(self, buffer: Any) -> Any:
        return self._answer


@pytest.mark.parametrize(
    ("answer", "match"), [(None, "would block"), (-1, "returned -1"), (10**9, "returned")]
)
def test_misbehaving_streams(answer: object, match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        list(chunks(Misbehaving(answer)))


class Greedy:
    def read(self, size: int = -1, /) -> bytes | None:
        return bytes(size + 1)


class NonBlocking:
    def read(self, size: int = -1, /) -> bytes | None:
        return None


def test_read_only_streams_that_misbehave() -> None:
    with pytest.raises(LocalProtocolError, match="more bytes"):
        list(chunks(Greedy()))
    with pytest.raises(LocalProtocolError, match="would block"):
        list(chunks(NonBlocking()))
