"""Helpers for the relay integration tests: relays, clients, raw connections, the CLI.

Nothing here mocks the relay: ``RelayLauncher`` starts the real relay, by default as an
``InProcessRelay`` (its own event loop in a thread of the test process, real sockets and
storage) and with ``process=True`` as a ``RelayProcess`` (``python -m zerok relay``, for
SIGKILL, signals and exit codes); ``Clients`` opens real ``RelayConnection``s over
WebSocket, and ``RawClient`` does a real WebSocket + Noise handshake with the sans-I/O
``ClientSession`` and then lets a test send frames (or bytes) no well-behaved client would
send. ``run_main`` runs the ``zerok`` command line in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from zerok.crypto import DeviceIdentity
from zerok.crypto.noise import NoiseTransport
from zerok.protocol import (
    CLASSIC,
    ClientSession,
    ConnectionClosed,
    Event,
    MessageReceived,
    Variant,
    Welcomed,
)
from zerok.testing import (
    InProcessRelay,
    PostgresDatabases,
    RelayProcess,
    RunningRelay,
    TestGroup,
    clean_env,
)
from zerok.transport.connection import RelayConnection
from zerok.wire import (
    BlobId,
    Frame,
    GroupId,
    LogAppend,
    LogAppended,
    Membership,
    Message,
    Pull,
    PullResponse,
    Push,
    PushAck,
    StoredBlob,
    Welcome,
    decode_frame,
    encode,
)

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Run one test's coroutine on a fresh event loop, bounded in time."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


# -- relays ---------------------------------------------------------------------------------


BACKENDS = ("sqlite", "postgres")


class RelayLauncher:
    """Starts relays under one directory and stops every one of them in ``close``.

    ``backend`` "postgres" gives each relay a database of its own on the test PostgreSQL
    server (a ``database`` path passed to ``start`` names one: the same path, the same
    database), so the same tests run against both storage backends.
    """

    def __init__(self, base: Path, backend: str = "sqlite") -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}")
        self.base = base
        self.backend = backend
        self.relays: list[RunningRelay] = []
        self._pg = PostgresDatabases()
        self._pg_by_path: dict[Path, str] = {}

    def database_for(self, database: Path) -> str:
        """What ``--database`` the relay gets for this path under the launcher's backend."""
        if self.backend == "sqlite":
            return str(database)
        if database not in self._pg_by_path:
            self._pg_by_path[database] = self._pg.create()
        return self._pg_by_path[database]

    @overload
    def start(
        self,
        *args: str,
        database: Path | None = None,
        env: Mapping[str, str] | None = None,
        defaults: bool = True,
        wait: bool = True,
        process: Literal[False] = False,
        clock: Callable[[], int] | None = None,
    ) -> InProcessRelay: ...

    @overload
    def start(
        self,
        *args: str,
        database: Path | None = None,
        env: Mapping[str, str] | None = None,
        defaults: bool = True,
        wait: bool = True,
        process: Literal[True],
    ) -> RelayProcess: ...

    def start(
        self,
        *args: str,
        database: Path | None = None,
        env: Mapping[str, str] | None = None,
        defaults: bool = True,
        wait: bool = True,
        process: bool = False,
        clock: Callable[[], int] | None = None,
    ) -> InProcessRelay | RelayProcess:
        """Start a relay; by default on 127.0.0.1:0, a fresh database, no rate limits.

        ``args`` come after the defaults, so they override them (argparse: last one wins).
        In this process (an ``InProcessRelay``, with ``clock`` if given) unless ``process``:
        then ``python -m zerok relay``, for what needs a real process (SIGKILL, signals,
        exit codes, the command's output). ``env`` is added to this process's environment
        less its SYNC_* settings, for either kind.
        """
        name = f"relay{len(self.relays) + 1}"
        workdir = self.base / name
        workdir.mkdir(parents=True, exist_ok=True)
        argv: list[str] = []
        key_path: Path | None = None
        if defaults:
            db = database or workdir / "data" / "relay.db"
            url = self.database_for(db)
            argv += ["--bind", "127.0.0.1:0", "--database", url]
            key_path = db.parent / "relay.key"
            if self.backend == "postgres":
                # One relay key per database, as SQLite's default (beside the file) gives.
                key_path = self.base / f"{url.rpartition('/')[2]}.key"
                argv += ["--key-file", str(key_path)]
            # Every test client comes from 127.0.0.1: lift the per-IP limits unless testing them.
            argv += ["--messages-per-minute", "0", "--connections-per-ip", "1000"]
            argv += ["--new-groups-per-hour", "0", "--new-devices-per-hour", "0"]
            argv += ["--push-bytes-per-hour", "0"]
        argv += args
        relay: InProcessRelay | RelayProcess
        if process:
            relay = RelayProcess(argv, workdir, name, clean_env(env))
            if key_path is not None:
                relay.key_path = key_path
        else:
            relay = InProcessRelay(argv, workdir, name, clean_env(env), clock=clock)
        self.relays.append(relay)
        if wait:
            relay.wait_ready()
        return relay

    def close(self) -> None:
        for relay in self.relays:
            relay.stop()
        if self._pg.names:
            self._pg.drop_all()


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run ``zerok relay ARGS`` expecting it to exit by itself (killed after ``timeout``)."""
    return subprocess.run(
        [sys.executable, "-m", "zerok", "relay", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(env),
        cwd=cwd,
        check=False,
    )


@contextlib.contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_main(
    *args: str, env: Mapping[str, str] | None = None, stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    """``zerok ARGS`` run in this process as ``python -m zerok ARGS`` would run: the
    environment less SYNC_* settings plus ``env``, ``stdin`` as standard input, standard
    output and error captured, the exit code (argparse's SystemExit included) returned."""
    from zerok.cli import common  # noqa: PLC0415 - the CLI stack, only where tested
    from zerok.cli.main import main  # noqa: PLC0415

    stdout = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", newline="")
    stderr = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", newline="")
    consoles = (common.out, common.err)
    colours = [console._color_system for console in consoles]
    saved = sys.stdin, sys.stdout, sys.stderr
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    sys.stdout, sys.stderr = stdout, stderr
    try:
        for console in consoles:  # as written to a pipe: no colours, whatever the terminal
            console._color_system = None
        with _environment(clean_env(env)):
            try:
                code = main(list(args))
            except SystemExit as exit:
                code = exit.code if isinstance(exit.code, int) else 1
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
        for console, colour in zip(consoles, colours, strict=True):
            console._color_system = colour
    stdout.flush()
    stderr.flush()
    out, err = stdout.buffer, stderr.buffer
    assert isinstance(out, io.BytesIO) and isinstance(err, io.BytesIO)
    return subprocess.CompletedProcess(["zerok", *args], code, out.getvalue(), err.getvalue())


# -- well-behaved clients -------------------------------------------------------------------


class Clients:
    """Opens RelayConnections to one relay and closes all of them at the end."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.opened: list[RelayConnection] = []
        self.known: dict[GroupId, int] = {}  # log entries the relay got through this pool

    async def open(
        self,
        group: TestGroup,
        identity: DeviceIdentity | None = None,
        *,
        variant: Variant = CLASSIC,
        variants: Sequence[Variant] | None = None,
        heartbeat: float | None = 30.0,
        name: str = "",
        last_cursor: int = 0,
    ) -> RelayConnection:
        identity = identity or DeviceIdentity.generate()
        group.enroll(identity)
        # Only what this relay may lack (from what it got through this pool): small relay
        # limits in tests leave no room for a whole log in every HELLO.
        known = self.known.get(group.group_id, 0)
        conn = await RelayConnection.open(
            self.url,
            identity,
            group.group_id,
            entries=group.entries[known:],
            variants=variants or (variant,),
            device_name=name,
            last_cursor=last_cursor,
            heartbeat=heartbeat,
            timeout=10.0,
        )
        self.known[group.group_id] = len(group.entries)
        self.opened.append(conn)
        return conn

    async def close(self) -> None:
        for conn in self.opened:
            await conn.close()


@contextlib.asynccontextmanager
async def clients(url: str) -> AsyncIterator[Clients]:
    pool = Clients(url)
    try:
        yield pool
    finally:
        await pool.close()


async def push(
    conn: RelayConnection,
    data: bytes,
    *,
    blob_id: BlobId | None = None,
    ttl: int = 0,
    epoch: int = 0,
) -> PushAck:
    """Push ``data`` as it is (relay tests need no real sealing) under ``epoch``."""
    message = Push(blob_id=blob_id or BlobId.random(), ciphertext=data, ttl=ttl, epoch=epoch)
    reply = await conn.request(message)
    assert isinstance(reply, PushAck), reply
    return reply


async def pull(conn: RelayConnection, after: int = 0, limit: int = 100) -> PullResponse:
    reply = await conn.request(Pull(after=after, limit=limit))
    assert isinstance(reply, PullResponse), reply
    return reply


async def pull_all(conn: RelayConnection, after: int = 0) -> list[StoredBlob]:
    """Every blob after ``after``, following has_more."""
    blobs: list[StoredBlob] = []
    while True:
        page = await pull(conn, after, limit=1000)
        blobs += page.blobs
        if not page.has_more:
            return blobs
        assert page.blobs, "has_more with an empty page"
        after = page.blobs[-1].cursor


async def next_message(
    conn: RelayConnection, timeout: float = 5.0, *, skip: tuple[type[Message], ...] = (Membership,)
) -> Message:
    """The next unsolicited message (NOTIFY, MEMBERSHIP, non-fatal ERROR), passing over the
    ``skip`` types (by default MEMBERSHIP: devices of a test group join as it connects
    them, and the others are told)."""
    async with asyncio.timeout(timeout):
        while True:
            event = await conn.next_event(timeout)
            assert isinstance(event, MessageReceived), event
            if not isinstance(event.message, skip):
                return event.message


async def wait_closed(conn: RelayConnection, timeout: float = 5.0) -> ConnectionClosed:
    return await asyncio.wait_for(conn.wait_closed(), timeout)


def queued_events(
    conn: RelayConnection, *, skip: tuple[type[Message], ...] = (Membership,)
) -> list[Event]:
    """Events the connection has received and not handed out yet (without waiting), but
    messages of the ``skip`` types (as in ``next_message``)."""
    events: list[Event] = []
    queue: asyncio.Queue[Event] = conn._events
    while not queue.empty():
        event = queue.get_nowait()
        if not (isinstance(event, MessageReceived) and isinstance(event.message, skip)):
            events.append(event)
    return events


# -- a hand-driven client -------------------------------------------------------------------


class RawClient:
    """A real WebSocket with a real Noise handshake, after which the test sends what it likes.

    After ``handshake`` the session's Noise transport encrypts what ``send_frame`` is given
    and decrypts what arrives; the ClientSession itself is only used for the handshake. Its
    WebSocket takes messages up to aiohttp's default 4 MiB, so full 65535-byte Noise
    messages from the relay arrive (RelayConnection's limit refuses them, see test_sync).
    """

    def __init__(
        self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse, variant: Variant
    ) -> None:
        self.http = http
        self.ws = ws
        self.variant = variant
        self.session: ClientSession | None = None
        self.welcome: Welcome | None = None
        self.unsolicited: list[Frame] = []
        self.frame_sizes: list[int] = []  # of every frame received after the handshake
        self._next_id = 100

    @classmethod
    async def connect(cls, url: str, variant: Variant = CLASSIC) -> RawClient:
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=10))
        try:
            ws = await http.ws_connect(url, protocols=[variant.subprotocol], compress=0)
        except BaseException:
            await http.close()
            raise
        return cls(http, ws, variant)

    async def close(self) -> None:
        await self.ws.close()
        await self.http.close()

    async def handshake(
        self,
        group: TestGroup,
        identity: DeviceIdentity | None = None,
        *,
        session_type: type[ClientSession] = ClientSession,
        timeout: float = 10.0,
        hold: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    ) -> Welcome | ConnectionClosed:
        """Run the Noise handshake and HELLO; the WELCOME, or how the session ended.

        ``hold`` (e.g. ``InProcessRelay.paused``) is entered while the messages that finish
        the handshake (and what the session sends with them: HELLO, ...) are sent, so that
        the relay reads them all in one go."""
        loop = asyncio.get_running_loop()
        identity = identity or DeviceIdentity.generate()
        group.enroll(identity)
        session = session_type(
            identity,
            group.group_id,
            entries=group.entries,
            now=loop.time(),
            variant=self.variant,
            client="zerok-tests",
            heartbeat_interval=None,
        )
        self.session = session
        await self._send_session_output()
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.ws.receive()
                if msg.type != aiohttp.WSMsgType.BINARY:
                    return ConnectionClosed(None, f"websocket {msg.type.name}", True)
                events = session.receive(msg.data, loop.time())
                if hold is not None and session._transport is not None:
                    with hold():
                        await self._send_session_output()
                    hold = None
                await self._send_session_output()
                for event in events:
                    if isinstance(event, Welcomed):
                        self.welcome = event.welcome
                        return event.welcome
                    if isinstance(event, ConnectionClosed):
                        return event

    async def open(self, group: TestGroup, identity: DeviceIdentity | None = None) -> Welcome:
        result = await self.handshake(group, identity)
        assert isinstance(result, Welcome), result
        return result

    async def _send_session_output(self) -> None:
        assert self.session is not None
        for data in self.session.data_to_send():
            await self.ws.send_bytes(data)

    @property
    def transport(self) -> NoiseTransport:
        assert self.session is not None and self.session._transport is not None
        return self.session._transport

    async def send_noise(self, data: bytes) -> None:
        """One WebSocket binary message, exactly as given."""
        await self.ws.send_bytes(data)

    async def send_frame(self, frame: bytes) -> None:
        """Encrypt any frame bytes with the session's transport (fragmenting) and send."""
        for data in self.transport.encrypt_frame(frame):
            await self.ws.send_bytes(data)

    async def send_fragment(self, plaintext: bytes) -> None:
        """Encrypt any plaintext (flag byte and chunk) as the next Noise transport message."""
        transport = self.transport
        cipher = transport._send
        await self.ws.send_bytes(cipher.encrypt_with_ad(b"", plaintext))
        transport._after_use(cipher)

    async def send_chunked(self, frame: bytes, chunk: int) -> None:
        """Like send_frame, but cut into fragments of ``chunk`` bytes (any size is valid)."""
        pieces = [frame[i : i + chunk] for i in range(0, len(frame), chunk)] or [b""]
        for i, piece in enumerate(pieces):
            await self.send_fragment((b"\x00" if i == len(pieces) - 1 else b"\x01") + piece)

    async def send(self, message: Message, request_id: int = 0) -> None:
        await self.send_frame(encode(message, request_id=request_id))

    def new_request_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def request(self, message: Message, timeout: float = 10.0) -> Message:
        """Send with a fresh request id and return the answer with that id."""
        request_id = self.new_request_id()
        await self.send(message, request_id)
        return await self.answer(request_id, timeout)

    async def answer(self, request_id: int, timeout: float = 10.0) -> Message:
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.receive_frame()
                if frame is None:
                    raise ConnectionError(f"closed while waiting for request {request_id}")
                if frame.request_id == request_id:
                    return frame.message
                self.unsolicited.append(frame)

    async def receive_frame(self, timeout: float = 10.0) -> Frame | None:
        """The next decrypted frame, or None once the WebSocket is closed."""
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.ws.receive()
                if msg.type == aiohttp.WSMsgType.BINARY:
                    plain = self.transport.decrypt_message(msg.data)
                    if plain is not None:
                        self.frame_sizes.append(len(plain))
                        return decode_frame(plain)
                    continue
                if msg.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.ERROR,
                ):
                    return None
                raise AssertionError(f"unexpected WebSocket message {msg.type.name}")

    async def frames_until_closed(self, timeout: float = 10.0) -> list[Frame]:
        """Every frame until the relay closes the connection (TimeoutError if it does not)."""
        frames: list[Frame] = []
        async with asyncio.timeout(timeout):
            while (frame := await self.receive_frame(timeout)) is not None:
                frames.append(frame)
        return frames

    async def raw_until_closed(self, timeout: float = 10.0) -> list[aiohttp.WSMessage]:
        """Every WebSocket message until the connection closes, undecrypted."""
        messages: list[aiohttp.WSMessage] = []
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.ws.receive()
                if msg.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSING,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.ERROR,
                ):
                    return messages
                messages.append(msg)


