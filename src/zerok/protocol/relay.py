"""The relay's side of one connection, sans I/O.

Order enforced: Noise handshake → HELLO (handed on: its proof and whether the device may
enter are the relay's decisions, by the group's log, given with accept() or reject()) →
requests. Anything
out of order, undecodable or of a type a client may not send ends the session with
ERROR 1000.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric import x25519

from zerok.errors import LocalProtocolError
from zerok.protocol.catalog import CLIENT_REQUESTS, RELAY_MESSAGES, UNSOLICITED
from zerok.protocol.events import Event, HelloReceived, RequestReceived
from zerok.protocol.session import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_FRAME,
    Session,
    SessionState,
)
from zerok.protocol.variants import HYBRID, Variant
from zerok.wire import (
    DeviceId,
    Error,
    ErrorCode,
    Frame,
    Hello,
    Message,
    Welcome,
    peek_request_id,
)
from zerok.wire.messages import MAX_TEXT_CHARS

# HELLO may carry log entries (a new group's whole log, or history a relay lost): it is
# allowed this many bytes even where the relay's frame limit for blobs is lower.
HELLO_FRAME = 256 * 1024


class RelaySession(Session):
    """One client connection as the relay sees it."""

    initiator = False

    def __init__(
        self,
        static_key: x25519.X25519PrivateKey,
        *,
        now: float,
        variant: Variant = HYBRID,
        offered: Sequence[str] | None = None,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        max_frame: int = DEFAULT_MAX_FRAME,
        hello_frame: int = HELLO_FRAME,
        idle_timeout: float | None = None,
    ) -> None:
        """``hello_frame``: the limit for the HELLO frame, at least ``max_frame``; HELLO may
        carry a group's log (a new group's genesis alone is ~5 KiB), which must fit even
        where blobs are small."""
        super().__init__(
            static_key,
            now=now,
            variant=variant,
            offered=offered,
            handshake_timeout=handshake_timeout,
            max_frame=max_frame,
        )
        self.idle_timeout = idle_timeout
        self.hello_frame = max(hello_frame, max_frame)
        self.device_id: DeviceId | None = None
        self.hello: Hello | None = None
        self._hello_request_id = 0

    # -- decisions of the relay ---------------------------------------------------------

    def accept(self, welcome: Welcome, now: float | None = None) -> None:
        """Admit the device whose HELLO was received; ``now`` restarts the idle timer."""
        if self.state is not SessionState.HELLO_PENDING:
            raise LocalProtocolError(
                f"accept() needs a pending HELLO, session is {self.state.value}"
            )
        self._send_frame(welcome, self._hello_request_id)
        self.state = SessionState.OPEN
        assert self._transport is not None
        self._transport.max_frame = self.max_frame
        if now is not None:
            self.last_received = max(self.last_received, now)

    def reject(self, code: ErrorCode, message: str) -> list[Event]:
        """Refuse the pending HELLO with an ERROR and close."""
        if self.state is not SessionState.HELLO_PENDING:
            raise LocalProtocolError(
                f"reject() needs a pending HELLO, session is {self.state.value}"
            )
        return self._close(code, message)

    def send(self, message: Message, request_id: int = 0, *, room: int | None = None) -> bool:
        """Send a response (with the request's id) or an unsolicited message (id 0).

        A request sent with id 0 wants no answer: a result or confirmation with id 0 is
        dropped here, so only NOTIFY, MEMBERSHIP and ERROR ever go out unasked.
        With ``room``, a message that would add more than that many bytes to
        ``bytes_to_send`` is not queued, and False returned: the driver's budget for a
        peer that reads slowly is kept before anything is queued, not after.
        """
        if self.state is not SessionState.OPEN:
            raise LocalProtocolError(
                f"cannot send {type(message).__name__}: session is {self.state.value}"
            )
        if type(message) not in RELAY_MESSAGES:
            raise LocalProtocolError(f"a relay does not send {type(message).__name__}")
        if request_id == 0 and type(message) not in UNSOLICITED:
            return True
        return self._send_frame(message, request_id, room)

    def error(
        self, code: ErrorCode, message: str, request_id: int = 0, *, retry_after: int = 0
    ) -> list[Event]:
        """Answer with an ERROR (``retry_after``: seconds, advice for when to try again);
        fatal codes also close the session. No-op once closed."""
        if self.state is SessionState.CLOSED:
            return []
        if code.fatal:
            return self._close(code, message, request_id=request_id, retry_after=retry_after)
        error = Error(code=int(code), message=message[:MAX_TEXT_CHARS], retry_after=retry_after)
        self.send(error, request_id)
        return []

    # -- timeouts -----------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        if self.state is SessionState.OPEN and self.idle_timeout is not None:
            return self.last_received + self.idle_timeout
        return super().next_deadline()

    def check_timeouts(self, now: float) -> list[Event]:
        if (
            self.state is SessionState.OPEN
            and self.idle_timeout is not None
            and now >= self.last_received + self.idle_timeout
        ):
            return self._close(None, f"idle for {self.idle_timeout:g} s")
        return super().check_timeouts(now)

    # -- incoming -----------------------------------------------------------------------

    def _on_handshake_complete(self) -> list[Event]:
        self.device_id = DeviceId(self.peer_static)
        self.state = SessionState.AWAIT_HELLO
        assert self._transport is not None
        self._transport.max_frame = self.hello_frame
        return []

    def _frame_too_large(self, reason: str, head: bytes) -> list[Event]:
        if self.state is SessionState.OPEN:
            # The frame's fragments are skipped and the connection stays usable; the
            # answer carries the request id when the frame's first bytes reveal it.
            request_id = peek_request_id(head) or 0
            self._send_frame(Error(code=ErrorCode.BLOB_TOO_LARGE, message=reason), request_id)
            return []
        return super()._frame_too_large(reason, head)

    def _receive_frame(self, frame: Frame, now: float) -> list[Event]:
        message = frame.message
        if isinstance(message, Error):
            return self._close(message.code, message.message, by_peer=True)
        if self.state is SessionState.AWAIT_HELLO:
            if not isinstance(message, Hello):
                return self._close(
                    ErrorCode.INVALID_MESSAGE,
                    f"expected HELLO first, got {message.TYPE.name}",
                )
            return self._receive_hello(frame.request_id, message)
        if self.state is SessionState.HELLO_PENDING:
            return self._close(ErrorCode.INVALID_MESSAGE, "nothing may follow HELLO before WELCOME")
        if type(message) not in CLIENT_REQUESTS:
            return self._close(
                ErrorCode.INVALID_MESSAGE, f"{message.TYPE.name} is not a client message"
            )
        return [RequestReceived(frame.request_id, message)]

    def _receive_hello(self, request_id: int, hello: Hello) -> list[Event]:
        assert self.device_id is not None
        # The proof is checked by whoever knows the device's signing key: the relay's
        # service, from the group's log.
        self.hello = hello
        self._hello_request_id = request_id
        self.state = SessionState.HELLO_PENDING
        return [HelloReceived(self.device_id, hello, self.handshake_hash)]
