"""Frame encoding: ``[version, type, request_id, body]`` as a MessagePack array.

``request_id`` is an unsigned 32-bit number chosen by the requester; a response carries the
request's id, and 0 marks a message that is not a response and wants none (NOTIFY, ...).
Decoding is strict: anything but a well-formed frame of a known type raises WireError.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec

from zerok.errors import WireError
from zerok.wire.codes import PROTOCOL_VERSION, MessageType
from zerok.wire.ids import FixedId
from zerok.wire.messages import ALL_MESSAGES, U32_MAX, Message


class Frame(NamedTuple):
    request_id: int
    message: Message


class _Envelope(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    version: int
    type: int
    request_id: int
    body: msgspec.Raw


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, FixedId):
        return bytes(obj)
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def _dec_hook(kind: type, obj: Any) -> Any:
    if isinstance(kind, type) and issubclass(kind, FixedId):
        if not isinstance(obj, bytes):
            raise TypeError(f"expected bytes for {kind.__name__}")
        try:
            return kind(obj)
        except WireError as exc:
            raise ValueError(str(exc)) from None
    raise NotImplementedError(f"cannot decode {kind!r}")


_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_envelope_decoder = msgspec.msgpack.Decoder(_Envelope)
_body_decoders: dict[int, tuple[type[Message], msgspec.msgpack.Decoder[Any]]] = {
    int(cls.TYPE): (cls, msgspec.msgpack.Decoder(cls, dec_hook=_dec_hook)) for cls in ALL_MESSAGES
}


def encode(message: Message, *, request_id: int = 0) -> bytes:
    """Encode one message as a frame."""
    if not 0 <= request_id <= U32_MAX:
        raise WireError(f"request_id {request_id} is outside 0..{U32_MAX}")
    if not isinstance(message, Message):
        raise WireError(f"cannot encode {type(message).__name__}: not a wire message")
    return _encoder.encode((PROTOCOL_VERSION, int(message.TYPE), request_id, message))


def decode_frame(data: bytes) -> Frame:
    """Decode one frame into its request id and message; raise WireError on any defect."""
    try:
        envelope = _envelope_decoder.decode(data)
    except (msgspec.DecodeError, TypeError, ValueError) as exc:
        raise WireError(f"malformed frame: {exc}") from None
    except RecursionError:
        raise WireError("malformed frame: nested too deeply") from None
    if envelope.version != PROTOCOL_VERSION:
        raise WireError(
            f"unsupported protocol version {envelope.version} (this peer speaks {PROTOCOL_VERSION})"
        )
    if not 0 <= envelope.request_id <= U32_MAX:
        raise WireError(f"request_id {envelope.request_id} is outside 0..{U32_MAX}")
    entry = _body_decoders.get(envelope.type)
    if entry is None:
        raise WireError(f"unknown message type {envelope.type:#04x}")
    cls, decoder = entry
    try:
        message = decoder.decode(envelope.body)
    except (msgspec.DecodeError, ValueError) as exc:  # ValueError: invalid UTF-8 in a string
        raise WireError(f"invalid {MessageType(cls.TYPE).name} message: {exc}") from None
    except RecursionError:
        raise WireError(
            f"invalid {MessageType(cls.TYPE).name} message: nested too deeply"
        ) from None
    return Frame(envelope.request_id, message)


def peek_request_id(head: bytes) -> int | None:
    """The request id of a frame from its first bytes alone, or None if they do not tell.

    Used to answer a frame that is too large to be read whole.
    """
    if len(head) < 4 or head[0] != 0x94 or head[1] != PROTOCOL_VERSION:
        return None
    pos = 2
    for _ in range(2):  # skip the type, then read the request id
        if pos >= len(head):
            return None
        lead = head[pos]
        width = {0xCC: 1, 0xCD: 2, 0xCE: 4}.get(lead, 0)
        if lead <= 0x7F:
            value, pos = lead, pos + 1
        elif width and pos + 1 + width <= len(head):
            value = int.from_bytes(head[pos + 1 : pos + 1 + width], "big")
            pos += 1 + width
        else:
            return None
    return value


def decode(data: bytes) -> Message:
    """Decode one frame and return its message (see decode_frame for the request id)."""
    return decode_frame(data).message
