"""``zerok.testing.relay``: the helper app developers use for their own integration tests."""

from __future__ import annotations

import asyncio
from pathlib import Path

from zerok import SyncClient
from zerok.testing import relay


def test_relay_helper_runs_a_relay_two_clients_can_sync_through(tmp_path: Path) -> None:
    with relay(tmp_path / "relay") as r:
        assert r.running and r.url.startswith("ws://127.0.0.1:")

        async def scenario() -> bytes:
            a = SyncClient(tmp_path / "a")
            await a.create_group([r.url])
            b = SyncClient(tmp_path / "b")
            await b.join((await a.create_invite()).url)
            async with a, b:
                await a.push(b"through the test relay")
                await b.wait_connected(10)
                page = await b.pull()
            a.close_state()
            b.close_state()
            return page.blobs[0].data

        assert asyncio.run(asyncio.wait_for(scenario(), 60)) == b"through the test relay"
        pid = r.pid
    assert not r.running, f"relay {pid} still running after the block"
