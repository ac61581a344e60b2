"""The relay's limits: over one, an ERROR with its code, and the connection keeps working
where it can; connection limits answer the WebSocket upgrade with 429 or 503; deadlines
close silent connections."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import aiohttp
import pytest

from tests.relay.support import (
    RawClient,
    RelayLauncher,
    clients,
    http,
    metric,
    pull_all,
    push,
    raw_client,
    run,
    scrape,
    wait_closed,
)
from zerok.client import SyncClient
from zerok.crypto import DeviceIdentity
from zerok.errors import RemoteError
from zerok.protocol import CLASSIC, ClientSession, ConnectionClosed, Event, SessionState
from zerok.protocol.ratelimit import RateLimiter
from zerok.relay.config import RelayConfig
from zerok.testing import InProcessRelay, TestGroup, in_process_relay
from zerok.wire import (
    BlobId,
    Error,
    ErrorCode,
    Presence,
    Push,
    PushAck,
    encode,
)

SMALL_FRAME = 8 * 1024


@pytest.fixture(scope="module")
def small(module_launcher: RelayLauncher) -> InProcessRelay:
    """A relay with tiny size limits (every frame stays within one Noise message)."""
    return module_launcher.start(
        "--max-blob-size",
        "1KiB",
        "--max-group-storage",
        "4KiB",
        "--max-frame-size",
        f"{SMALL_FRAME}B",
    )


@pytest.fixture(scope="module")
def timeouts(module_launcher: RelayLauncher) -> InProcessRelay:
    return module_launcher.start("--idle-timeout", "1", "--handshake-timeout", "1")


def _push_frame(size: int, request_id: int) -> bytes:
    return encode(Push(blob_id=BlobId.random(), ciphertext=os.urandom(size)), request_id=request_id)


async def _works(raw: RawClient) -> None:
    """The connection still answers: a PUSH within the limits is acknowledged."""
    answer = await raw.request(Push(blob_id=BlobId.random(), ciphertext=b"fits"))
    assert isinstance(answer, PushAck), answer


def test_welcome_announces_the_limits(small: InProcessRelay) -> None:
    async def scenario() -> None:
        async with raw_client(small.url) as raw:
            welcome = await raw.open(TestGroup())
            limits = welcome.limits
            assert (limits.max_blob_size, limits.max_group_storage) == (1024, 4096)
            assert limits.max_frame_size == SMALL_FRAME
            assert limits.messages_per_minute == 0

    run(scenario())


def test_blob_over_max_blob_size_gets_2001_and_connection_continues(small: InProcessRelay) -> None:
    async def scenario() -> None:
        keys = TestGroup()
        async with raw_client(small.url) as raw:
            await raw.open(keys)
            blob_id = BlobId.random()
            answer = await raw.request(Push(blob_id=blob_id, ciphertext=os.urandom(1025)))
            assert isinstance(answer, Error), answer
            assert answer.code == ErrorCode.BLOB_TOO_LARGE
            answer = await raw.request(Push(blob_id=BlobId.random(), ciphertext=os.urandom(1024)))
            assert isinstance(answer, PushAck) and answer.cursor == 1
            await _works(raw)
            assert raw.unsolicited == []
        async with clients(small.url) as pool:
            reader = await pool.open(keys)
            assert [len(b.ciphertext) for b in await pull_all(reader)] == [1024, 4]

    run(scenario())


def test_group_quota_gets_2002_and_connection_continues(small: InProcessRelay) -> None:
    async def scenario() -> None:
        keys = TestGroup()
        async with clients(small.url) as pool:
            conn = await pool.open(keys)
            # Each blob costs its size + 128: three of 1000 bytes take 3384 of 4096.
            acks = [await push(conn, os.urandom(1000)) for _ in range(3)]
            with pytest.raises(RemoteError) as refused:
                await push(conn, os.urandom(1000))
            assert refused.value.code == ErrorCode.GROUP_QUOTA_EXCEEDED
            assert not conn.closed
            # A retried PUSH of a stored blob is no new data: still answered with its cursor.
            retry = await push(conn, b"ignored", blob_id=acks[0].blob_id)
            assert retry.cursor == 1
            # The quota is exact: 712 more bytes of cost (a blob of 584) fit, then not even
            # an empty blob.
            assert (await push(conn, os.urandom(584))).cursor == 4
            with pytest.raises(RemoteError) as refused:
                await push(conn, b"")
            assert refused.value.code == ErrorCode.GROUP_QUOTA_EXCEEDED
            assert [b.cursor for b in await pull_all(conn)] == [1, 2, 3, 4]
            # Another group has its own quota.
            other = await pool.open(TestGroup())
            assert (await push(other, os.urandom(1000))).cursor == 1

    run(scenario())


def test_frame_over_the_frame_limit_gets_2001_and_connection_continues(
    small: InProcessRelay,
) -> None:
    async def scenario() -> None:
        keys = TestGroup()
        async with raw_client(small.url) as raw:
            await raw.open(keys)
            # One Noise message holding a frame above the limit.
            await raw.send_frame(_push_frame(SMALL_FRAME + 100, request_id=7))
            answer = await raw.answer(7)
            assert isinstance(answer, Error) and answer.code == ErrorCode.BLOB_TOO_LARGE
            await _works(raw)
            # A frame in five fragments that passes the limit in its second: the relay must
            # skip the other three (still decrypting them) and stay in step.
            await raw.send_chunked(_push_frame(5 * 5000 - 100, request_id=8), chunk=5000)
            answer = await raw.answer(8)
            assert isinstance(answer, Error) and answer.code == ErrorCode.BLOB_TOO_LARGE
            await _works(raw)
            # A frame of exactly the limit is read (and then refused for its blob size).
            overhead = len(_push_frame(1000, request_id=9)) - 1000
            frame = _push_frame(SMALL_FRAME - overhead, request_id=9)
            assert len(frame) == SMALL_FRAME
            await raw.send_chunked(frame, chunk=3000)
            answer = await raw.answer(9)
            assert isinstance(answer, Error) and answer.code == ErrorCode.BLOB_TOO_LARGE
            await _works(raw)
            assert raw.unsolicited == []
        async with clients(small.url) as pool:
            reader = await pool.open(keys)
            assert [b.ciphertext for b in await pull_all(reader)] == [b"fits"] * 3

    run(scenario())


def test_rate_limit_gets_2000_with_retry_after(launcher: RelayLauncher) -> None:
    relay = launcher.start("--messages-per-minute", "5", "--messages-burst", "5")

    async def scenario() -> None:
        keys = TestGroup()
        device = DeviceIdentity.generate()
        async with raw_client(relay.url) as raw:
            welcome = await raw.open(keys, device)
            assert welcome.limits.messages_per_minute == 5
            for i in range(5):
                answer = await raw.request(Push(blob_id=BlobId.random(), ciphertext=b"%d" % i))
                assert isinstance(answer, PushAck), (i, answer)
            answer = await raw.request(Push(blob_id=BlobId.random(), ciphertext=b"6"))
            assert isinstance(answer, Error), answer
            assert answer.code == ErrorCode.RATE_LIMITED
            assert 0 < answer.retry_after <= 12  # one more message every 12 s
            # Heartbeats do not count against the limit: an idle device stays healthy.
            assert isinstance(await raw.request(Presence()), Presence)
            assert not raw.ws.closed

            async with clients(relay.url) as pool:
                # The limit is the device's, not the connection's...
                again = await pool.open(keys, device)
                with pytest.raises(RemoteError) as limited:
                    await push(again, b"7")
                assert limited.value.code == ErrorCode.RATE_LIMITED
                # ...and not the group's: another device pushes freely.
                other = await pool.open(keys)
                assert (await push(other, b"other")).cursor == 6
                assert not again.closed

    run(scenario())


async def _upgrade_status(url: str) -> int:
    """Status of a WebSocket upgrade that the relay refuses (101 if it accepts)."""
    async with aiohttp.ClientSession() as http:
        try:
            ws = await http.ws_connect(url, protocols=[CLASSIC.subprotocol])
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
        await ws.close()
        return 101


async def _wait_for_upgrade(url: str, timeout: float = 5.0) -> None:
    """Poll until the relay accepts an upgrade again (it frees slots when handlers end)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (status := await _upgrade_status(url)) != 101:
        assert loop.time() < deadline, f"still refused with {status}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("flag", "status"),
    [("--connections-per-ip", 429), ("--max-connections", 503)],
    ids=["per-ip-429", "max-connections-503"],
)
def test_connection_limits_refuse_the_upgrade(
    launcher: RelayLauncher, flag: str, status: int
) -> None:
    relay = launcher.start(flag, "2")

    async def scenario() -> None:
        keys = TestGroup()
        async with clients(relay.url) as pool:
            first = await pool.open(keys)
            await pool.open(keys)
            assert await _upgrade_status(relay.url) == status
            assert await _upgrade_status(relay.url) == status
            # Plain HTTP is no WebSocket connection: still served at the limit.
            health = await asyncio.to_thread(http, "GET", relay.http_url + "/health")
            assert health.status == 200 and health.json()["connections"] == 2
            # The two connections are served all the same.
            assert (await push(first, b"served")).cursor == 1
            await first.close()
            await _wait_for_upgrade(relay.url)

    run(scenario())


