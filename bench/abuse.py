"""Abuse figures (issue 10): what a relay process with its defaults holds for clients that
ask for full PULL pages and never read the answers, next to its RSS with as many ordinary
idle clients, measured on the same relay in the same run.

The attackers: ATTACKERS sockets from 127.0.0.1, each a real, enrolled device of the group
(Noise handshake, HELLO, WELCOME) that then pipelines ``Pull(after=0)`` requests, each answered
with a full page (one max_blob_size blob: two do not fit in a frame), and reads nothing
(aiohttp stops reading a socket once 64 KiB wait in its queue, so the relay's writes back
up). A socket the relay cuts is opened again at once, for ATTACK_SECONDS. The peak is the
relay's VmHWM, reset just before the attack and read once the relay has wound down after
it; the figure is the median of RUNS runs, each on a fresh relay.

To measure older code of protocol version 2, run this module with PYTHONPATH at that
tree's ``src``: the relay process and the clients then both come from it
(``bench.processes`` leaves out the relay options it does not know), and a relay without a
send budget is reported as such.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.groups import connect, new_group, register
from bench.harness import QUICK, Figure, scaled
from bench.processes import relay_process, rss_bytes, status_bytes
from zerok.crypto.identity import DeviceIdentity
from zerok.protocol import CLASSIC, ClientSession, ConnectionClosed, Welcomed
from zerok.relay.config import RelayConfig
from zerok.testing import TestGroup
from zerok.wire import BlobId, Pull, Push, PushAck

MIB = 2**20
ATTACKERS = scaled(10, 2)
ATTACK_SECONDS = 0.5 if QUICK else 5.0
RUNS = scaled(3, 1)
SEED_BLOBS = scaled(8, 2)
PULL_BATCH = 32  # PULLs sent at once by each attacker, every PULL_PAUSE seconds
PULL_PAUSE = 0.01
SAFETY_RSS = 6 * 2**30  # the attack stops early if the relay gets this large (old code)
HELD_EVERY = 0.05  # seconds between reads of the relay's send-budget gauge
SAMPLE_EVERY = 0.02  # seconds between RSS samples (the VmHWM is the peak; this is the guard)
CONNECT_TIMEOUT = 10.0
SETUP_TIMEOUT = 60.0  # seconds to seed the group and measure the idle baseline
SETTLE = 0.2 if QUICK else 1.0  # seconds for the relay's RSS to settle

DEFAULTS = RelayConfig()
# A page of one full-size blob is a full PULL answer (two do not fit in the frame limit).
BLOB_SIZE = 64 * 1024 if QUICK else DEFAULTS.max_blob_size


def _http() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT),
    )


# -- the relay's peak RSS ---------------------------------------------------------------------


def _reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux: clear_refs 5)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss(pid: int) -> int:
    return status_bytes(pid, "VmHWM")


# -- the attack ----------------------------------------------------------------------------


class _NonReader:
    """A device that completes the handshake and then only sends: PULLs, never reading."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: ClientSession) -> None:
        self.ws = ws
        self.session = session

    @classmethod
    async def open(
        cls, http: aiohttp.ClientSession, url: str, group: TestGroup, identity: DeviceIdentity
    ) -> _NonReader:
        loop = asyncio.get_running_loop()
        ws = await http.ws_connect(url, protocols=[CLASSIC.subprotocol], compress=0)
        session = ClientSession(
            identity,
            group.group_id,
            now=loop.time(),
            variant=CLASSIC,
            client="zerok-bench",
            heartbeat_interval=None,
        )
        peer = cls(ws, session)
        await peer._flush()
        async with asyncio.timeout(CONNECT_TIMEOUT):
            while True:
                msg = await ws.receive()
                if msg.type != aiohttp.WSMsgType.BINARY:
                    raise ConnectionError(f"the relay closed the handshake ({msg.type.name})")
                events = session.receive(msg.data, loop.time())
                await peer._flush()
                for event in events:
                    if isinstance(event, Welcomed):
                        return peer
                    if isinstance(event, ConnectionClosed):
                        raise ConnectionError(f"the relay refused the handshake: {event}")

    async def _flush(self) -> None:
        for data in self.session.data_to_send():
            await self.ws.send_bytes(data)

    async def pulls(self, count: int) -> None:
        now = asyncio.get_running_loop().time()
        for _ in range(count):
            self.session.send_request(Pull(after=0, limit=100), now)
        await self._flush()


@dataclass
class _Attack:
    pulls: int = 0
    sockets: int = 0
    stopped_early: bool = False
    held: int | None = None  # the most the relay's send budget held (sampled), if it has one


