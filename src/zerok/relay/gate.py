"""The door of the relay's port: every new socket must send its request in time.

aiohttp waits for a request for ever, so a socket that sends nothing, or half a request,
would hold a file descriptor and memory as long as it likes (slowloris). Each socket the
relay accepts passes through a ``RequestGate``: it is counted while it waits for its first
request, closed when ``timeout`` passes without one, and refused at once when
``max_waiting`` sockets are already waiting, or ``per_ip`` from its address (not applied
behind a proxy, where every socket comes from the proxy). A request counts as arrived when aiohttp
hands it to the application (see ``Relay``'s middleware); from then on the WebSocket
session's deadlines, or the HTTP keep-alive timeout, take over.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

from zerok.relay.metrics import RelayMetrics

WAITING_FLOOR = 1024  # sockets waiting for their request, at least (else max_connections)
WAITING_PER_IP_FLOOR = 64  # from one address, at least (else connections_per_ip)


class RequestGate:
    def __init__(
        self,
        factory: Callable[[], asyncio.Protocol],
        *,
        timeout: float,
        max_waiting: int,
        per_ip: int | None,
        metrics: RelayMetrics,
    ) -> None:
        self.factory = factory
        self.timeout = timeout
        self.max_waiting = max_waiting
        self.per_ip = per_ip
        self.metrics = metrics
        self._waiting: dict[asyncio.Transport, tuple[asyncio.TimerHandle, str]] = {}
        self._by_ip: Counter[str] = Counter()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def __call__(self) -> asyncio.Protocol:
        """The protocol factory for ``loop.create_server``."""
        return _Gated(self.factory(), self)

    def arrived(self, transport: asyncio.Transport | None) -> None:
        """The socket's request arrived: it is no longer waiting."""
        if transport is None:
            return
        entry = self._waiting.pop(transport, None)
        if entry is not None:
            timer, ip = entry
            timer.cancel()
            self._by_ip[ip] -= 1
            if self._by_ip[ip] <= 0:
                del self._by_ip[ip]
            self.metrics.sockets_waiting.set(len(self._waiting))

    def _opened(self, transport: asyncio.Transport) -> None:
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if len(self._waiting) >= self.max_waiting:
            self._refuse(transport, "sockets_waiting")
            return
        if self.per_ip is not None and self._by_ip[ip] >= self.per_ip:
            self._refuse(transport, "sockets_waiting_per_ip")
            return
        loop = asyncio.get_running_loop()
        self._waiting[transport] = (loop.call_later(self.timeout, self._expired, transport), ip)
        self._by_ip[ip] += 1
        self.metrics.sockets_waiting.set(len(self._waiting))

    def _refuse(self, transport: asyncio.Transport, limit: str) -> None:
        self.metrics.connections_refused.labels(limit).inc()
        transport.abort()

    def _expired(self, transport: asyncio.Transport) -> None:
        if transport in self._waiting:
            self.arrived(transport)
            self.metrics.connections_refused.labels("request_timeout").inc()
            transport.abort()


class _Gated(asyncio.Protocol):
    """aiohttp's protocol for one socket, told about by the gate as it opens and closes."""

    def __init__(self, inner: asyncio.Protocol, gate: RequestGate) -> None:
        self._inner = inner
        self._gate = gate
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)  # a TCP server's are
        self._transport = transport
        self._inner.connection_made(transport)
        self._gate._opened(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._gate.arrived(self._transport)  # no longer waiting, whatever happened
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
