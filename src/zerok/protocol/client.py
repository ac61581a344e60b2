"""The client's side of one connection, sans I/O.

The session starts the handshake as soon as it is made, sends HELLO with the membership
proof when the handshake completes, and opens on WELCOME. Requests get ids; each response
must answer an outstanding request with the type that request expects.

Liveness (docs/protocol.md §6.9): after ``heartbeat_interval`` seconds in which it sent or
received nothing, the session sends a PRESENCE with a request id, which the relay echoes;
no answer within ``heartbeat_timeout``, or no answer to any request within
``request_timeout``, and the session closes (ConnectionClosed with code None): the path
is dead, and a dead path is noticed within about two heartbeat intervals.
"""

from __future__ import annotations

from collections.abc import Sequence

from zerok.crypto.entry import Signer
from zerok.crypto.identity import DeviceIdentity
from zerok.crypto.membership import make_hello
from zerok.crypto.noise.transport import MAX_SEND_FRAME
from zerok.errors import FrameTooLargeError, LocalProtocolError
from zerok.protocol.catalog import ANSWERS, CLIENT_REQUESTS, UNSOLICITED
from zerok.protocol.events import (
    Event,
    MessageReceived,
    RequestFailed,
    ResponseReceived,
    Welcomed,
)
from zerok.protocol.session import (
    DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_FRAME,
    Session,
    SessionState,
)
from zerok.protocol.variants import HYBRID, Variant
from zerok.wire import (
    U32_MAX,
    Error,
    ErrorCode,
    Frame,
    GroupId,
    Message,
    Presence,
    Push,
    Welcome,
    encode,
)
from zerok.wire.messages import MAX_NAME_CHARS

HELLO_REQUEST_ID = 1
DEFAULT_HEARTBEAT = 30.0


