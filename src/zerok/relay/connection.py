"""One client connection: moves bytes between a WebSocket and a RelaySession.

All decisions are the session's (protocol) or the service's (membership, storage); this
shell reads messages, feeds them in with the time, runs requests as tasks so that a device
can pipeline, and writes what the session produced, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web

from zerok.errors import ProtocolError
from zerok.protocol import (
    ConnectionClosed,
    Event,
    HelloReceived,
    RelaySession,
    RequestReceived,
    SessionState,
    Variant,
)
from zerok.transport.wsframe import binary_frames
from zerok.wire import DeviceId, ErrorCode, GroupId, Message

if TYPE_CHECKING:
    from zerok.relay.service import RelayService

log = logging.getLogger("zerok.relay.connection")

MAX_IN_FLIGHT = 64  # requests of one connection being processed at once
WRITE_BUFFER_LIMIT = 8 * 1024 * 1024  # bytes queued for one peer before it is dropped
DRAIN_TIMEOUT = 30.0  # seconds a peer may leave its receive window full
CLOSE_TIMEOUT = 15.0  # seconds for the last words and the closing handshake

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
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._send_lock = asyncio.Lock()
        self._flush_scheduled = False

    @property
    def authenticated(self) -> bool:
        return self.device_id is not None and self.session.state is SessionState.OPEN

    # -- sending --------------------------------------------------------------------------

    def send(self, message: Message, request_id: int = 0) -> bool:
        """Queue a message for the peer; False if the session has ended meanwhile."""
        if self.session.closed:
            return False
        try:
            self.session.send(message, request_id)
        except ProtocolError:
            return False
        self.schedule_flush()
        return True

    def schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.create_task(self.flush())

    async def flush(self) -> None:
        """Write what the session produced, in order (Noise nonces depend on it)."""
        async with self._send_lock:
            self._flush_scheduled = False
            out = self.session.data_to_send()
            self._count_errors()
            if not out or self.ws.closed:
                return
            transport, protocol = self.request.transport, self.request.protocol
            if transport is None or transport.is_closing():
                return  # the peer went away; the read loop notices and cleans up
            # One write for the whole burst (see zerok.transport.wsframe); the WebSocket
            # writer of aiohttp only ever writes whole frames too, so frames never interleave.
            transport.write(binary_frames(out))
            self.service.metrics.bytes_transferred.labels("out").inc(sum(map(len, out)))
            if transport.get_write_buffer_size() > WRITE_BUFFER_LIMIT:
                # A peer that does not read must not hold the relay's memory.
                self._drop(f"over {WRITE_BUFFER_LIMIT} bytes waiting for a peer that does not read")
                return
            if protocol.writing_paused:
                # The kernel's buffer is full: wait, as aiohttp's own writer does, but not
                # for ever.
                try:
                    await asyncio.wait_for(protocol._drain_helper(), DRAIN_TIMEOUT)
                except TimeoutError:
                    self._drop(f"the peer read nothing for {DRAIN_TIMEOUT:g} s")
                except (ConnectionError, RuntimeError):
                    pass

    def _drop(self, why: str) -> None:
        """Cut the connection at once (nothing more can be sent on it)."""
        log.info("dropping %s: %s", self.remote, why)
        if not self.session.closed:
            for event in self.session.close(None, why):
                if isinstance(event, ConnectionClosed):
                    self.service.on_session_closed(self, event)
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    # -- the read loop --------------------------------------------------------------------

    def _count_errors(self) -> None:
        sent = self.session.errors_sent
        if sent:
            for code in sent:
                self.service.metrics.errors.labels(str(code)).inc()
            sent.clear()

    async def run(self) -> None:
        try:
            await self._read_loop()
        finally:
            await self._finish()

    async def _read_loop(self) -> None:
        session = self.session
        received = self.service.metrics.bytes_transferred.labels("in")
        while not session.closed:
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
                await self._handle(
                    session.close(ErrorCode.INVALID_MESSAGE, "text frames are not part of 0k-Sync")
                )
            else:  # CLOSE, CLOSING, CLOSED, ERROR: the peer is gone
                await self._handle(session.close())
                return
            await self.flush()

    async def _handle(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, RequestReceived):
                await self._slots.acquire()
                task = self.loop.create_task(self._run_request(event))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif isinstance(event, HelloReceived):
                # Decided in a task while reading goes on, so that a frame the client sends
                # before WELCOME reaches the session (which refuses it) instead of waiting.
                task = self.loop.create_task(self._run_hello(event))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            elif isinstance(event, ConnectionClosed):
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
            self.fail(ErrorCode.RELAY_OVERLOADED, "the relay could not process the request")
        finally:
            self._slots.release()

    def fail(self, code: ErrorCode, message: str, request_id: int = 0) -> None:
        """Answer with an ERROR (fatal codes end the session)."""
        if self.session.closed:
            return
        for event in self.session.error(code, message, request_id):
            if isinstance(event, ConnectionClosed):
                self.service.on_session_closed(self, event)
        if self.session.closed:
            self.loop.create_task(self._flush_and_close())
        else:
            self.schedule_flush()

    def close(self, code: ErrorCode, message: str) -> None:
        """End the session from the relay's side (revocation, shutdown)."""
        if self.session.closed:
            return
        for event in self.session.close(code, message):
            if isinstance(event, ConnectionClosed):
                self.service.on_session_closed(self, event)
        self.loop.create_task(self._flush_and_close())

    async def _flush_and_close(self) -> None:
        try:
            await asyncio.wait_for(self._flush_then_close(), CLOSE_TIMEOUT)
        except TimeoutError:
            self._drop(f"the peer did not take the close within {CLOSE_TIMEOUT:g} s")

    async def _flush_then_close(self) -> None:
        await self.flush()
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.close(code=_WS_CLOSE.get(_as_code(self.session.close_code), 1000))

    async def _finish(self) -> None:
        # Requests already taken finish first: their commits must be answered if possible.
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.service.on_disconnect(self)
        await self._flush_and_close()


def _as_code(code: int | None) -> ErrorCode | None:
    if code is None:
        return None
    try:
        return ErrorCode(code)
    except ValueError:
        return None
