"""One client connection: moves bytes between a WebSocket and a RelaySession.

All decisions are the session's (protocol) or the service's (membership, storage); this
shell reads messages and feeds them in with the time, runs requests as tasks so that a
device can pipeline, and writes what the session produced.

There is one send path: ``send`` (and ``accept``, ``close``) put messages into the session,
which encrypts them in order, and start the connection's one writer task unless it is
running; it writes everything pending in one system call, waits for the peer's window to
drain, and ends when nothing is left (an idle connection holds no task). The
back-pressure rule: the bytes waiting for one peer (encrypted in the session and buffered
by the kernel socket's transport) may not pass ``WRITE_BUFFER_LIMIT``, and its window may
not stay full for ``DRAIN_TIMEOUT``; a peer that breaks either is dropped. While a write
waits, reading from that peer waits too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import msgspec
from aiohttp import WSMsgType, web

from zerok.protocol import (
    ConnectionClosed,
    Event,
    HelloReceived,
    RelaySession,
    RequestReceived,
    Variant,
)
from zerok.relay.service import RelayService
from zerok.relay.tasks import TaskSet
from zerok.transport.wsframe import binary_frames
from zerok.wire import DeviceId, Error, ErrorCode, GroupId, Message, Welcome
from zerok.wire.messages import MAX_TEXT_CHARS

log = logging.getLogger("zerok.relay.connection")

MAX_IN_FLIGHT = 64  # requests of one connection being processed at once
WRITE_BUFFER_LIMIT = 8 * 1024 * 1024  # bytes waiting for one peer before it is dropped
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
    ) -> None:
        self.service = service
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
        # Set while a write waits for the peer's window (only then: idle connections are
        # many, and each object they hold counts).
        self._draining: asyncio.Future[None] | None = None
        # The one writer; it runs only while there is something to write (an idle
        # connection holds no task), and ends with the closing handshake.
        self._writer: asyncio.Task[None] | None = None
        self._ws_closed = False

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
                self._closed_by_us(
                    self.session.error(ErrorCode(message.code), message.message, request_id)
                )
                return True
        self.session.send(message, request_id)
        return self._queued()

    def close(self, code: ErrorCode, message: str) -> None:
        self._closed_by_us(self.session.close(code, message))

    # -- writing --------------------------------------------------------------------------

    def _queued(self) -> bool:
        """Apply the back-pressure rule after the session took a message; wake the writer."""
        transport = self.request.transport
        buffered = transport.get_write_buffer_size() if transport is not None else 0
        if self.session.bytes_to_send + buffered > WRITE_BUFFER_LIMIT:
            # A peer that does not read must not hold the relay's memory.
            self._drop(f"over {WRITE_BUFFER_LIMIT} bytes waiting for a peer that does not read")
            return False
        self._kick()
        return True

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
        if transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
            self._drop(f"over {WRITE_BUFFER_LIMIT} bytes waiting for a peer that does not read")
            return
        self._draining = self.loop.create_future()
        try:
            await asyncio.wait_for(self.request.writer.drain(), DRAIN_TIMEOUT)
        except TimeoutError:
            self._drop(f"the peer read nothing for {DRAIN_TIMEOUT:g} s")
        except (ConnectionError, RuntimeError):
            pass  # the peer went away; the read loop notices and cleans up
        finally:
            self._draining.set_result(None)
            self._draining = None

    async def _close_websocket(self) -> None:
        if self._ws_closed:
            return
        self._ws_closed = True
        code = _WS_CLOSE.get(_as_code(self.session.close_code), 1000)
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self.ws.close(code=code)
        except TimeoutError:
            self._drop(f"the peer did not take the close within {CLOSE_TIMEOUT:g} s")

    def _drop(self, why: str) -> None:
        """Cut the connection at once (nothing more can be sent on it)."""
        log.info("dropping %s: %s", self.remote, why)
        self._handle_closed(self.session.close(None, why))
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
            await self._finish()

    async def _read_loop(self) -> None:
        session = self.session
        received = self.service.metrics.bytes_transferred.labels("in")
        while not session.closed:
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
        try:
            await self.service.on_hello(self, event)
        except Exception:
            log.exception("HELLO from %s failed", self.remote)
            self.close(ErrorCode.RELAY_OVERLOADED, "the relay could not process the HELLO")

    async def _run_request(self, event: RequestReceived) -> None:
        try:
            await self.service.on_request(self, event)
        except Exception:
            log.exception("request %s from %s failed", event.message.TYPE.name, self.remote)
            failed = "the relay could not process the request"
            self.send(Error(code=ErrorCode.RELAY_OVERLOADED, message=failed), event.request_id)
        finally:
            self._slots.release()

    async def _finish(self) -> None:
        # Requests already taken finish first: their commits must be answered if possible.
        await self.requests.wait()
        self.service.on_disconnect(self)
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
