"""Relay figures: a real relay process driven from this process over loopback, each figure
next to the bare websockets baseline measured in the same run."""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import time
from collections.abc import Awaitable, Callable

import aiohttp

from bench.groups import connect, connect_all, new_group, register
from bench.harness import QUICK, Figure, scaled
from bench.processes import bare_relay_process, postgres_database, relay_process, rss_bytes
from zerok.crypto.identity import DeviceIdentity
from zerok.protocol import CLASSIC, HYBRID, MessageReceived, Variant
from zerok.transport import RelayConnection
from zerok.wire import BlobId, Notify, Pull, PullResponse, Push

KIB = os.urandom(1024)
SENDERS, WINDOW = 10, 8
PUSH_SECONDS = 0.3 if QUICK else 5.0
LATENCY_RATE, LATENCY_SECONDS = 100, 0.2 if QUICK else 5.0
HANDSHAKES = scaled(300, 10)
IDLE_COUNTS = (5, 10) if QUICK else (1000, 5000, 10_000)
IDLE_GROUP = 100  # idle devices per group (a group holds at most 256 devices)
IDLE_NOTE = (
    f"idle connections: enrolled devices of groups of {IDLE_GROUP} (their logs cached "
    "by the relay), each connected once; the bare relay's hold no state"
)


def _raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _http() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


async def _drain(conn: RelayConnection) -> None:
    async for _ in conn.events():
        pass


# -- durable push throughput ---------------------------------------------------------------


async def _timed_window(worker: Callable[[], Awaitable[None]], seconds: float) -> None:
    await asyncio.gather(*(worker() for _ in range(WINDOW)))


async def zerok_push_rate(*urls: str) -> float:
    """Durable pushes/s from SENDERS devices of one group, spread over ``urls``."""
    group, devices = new_group(SENDERS)
    async with _http() as http:
        await (await register(urls[0], group, http)).close()
        conns = [
            await connect(urls[i % len(urls)], group, device, http)
            for i, device in enumerate(devices)
        ]
        drains = [asyncio.create_task(_drain(c)) for c in conns]
        loop = asyncio.get_running_loop()
        counted = 0
        start = loop.time() + (0.1 if QUICK else 1.0)  # warm-up
        stop = start + PUSH_SECONDS

        async def sender(conn: RelayConnection) -> None:
            nonlocal counted

            async def one() -> None:
                nonlocal counted
                while (now := loop.time()) < stop:
                    await conn.request(
                        Push(blob_id=BlobId.random(), ciphertext=KIB, epoch=group.epoch)
                    )
                    if now >= start:
                        counted += 1

            await asyncio.gather(*(one() for _ in range(WINDOW)))

        await asyncio.gather(*(sender(c) for c in conns))
        for c in conns:
            await c.close()
        await asyncio.gather(*drains, return_exceptions=True)
    return counted / PUSH_SECONDS


