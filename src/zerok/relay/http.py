"""Plain HTTP on the relay's port: health, metrics and the short-code invite mailbox.

The mailbox stores an opaque, client-encrypted payload under a lookup key for a few
minutes and hands it out once. The relay cannot read it: the key that decrypts it is the
half of the short code that never leaves the devices.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from aiohttp import web

from zerok.errors import StorageError
from zerok.protocol.ratelimit import RateLimiter
from zerok.relay.config import RelayConfig
from zerok.relay.proxy import ClientAddresses, parse_networks
from zerok.relay.service import RelayService
from zerok.version import __version__

LOOKUP = re.compile(r"[A-Za-z0-9_-]{8,128}")
STATS_TTL = 5.0  # seconds the counts of /health and /metrics are reused
STATS_TIMEOUT = 1.0  # seconds /health waits for the database before answering 503
PING_TTL = 0.5  # seconds a /health probe of the database is reused
T = TypeVar("T")


def client_addresses(config: RelayConfig) -> ClientAddresses:
    return ClientAddresses(
        config.trust_proxy, config.proxy_header.lower(), parse_networks(config.trusted_proxies)
    )


def client_ip(request: web.Request, addresses: ClientAddresses) -> str:
    """The client's address: the socket's peer, or behind a trusted proxy the one it names
    (see zerok.relay.proxy)."""
    return addresses.of(request.remote, request.headers)


class AskedOnce(Generic[T]):
    """A question to the database shared by many requests: at most one asking at a time,
    its answer reused for ``ttl`` seconds; None when it fails or takes over STATS_TIMEOUT
    (reused too with ``keep_failures``)."""

    def __init__(
        self, ask: Callable[[], Awaitable[T]], *, ttl: float, keep_failures: bool = False
    ) -> None:
        self.ask = ask
        self.ttl = ttl
        self.keep_failures = keep_failures
        self._answer: tuple[float, T | None] | None = None
        self._asking: asyncio.Future[T] | None = None

    def forget(self) -> None:
        self._answer = None

    async def get(self) -> T | None:
        if self._answer is not None and time.monotonic() - self._answer[0] < self.ttl:
            return self._answer[1]
        if self._asking is None or self._asking.done():
            self._asking = asyncio.ensure_future(self.ask())
        try:
            answer: T | None = await asyncio.wait_for(asyncio.shield(self._asking), STATS_TIMEOUT)
        except (TimeoutError, StorageError):
            answer = None
        if answer is not None or self.keep_failures:
            self._answer = (time.monotonic(), answer)
        return answer


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class HttpApi:
    def __init__(self, service: RelayService, *, draining: Callable[[], bool]) -> None:
        """``draining`` tells whether the relay is shutting down (health answers 503)."""
        self.service = service
        self.config = service.config
        self.storage = service.storage
        self.draining = draining
        self.started_at = time.monotonic()
        self.addresses = client_addresses(service.config)
        # (groups, buffered blobs): counting reads every group row, so at most once per
        # STATS_TTL however often /health and /metrics are asked.
        self.counts = AskedOnce(self._count, ttl=STATS_TTL)
        # Whether the database answers: a query a stranger can make us run, so at most once
        # per PING_TTL; a failure is kept too.
        self.alive = AskedOnce(self._ping, ttl=PING_TTL, keep_failures=True)
        self.invite_limit = RateLimiter(service.config.invites_per_minute)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/health", self.health),
            web.get("/metrics", self.metrics),
            web.post("/v1/invites", self.create_invite),
            web.get("/v1/invites/{lookup}", self.take_invite),
            web.delete("/v1/invites/{lookup}", self.cancel_invite),
        ]

    async def _count(self) -> tuple[int, int]:
        return await self.storage.stats()

    async def _ping(self) -> bool:
        await self.storage.ping()
        return True

    async def health(self, request: web.Request) -> web.Response:
        stats = await self.counts.get() if await self.alive.get() else None
        if stats is None:
            unavailable = {
                "status": "unavailable",
                "reason": f"the database did not answer within {STATS_TIMEOUT:g} s",
                "version": __version__,
            }
            return web.json_response(unavailable, status=503)
        groups, blobs = stats
        draining = self.draining()
        # Degraded still answers 200: pulls, acks and deletes work, only pushes are refused.
        trouble = self.storage.degraded()
        body: dict[str, object] = {
            "status": "draining" if draining else "degraded" if trouble else "ok",
            "version": __version__,
            "connections": len(self.service.connections),
            "groups": groups,
            "blobs_buffered": blobs,
            "uptime_seconds": round(time.monotonic() - self.started_at, 3),
        }
        if trouble:
            body["reason"] = trouble
        return web.json_response(body, status=503 if draining else 200)

    async def metrics(self, request: web.Request) -> web.Response:
        stats = await self.counts.get()
        m = self.service.metrics
        if stats is not None:  # else the last counts stand
            m.groups.set(stats[0])
            m.blobs_buffered.set(stats[1])
        m.connections_active.set(len(self.service.connections))
        return web.Response(
            body=m.render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        )

    def _limited(self, request: web.Request) -> web.Response | None:
        ip = client_ip(request, self.addresses)
        now = time.monotonic()
        if self.invite_limit.allow(ip, now):
            return None
        retry = self.invite_limit.retry_after(ip, now)
        return _error(
            429,
            f"too many invite requests from {ip}; retry in {retry} s",
            **{"Retry-After": str(retry)},
        )

    async def create_invite(self, request: web.Request) -> web.Response:
        if (limited := self._limited(request)) is not None:
            return limited
        config = self.config
        # base64 grows data by 4/3; allow the JSON around it too.
        if (
            request.content_length is not None
            and request.content_length > config.invite_max_size * 2
        ):
            return _error(413, f"invite payload exceeds {config.invite_max_size} bytes")
        try:
            doc: Any = json.loads(await request.read())
            lookup, payload_text = doc["lookup"], doc["payload"]
            if not isinstance(lookup, str) or not isinstance(payload_text, str):
                raise TypeError
            payload = _b64decode(payload_text)
        except (ValueError, KeyError, TypeError, binascii.Error, RecursionError):
            # RecursionError: nesting deeper than the parser goes is malformed too.
            return _error(400, 'expected JSON {"lookup": "...", "payload": "<base64url>"}')
        if not LOOKUP.fullmatch(lookup):
            return _error(400, "lookup must be 8 to 128 characters of A-Z a-z 0-9 _ -")
        if not payload or len(payload) > config.invite_max_size:
            return _error(413, f"invite payload must be 1 to {config.invite_max_size} bytes")
        expires_at = self.service.clock() + int(config.invite_ttl * 1000)
        if not await self.storage.put_invite(lookup.encode(), payload, expires_at):
            return _error(409, "an invite with this lookup key already exists")
        return web.json_response({"expires_at": expires_at}, status=201)

    async def take_invite(self, request: web.Request) -> web.Response:
        if (limited := self._limited(request)) is not None:
            return limited
        lookup = request.match_info["lookup"]
        if not LOOKUP.fullmatch(lookup):
            return _error(400, "malformed lookup key")
        clock = self.service.clock
        found = await self.storage.take_invite(lookup.encode(), clock())
        if found.status == "unknown":
            return _error(404, "no such invite")
        if found.payload is None:
            body = {"error": f"the invite was {found.status}", "reason": found.status}
            return web.json_response(body, status=410)
        encoded = base64.urlsafe_b64encode(found.payload).decode().rstrip("=")
        return web.json_response({"payload": encoded})

    async def cancel_invite(self, request: web.Request) -> web.Response:
        if (limited := self._limited(request)) is not None:
            return limited
        lookup = request.match_info["lookup"]
        if not LOOKUP.fullmatch(lookup) or not await self.storage.delete_invite(lookup.encode()):
            return _error(404, "no such invite")
        return web.Response(status=204)
