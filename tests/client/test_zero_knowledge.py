"""Zero knowledge: what a relay stores and what crosses the network never shows the data,
the group's epoch keys, the devices' private keys or the recovery key. A tiny TCP proxy
between the clients and the relay records every byte."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from pathlib import Path

from tests.client.conftest import Fleet, connected, start_relay, url_for
from tests.relay.support import RelayLauncher, run
from zerok.client import RecoveryKey, SyncClient
from zerok.client.state import LocalState
from zerok.client.sync import KEY_FILE
from zerok.crypto import DeviceIdentity
from zerok.crypto.epoch import blob_key, content_key
from zerok.testing import RunningRelay

DB_FILES = ("relay.db", "relay.db-wal", "relay.db-shm")


class TapProxy:
    """Forwards TCP connections on 127.0.0.1 to a relay and keeps every byte, both ways."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.streams: list[bytearray] = []  # one per connection and direction
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.append(up_writer)
        outgoing, incoming = bytearray(), bytearray()
        self.streams += [outgoing, incoming]
        await asyncio.gather(
            self._pipe(reader, up_writer, outgoing),
            self._pipe(up_reader, writer, incoming),
        )
        self._tasks.discard(task)

    @staticmethod
    async def _pipe(
        source: asyncio.StreamReader, sink: asyncio.StreamWriter, record: bytearray
    ) -> None:
        try:
            while data := await source.read(65536):
                record += data
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.close()

    def captured(self) -> list[bytes]:
        return [bytes(s) for s in self.streams]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


def database_files(relay: RunningRelay) -> dict[str, bytes]:
    folder = relay.workdir / "data"
    return {name: (folder / name).read_bytes() for name in DB_FILES if (folder / name).exists()}


def secrets_of(client: SyncClient) -> dict[str, bytes]:
    """The group's epoch keys and the device's private keys, read from its data directory."""
    state = LocalState(client.data_dir)
    try:
        keys = state.keys_load()
    finally:
        state.close()
    identity = DeviceIdentity.load_or_create(client.data_dir / KEY_FILE)
    found = {
        "device private key": identity.private_bytes(),
        "device signing key": identity.sign_key.private_bytes_raw(),
    }
    for epoch, key in keys.items():
        found |= {
            f"epoch {epoch} key": key,
            f"epoch {epoch} blob key": blob_key(key),
            f"epoch {epoch} content key": content_key(key),
        }
    return found


def recovery_secrets(recovery: RecoveryKey) -> dict[str, bytes]:
    return {
        "recovery key": recovery.secret,
        "recovery signing key": recovery.sign_key.private_bytes_raw(),
    }


def assert_absent(needles: dict[str, bytes], haystacks: dict[str, bytes]) -> None:
    for what, needle in needles.items():
        assert len(needle) >= 16
        for where, data in haystacks.items():
            assert needle not in data, f"the {what} is readable in {where}"


def test_relay_and_network_see_neither_data_nor_keys(
    launcher: RelayLauncher, tmp_path: Path
) -> None:
    relay = start_relay(launcher)
    assert relay.address is not None
    relay_port = int(relay.address.rsplit(":", 1)[1])
    marker = b"ZK-MARKER-" + secrets.token_hex(16).encode()
    reply_marker = b"ZK-REPLY-" + secrets.token_hex(16).encode()

    async def scenario() -> None:
        proxy = TapProxy(relay_port)
        proxy_url = url_for(await proxy.start())
        try:
            async with Fleet(tmp_path) as fleet:
                a, b = fleet.new("a"), fleet.new("b")
                # Pairing goes through the proxy too: the short code's mailbox is on the relay.
                created = await a.create_group([proxy_url])
                invite = await a.create_invite()
                await b.join(invite.short_code, relay=proxy_url)
                await connected(a, b)
                pushed = await a.push(marker)
                assert [x.data for x in (await b.pull()).blobs] == [marker]  # it did cross
                await a.rotate_keys("a key that crossed the network wrapped")
                replied = await b.push(reply_marker)
                assert [x.data for x in (await a.pull()).blobs] == [reply_marker]
                keys_a, keys_b = secrets_of(a), secrets_of(b)
                assert keys_a["epoch 1 key"] == keys_b["epoch 1 key"]
                assert keys_a["epoch 0 key"] == keys_b["epoch 0 key"]  # B's came with the invite
                needles = {
                    "marker": marker,
                    "reply marker": reply_marker,
                    **keys_a,
                    **recovery_secrets(created.recovery),
                    "device B private key": keys_b.pop("device private key"),
                    "device B signing key": keys_b.pop("device signing key"),
                }

                # While the relay runs: its database files hold the blobs, but only sealed.
                files = database_files(relay)
                assert "relay.db" in files
                stored = b"".join(files.values())
                assert bytes(pushed.blob_id) in stored and bytes(replied.blob_id) in stored
                assert_absent(needles, files)
            # Every client connection is closed: the capture is complete.
            captured = proxy.captured()
            assert len(captured) >= 6  # invite POST, invite GET, two WebSockets (both ways)
            wire = b"\n".join(captured)
            assert b"POST /v1/invites" in wire and b"Upgrade: websocket" in wire
            assert len(wire) > 2 * len(marker)
            assert_absent(needles, {f"network stream {n}": s for n, s in enumerate(captured)})
            assert marker not in wire and reply_marker not in wire
        finally:
            await proxy.close()

        # After the relay stopped (its WAL checkpointed into relay.db): still nothing.
        await asyncio.to_thread(relay.stop)
        files = database_files(relay)
        stored = b"".join(files.values())
        assert bytes(pushed.blob_id) in stored
        assert_absent(needles, files)

    run(scenario())
