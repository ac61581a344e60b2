"""What client and relay sessions share: the Noise handshake, framing, deadlines, closing.

A session is fed the Noise messages that arrived (one per call, as a message-oriented
transport such as WebSocket delivers them) together with the current time, and returns
events; the messages it wants sent are collected with ``data_to_send()``. It never touches
a socket or a clock, so every decision is testable without a network.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric import x25519

from zerok.crypto.noise import HandshakeState, NoiseTransport
from zerok.crypto.noise.transport import sealed_size
from zerok.errors import (
    DecryptionError,
    FrameTooLargeError,
    HandshakeError,
    LocalProtocolError,
    NonceExhaustedError,
    OversizedFrameError,
    RemoteProtocolError,
    WireError,
)
from zerok.protocol.events import ConnectionClosed, Event, HandshakeComplete
from zerok.protocol.variants import HYBRID, Variant, prologue
from zerok.wire import Error, ErrorCode, Frame, Message, decode_frame, encode
from zerok.wire.messages import MAX_TEXT_CHARS

DEFAULT_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_MAX_FRAME = 1024 * 1024 + 64 * 1024  # 1 MiB blob + room for the envelope


class SessionState(enum.Enum):
    HANDSHAKE = "handshake"  # Noise messages in flight
    AWAIT_HELLO = "await-hello"  # relay: handshake done, waiting for HELLO
    HELLO_PENDING = "hello-pending"  # relay: HELLO verified, the relay is deciding
    AWAIT_WELCOME = "await-welcome"  # client: HELLO sent
    OPEN = "open"  # requests and responses flow
    CLOSED = "closed"


class Session:
    """Base class; see ClientSession and RelaySession."""

    initiator: bool

    def __init__(
        self,
        static_key: x25519.X25519PrivateKey,
        *,
        now: float,
        variant: Variant = HYBRID,
        offered: Sequence[str] | None = None,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        """``offered``: the subprotocols the client offered, in its order (default: only
        ``variant``'s); both sides must pass the same list or the handshake fails."""
        self.variant = variant
        self.offered = tuple(offered) if offered is not None else (variant.subprotocol,)
        self.state = SessionState.HANDSHAKE
        self.max_frame = max_frame
        self.handshake_deadline = now + handshake_timeout
        self.last_received = now
        self.last_sent = now
        self.close_code: int | None = None
        self.close_reason = ""
        self._outgoing: list[bytes] = []
        self.bytes_to_send = 0  # in _outgoing, for the driver's back-pressure
        self.errors_sent: list[int] = []  # codes of the ERRORs sent, for the driver to count
        self._transport: NoiseTransport | None = None
        self._handshake = HandshakeState(
            variant.noise_protocol,
            initiator=self.initiator,
            prologue=prologue(self.offered, variant),
            static=static_key,
        )

    # -- for the driver -------------------------------------------------------------------

    def data_to_send(self) -> list[bytes]:
        """Noise messages to put on the wire, in order; each at most 65535 bytes."""
        out, self._outgoing = self._outgoing, []
        self.bytes_to_send = 0
        return out

    @property
    def closed(self) -> bool:
        return self.state is SessionState.CLOSED

    @property
    def handshake_hash(self) -> bytes:
        if self._transport is None:
            raise LocalProtocolError("the handshake is not complete")
        return self._transport.handshake_hash

    @property
    def peer_static(self) -> bytes:
        if self._transport is None or self._transport.remote_static is None:
            raise LocalProtocolError("the handshake is not complete")
        return self._transport.remote_static

    def next_deadline(self) -> float | None:
        """When check_timeouts() should next be called, or None."""
        if self.state in (SessionState.OPEN, SessionState.CLOSED):
            return None
        return self.handshake_deadline

    def check_timeouts(self, now: float) -> list[Event]:
        """Close the session if its handshake deadline passed."""
        if self.state not in (SessionState.OPEN, SessionState.CLOSED) and (
            now >= self.handshake_deadline
        ):
            return self._close(None, "handshake deadline passed", by_peer=False)
        return []

    def receive(self, data: bytes, now: float) -> list[Event]:
        """Process one Noise message from the peer."""
        if self.state is SessionState.CLOSED:
            return []
        self.last_received = now
        if self.state is SessionState.HANDSHAKE:
            return self._receive_handshake(data)
        assert self._transport is not None
        try:
            frame_bytes = self._transport.decrypt_message(data)
        except OversizedFrameError as exc:
            return self._frame_too_large(str(exc), exc.head)
        except DecryptionError:
            return self._close(ErrorCode.INVALID_MESSAGE, "message failed authentication")
        except (RemoteProtocolError, NonceExhaustedError) as exc:
            return self._close(ErrorCode.INVALID_MESSAGE, str(exc))
        if frame_bytes is None:
            return []
        try:
            frame = decode_frame(frame_bytes)
        except WireError as exc:
            return self._close(ErrorCode.INVALID_MESSAGE, str(exc))
        return self._receive_frame(frame, now)

    def close(self, code: int | None = None, message: str = "") -> list[Event]:
        """End the session, telling the peer why with an ERROR when a code is given."""
        if self.state is SessionState.CLOSED:
            return []
        return self._close(code, message, by_peer=False)

    # -- for subclasses -------------------------------------------------------------------

    def _receive_frame(self, frame: Frame, now: float) -> list[Event]:
        raise NotImplementedError

    def _on_handshake_complete(self) -> list[Event]:
        raise NotImplementedError

    def _frame_too_large(self, reason: str, head: bytes) -> list[Event]:
        return self._close(ErrorCode.INVALID_MESSAGE, reason)

    def _send_frame(self, message: Message, request_id: int = 0, room: int | None = None) -> bool:
        """Queue a message; with ``room``, only if it takes at most that many bytes of
        ``bytes_to_send`` (nothing is queued otherwise, and False returned)."""
        frame = encode(message, request_id=request_id)
        if room is not None and sealed_size(len(frame)) > room:
            return False
        self._send_encoded(frame)
        if isinstance(message, Error):
            self.errors_sent.append(message.code)
        return True

    def _send_encoded(self, frame: bytes) -> None:
        if self._transport is None:
            raise LocalProtocolError("cannot send before the handshake is complete")
        self._queue(self._transport.encrypt_frame(frame))

    def _queue(self, messages: list[bytes]) -> None:
        self._outgoing.extend(messages)
        self.bytes_to_send += sum(map(len, messages))

    def _close(
        self,
        code: int | None,
        reason: str,
        *,
        by_peer: bool = False,
        request_id: int = 0,
        retry_after: int = 0,
    ) -> list[Event]:
        if code is not None and not by_peer and self._transport is not None:
            # On an exhausted channel nothing more can be said; close all the same.
            with contextlib.suppress(NonceExhaustedError, FrameTooLargeError):
                error = Error(
                    code=int(code), message=reason[:MAX_TEXT_CHARS], retry_after=retry_after
                )
                self._send_frame(error, request_id)
        self.state = SessionState.CLOSED
        self.close_code = int(code) if code is not None else None
        self.close_reason = reason
        return [ConnectionClosed(self.close_code, reason, by_peer)]

    def _start_handshake(self) -> None:
        """Initiator: queue the first handshake message."""
        self._queue([self._handshake.write_message(b"")])

    def _receive_handshake(self, data: bytes) -> list[Event]:
        if self._handshake.my_turn():
            return self._close(None, "received a handshake message out of turn")
        try:
            if self._handshake.read_message(data):
                # Payloads are empty in this protocol version; one here means the peer runs
                # another pattern (e.g. a hybrid client talking to a classic relay).
                raise HandshakeError("unexpected handshake payload: the variants differ")
            if not self._handshake.complete:
                self._queue([self._handshake.write_message(b"")])
        except HandshakeError as exc:
            return self._close(None, str(exc))
        if not self._handshake.complete:
            return []
        result = self._handshake.result
        self._transport = NoiseTransport(result, max_frame=self.max_frame)
        assert result.remote_static is not None
        events: list[Event] = [HandshakeComplete(result.remote_static, result.handshake_hash)]
        return events + self._on_handshake_complete()