@pytest.mark.parametrize(
    ("flag", "status"),
    [("--connections-per-ip", 429), ("--max-connections", 503)],
    ids=["per-ip-429", "max-connections-503"],
)
def test_connection_limits_hold_for_simultaneous_upgrades(
    launcher: RelayLauncher, flag: str, status: int
) -> None:
    relay = launcher.start(flag, "2")

    async def scenario() -> None:
        async with aiohttp.ClientSession() as http:

            async def attempt() -> int | aiohttp.ClientWebSocketResponse:
                try:
                    return await http.ws_connect(relay.url, protocols=[CLASSIC.subprotocol])
                except aiohttp.WSServerHandshakeError as exc:
                    return exc.status

            results = await asyncio.gather(*(attempt() for _ in range(6)))
            accepted = [r for r in results if not isinstance(r, int)]
            refused = [r for r in results if isinstance(r, int)]
            for ws in accepted:
                await ws.close()
            assert refused == [status] * (len(results) - 2)
            assert len(accepted) == 2

    run(scenario())


def test_idle_connection_is_closed_and_a_heartbeat_keeps_one_open(
    timeouts: InProcessRelay,
) -> None:
    async def scenario() -> None:
        keys = TestGroup()
        async with clients(timeouts.url) as pool:
            loop = asyncio.get_running_loop()
            keeper = await pool.open(keys, heartbeat=0.3)
            silent = await pool.open(keys, heartbeat=None)
            opened = loop.time()
            closed = await wait_closed(silent, timeout=5)
            elapsed = loop.time() - opened
            assert 0.8 <= elapsed <= 3.0, elapsed
            assert closed.code is None  # an idle close sends no ERROR
            # The keeper has been connected longer than the idle timeout, yet is served.
            assert not keeper.closed
            assert (await push(keeper, b"alive")).cursor == 1

    run(scenario())


