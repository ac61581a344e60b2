"""Clients that do not read cannot make the relay hold their answers without bound.

The attack: sockets that pipeline PULLs for full pages and never read the answers. Each
answer is held against the client's ``send_buffer`` before it is queued, and against
``send_buffer_total`` for all clients; a client over its own budget is cut, and when all
of them together are over the total, the largest holder goes first.
"""

from __future__ import annotations

import asyncio
import os

from tests.relay.support import (
    RawClient,
    RelayLauncher,
    clients,
    metric,
    pull_all,
    push,
    run,
    scrape,
)
from zerok.relay.server import Relay
from zerok.testing import InProcessRelay, TestGroup
from zerok.wire import Pull

BLOB = 60 * 1024
SEND_BUFFER = 512 * 1024
SEND_BUFFER_TOTAL = 2 * 1024 * 1024
ATTACKERS = 10
PULLS = 200  # each asks for a full page: far more than the kernel's buffers take


async def _peak(server: Relay) -> int:
    return server.budget.peak


def _start(launcher: RelayLauncher) -> InProcessRelay:
    return launcher.start(
        "--max-blob-size",
        "64KiB",
        "--send-buffer",
        str(SEND_BUFFER),
        "--send-buffer-total",
        str(SEND_BUFFER_TOTAL),
    )


def test_clients_that_never_read_are_cut_and_the_relay_holds_within_its_budget(
    launcher: RelayLauncher,
) -> None:
    relay = _start(launcher)
    keys = TestGroup()

    async def attack() -> None:
        async with clients(relay.url) as pool:
            seeder = await pool.open(keys)
            for _ in range(16):
                await push(seeder, os.urandom(BLOB))
        attackers = [await RawClient.connect(relay.url) for _ in range(ATTACKERS)]
        try:
            for attacker in attackers:
                await attacker.open(keys)
            for attacker in attackers:
                for i in range(PULLS):  # none of the answers is ever read
                    await attacker.send(Pull(after=0, limit=16), 100 + i)

            async def all_cut() -> None:
                while True:
                    cut = sum(
                        metric(scrape(relay), "sync_relay_clients_cut_total", reason=r) or 0
                        for r in ("not_reading", "send_buffer_total")
                    )
                    if cut >= ATTACKERS:
                        return
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(all_cut(), 20)
        finally:
            for attacker in attackers:
                await attacker.close()
        # The relay never held more than its budget, and holds nothing now.
        peak = await relay.acall(_peak)
        assert peak <= SEND_BUFFER_TOTAL + 64 * 1024, peak
        assert metric(scrape(relay), "sync_relay_send_buffer_bytes") == 0
        # And a client that reads is served as before.
        async with clients(relay.url) as pool:
            reader = await pool.open(keys)
            assert len(await pull_all(reader)) == 16

    run(attack(), timeout=60)
