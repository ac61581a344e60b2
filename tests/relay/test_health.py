"""/health and /metrics: cheap whatever the request rate, and honest when the database is
not answering."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.relay.support import RelayLauncher, http
from zerok.relay.server import Relay


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[RelayLauncher]:
    """One backend is enough here: the database's answers are replaced by the tests."""
    relays = RelayLauncher(tmp_path, "sqlite")
    try:
        yield relays
    finally:
        relays.close()


def test_counts_are_taken_at_most_once_per_interval(launcher: RelayLauncher) -> None:
    relay = launcher.start()
    calls: list[float] = []

    async def count_calls(server: Relay) -> None:
        stats = server.storage.stats

        async def counted() -> tuple[int, int]:
            calls.append(time.monotonic())
            return await stats()

        server.storage.stats = counted  # type: ignore[method-assign]

    relay.call(count_calls)
    for _ in range(20):
        assert http("GET", relay.http_url + "/health").status == 200
        assert http("GET", relay.http_url + "/metrics").status == 200
    assert len(calls) <= 1  # 40 requests within STATS_TTL: one count (or one cached)


def test_health_answers_503_within_a_second_when_the_database_hangs(
    launcher: RelayLauncher,
) -> None:
    relay = launcher.start()

    async def hang(server: Relay) -> None:
        async def never() -> tuple[int, int]:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        server.storage.stats = never  # type: ignore[method-assign]
        server.http.counts.forget()

    relay.call(hang)
    started = time.monotonic()
    reply = http("GET", relay.http_url + "/health", timeout=5)
    assert time.monotonic() - started < 2
    assert reply.status == 503
    assert reply.json()["status"] == "unavailable"
    assert "database" in reply.json()["reason"]
    # /metrics still answers with the last counts it had.
    assert http("GET", relay.http_url + "/metrics", timeout=5).status == 200


def test_health_probes_the_database_even_while_its_counts_are_cached(
    launcher: RelayLauncher,
) -> None:
    relay = launcher.start()
    assert http("GET", relay.http_url + "/health").status == 200  # counts now cached

    async def hang(server: Relay) -> None:
        async def never() -> None:
            await asyncio.Event().wait()

        server.storage.ping = never  # type: ignore[method-assign]
        server.http.alive.forget()

    relay.call(hang)
    started = time.monotonic()
    reply = http("GET", relay.http_url + "/health", timeout=5)
    assert time.monotonic() - started < 2
    assert reply.status == 503 and reply.json()["status"] == "unavailable"
