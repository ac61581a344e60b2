"""The relay process: WebSocket and HTTP on one port, storage, cleanup, graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from zerok.crypto.identity import DeviceIdentity
from zerok.crypto.noise.symmetric import MAX_MESSAGE
from zerok.protocol import SUBPROTOCOLS, variant_for
from zerok.relay.budget import SendBudget
from zerok.relay.config import RelayConfig
from zerok.relay.connection import Connection
from zerok.relay.gate import WAITING_FLOOR, WAITING_PER_IP_FLOOR, RequestGate
from zerok.relay.http import HttpApi, client_ip
from zerok.relay.logs import LogThrottle, throttle_noisy_loggers
from zerok.relay.metrics import RelayMetrics
from zerok.relay.push import LoggingPushSender, PushSender, WebhookPushSender
from zerok.relay.service import RelayService
from zerok.relay.storage import Storage, StorageError, default_key_path
from zerok.relay.storage import open_storage as storage_for_url
from zerok.relay.tasks import TaskSet
from zerok.version import __version__
from zerok.wire import PROTOCOL_VERSION, ErrorCode

log = logging.getLogger("zerok.relay")

SHUTDOWN_GRACE = 10.0  # seconds for connections to drain on shutdown


def open_storage(config: RelayConfig) -> Storage:
    return storage_for_url(
        config.database, synchronous=config.synchronous, vacuum=config.vacuum_on_cleanup
    )


def relay_key_path(config: RelayConfig) -> Path:
    """The relay's Noise key: ``key_file``, or beside the SQLite file, or ``data/relay.key``
    for a database server."""
    return Path(config.key_file) if config.key_file else default_key_path(config.database)


def _raise_open_files_limit(wanted: int) -> None:
    """Each connection is a file descriptor: lift the soft limit toward max_connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        log.warning(
            "open files are limited to %d, below the %d that max_connections=%d needs (a "
            "file per connection, and 256 for the relay itself): raise the hard limit "
            "(ulimit -n, LimitNOFILE=) or lower max_connections",
            target,
            wanted,
            wanted - 256,
        )


def make_push_sender(config: RelayConfig) -> PushSender:
    return WebhookPushSender(config.push_webhook) if config.push_webhook else LoggingPushSender()


