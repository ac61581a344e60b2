"""One client connection: moves bytes between a WebSocket and a RelaySession.

All decisions are the session's (protocol) or the service's (membership, storage); this
shell reads messages and feeds them in with the time, runs requests as tasks so that a
device can pipeline, and writes what the session produced.

There is one send path: ``send`` (and ``accept``, ``close``) put messages into the session,
which encrypts them in order, and start the connection's one writer task unless it is
running; it writes everything pending in one system call, waits for the peer's window to
drain, and ends when nothing is left (an idle connection holds no task). The
back-pressure rule (``SendBudget``): the bytes waiting for one peer, encrypted in the
session and buffered by the socket's transport, are checked before anything is queued,
against ``send_buffer`` for the peer and ``send_buffer_total`` for all peers; and a peer's
window may not stay full for ``DRAIN_TIMEOUT``. A peer that breaks either is cut. While a
write waits, reading from that peer waits too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import msgspec
from aiohttp import WSMsgType, web

from zerok.crypto.noise.transport import sealed_size
from zerok.errors import StorageError, StorageUnavailableError
from zerok.protocol import (
    ConnectionClosed,
    Event,
    HelloReceived,
    RelaySession,
    RequestReceived,
    Variant,
)
from zerok.relay.budget import SendBudget, page_slots
from zerok.relay.service import RelayService
from zerok.relay.tasks import TaskSet
from zerok.transport.wsframe import binary_frames, close_frame
from zerok.wire import DeviceId, Error, ErrorCode, GroupId, Message, Pull, Welcome, encode
from zerok.wire.messages import MAX_TEXT_CHARS

log = logging.getLogger("zerok.relay.connection")

MAX_IN_FLIGHT = 64  # requests of one connection being processed at once
# A HELLO is answered within this share of the handshake deadline (config.handshake_timeout),
# however slow the database: the client's own deadline covers the handshake and WELCOME too.
HELLO_SHARE = 0.5
STORAGE_RETRY_AFTER = 5  # seconds, the retry_after of a 3000 when the database failed
DRAIN_TIMEOUT = 30.0  # seconds a peer may leave its receive window full
CLOSE_TIMEOUT = 15.0  # seconds for the closing handshake

# WebSocket close codes (RFC 6455) for the ways a session ends.
_WS_CLOSE = {
    None: 1000,
    ErrorCode.INVALID_MESSAGE: 1002,
    ErrorCode.UNKNOWN_GROUP: 1008,
    ErrorCode.UNAUTHORIZED: 1008,
    ErrorCode.DEVICE_REVOKED: 1008,
    ErrorCode.RELAY_OVERLOADED: 1013,
    ErrorCode.RELAY_SHUTTING_DOWN: 1001,
}


class Connection:
    """A ``Peer`` of the service, over one aiohttp WebSocket."""

    def __init__(
        self,
        service: RelayService,
        request: web.Request,
        ws: web.WebSocketResponse,
        variant: Variant,
        *,
        offered: Sequence[str],
        remote: str,
        budget: SendBudget,
    ) -> None:
        self.service = service
        self.budget = budget
        self.request = request
        self.ws = ws
        self.remote = remote
        self.loop = asyncio.get_running_loop()
        config = service.config
        self.session = RelaySession(
            service.static_key,
            now=self.loop.time(),
            variant=variant,
            offered=offered,
            handshake_timeout=config.handshake_timeout,
            max_frame=config.frame_limit,
            idle_timeout=config.idle_timeout or None,
        )
        self.group_id: GroupId | None = None
        self.device_id: DeviceId | None = None
        self.requests = TaskSet(remote)  # HELLO and requests
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        # PULL pages being read for this peer count against its budget too.
        self._pull_slots = asyncio.Semaphore(page_slots(config.send_buffer, config.frame_limit))
        # Set while a write waits for the peer's window (only then: idle connections are
        # many, and each object they hold counts).
        self._draining: asyncio.Future[None] | None = None
        # The one writer; it runs only while there is something to write (an idle
        # connection holds no task), and ends with the closing handshake.
        self._writer: asyncio.Task[None] | None = None
        self._ws_closed = False
        self._read_ended = False  # the read loop is over: the peer's side is closed
        self._read_end: asyncio.Future[None] | None = None  # for the closing handshake
        self._cut = False

    # -- the Peer interface -----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.session.closed

    def accept(self, welcome: Welcome, group_id: GroupId, device_id: DeviceId) -> None:
        self.session.accept(welcome, now=self.loop.time())
        self.group_id, self.device_id = group_id, device_id
        self._queued()

    def send(self, message: Message, request_id: int = 0) -> bool:
        if self.session.closed:
            return False
        if isinstance(message, Error):
            if len(message.message) > MAX_TEXT_CHARS:
                message = msgspec.structs.replace(message, message=message.message[:MAX_TEXT_CHARS])
            if _is_fatal(message.code):
                code, retry_after = ErrorCode(message.code), message.retry_after
                self._closed_by_us(
                    self.session.error(code, message.message, request_id, retry_after=retry_after)
                )
                return True
        self._account()
        if not self.session.send(message, request_id, room=self.budget.room(self)):
            needed = sealed_size(len(encode(message, request_id=request_id)))
            if not self.budget.make_room(self, needed):
                limit = self.budget.per_connection
                self.cut(f"over {limit} bytes waiting for a peer that does not read", "not_reading")
                return False
            self.session.send(message, request_id)
        return self._queued()

    def close(self, code: ErrorCode, message: str) -> None:
        self._closed_by_us(self.session.close(code, message))

    # -- writing --------------------------------------------------------------------------

    def _queued(self) -> bool:
        """The session took a message: count it, and wake the writer."""
        self._account()
        self._kick()
        return True

    def _account(self) -> None:
        """Tell the budget what this peer holds now: its session's queue and its socket
        buffer (which the kernel drains without telling; this is the latest word)."""
        transport = self.request.transport
        buffered = transport.get_write_buffer_size() if transport is not None else 0
        self.budget.set_held(self, self.session.bytes_to_send + buffered)

    def _closed_by_us(self, events: list[Event]) -> None:
        self._handle_closed(events)
        self._kick()

    def _kick(self) -> None:
        """The session has something to write, or has ended: make sure the writer runs."""
        if self._writer is None or self._writer.done():
            self._writer = self.loop.create_task(self._write_loop())

    async def _write_loop(self) -> None:
        """Write in order (Noise nonces depend on it) until nothing is left; after the
        session's end, do the closing handshake."""
        while True:
            ended = self.session.closed  # everything queued before the end is in `out`
            out = self.session.data_to_send()
            self._count_errors()
            if out:
                await self._write(out)
            elif ended:
                await self._close_websocket()
                return
            else:
                return  # idle; the next send starts a writer again

    async def _write(self, out: list[bytes]) -> None:
        transport = self.request.transport
        if transport is None or transport.is_closing():
            return  # the peer went away; the read loop notices and cleans up
        # One write for the whole burst (see zerok.transport.wsframe); aiohttp's own
        # WebSocket writer also writes whole frames only, so frames never interleave.
        transport.write(binary_frames(out))
        self.service.metrics.bytes_transferred.labels("out").inc(sum(map(len, out)))
        self._account()
        self._draining = self.loop.create_future()
        try:
            await asyncio.wait_for(self.request.writer.drain(), DRAIN_TIMEOUT)
        except TimeoutError:
            self.cut(f"the peer read nothing for {DRAIN_TIMEOUT:g} s", "drain_timeout")
        except (ConnectionError, RuntimeError):
            pass  # the peer went away; the read loop notices and cleans up
        finally:
            self._draining.set_result(None)
            self._draining = None
            self._account()

    async def _close_websocket(self) -> None:
        """The closing handshake, after everything else was written.

        When the relay ends the session while the peer may still be sending (pipelined
        requests, a shutdown mid-burst), closing the socket with unread data in it makes
        the kernel send a reset, and the peer's kernel then throws away what it had not
        read yet: our last ERROR and the close frame. So the relay sends its close frame
        and goes on reading, and discarding, until the peer's close frame (at most
        CLOSE_TIMEOUT), and only then closes the socket. aiohttp's own ``close()`` would
        stop the read loop at once, so the frame is written here.
        """
        if self._ws_closed:
            return
        self._ws_closed = True
        code = _WS_CLOSE.get(_as_code(self.session.close_code), 1000)
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                if not self._read_ended:
                    transport = self.request.transport
                    if transport is not None and not transport.is_closing():
                        transport.write(close_frame(code))
                    self._read_end = self.loop.create_future()
                    await asyncio.shield(self._read_end)
                    if transport is not None:
                        transport.close()  # the peer's close frame is in: no reset
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self.ws.close(code=code)
        except TimeoutError:
            self.cut(f"the peer did not take the close within {CLOSE_TIMEOUT:g} s", "close_timeout")

    def cut(self, why: str, reason: str = "send_buffer_total") -> None:
        """Drop the connection at once (nothing more can be sent on it); ``reason`` is the
        metric label: not_reading, send_buffer_total, drain_timeout or close_timeout."""
        if self._cut:
            return
        self._cut = True
        log.info("dropping %s: %s", self.remote, why)
        self.service.metrics.clients_cut.labels(reason).inc()
        self._handle_closed(self.session.close(None, why))
        self.session.data_to_send()  # nothing more can go out: let go of it now
        self.budget.release(self)
        self._kick()
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    def _count_errors(self) -> None:
        sent = self.session.errors_sent
        for code in sent:
            self.service.metrics.errors.labels(str(code)).inc()
        sent.clear()

    # -- the read loop --------------------------------------------------------------------

    async def run(self) -> None:
        self.service.on_connect(self)
        try:
            await self._read_loop()
        finally:
            self._read_ended = True
            if self._read_end is not None and not self._read_end.done():
                self._read_end.set_result(None)
            await self._finish()

    async def _read_loop(self) -> None:
        session = self.session
        received = self.service.metrics.bytes_transferred.labels("in")
        # Reading goes on after the session ended, until the peer's close frame: see
        # _close_websocket (which bounds this with CLOSE_TIMEOUT).
        while True:
            if self._draining is not None:  # reading waits for writing (DRAIN_TIMEOUT)
                await asyncio.shield(self._draining)
            deadline = session.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self.loop.time())
            try:
                msg = await self.ws.receive(timeout=timeout)
            except TimeoutError:
                await self._handle(session.check_timeouts(self.loop.time()))
                continue
            if msg.type == WSMsgType.BINARY:
                received.inc(len(msg.data))
                await self._handle(session.receive(msg.data, self.loop.time()))
            elif msg.type == WSMsgType.TEXT:
                text_refused = "text frames are not part of 0k-Sync"
                await self._handle(session.close(ErrorCode.INVALID_MESSAGE, text_refused))
            else:  # CLOSE, CLOSING, CLOSED, ERROR: the peer is gone
                await self._handle(session.close())
                return

    async def _handle(self, events: list[Event]) -> None:
        self._kick()  # handshake messages, or an ERROR the session sent
        for event in events:
            if isinstance(event, RequestReceived):
                await self._slots.acquire()  # reading waits while MAX_IN_FLIGHT are running
                self.requests.spawn(self._run_request(event))
            elif isinstance(event, HelloReceived):
                # Decided in a task while reading goes on, so that a frame the client sends
                # before WELCOME reaches the session (which refuses it) instead of waiting.
                self.requests.spawn(self._run_hello(event))
        self._handle_closed(events)

    def _handle_closed(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, ConnectionClosed):
                self.service.on_session_closed(self, event)

    async def _run_hello(self, event: HelloReceived) -> None:
        deadline = self.service.config.handshake_timeout * HELLO_SHARE
        try:
            async with asyncio.timeout(deadline):
                await self.service.on_hello(self, event)
        except (StorageError, TimeoutError) as exc:
            # The database is down or slow: a retryable refusal now, not a hang.
            if isinstance(exc, TimeoutError):
                exc = StorageUnavailableError(f"the HELLO took more than {deadline:g} s")
            log.warning("HELLO from %s failed: %s", self.remote, exc)
            self._overloaded(f"the relay's storage failed ({exc}); retry later", 0)
        except Exception:
            log.exception("HELLO from %s failed", self.remote)
            self._overloaded("the relay could not process the HELLO", 0)

    def _overloaded(self, message: str, request_id: int) -> None:
        """ERROR 3000 (fatal: the client reconnects with backoff) with ``retry_after``."""
        error = Error(
            code=ErrorCode.RELAY_OVERLOADED, message=message, retry_after=STORAGE_RETRY_AFTER
        )
        self.send(error, request_id)

    async def _run_request(self, event: RequestReceived) -> None:
        try:
            if isinstance(event.message, Pull):
                async with self._pull_slots, self.budget.pull_slots:
                    await self.service.on_request(self, event)
            else:
                await self.service.on_request(self, event)
        except StorageError as exc:
            name = event.message.TYPE.name
            log.warning("request %s from %s failed: %s", name, self.remote, exc)
            self._overloaded(f"the relay's storage failed ({exc}); retry later", event.request_id)
        except Exception:
            log.exception("request %s from %s failed", event.message.TYPE.name, self.remote)
            self._overloaded("the relay could not process the request", event.request_id)
        finally:
            self._slots.release()

    async def _finish(self) -> None:
        # Requests already taken finish first: their commits must be answered if possible.
        await self.requests.wait()
        self.service.on_disconnect(self)
        self.budget.release(self)
        if not self.session.closed:
            self._handle_closed(self.session.close())
        self._kick()
        if self._writer is not None:  # bounded by DRAIN_TIMEOUT and CLOSE_TIMEOUT
            await asyncio.shield(self._writer)

    async def cancel(self) -> None:
        """Stop everything this connection runs (shutdown, after the grace period)."""
        writer = self._writer
        if writer is not None:
            writer.cancel()
        await self.requests.cancel()
        if writer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await writer


def _is_fatal(code: int) -> bool:
    return (known := _as_code(code)) is not None and known.fatal


def _as_code(code: int | None) -> ErrorCode | None:
    if code is None:
        return None
    try:
        return ErrorCode(code)
    except ValueError:
        return None