class _BareClient:
    """A client of the bare relay: pushes wait for their ack, look-ups for their answer."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.waiting: dict[bytes, asyncio.Future[bytes]] = {}
        self.notes: asyncio.Queue[bytes] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data: bytes = msg.data
            kind = data[:1]
            if kind == b"N":
                self.notes.put_nowait(data[1:17])
            else:
                key = data[1:17] if kind == b"A" else data[2:18]
                fut = self.waiting.pop(key, None)
                if fut is not None:
                    fut.set_result(data)

    async def call(self, frame: bytes, key: bytes) -> bytes:
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.waiting[key] = fut
        await self.ws.send_bytes(frame)
        return await fut


async def bare_push_rate(url: str) -> float:
    async with _http() as http:
        clients = [_BareClient(await http.ws_connect(f"{url}/g")) for _ in range(SENDERS)]
        loop = asyncio.get_running_loop()
        counted = 0
        start = loop.time() + (0.1 if QUICK else 1.0)
        stop = start + PUSH_SECONDS

        async def sender(client: _BareClient) -> None:
            async def one() -> None:
                nonlocal counted
                while (now := loop.time()) < stop:
                    ident = os.urandom(16)
                    await client.call(b"P" + ident + KIB, ident)
                    if now >= start:
                        counted += 1

            await asyncio.gather(*(one() for _ in range(WINDOW)))

        await asyncio.gather(*(sender(c) for c in clients))
        for c in clients:
            await c.ws.close()
            c.reader.cancel()
    return counted / PUSH_SECONDS


# -- push → NOTIFY → PULL latency ---------------------------------------------------------


def _percentiles(samples: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return q[49] * 1000, q[98] * 1000


async def zerok_latency(url: str, receiver_url: str | None = None) -> tuple[float, float]:
    """push→NOTIFY→PULL latency; the receiver may sit on another relay."""
    group, (one, two) = new_group(2)
    async with _http() as http:
        await (await register(url, group, http)).close()
        sender = await connect(url, group, one, http)
        receiver = await connect(receiver_url or url, group, two, http)
        sent_at: dict[BlobId, float] = {}
        samples: list[float] = []
        loop = asyncio.get_running_loop()
        total = int(LATENCY_RATE * LATENCY_SECONDS)

        async def receive() -> None:
            last = 0
            while len(samples) < total:
                event = await receiver.next_event(10)
                if not isinstance(event, MessageReceived) or not isinstance(event.message, Notify):
                    continue
                if event.message.cursor <= last:
                    continue
                page = await receiver.request(Pull(after=last))
                assert isinstance(page, PullResponse)
                now = loop.time()
                for blob in page.blobs:
                    samples.append(now - sent_at[blob.blob_id])
                    last = max(last, blob.cursor)

        async def send() -> None:
            begin = loop.time()
            for i in range(total):
                await asyncio.sleep(max(0.0, begin + i / LATENCY_RATE - loop.time()))
                blob_id = BlobId.random()
                sent_at[blob_id] = loop.time()
                await sender.request(Push(blob_id=blob_id, ciphertext=KIB, epoch=group.epoch))

        await asyncio.gather(receive(), send())
        await sender.close()
        await receiver.close()
    return _percentiles(samples)


async def bare_latency(url: str) -> tuple[float, float]:
    async with _http() as http:
        sender = _BareClient(await http.ws_connect(f"{url}/lat"))
        receiver = _BareClient(await http.ws_connect(f"{url}/lat"))
        sent_at: dict[bytes, float] = {}
        samples: list[float] = []
        loop = asyncio.get_running_loop()
        total = int(LATENCY_RATE * LATENCY_SECONDS)

        async def receive() -> None:
            while len(samples) < total:
                ident = await asyncio.wait_for(receiver.notes.get(), 10)
                await receiver.call(b"L" + ident, ident)
                samples.append(loop.time() - sent_at[ident])

        async def send() -> None:
            begin = loop.time()
            for i in range(total):
                await asyncio.sleep(max(0.0, begin + i / LATENCY_RATE - loop.time()))
                ident = os.urandom(16)
                sent_at[ident] = loop.time()
                await sender.call(b"P" + ident + KIB, ident)

        await asyncio.gather(receive(), send())
        for c in (sender, receiver):
            await c.ws.close()
            c.reader.cancel()
    return _percentiles(samples)


# -- handshakes ------------------------------------------------------------------------------


async def zerok_handshake_rate(url: str, variant: Variant) -> float:
    group, identities = new_group(8)
    done = 0
    async with _http() as http:
        await (await register(url, group, http)).close()

        async def worker(identity: DeviceIdentity) -> None:
            nonlocal done
            while done < HANDSHAKES:
                done += 1
                conn = await connect(url, group, identity, http, variant=variant)
                await conn.close()

        warm = await connect(url, group, identities[0], http, variant=variant)
        await warm.close()
        started = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in identities))
        return HANDSHAKES / (time.perf_counter() - started)


async def bare_connect_rate(url: str) -> float:
    done = 0
    async with _http() as http:

        async def worker() -> None:
            nonlocal done
            while done < HANDSHAKES:
                done += 1
                ws = await http.ws_connect(f"{url}/hs")
                await ws.close()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(8)))
        return HANDSHAKES / (time.perf_counter() - started)


# -- idle connections ----------------------------------------------------------------------


async def _open_many(count: int, opener: Callable[[], Awaitable[object]]) -> list[object]:
    out: list[object] = []
    sem = asyncio.Semaphore(16)

    async def one() -> None:
        async with sem:
            out.append(await opener())

    await asyncio.gather(*(one() for _ in range(count)))
    return out


async def _idle_devices(url: str, count: int, http: aiohttp.ClientSession) -> list[RelayConnection]:
    """``count`` more enrolled devices connected, in new groups of IDLE_GROUP."""
    conns: list[RelayConnection] = []
    while len(conns) < count:
        group, devices = new_group(min(IDLE_GROUP, count - len(conns)))
        await (await register(url, group, http)).close()
        conns += await connect_all(url, group, devices, http)
    return conns


async def zerok_idle_rss(url: str, pid: int) -> dict[int, int]:
    result: dict[int, int] = {}
    conns: list[RelayConnection] = []
    async with _http() as http:
        for target in IDLE_COUNTS:
            conns += await _idle_devices(url, target - len(conns), http)
            await asyncio.sleep(0.5)  # let the relay settle after the burst of handshakes
            result[target] = rss_bytes(pid)
        for c in conns:
            await c.close()
    return result


async def bare_idle_rss(url: str, pid: int) -> dict[int, int]:
    result: dict[int, int] = {}
    conns: list[object] = []
    async with _http() as http:

        async def opener() -> aiohttp.ClientWebSocketResponse:
            return await http.ws_connect(f"{url}/idle")

        for target in IDLE_COUNTS:
            conns += await _open_many(target - len(conns), opener)
            await asyncio.sleep(0.5)
            result[target] = rss_bytes(pid)
        for c in conns:
            assert isinstance(c, aiohttp.ClientWebSocketResponse)
            await c.close()
    return result


# -- scale-out ---------------------------------------------------------------------------


def scaleout_figures() -> list[Figure]:
    """Two relays on one PostgreSQL database, next to one SQLite relay, same run."""
    _raise_fd_limit()
    with relay_process() as (url, _):
        single_push = asyncio.run(zerok_push_rate(url))
        single_p50, single_p99 = asyncio.run(zerok_latency(url))
    with (
        postgres_database() as database,
        relay_process(database=database) as (url1, _),
        relay_process(database=database) as (url2, _),
    ):
        push = asyncio.run(zerok_push_rate(url1, url2))
        p50, p99 = asyncio.run(zerok_latency(url1, url2))
    base = "one relay on SQLite"
    return [
        Figure("2 relays on PostgreSQL: durable pushes", "/s", push, base, single_push),
        Figure("2 relays: push→NOTIFY→PULL p50, cross-relay", "ms", p50, base, single_p50),
        Figure("2 relays: push→NOTIFY→PULL p99, cross-relay", "ms", p99, base, single_p99),
    ]


# -- all -----------------------------------------------------------------------------------


def all_figures() -> list[Figure]:
    _raise_fd_limit()
    base = "bare websockets relay"
    figures: list[Figure] = []
    with bare_relay_process() as (bare_url, bare_pid):
        bare_push = asyncio.run(bare_push_rate(bare_url))
        bare_p50, bare_p99 = asyncio.run(bare_latency(bare_url))
        bare_connects = asyncio.run(bare_connect_rate(bare_url))
    with relay_process() as (url, pid):
        push = asyncio.run(zerok_push_rate(url))
        p50, p99 = asyncio.run(zerok_latency(url))
        classic = asyncio.run(zerok_handshake_rate(url, CLASSIC))
        hybrid = asyncio.run(zerok_handshake_rate(url, HYBRID))
    # Fresh processes, so that memory is that of the idle connections alone.
    with bare_relay_process() as (bare_url, bare_pid):
        bare_rss = asyncio.run(bare_idle_rss(bare_url, bare_pid))
    with relay_process() as (url, pid):
        rss = asyncio.run(zerok_idle_rss(url, pid))
    figures.append(
        Figure(f"durable pushes, {SENDERS}x{WINDOW} in flight, 1 KiB", "/s", push, base, bare_push)
    )
    figures.append(Figure("push→NOTIFY→PULL p50 at 100/s", "ms", p50, base, bare_p50))
    figures.append(Figure("push→NOTIFY→PULL p99 at 100/s", "ms", p99, base, bare_p99))
    figures.append(Figure("connect+handshake+HELLO, classic", "/s", classic, base, bare_connects))
    figures.append(Figure("connect+handshake+HELLO, hybrid", "/s", hybrid, base, bare_connects))
    for count in IDLE_COUNTS:
        figures.append(
            Figure(
                f"relay RSS, {count:,} idle connections",
                "MiB",
                rss[count] / 2**20,
                base,
                bare_rss[count] / 2**20,
            )
        )
    return figures