async def _time_until_closed(raw: RawClient, loop: asyncio.AbstractEventLoop) -> float:
    started = loop.time()
    messages = await raw.raw_until_closed(timeout=5)
    assert messages == [], messages  # no ERROR: the deadline closes silently
    return loop.time() - started


def test_handshake_deadline_closes_a_silent_websocket(timeouts: InProcessRelay) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        async with raw_client(timeouts.url) as raw:
            elapsed = await _time_until_closed(raw, loop)
            assert 0.8 <= elapsed <= 3.0, elapsed

    run(scenario())


class _NoHello(ClientSession):
    """Completes the Noise handshake and then sends no HELLO."""

    def _on_handshake_complete(self) -> list[Event]:
        self.state = SessionState.AWAIT_WELCOME
        return []


def test_handshake_deadline_covers_hello(timeouts: InProcessRelay) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with raw_client(timeouts.url) as raw:
            result = await raw.handshake(TestGroup(), session_type=_NoHello)
            assert isinstance(result, ConnectionClosed), result
            assert result.code is None
            elapsed = loop.time() - started
            assert 0.8 <= elapsed <= 3.0, elapsed

    run(scenario())


def test_handshake_deadline_after_the_first_noise_message(timeouts: InProcessRelay) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with raw_client(timeouts.url) as raw:
            session = ClientSession(
                DeviceIdentity.generate(), TestGroup().group_id, now=loop.time(), variant=CLASSIC
            )
            [first] = session.data_to_send()
            await raw.send_noise(first)
            msg = await raw.ws.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.BINARY  # the relay's handshake message 2
            await _time_until_closed(raw, loop)
            elapsed = loop.time() - started
            assert 0.8 <= elapsed <= 3.0, elapsed

    run(scenario())


