"""WebSocket frame headers (RFC 6455 §5.2) for writing several messages in one go.

A relay often has a burst of Noise messages for one client (NOTIFYs from several pushes, an
ACK): written as one buffer they cost one system call instead of one each. Frames from a
server are unmasked, so a binary frame is this header followed by the payload.
"""

from __future__ import annotations

import struct

_OPCODE_BINARY_FIN = 0x82
_OPCODE_CLOSE_FIN = 0x88


def binary_frame_header(length: int) -> bytes:
    if length < 126:
        return struct.pack("!BB", _OPCODE_BINARY_FIN, length)
    if length < 65536:
        return struct.pack("!BBH", _OPCODE_BINARY_FIN, 126, length)
    return struct.pack("!BBQ", _OPCODE_BINARY_FIN, 127, length)


def close_frame(code: int) -> bytes:
    """A server-side close frame carrying ``code`` (RFC 6455 §5.5.1)."""
    return struct.pack("!BBH", _OPCODE_CLOSE_FIN, 2, code)


def binary_frames(messages: list[bytes]) -> bytes:
    """Server-side (unmasked) binary frames carrying ``messages``, concatenated."""
    return b"".join(binary_frame_header(len(m)) + m for m in messages)