async def _attacker(url: str, group: TestGroup, identity: DeviceIdentity, attack: _Attack) -> None:
    """One attacker slot (one enrolled device), until cancelled: a non-reading socket,
    opened again whenever the relay cuts it."""
    # Closing the ClientSession closes its sockets without a closing handshake (which a
    # client that does not read could not finish).
    async with _http() as http:
        while True:
            try:
                peer = await _NonReader.open(http, url, group, identity)
                attack.sockets += 1
                while True:
                    await peer.pulls(PULL_BATCH)
                    attack.pulls += PULL_BATCH
                    await asyncio.sleep(PULL_PAUSE)
            except (aiohttp.ClientError, ConnectionError):
                await asyncio.sleep(0.01)  # cut (or refused): open another one


async def _sample_held(url: str, attack: _Attack) -> None:
    """Until cancelled: the peak of the relay's sync_relay_send_buffer_bytes gauge, what its
    send budget counts (a relay without one has no such gauge)."""
    metrics = url.replace("ws://", "http://", 1).rstrip("/") + "/metrics"
    async with _http() as http:
        while True:
            async with http.get(metrics) as response:
                text = await response.text()
            for line in text.splitlines():
                if line.startswith("sync_relay_send_buffer_bytes "):
                    held = int(float(line.split()[1]))
                    attack.held = max(attack.held or 0, held)
            await asyncio.sleep(HELD_EVERY)


async def _seed(url: str, group: TestGroup, http: aiohttp.ClientSession) -> None:
    """The group's log and SEED_BLOBS full-size blobs, pushed by its creator."""
    seeder = await register(url, group, http)
    blob = bytes(BLOB_SIZE)  # the relay stores ciphertext: its content does not matter
    for _ in range(SEED_BLOBS):
        push = Push(blob_id=BlobId.random(), ciphertext=blob, epoch=group.epoch)
        ack = await seeder.request(push)
        assert isinstance(ack, PushAck), ack
    await seeder.close()


async def _idle_rss(
    url: str,
    pid: int,
    group: TestGroup,
    devices: list[DeviceIdentity],
    http: aiohttp.ClientSession,
) -> int:
    """The relay's RSS with ATTACKERS ordinary devices connected and idle."""
    conns = [await connect(url, group, device, http) for device in devices]
    await asyncio.sleep(SETTLE)  # let the relay settle after the handshakes
    idle = rss_bytes(pid)
    for conn in conns:
        await conn.close()
    return idle


@dataclass
class Measured:
    idle: int
    peak: int
    after: int  # a moment after the attackers went away
    attack: _Attack


async def non_reading_peers(url: str, pid: int) -> Measured:
    # The idle clients and the attackers are distinct devices, as they would be.
    group, devices = new_group(2 * ATTACKERS)
    idlers, attackers = devices[:ATTACKERS], devices[ATTACKERS:]
    async with _http() as http, asyncio.timeout(SETUP_TIMEOUT):
        await _seed(url, group, http)
        idle = await _idle_rss(url, pid, group, idlers, http)
    await asyncio.sleep(0.2)
    reset = _reset_peak(pid)
    loop = asyncio.get_running_loop()
    attack = _Attack()
    peak = rss_bytes(pid)
    stop = loop.time() + ATTACK_SECONDS
    tasks = [asyncio.create_task(_attacker(url, group, a, attack)) for a in attackers]
    held = asyncio.create_task(_sample_held(url, attack))
    try:
        while loop.time() < stop and not any(t.done() for t in tasks):
            rss = rss_bytes(pid)
            peak = max(peak, rss)
            if rss > SAFETY_RSS:  # the code before the send budget: stop before it eats all
                attack.stopped_early = True
                break
            await asyncio.sleep(SAMPLE_EVERY)
    finally:
        for task in [*tasks, held]:
            task.cancel()
        async with asyncio.timeout(CONNECT_TIMEOUT):
            outcomes = await asyncio.gather(*tasks, held, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, Exception):
            raise outcome
    await asyncio.sleep(SETTLE)  # the peak includes the relay's winding down after them
    after = rss_bytes(pid)
    peak = max(peak, after, _peak_rss(pid) if reset else 0)
    return Measured(idle, peak, after, attack)


# -- the configured bound -------------------------------------------------------------------