async def _hold_upgrade(
    http_session: aiohttp.ClientSession, url: str, forwarded_for: str
) -> aiohttp.ClientWebSocketResponse | int:
    """Open a WebSocket as if through a proxy for ``forwarded_for``; its status if refused."""
    try:
        return await http_session.ws_connect(
            url, protocols=[CLASSIC.subprotocol], headers={"X-Forwarded-For": forwarded_for}
        )
    except aiohttp.WSServerHandshakeError as exc:
        return exc.status


@pytest.mark.parametrize("trust_proxy", [True, False], ids=["trusted", "ignored"])
def test_per_ip_limit_behind_a_trusted_proxy(launcher: RelayLauncher, trust_proxy: bool) -> None:
    """With trust_proxy the client is the proxy's last X-Forwarded-For entry (a client
    cannot escape its limit by sending a header of its own); without, the header is ignored."""
    relay = launcher.start(
        "--connections-per-ip", "1", "--trust-proxy", "true" if trust_proxy else "false"
    )

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            first = await _hold_upgrade(session, relay.url, "203.0.113.7")
            assert not isinstance(first, int)
            other = await _hold_upgrade(session, relay.url, "203.0.113.8")
            spoofed = await _hold_upgrade(session, relay.url, "198.51.100.1, 203.0.113.7")
            if trust_proxy:
                assert not isinstance(other, int)  # another client behind the proxy
                assert spoofed == 429  # the proxy's entry is what counts
                await other.close()
            else:
                assert other == 429  # everyone is 127.0.0.1
                assert spoofed == 429
            await first.close()

    run(scenario())


# -- hostile load and real deployments (issue 10, items 5 and 10) ----------------------------


def test_default_limits_drain_a_backlog_of_1000_within_the_burst() -> None:
    """The limiter's arithmetic on the defaults: a device back from a week offline sends
    1,000 queued pushes plus its PULLs and ACKs without being paced; past the burst it
    still gets the sustained rate. The old default (100 a minute, bursts of 100) paced the
    same backlog over 9 minutes."""
    config = RelayConfig()
    limiter = RateLimiter(config.messages_per_minute, burst=config.messages_burst)
    backlog = 1000 + 50  # the pushes, and the PULL pages and ACKs around them
    assert limiter.seconds_to_drain(backlog) == 0.0
    assert all(limiter.allow("device", 0.0) for _ in range(backlog))
    old = RateLimiter(100)
    assert old.seconds_to_drain(1000) == pytest.approx(540.0)
    # Per client IP, a stranger is bounded whatever number of device keys it makes up.
    assert config.connections_per_ip < config.max_connections
    hour = 3600.0
    assert config.push_bytes_per_hour / hour < 300 * 1024  # < 0.3 MiB/s sustained
    assert config.new_groups_per_hour > 0 and config.new_devices_per_hour > 0