class ClientSession(Session):
    """One connection to a relay as a device of one group sees it."""

    initiator = True

    def __init__(
        self,
        identity: DeviceIdentity,
        group_id: GroupId,
        *,
        now: float,
        entries: Sequence[bytes] = (),
        signer: tuple[bytes, Signer] | None = None,
        variant: Variant = HYBRID,
        offered: Sequence[str] | None = None,
        device_name: str = "",
        last_cursor: int = 0,
        client: str = "",
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        max_frame: int = DEFAULT_MAX_FRAME,
        heartbeat_interval: float | None = DEFAULT_HEARTBEAT,
        heartbeat_timeout: float | None = None,
        request_timeout: float | None = None,
    ) -> None:
        """``heartbeat_timeout`` defaults to ``heartbeat_interval``; ``request_timeout``
        None: requests wait for their answer as long as the connection lives."""
        super().__init__(
            identity.private_key,
            now=now,
            variant=variant,
            offered=offered,
            handshake_timeout=handshake_timeout,
            max_frame=max_frame,
        )
        for label, text in (("device name", device_name), ("client", client)):
            if len(text) > MAX_NAME_CHARS:
                raise LocalProtocolError(f"{label} is longer than {MAX_NAME_CHARS} characters")
        self.identity = identity
        self.group_id = group_id
        self.entries = list(entries)
        self.signer = signer
        self.device_name = device_name
        self.last_cursor = last_cursor
        self.client = client
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout or heartbeat_interval
        self.request_timeout = request_timeout
        self.welcome: Welcome | None = None
        self._pending: dict[int, type[Message]] = {}
        self._deadlines: dict[int, float] = {}  # request id -> answer deadline, oldest first
        self._probe: tuple[int, float] | None = None  # heartbeat in flight: id, deadline
        self._next_id = HELLO_REQUEST_ID + 1
        self._start_handshake()

    # -- requests -----------------------------------------------------------------------

    @property
    def pending_requests(self) -> int:
        return len(self._pending)

    def send_request(self, message: Message, now: float) -> int:
        """Send a request and return its id; the answer arrives as ResponseReceived or
        RequestFailed with that id."""
        request_id = self._allocate_id()
        self._send(message, request_id, now)
        self._pending[request_id] = type(message)
        if self.request_timeout is not None:
            self._deadlines[request_id] = now + self.request_timeout
        return request_id

    def send_message(self, message: Message, now: float) -> None:
        """Send a message that wants no answer (request id 0), e.g. ACK or PRESENCE."""
        self._send(message, 0, now)

    def _send(self, message: Message, request_id: int, now: float) -> None:
        if self.state is not SessionState.OPEN:
            raise LocalProtocolError(
                f"cannot send {type(message).__name__}: session is {self.state.value}"
            )
        if type(message) not in CLIENT_REQUESTS:
            raise LocalProtocolError(f"{type(message).__name__} is not a client request")
        if self.welcome is not None and isinstance(message, Push):
            limit = self.welcome.limits.max_blob_size
            if limit and len(message.ciphertext) > limit:
                raise FrameTooLargeError(
                    f"blob of {len(message.ciphertext)} bytes exceeds the relay's limit of {limit}"
                )
        frame = encode(message, request_id=request_id)
        frame_limit = self.welcome.limits.max_frame_size if self.welcome is not None else 0
        if frame_limit and len(frame) > frame_limit:
            raise FrameTooLargeError(
                f"frame of {len(frame)} bytes exceeds the relay's limit of {frame_limit}"
            )
        self._send_encoded(frame)
        self.last_sent = now

    def _allocate_id(self) -> int:
        for _ in range(U32_MAX):
            candidate = self._next_id
            self._next_id = candidate + 1 if candidate < U32_MAX else HELLO_REQUEST_ID + 1
            if candidate not in self._pending:
                return candidate
        raise LocalProtocolError("no free request id")  # pragma: no cover - 4 billion in flight

    # -- timeouts -----------------------------------------------------------------------

    def _heartbeat_due(self) -> float | None:
        if self.heartbeat_interval is None or self._probe is not None:
            return None
        return min(self.last_sent, self.last_received) + self.heartbeat_interval

    def next_deadline(self) -> float | None:
        if self.state is SessionState.OPEN:
            times = [self._heartbeat_due(), self._probe[1] if self._probe else None]
            if self._deadlines:
                times.append(next(iter(self._deadlines.values())))
            return min((t for t in times if t is not None), default=None)
        return super().next_deadline()

    def check_timeouts(self, now: float) -> list[Event]:
        if self.state is not SessionState.OPEN:
            return super().check_timeouts(now)
        if self._probe is not None and now >= self._probe[1]:
            return self._close(
                None, f"no answer to the heartbeat within {self.heartbeat_timeout:g} s"
            )
        if self._deadlines:
            request_id, deadline = next(iter(self._deadlines.items()))
            if now >= deadline:
                kind = self._pending[request_id].TYPE.name
                return self._close(None, f"no answer to {kind} within {self.request_timeout:g} s")
        due = self._heartbeat_due()
        if due is not None and now >= due:
            assert self.heartbeat_timeout is not None
            request_id = self._allocate_id()
            self._send(Presence(online=True), request_id, now)
            self._pending[request_id] = Presence
            self._probe = (request_id, now + self.heartbeat_timeout)
        return []

    # -- incoming -----------------------------------------------------------------------

    def _on_handshake_complete(self) -> list[Event]:
        hello = make_hello(
            self.identity,
            self.handshake_hash,
            self.group_id,
            device_name=self.device_name,
            last_cursor=self.last_cursor,
            client=self.client,
            entries=self.entries,
            signer=self.signer,
        )
        self._send_frame(hello, HELLO_REQUEST_ID)
        self.state = SessionState.AWAIT_WELCOME
        return []

    def _receive_frame(self, frame: Frame, now: float) -> list[Event]:
        message, request_id = frame.message, frame.request_id
        if self.state is SessionState.AWAIT_WELCOME:
            return self._receive_welcome(request_id, message)
        if request_id == 0:
            return self._receive_unsolicited(message)
        request_type = self._pending.pop(request_id, None)
        self._deadlines.pop(request_id, None)
        if self._probe is not None and request_id == self._probe[0]:
            self._probe = None  # the relay answered the heartbeat: the path is alive
            if request_type is Presence:
                return []  # an ERROR (e.g. rate limited) proves the path is alive too
        if request_type is None:
            return self._close(
                ErrorCode.INVALID_MESSAGE, f"response to unknown request id {request_id}"
            )
        if isinstance(message, Error):
            events: list[Event] = [
                RequestFailed(request_id, message.code, message.message, message.retry_after)
            ]
            if _is_fatal(message.code):
                events += self._close(message.code, message.message, by_peer=True)
            return events
        expected = ANSWERS[request_type]
        if type(message) is not expected:
            return self._close(
                ErrorCode.INVALID_MESSAGE,
                f"{message.TYPE.name} does not answer {request_type.TYPE.name}",
            )
        return [ResponseReceived(request_id, message)]

    def _receive_welcome(self, request_id: int, message: Message) -> list[Event]:
        if isinstance(message, Error):
            return self._close(message.code, message.message, by_peer=True)
        if not isinstance(message, Welcome) or request_id != HELLO_REQUEST_ID:
            return self._close(
                ErrorCode.INVALID_MESSAGE, f"expected WELCOME, got {message.TYPE.name}"
            )
        if message.relay_id != self.peer_static:
            return self._close(
                ErrorCode.INVALID_MESSAGE, "WELCOME names another relay than the handshake"
            )
        self.welcome = message
        self._adopt_relay_timing(message)
        if message.limits.max_frame_size and self._transport is not None:
            # PULL responses are sized to the relay's frame limit: accept what it announced,
            # up to the wire's own cap so that a relay cannot make us buffer without bound.
            self._transport.max_frame = min(
                MAX_SEND_FRAME, max(self.max_frame, message.limits.max_frame_size)
            )
        self.state = SessionState.OPEN
        return [Welcomed(message, self.peer_static)]

    def _adopt_relay_timing(self, welcome: Welcome) -> None:
        """Probe at least as often as the relay asks, and well within its idle timeout."""
        if self.heartbeat_interval is None:
            return
        limits = welcome.limits
        interval = self.heartbeat_interval
        if limits.heartbeat_interval:
            interval = min(interval, float(limits.heartbeat_interval))
        if limits.idle_timeout:
            interval = min(interval, limits.idle_timeout / 2)
        self.heartbeat_interval = interval

    def _receive_unsolicited(self, message: Message) -> list[Event]:
        if isinstance(message, Error):
            if _is_fatal(message.code):
                return self._close(message.code, message.message, by_peer=True)
            return [MessageReceived(message)]
        if type(message) not in UNSOLICITED:
            return self._close(
                ErrorCode.INVALID_MESSAGE, f"unexpected {message.TYPE.name} without a request"
            )
        return [MessageReceived(message)]


def _is_fatal(code: int) -> bool:
    try:
        return ErrorCode(code).fatal
    except ValueError:
        return False
