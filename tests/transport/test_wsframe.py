"""Server-side WebSocket binary frames (RFC 6455 §5.2), checked byte by byte, by an
independent parser written here, and by the ``websockets`` library's frame parser."""

from __future__ import annotations

import os
from collections.abc import Generator
from dataclasses import dataclass
from typing import TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from zerok.transport.wsframe import binary_frame_header, binary_frames

T = TypeVar("T")

BOUNDARY_SIZES = [0, 1, 125, 126, 127, 65535, 65536, 2**20]


@dataclass(frozen=True)
class ParsedFrame:
    fin: bool
    rsv: int
    opcode: int
    masked: bool
    payload: bytes
    header_len: int


def parse_frames(data: bytes) -> list[ParsedFrame]:
    """A straight reading of RFC 6455 §5.2; insists on the minimal length encoding (§5.2:
    'the minimal number of bytes MUST be used to encode the length')."""
    frames: list[ParsedFrame] = []
    i = 0
    while i < len(data):
        assert len(data) - i >= 2, "truncated header"
        b0, b1 = data[i], data[i + 1]
        start = i
        i += 2
        length = b1 & 0x7F
        if length == 126:
            length = int.from_bytes(data[i : i + 2], "big")
            i += 2
            assert length >= 126, "16-bit length used for a length under 126"
        elif length == 127:
            assert data[i] & 0x80 == 0, "most significant bit of a 64-bit length must be 0"
            length = int.from_bytes(data[i : i + 8], "big")
            i += 8
            assert length >= 65536, "64-bit length used for a length under 65536"
        masked = bool(b1 & 0x80)
        if masked:
            i += 4
        payload = data[i : i + length]
        assert len(payload) == length, "truncated payload"
        i += length
        frames.append(
            ParsedFrame(
                fin=bool(b0 & 0x80),
                rsv=(b0 >> 4) & 0x07,
                opcode=b0 & 0x0F,
                masked=masked,
                payload=payload,
                header_len=(i - start) - length,
            )
        )
    return frames


@pytest.mark.parametrize(
    ("length", "header"),
    [
        (0, bytes([0x82, 0x00])),
        (1, bytes([0x82, 0x01])),
        (125, bytes([0x82, 0x7D])),
        (126, bytes([0x82, 0x7E, 0x00, 0x7E])),
        (127, bytes([0x82, 0x7E, 0x00, 0x7F])),
        (65535, bytes([0x82, 0x7E, 0xFF, 0xFF])),
        (65536, bytes([0x82, 0x7F, 0, 0, 0, 0, 0, 0x01, 0x00, 0x00])),
        (2**20, bytes([0x82, 0x7F, 0, 0, 0, 0, 0, 0x10, 0x00, 0x00])),
        (2**32 + 5, bytes([0x82, 0x7F, 0, 0, 0, 0x01, 0, 0, 0, 0x05])),
    ],
)
def test_header_layout(length: int, header: bytes) -> None:
    assert binary_frame_header(length) == header
    # FIN set, RSV1-3 clear, opcode 0x2 (binary), MASK clear (server to client).
    first, second = header[0], header[1]
    assert first & 0x80
    assert first & 0x70 == 0
    assert first & 0x0F == 0x2
    assert second & 0x80 == 0


@pytest.mark.parametrize("size", BOUNDARY_SIZES)
def test_single_frame_round_trips(size: int) -> None:
    payload = os.urandom(size)
    data = binary_frames([payload])
    expected_header = 2 if size < 126 else 4 if size < 65536 else 10
    assert len(data) == expected_header + size
    (frame,) = parse_frames(data)
    assert frame == ParsedFrame(
        fin=True, rsv=0, opcode=0x2, masked=False, payload=payload, header_len=expected_header
    )


def test_several_frames_in_one_buffer() -> None:
    messages = [os.urandom(n) for n in BOUNDARY_SIZES]
    data = binary_frames(messages)
    frames = parse_frames(data)
    assert [f.payload for f in frames] == messages
    assert all(f.fin and f.opcode == 0x2 and not f.masked for f in frames)


def test_no_messages_make_an_empty_buffer() -> None:
    assert binary_frames([]) == b""


@given(st.lists(st.binary(max_size=300), max_size=20))
def test_round_trip_property(messages: list[bytes]) -> None:
    assert [f.payload for f in parse_frames(binary_frames(messages))] == messages


# -- the websockets library agrees -------------------------------------------------------


def _finish(gen: Generator[None, None, T]) -> T:
    """Run a sans-I/O parser generator that must not need more data."""
    try:
        next(gen)
    except StopIteration as done:
        value: T = done.value
        return value
    raise AssertionError("the parser wanted more data than the buffer holds")


def websockets_parse(data: bytes, count: int) -> list[Frame]:
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = [
        _finish(Frame.parse(reader.read_exact, mask=False, max_size=None)) for _ in range(count)
    ]
    assert _finish(reader.at_eof()), "bytes left over after the frames"
    return frames


def test_websockets_parses_the_frames() -> None:
    messages = [os.urandom(n) for n in BOUNDARY_SIZES] + [b"", b"tail"]
    frames = websockets_parse(binary_frames(messages), len(messages))
    assert [f.data for f in frames] == messages
    for frame in frames:
        assert frame.opcode is Opcode.BINARY
        assert frame.fin
        assert not (frame.rsv1 or frame.rsv2 or frame.rsv3)


def test_websockets_serializes_the_same_bytes() -> None:
    for size in BOUNDARY_SIZES:
        payload = os.urandom(size)
        theirs = Frame(Opcode.BINARY, payload).serialize(mask=False)
        assert binary_frames([payload]) == theirs
