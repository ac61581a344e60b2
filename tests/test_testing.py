"""``zerok.testing``: the helpers app developers use for their own integration tests."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from zerok import SyncClient
from zerok.testing import InProcessRelay, ManualClock, in_process_relay, relay


def _sync_through(url: str, tmp_path: Path, data: bytes) -> bool:
    """Two devices pair through the relay at ``url``; what one pushes, the other pulls."""

    async def scenario() -> bytes:
        a = SyncClient(tmp_path / "a")
        await a.create_group([url])
        b = SyncClient(tmp_path / "b")
        await b.join((await a.create_invite()).url)
        async with a, b:
            await a.push(data)
            await b.wait_connected(10)
            page = await b.pull()
        a.close_state()
        b.close_state()
        return page.blobs[0].data

    return asyncio.run(asyncio.wait_for(scenario(), 60)) == data


def test_relay_helper_runs_a_relay_two_clients_can_sync_through(tmp_path: Path) -> None:
    with relay(tmp_path / "relay") as r:
        assert r.running and r.url.startswith("ws://127.0.0.1:")

        assert _sync_through(r.url, tmp_path, b"through the test relay")
        pid = r.pid
    assert not r.running, f"relay {pid} still running after the block"


def test_in_process_relay_helper_runs_a_relay_two_clients_can_sync_through(
    tmp_path: Path,
) -> None:
    with in_process_relay(tmp_path / "relay") as r:
        assert r.running and r.url.startswith("ws://127.0.0.1:")
        assert r.address is not None and f"listening on ws://{r.address}" in r.stdout()

        assert _sync_through(r.url, tmp_path, b"through the in-process relay")
        assert (tmp_path / "relay" / "data" / "relay.db").exists()
    assert not r.running, "relay still running after the block"
    assert r.wait_exit(0) == 0
    assert "relay stopped" in r.stderr()
    assert "Traceback" not in r.stderr()


def test_in_process_relay_reads_options_environment_and_relative_paths(tmp_path: Path) -> None:
    argv = ["--bind", "127.0.0.1:0", "--database", "db/relay.db", "--max-blob-size", "2KiB"]
    env = {"SYNC_RELAY_MESSAGES_PER_MINUTE": "7", "SYNC_RELAY_MAX_BLOB_SIZE": "1KiB"}
    r = InProcessRelay(argv, tmp_path, "options", env)
    try:
        r.wait_ready()
        assert r.config is not None
        assert r.config.database == str(tmp_path / "db" / "relay.db")
        assert r.key_path == tmp_path / "db" / "relay.key" and r.key_path.exists()
        assert (r.config.max_blob_size, r.config.messages_per_minute) == (2048, 7)
        assert r.call(lambda server: asyncio.sleep(0, server.bound_address)) == r.address
    finally:
        assert r.stop() == 0


def test_in_process_relay_that_cannot_start_exits_1_with_one_line(tmp_path: Path) -> None:
    r = InProcessRelay(["--max-blob-size", "lots"], tmp_path)
    with pytest.raises(RuntimeError, match="exited with 1"):
        r.wait_ready()
    assert not r.running
    [line] = r.stderr().splitlines()
    assert line.startswith("zerok relay: ") and "--max-blob-size" in line
    assert r.stop() == 1
    with pytest.raises(RuntimeError, match="not running"):
        r.call(lambda server: asyncio.sleep(0))


def test_in_process_relays_keep_their_own_logs(tmp_path: Path) -> None:
    with in_process_relay(tmp_path / "one") as one, in_process_relay(tmp_path / "two") as two:
        assert f"listening on ws://{one.address}" in one.stderr()
        assert f"listening on ws://{two.address}" in two.stderr()
        assert str(two.address) not in one.stderr()
        assert str(one.address) not in two.stderr()
        two.sigterm()  # as the signal: a graceful stop, exit code 0
        assert two.wait_exit(10) == 0 and not two.running
        assert one.running


def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(1_000)
    assert clock() == 1_000
    assert clock.advance(1.5) == 2_500 == clock()
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)
    assert abs(ManualClock()() - time.time() * 1000) < 60_000