@contextlib.asynccontextmanager
async def raw_client(url: str, variant: Variant = CLASSIC) -> AsyncIterator[RawClient]:
    client = await RawClient.connect(url, variant)
    try:
        yield client
    finally:
        await client.close()


# -- HTTP -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpReply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    *,
    content_type: str = "application/json",
    timeout: float = 10.0,
) -> HttpReply:
    """One plain HTTP request (no proxies); error statuses are returned, not raised."""
    headers = {"Content-Type": content_type} if body is not None else {}
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with _opener.open(request, timeout=timeout) as response:
            return HttpReply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as err:
        with err:
            return HttpReply(err.code, dict(err.headers), err.read())


MetricKey = tuple[str, tuple[tuple[str, str], ...]]


def scrape(relay: RunningRelay) -> dict[MetricKey, float]:
    """GET /metrics, parsed: (sample name, sorted labels) → value."""
    reply = http("GET", relay.http_url + "/metrics")
    assert reply.status == 200, reply
    samples: dict[MetricKey, float] = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(samples: Mapping[MetricKey, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def revoke(
    conn: RelayConnection,
    group: TestGroup,
    *devices: DeviceIdentity,
    by: DeviceIdentity | None = None,
) -> LogAppended:
    """Revoke devices the way a client does: a Revoke entry (a new epoch) in LOG_APPEND."""
    reply = await conn.request(LogAppend(entries=[group.revoke(*devices, by=by)]))
    assert isinstance(reply, LogAppended), reply
    return reply
