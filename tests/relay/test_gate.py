"""Sockets that never send their request are counted, bounded and closed (slowloris)."""

from __future__ import annotations

import asyncio
import time

from tests.relay.support import RelayLauncher, clients, metric, push, run, scrape
from zerok.relay.gate import WAITING_PER_IP_FLOOR
from zerok.testing import InProcessRelay, TestGroup


def _host_port(relay: InProcessRelay) -> tuple[str, int]:
    assert relay.address is not None
    host, _, port = relay.address.rpartition(":")
    return host, int(port)


async def _closed_by_relay(reader: asyncio.StreamReader, within: float) -> float:
    """Seconds until the relay closes the socket (EOF or reset)."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(within):
            while await reader.read(1024):
                pass
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def test_a_socket_that_sends_nothing_or_half_a_request_is_closed(
    launcher: RelayLauncher,
) -> None:
    relay = launcher.start("--request-timeout", "0.5")

    async def main() -> None:
        silent = await asyncio.open_connection(*_host_port(relay))
        half = await asyncio.open_connection(*_host_port(relay))
        half[1].write(b"GET / HTTP/1.1\r\nHost: relay\r\n")  # the headers never end
        await half[1].drain()
        assert metric(scrape(relay), "sync_relay_sockets_waiting") == 2
        for reader, writer in (silent, half):
            assert await _closed_by_relay(reader, within=5) < 4
            writer.close()
        samples = scrape(relay)
        refused = "sync_relay_connections_refused_total"
        assert metric(samples, refused, limit="request_timeout") == 2
        assert metric(samples, "sync_relay_sockets_waiting") == 0
        # Requests that do arrive are not cut: a WebSocket session outlives the deadline.
        async with clients(relay.url) as pool:
            conn = await pool.open(TestGroup())
            await asyncio.sleep(0.7)  # longer than the request deadline, on purpose
            await push(conn, b"still here")

    run(main())


def test_sockets_waiting_for_their_request_are_limited_per_address(
    launcher: RelayLauncher,
) -> None:
    relay = launcher.start("--connections-per-ip", "3", "--request-timeout", "30")

    async def main() -> None:
        # connections_per_ip is 3, but waiting sockets get at least WAITING_PER_IP_FLOOR.
        waiting = [
            await asyncio.open_connection(*_host_port(relay)) for _ in range(WAITING_PER_IP_FLOOR)
        ]
        reader, writer = await asyncio.open_connection(*_host_port(relay))
        assert await _closed_by_relay(reader, within=5) < 4
        writer.close()
        for _, other in waiting:  # the address may connect again (scrape needs it too)
            other.close()
        async with asyncio.timeout(5):
            while True:  # the relay hears of the closes when its loop gets to them
                try:
                    samples = scrape(relay)
                    break
                except ConnectionError:
                    await asyncio.sleep(0.05)
        refused = "sync_relay_connections_refused_total"
        count = metric(samples, refused, limit="sockets_waiting_per_ip")
        assert count is not None and count >= 1  # the 4th, and scrapes refused meanwhile

    run(main())
