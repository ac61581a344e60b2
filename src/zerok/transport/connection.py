"""A client's connection to a relay: a ClientSession driven over a WebSocket.

``RelayConnection.open`` returns once the relay's WELCOME arrived; then ``request`` sends
a request and waits for its answer, and ``events`` yields what the relay sends unasked
(NOTIFY, MEMBERSHIP, non-fatal ERRORs) and finally the ConnectionClosed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import aiohttp

from zerok.crypto.entry import Signer
from zerok.crypto.identity import DeviceIdentity
from zerok.crypto.noise.symmetric import MAX_MESSAGE
from zerok.errors import ConnectError, LocalProtocolError, RemoteError, SyncError
from zerok.protocol import (
    CLASSIC,
    HYBRID,
    ClientSession,
    ConnectionClosed,
    Event,
    MessageReceived,
    RequestFailed,
    ResponseReceived,
    Variant,
    Welcomed,
    variant_for,
)
from zerok.version import __version__
from zerok.wire import GroupId, Message, Welcome


class RelayConnection:
    def __init__(
        self,
        http: aiohttp.ClientSession | None,
        ws: aiohttp.ClientWebSocketResponse,
        session: ClientSession,
    ) -> None:
        self._http = http  # owned (closed with the connection) unless it was passed in
        self._ws = ws
        self.session = session
        self.loop = asyncio.get_running_loop()
        self.welcome: Welcome | None = None
        self.closed_event: ConnectionClosed | None = None
        self._waiting: dict[int, asyncio.Future[Message]] = {}
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._welcomed: asyncio.Future[Welcome] = self.loop.create_future()
        self._send_lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None  # the session's next deadline
        self._flushes: set[asyncio.Task[None]] = set()
        self._reader = self.loop.create_task(self._read_loop())
        self._arm()

    @classmethod
    async def open(
        cls,
        url: str,
        identity: DeviceIdentity,
        group_id: GroupId,
        *,
        entries: Sequence[bytes] = (),
        signer: tuple[bytes, Signer] | None = None,
        variants: Sequence[Variant] = (HYBRID, CLASSIC),
        device_name: str = "",
        last_cursor: int = 0,
        timeout: float = 10.0,
        heartbeat: float | None = 30.0,
        heartbeat_timeout: float | None = None,
        request_timeout: float | None = None,
        http: aiohttp.ClientSession | None = None,
    ) -> RelayConnection:
        """Connect, run the handshake and HELLO; raise ConnectError or RemoteError.

        ``timeout`` is one deadline for all of it: TCP connect, WebSocket upgrade, Noise
        handshake and WELCOME (a relay or captive portal that accepts the socket and never
        answers fails here). ``heartbeat``/``heartbeat_timeout``/``request_timeout`` are
        the open connection's liveness deadlines (``ClientSession``). ``http`` lets many
        connections share one aiohttp session (and its connector). Whatever way this ends
        (error, deadline, cancellation), nothing it opened stays open.
        """
        owned = http is None
        if http is None:
            http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=timeout))
        conn: RelayConnection | None = None
        ws: aiohttp.ClientWebSocketResponse | None = None
        upgraded = False
        try:
            async with asyncio.timeout(timeout):
                try:
                    ws = await http.ws_connect(
                        url,
                        protocols=[v.subprotocol for v in variants],
                        compress=0,
                        max_msg_size=MAX_MESSAGE + 1,  # aiohttp refuses exactly its limit
                        autoping=True,
                        # A dead path never answers a close: do not wait for it long.
                        timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT),
                    )
                except aiohttp.WSServerHandshakeError as exc:
                    raise _refused(url, exc.status, exc.message) from None
                except (aiohttp.ClientError, OSError) as exc:
                    raise ConnectError(f"cannot connect to {url}: {exc}") from None
                upgraded = True
                if ws.protocol is None:
                    raise ConnectError(
                        f"{url} is not a 0k-Sync relay (no subprotocol agreed)",
                        reason="handshake failed",
                    )
                loop = asyncio.get_running_loop()
                session = ClientSession(
                    identity,
                    group_id,
                    now=loop.time(),
                    entries=entries,
                    signer=signer,
                    variant=variant_for(ws.protocol),
                    offered=[v.subprotocol for v in variants],
                    device_name=device_name,
                    last_cursor=last_cursor,
                    client=f"zerok-python/{__version__}",
                    handshake_timeout=timeout,
                    heartbeat_interval=heartbeat,
                    heartbeat_timeout=heartbeat_timeout,
                    request_timeout=request_timeout,
                )
                conn = cls(http if owned else None, ws, session)
                await conn._flush()
                conn.welcome = await asyncio.shield(conn._welcomed)
        except BaseException as exc:
            if conn is not None:
                await asyncio.shield(conn.close())
                if conn._welcomed.done() and not conn._welcomed.cancelled():
                    conn._welcomed.exception()  # retrieved: this error replaces it
            else:
                if ws is not None:
                    await asyncio.shield(ws.close())
                if owned:
                    await asyncio.shield(http.close())
            if isinstance(exc, TimeoutError):
                stage = "handshake" if upgraded else "upgrade"
                raise ConnectError(
                    f"{url} did not answer the {stage} before the deadline ({timeout:g} s)",
                    reason="handshake failed" if upgraded else "unreachable",
                ) from None
            if isinstance(exc, ConnectError) and upgraded and exc.reason == "unreachable":
                raise ConnectError(str(exc), reason="handshake failed") from None
            raise
        return conn

    # -- I/O ------------------------------------------------------------------------------

    async def _flush(self) -> None:
        async with self._send_lock:
            for data in self.session.data_to_send():
                if self._ws.closed:
                    return
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self._ws.send_bytes(data)

    async def _read_loop(self) -> None:
        session = self.session
        try:
            while not session.closed:
                msg = await self._ws.receive()
                if msg.type == aiohttp.WSMsgType.BINARY:
                    self._dispatch(session.receive(msg.data, self.loop.time()))
                else:
                    self._dispatch(session.close(None, "the relay closed the connection"))
                await self._flush()
                self._arm()
        finally:
            self._disarm()
            if not session.closed:
                self._dispatch(session.close(None, "connection lost"))
            await self._flush()
            await self._ws.close()
            if self._http is not None:
                await self._http.close()

    # -- deadlines (handshake, heartbeat, requests): one timer at the session's next ---------

    def _arm(self) -> None:
        """Make the timer fire at the session's next deadline (call after any change)."""
        deadline = None if self.session.closed else self.session.next_deadline()
        if deadline is None:
            self._disarm()
        elif self._timer is None or deadline < self._timer.when():
            self._disarm()
            self._timer = self.loop.call_at(deadline, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self.session.closed:
            return
        self._dispatch(self.session.check_timeouts(self.loop.time()))
        if self.session.closed:  # a deadline passed: the path is dead, stop reading it
            self._reader.cancel()
            return
        flush = self.loop.create_task(self._flush())  # a heartbeat, maybe
        self._flushes.add(flush)
        flush.add_done_callback(self._flushes.discard)
        self._arm()

    def _dispatch(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Welcomed):
                if not self._welcomed.done():
                    self._welcomed.set_result(event.welcome)
            elif isinstance(event, ResponseReceived):
                fut = self._waiting.pop(event.request_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(event.message)
            elif isinstance(event, RequestFailed):
                fut = self._waiting.pop(event.request_id, None)
                if fut is not None and not fut.done():
                    fut.set_exception(
                        RemoteError(event.code, event.message, retry_after=event.retry_after)
                    )
            elif isinstance(event, ConnectionClosed):
                self.closed_event = event
                error: SyncError = (
                    RemoteError(event.code, event.reason)
                    if event.code is not None
                    else ConnectError(event.reason)
                )
                if not self._welcomed.done():
                    self._welcomed.set_exception(error)
                # Requests still waiting were not refused: their connection ended. (A request
                # the relay refused got its own ERROR, as RequestFailed, before this.)
                lost = ConnectError(f"the connection ended before the answer: {event.reason}")
                for fut in self._waiting.values():
                    if not fut.done():
                        fut.set_exception(lost)
                self._waiting.clear()
                self._events.put_nowait(event)
            elif isinstance(event, MessageReceived):
                self._events.put_nowait(event)

    # -- API ------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.session.closed

    async def request(self, message: Message) -> Message:
        """Send a request and return the relay's answer; RemoteError if it is an ERROR,
        ConnectError if the connection ends first (also when the relay does not answer
        within the session's ``request_timeout``: the connection is then closed)."""
        if self.session.closed:
            raise ConnectError("the connection is closed")
        request_id = self.session.send_request(message, self.loop.time())
        fut: asyncio.Future[Message] = self.loop.create_future()
        self._waiting[request_id] = fut
        self._arm()
        await self._flush()
        return await fut

    async def send(self, message: Message) -> None:
        """Send a message that wants no answer."""
        if self.session.closed:
            raise ConnectError("the connection is closed")
        self.session.send_message(message, self.loop.time())
        await self._flush()

    async def next_event(self, timeout: float | None = None) -> Event:
        return await asyncio.wait_for(self._events.get(), timeout)

    async def events(self) -> AsyncIterator[Event]:
        while True:
            event = await self._events.get()
            yield event
            if isinstance(event, ConnectionClosed):
                return

    async def close(self) -> None:
        if not self.session.closed:
            self._dispatch(self.session.close(None, "closed by the client"))
        await self._ws.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    async def wait_closed(self) -> ConnectionClosed:
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        if self.closed_event is None:
            raise LocalProtocolError("connection ended without a close event")
        return self.closed_event


CLOSE_TIMEOUT = 2.0  # seconds to wait for the relay's answer to a WebSocket close
REFUSALS = {503: "relay full", 429: "too many devices from your network"}


def _refused(url: str, status: int, message: str) -> ConnectError:
    """A relay (or something in front of it) answered the upgrade with an HTTP error."""
    reason = REFUSALS.get(status, "unreachable")
    return ConnectError(f"{url} refused the connection: HTTP {status} {message}", reason=reason)