def test_a_backlog_of_1000_pushes_drains_unpaced_on_defaults(tmp_path: Path) -> None:
    """A real SyncClient with 1,000 pushes queued at once, against a relay on the default
    limits: every one is acknowledged, none is refused by a rate limit. The time is printed
    (``-s``), not asserted: it depends on the machine's load."""
    count = 1000

    async def scenario(url: str) -> float:
        client = SyncClient(tmp_path / "device", device_name="laptop")
        try:
            await client.create_group([url])
            started = time.monotonic()
            await client.connect()
            # Queued at once, as an app writing while offline queues them: the client sends
            # them as fast as the relay acknowledges (a bounded number in flight).
            pushes = [asyncio.create_task(client.push(b"%d" % i)) for i in range(count)]
            results = await asyncio.wait_for(asyncio.gather(*pushes), 60)
            elapsed = time.monotonic() - started
            assert sorted(r.cursor for r in results) == list(range(1, count + 1))
            assert client.pending_count == 0
            return elapsed
        finally:
            await client.close()

    with in_process_relay(tmp_path / "relay") as relay:
        elapsed = run(scenario(relay.url), timeout=90)
        samples = scrape(relay)
    print(f"\nbacklog of {count} pushes drained in {elapsed:.2f} s on default limits")
    assert metric(samples, "sync_relay_errors_total", code="2000") is None
    assert metric(samples, "sync_relay_blobs_received_total") == count


def test_100_devices_behind_one_address_connect_on_defaults(tmp_path: Path) -> None:
    """An office behind one NAT: 100 devices (ten groups of ten) from 127.0.0.1, all
    admitted at once on the default limits (before: 10 connections, the rest refused)."""

    async def scenario(url: str) -> None:
        groups = [TestGroup() for _ in range(10)]
        async with clients(url) as pool:
            for keys in groups:
                conns = await asyncio.gather(*(pool.open(keys) for _ in range(10)))
                assert not any(c.closed for c in conns)
            assert len(pool.opened) == 100
            assert not any(c.closed for c in pool.opened)

    with in_process_relay(tmp_path / "relay") as relay:
        run(scenario(relay.url), timeout=60)
        samples = scrape(relay)
    assert metric(samples, "sync_relay_sessions_active") == 0  # all closed again
    assert metric(samples, "sync_relay_connections_total") == 100
    refused = metric(samples, "sync_relay_connections_refused_total", limit="connections_per_ip")
    assert refused is None


def test_per_ip_limits_over_the_wire(launcher: RelayLauncher) -> None:
    """New groups per address, pushes per address and a private relay, as a client and an
    operator see them: the ERROR, and the metric."""
    relay = launcher.start(
        "--new-groups-per-hour", "1", "--push-bytes-per-hour", "2KiB", "--max-blob-size", "1KiB"
    )
    private = launcher.start("--allow-new-groups", "false")

    async def scenario() -> None:
        keys = TestGroup()
        async with raw_client(relay.url) as raw, raw_client(relay.url) as other:
            await raw.open(keys)
            answer = await raw.request(Push(blob_id=BlobId.random(), ciphertext=bytes(1000)))
            assert isinstance(answer, PushAck)
            # Another device key changes nothing: the budget (2048 bytes, each blob counting
            # 128 more) is the address's.
            await other.open(keys)
            answer = await other.request(Push(blob_id=BlobId.random(), ciphertext=bytes(1000)))
            assert isinstance(answer, Error) and answer.code == ErrorCode.RATE_LIMITED
            assert answer.retry_after > 0
            assert not other.ws.closed
        async with raw_client(relay.url) as raw:
            ended = await raw.handshake(TestGroup())
            assert isinstance(ended, ConnectionClosed)
            assert ended.code == ErrorCode.RATE_LIMITED and "groups" in ended.reason
        async with raw_client(private.url) as raw:
            ended = await raw.handshake(TestGroup())
            assert isinstance(ended, ConnectionClosed) and ended.code == ErrorCode.UNKNOWN_GROUP

    run(scenario())
    samples = scrape(relay)
    for limit in ("new_groups_per_hour", "push_bytes_per_hour"):
        value = metric(samples, "sync_relay_limit_refusals_total", limit=limit)
        assert value == 1, limit
    assert metric(samples, "sync_relay_errors_total", code="2000") == 2
    failures = "sync_relay_handshake_failures_total"
    assert metric(samples, failures, reason="rate_limited") == 1
    private_samples = scrape(private)
    refusals = metric(private_samples, "sync_relay_limit_refusals_total", limit="allow_new_groups")
    assert refusals == 1
    assert metric(private_samples, failures, reason="unknown_group") == 1