class Relay:
    def __init__(
        self,
        config: RelayConfig,
        *,
        storage: Storage | None = None,
        push_sender: PushSender | None = None,
    ) -> None:
        self.config = config
        self.storage = storage or open_storage(config)
        self.identity = DeviceIdentity.load_or_create(relay_key_path(config))
        self.service = RelayService(
            config,
            self.storage,
            self.identity.private_key,
            push_sender or make_push_sender(config),
            metrics=RelayMetrics(),
        )
        self.http = HttpApi(self.service, draining=lambda: self.stopping)
        self.budget = SendBudget(
            per_connection=config.send_buffer,
            total=config.send_buffer_total,
            frame_limit=config.frame_limit,
            gauge=self.service.metrics.send_buffer_bytes,
        )
        self.stopping = False
        self._per_ip: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self.gate: RequestGate | None = None
        self._connections: dict[Connection, asyncio.Task[None]] = {}  # and their handlers
        self.tasks = TaskSet("the relay")  # the cleanup loop
        self._unthrottle: Callable[[], None] | None = None

    @property
    def relay_id(self) -> bytes:
        return self.service.relay_id

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        _raise_open_files_limit(self.config.max_connections + 256)
        await self.storage.open()
        app = web.Application(
            client_max_size=self.config.invite_max_size * 2 + 1024,
            middlewares=[self._arrived],
        )
        app.router.add_routes([web.get("/", self.websocket), *self.http.routes()])
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            # Idle HTTP between requests; longer than the gate's deadline, which is what
            # closes a socket that never sent a request.
            keepalive_timeout=2 * self.config.request_timeout,
        )
        await self._runner.setup()
        assert self._runner.server is not None
        self.gate = RequestGate(
            self._runner.server,
            timeout=self.config.request_timeout,
            # Sockets wait for milliseconds when their request comes at once: these bounds
            # are above the WebSocket limits, so that an upgrade over those gets its HTTP
            # 429 or 503 (which a client can show) rather than a closed socket.
            max_waiting=max(self.config.max_connections, WAITING_FLOOR),
            per_ip=(
                None
                if self.config.trust_proxy
                else max(self.config.connections_per_ip, WAITING_PER_IP_FLOOR)
            ),
            metrics=self.service.metrics,
        )
        self._server = await asyncio.get_running_loop().create_server(
            self.gate, self.config.host, self.config.port, backlog=1024, reuse_address=True
        )
        self._unthrottle = throttle_noisy_loggers(LogThrottle())
        self.tasks.spawn(self._cleanup_loop())
        log.info(
            "relay %s listening on ws://%s (database %s)",
            self.identity.device_id.short(),
            self.bound_address,
            self.config.database_display,
        )

    @web.middleware
    async def _arrived(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """A request arrived on its socket: the gate's deadline no longer applies to it."""
        if self.gate is not None:
            self.gate.arrived(request.transport)
        return await handler(request)

    @property
    def bound_address(self) -> str:
        sockets = self._server.sockets if self._server is not None else ()
        if sockets:
            host, port = sockets[0].getsockname()[:2]
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return self.config.bind

    async def stop(self) -> None:
        """Graceful shutdown: ERROR 3001 to every client, finish in-flight commits, close."""
        if self.stopping:
            return
        self.stopping = True
        log.info("shutting down: telling %d connections", len(self.service.connections))
        if self._server is not None:
            self._server.close()  # no new connections
        for conn in list(self._connections):
            conn.close(ErrorCode.RELAY_SHUTTING_DOWN, "the relay is shutting down; reconnect later")
        if self._connections:
            await asyncio.wait(set(self._connections.values()), timeout=SHUTDOWN_GRACE)
        for conn in list(self._connections):  # still busy after the grace period
            await conn.cancel()
        await self.tasks.cancel()
        await self.service.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.service.push_sender.close()
        await self.storage.close()
        log.info("relay stopped")
        if self._unthrottle is not None:
            self._unthrottle()

    async def serve_forever(self, on_ready: Callable[[Relay], None] | None = None) -> None:
        """Run until SIGTERM or SIGINT, then shut down gracefully."""
        await self.start()
        if on_ready is not None:
            on_ready(self)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.stop()

    # -- connections ----------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return web.Response(
                text=f"0k-Sync relay {__version__}: connect with a 0k-Sync client "
                f"(WebSocket subprotocols {', '.join(SUBPROTOCOLS)}).\n"
            )
        offered = [
            p.strip()
            for header in request.headers.getall("Sec-WebSocket-Protocol", [])
            for p in header.split(",")
            if p.strip()
        ]
        chosen = next((p for p in offered if p in SUBPROTOCOLS), None)
        if chosen is None:
            return web.Response(status=400, text=_unsupported(offered))
        ip = client_ip(request, self.http.addresses)
        if self.stopping:
            return web.Response(status=503, text="the relay is shutting down\n")
        if len(self.service.connections) >= self.config.max_connections:
            self.service.metrics.connections_refused.labels("max_connections").inc()
            return web.Response(status=503, text="the relay is at its connection limit\n")
        if self._per_ip[ip] >= self.config.connections_per_ip:
            self.service.metrics.connections_refused.labels("connections_per_ip").inc()
            return web.Response(
                status=429,
                text=f"too many connections from {ip} (limit {self.config.connections_per_ip})\n",
            )
        ws = web.WebSocketResponse(
            protocols=(chosen,),
            compress=False,  # ciphertext does not compress; deflate only costs CPU
            max_msg_size=MAX_MESSAGE + 1,  # aiohttp refuses a message of exactly its limit
            autoping=True,
            # The connection answers the peer's close frame itself (after its last words).
            autoclose=False,
        )
        await ws.prepare(request)
        conn = Connection(
            self.service,
            request,
            ws,
            variant_for(chosen),
            offered=offered,
            remote=ip,
            budget=self.budget,
        )
        handler = asyncio.current_task()
        assert handler is not None
        self._connections[conn] = handler
        self._per_ip[ip] += 1
        try:
            await conn.run()
        finally:
            del self._connections[conn]
            self._per_ip[ip] -= 1
            if self._per_ip[ip] <= 0:
                del self._per_ip[ip]
        return ws

    # -- housekeeping ---------------------------------------------------------------------

    async def cleanup_once(self) -> None:
        now = self.service.clock()
        stats = await self.storage.cleanup(now)
        # Chunks no live blob refers to any more, and uploads left unfinished for a day.
        chunks = await self.storage.chunk_gc(now, CHUNK_GC_BATCH)
        await self.storage.maintain()
        self.service.rate.prune(asyncio.get_running_loop().time())
        self.http.invite_limit.prune(time.monotonic())
        groups, blobs = await self.storage.stats()
        self.service.metrics.groups.set(groups)
        self.service.metrics.blobs_buffered.set(blobs)
        if stats.expired_blobs or stats.acked_blobs or stats.expired_invites or chunks:
            log.info(
                "cleanup removed %d expired blobs, %d fully acknowledged blobs, %d invites, "
                "%d chunks",
                stats.expired_blobs,
                stats.acked_blobs,
                stats.expired_invites,
                chunks,
            )

    async def _cleanup_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.cleanup_interval)
            try:
                await self.cleanup_once()
            except StorageError as exc:
                log.error("cleanup failed: %s", exc)


CHUNK_GC_BATCH = 10_000  # chunks collected per cleanup at most (the rest at the next one)


def _unsupported(offered: list[str]) -> str:
    """Why the upgrade is refused, naming the protocol versions: a client of another
    version learns which one this relay speaks."""
    ours = f"0k-Sync protocol version {PROTOCOL_VERSION} ({', '.join(SUBPROTOCOLS)})"
    versions = sorted(
        {p.split(".")[1] for p in offered if p.startswith("0k-sync.") and p.count(".") >= 2}
    )
    if versions:
        theirs = ", ".join(versions)
        return (
            f"this relay speaks {ours}; your client offered protocol {theirs}: "
            "upgrade the client (or use a relay of its version)\n"
        )
    return f"this relay speaks {ours}; offer one of those WebSocket subprotocols\n"