@dataclass(frozen=True)
class Bound:
    """What the send budget lets the relay hold (src/zerok/relay/budget.py, connection.py)."""

    send_buffer: int  # bytes queued or in the socket's buffer for one peer
    send_buffer_total: int  # the same for all peers
    frame_limit: int  # the largest frame: a full PULL answer

    @property
    def pages(self) -> int:
        """PULL pages being read from the database at once, relay-wide (budget.pull_slots)."""
        from zerok.relay.budget import page_slots  # noqa: PLC0415 - absent in old code

        return page_slots(self.send_buffer_total, self.frame_limit)

    @property
    def pages_per_peer(self) -> int:
        """The same for one peer (Connection._pull_slots)."""
        from zerok.relay.budget import page_slots  # noqa: PLC0415

        return page_slots(self.send_buffer, self.frame_limit)

    @property
    def page_cost(self) -> int:
        """What the relay counts for one page being read (budget.PAGE_FRAMES frames)."""
        from zerok.relay.budget import PAGE_FRAMES  # noqa: PLC0415

        return PAGE_FRAMES * self.frame_limit

    @property
    def relay_wide(self) -> int:
        """Held bytes plus the pages being read, for any number of peers."""
        return self.send_buffer_total + self.pages * self.page_cost

    def for_peers(self, peers: int) -> int:
        """The same for ``peers`` peers that stay connected (a cut peer's pages still being
        read count against the relay-wide limit only)."""
        held = min(self.send_buffer_total, peers * self.send_buffer)
        return held + min(self.pages, peers * self.pages_per_peer) * self.page_cost


def configured_bound() -> Bound | None:
    """The relay's default bound, or None for a relay without a send budget (old code)."""
    send_buffer: int | None = getattr(DEFAULTS, "send_buffer", None)
    total: int | None = getattr(DEFAULTS, "send_buffer_total", None)
    if send_buffer is None or total is None:
        return None
    return Bound(send_buffer, total, DEFAULTS.frame_limit)


# -- all -----------------------------------------------------------------------------------


def _mib(n: int) -> str:
    return f"{n / MIB:,.1f} MiB"


def abuse_figures() -> tuple[list[Figure], list[str]]:
    runs: list[Measured] = []
    for _ in range(RUNS):  # a fresh relay each time: its allocator keeps what it once took
        with relay_process() as (url, pid):
            runs.append(asyncio.run(non_reading_peers(url, pid)))
    runs.sort(key=lambda run: run.peak)
    measured = runs[len(runs) // 2]  # the median run, with its own idle baseline
    idle, peak, attack = measured.idle, measured.peak, measured.attack
    blob = f"{BLOB_SIZE // 1024:,} KiB" if BLOB_SIZE < MIB else f"{BLOB_SIZE / MIB:g} MiB"
    figures = [
        Figure(
            f"peak RSS, {ATTACKERS} non-reading peers, {blob} blobs",
            "MiB",
            peak / MIB,
            f"same relay, {ATTACKERS} idle clients",
            idle / MIB,
        )
    ]
    notes = [
        f"attack: {ATTACKERS} sockets for {ATTACK_SECONDS:g} s pipelining PULLs for full pages "
        f"(the group holds {SEED_BLOBS} {blob} blobs), reading nothing: {attack.pulls:,} PULLs "
        f"sent on {attack.sockets:,} sockets ({attack.sockets - ATTACKERS:,} reopened after "
        "the relay cut them)"
        + (f"; stopped early at {_mib(SAFETY_RSS)} RSS" if attack.stopped_early else "")
        + f"; RSS {SETTLE:g} s after they went away: {_mib(measured.after)}",
        "bytes the send budget held at most (its gauge, sampled): "
        + ("n/a (no gauge)" if attack.held is None else _mib(attack.held)),
        f"peaks of {RUNS} runs, each on a fresh relay (the median run is shown): "
        + ", ".join(_mib(run.peak) for run in runs),
    ]
    bound = configured_bound()
    if bound is None:
        notes.append(
            f"bound: none (this relay has no send budget); peak {_mib(peak)} = idle {_mib(idle)}"
            f" + {_mib(peak - idle)}"
        )
        return figures, notes
    figures.append(
        Figure(
            "peak RSS over idle, same attack",
            "MiB",
            (peak - idle) / MIB,
            "configured bound (send budget)",
            bound.relay_wide / MIB,
        )
    )
    within = "within" if peak <= idle + bound.relay_wide else "OVER"
    notes += [
        f"bound (relay defaults): send_buffer_total {_mib(bound.send_buffer_total)} held for all "
        f"peers + {bound.pages} PULL pages read at once x {bound.page_cost // 1024:,} KiB "
        f"each (4 frames) = {_mib(bound.relay_wide)}; for {ATTACKERS} peers "
        f"that stay connected: min(send_buffer_total, {ATTACKERS} x send_buffer "
        f"{_mib(bound.send_buffer)}) + {min(bound.pages, ATTACKERS * bound.pages_per_peer)} "
        f"pages = {_mib(bound.for_peers(ATTACKERS))}",
        f"peak {_mib(peak)} = idle {_mib(idle)} + {_mib(peak - idle)}: {within} idle + bound "
        f"({_mib(idle + bound.relay_wide)})",
    ]
    return figures, notes
