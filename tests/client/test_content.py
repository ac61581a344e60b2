"""Large content through SyncClient (``zerok.client.content``): put_file on one device,
save_content / open_content on another, against the real relay in this process.

The end-to-end test moves 32 MiB (the issue asks for 100 MiB; 32 keeps the fast suite
fast, the path is the same). Resumption is checked by counting the bytes sent.
"""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path

import pytest

from tests.client.conftest import Fleet, connected, pair
from tests.relay.support import run
from zerok.client import SyncClient, blocking
from zerok.client.content import MANIFEST_MAGIC, ContentRef, Progress
from zerok.client.receiving import Blob
from zerok.client.transfer import PIECE
from zerok.errors import DeviceRevokedError, EpochKeyError, LocalProtocolError, WireError
from zerok.protocol import ClientTiming
from zerok.testing import InProcessRelay
from zerok.wire import BlobId
from zerok.wire.manifest import CHUNK_OVERHEAD

MIB = 1024 * 1024
FAST = ClientTiming(schedule=(0.0,), jitter=0.0)


def write_random(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


async def received_ref(client: SyncClient) -> ContentRef:
    """The file in the next blob ``client`` pulls."""
    page = await client.pull()
    refs = [client.content_ref(blob) for blob in page.blobs]
    found = [ref for ref in refs if ref is not None]
    assert len(found) == 1
    return found[0]


def assert_monotone(reports: list[Progress], total: int) -> None:
    assert reports, "no progress reported"
    dones = [p.done_bytes for p in reports]
    assert dones == sorted(dones)
    assert all(p.done_bytes <= p.total_bytes for p in reports)
    assert reports[-1].done_bytes == reports[-1].total_bytes == total
    assert reports[-1].chunks_done == reports[-1].chunks_total


def test_put_file_then_save_content_byte_identical(relay: InProcessRelay, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b = fleet.new("a"), fleet.new("b")
            await pair(a, b, [relay.url])
            await connected(a, b)
            data = write_random(tmp_path / "big.bin", 32 * MIB)
            up: list[Progress] = []
            ref = await a.put_file(tmp_path / "big.bin", media_type="video/mp4", progress=up.append)
            assert ref.name == "big.bin" and ref.size == len(data)
            assert ref.manifest.media_type == "video/mp4"
            assert ref.uploaded is not None
            assert ref.uploaded.bytes_sent == len(data) + CHUNK_OVERHEAD * len(ref.manifest.chunks)
            assert_monotone(up, len(data))

            got = await received_ref(b)
            assert got == ContentRef(ref.blob_id, ref.manifest)
            down: list[Progress] = []
            out = await b.save_content(got, tmp_path / "out.bin", progress=down.append)
            assert out.read_bytes() == data
            assert not (tmp_path / "out.bin.part").exists()
            assert_monotone(down, len(data))

    run(scenario())


def test_open_content_streams_verified_chunks(relay: InProcessRelay, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b = fleet.new("a"), fleet.new("b")
            await pair(a, b, [relay.url])
            await connected(a, b)
            data = os.urandom(3 * MIB)
            ref = await a.put_file(io.BytesIO(data), name="s.bin")
            got = await received_ref(b)
            parts = [part async for part in b.open_content(got)]
            assert len(parts) == len(ref.manifest.chunks) > 1
            assert b"".join(parts) == data

            empty = await a.put_file(io.BytesIO(b""), name="empty")
            got = await received_ref(b)
            assert got.manifest.chunks == () and empty.size == 0
            assert (await b.save_content(got, tmp_path / "e")).read_bytes() == b""

    run(scenario())


def test_edited_file_resends_only_changed_chunks(relay: InProcessRelay, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a = fleet.new("a")
            await a.create_group([relay.url])
            await connected(a)
            path = tmp_path / "doc.bin"
            data = bytearray(write_random(path, 8 * MIB))
            first = await a.put_file(path)
            data[4 * MIB : 4 * MIB + 10] = b"edited...!"
            path.write_bytes(data)
            second = await a.put_file(path)
            assert second.uploaded is not None
            common = set(first.manifest.chunks) & set(second.manifest.chunks)
            assert len(common) >= len(second.manifest.chunks) - 2
            assert second.uploaded.skipped_chunks == len(common)
            assert second.uploaded.bytes_sent < len(data) // 3

    run(scenario())


def test_connection_cut_mid_upload_resumes(relay: InProcessRelay, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b = fleet.new("a", timing=FAST), fleet.new("b")
            await pair(a, b, [relay.url])
            await connected(a, b)
            data = write_random(tmp_path / "f.bin", 6 * MIB)
            cut: list[asyncio.Task[None]] = []

            def progress(p: Progress) -> None:
                if p.chunks_done >= 2 and not cut and a._conn is not None:
                    cut.append(asyncio.get_running_loop().create_task(a._conn.close()))

            ref = await a.put_file(tmp_path / "f.bin", progress=progress)
            assert cut, "the connection was not cut"
            await cut[0]
            assert ref.uploaded is not None
            sealed_total = len(data) + CHUNK_OVERHEAD * len(ref.manifest.chunks)
            # Nothing the relay held was sent again (at most the piece in flight).
            assert ref.uploaded.bytes_sent <= sealed_total + PIECE
            assert ref.uploaded.skipped_chunks >= 2
            got = await received_ref(b)
            assert (await b.save_content(got, tmp_path / "g.bin")).read_bytes() == data

    run(scenario())


def test_app_restart_mid_upload_resumes(relay: InProcessRelay, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b = fleet.new("a"), fleet.new("b")
            await pair(a, b, [relay.url])
            await connected(a, b)
            data = write_random(tmp_path / "r.bin", 6 * MIB)
            two = asyncio.Event()

            def progress(p: Progress) -> None:
                if p.chunks_done >= 2:
                    two.set()

            put = asyncio.get_running_loop().create_task(
                a.put_file(tmp_path / "r.bin", progress=progress)
            )
            await two.wait()
            put.cancel()  # the app ends mid-upload
            with pytest.raises(asyncio.CancelledError):
                await put
            await a.close()
            a.close_state()

            again = fleet.new("a2", data_dir=tmp_path / "a")
            await connected(again)
            [ref] = await again.resume_uploads()
            assert ref.uploaded is not None
            assert ref.uploaded.skipped_chunks >= 2
            assert ref.uploaded.bytes_sent < len(data)
            assert await again.resume_uploads() == []  # finished: no longer recorded
            got = await received_ref(b)
            assert (await b.save_content(got, tmp_path / "s.bin")).read_bytes() == data

    run(scenario())


def test_save_content_interrupted_then_resumed(relay: InProcessRelay, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b = fleet.new("a"), fleet.new("b")
            await pair(a, b, [relay.url])
            await connected(a, b)
            data = os.urandom(5 * MIB)
            await a.put_file(io.BytesIO(data), name="d.bin")
            got = await received_ref(b)
            target = tmp_path / "d.bin"

            def stop_after_two(p: Progress) -> None:
                if p.chunks_done >= 2:
                    raise KeyboardInterrupt  # the app stops mid-download

            with pytest.raises(KeyboardInterrupt):
                await b.save_content(got, target, progress=stop_after_two)
            part = tmp_path / "d.bin.part"
            kept = sum(c.size for c in got.manifest.chunks[:2])
            assert part.stat().st_size == kept and not target.exists()
            # A damaged tail is cut off; the intact chunks are kept, not read again.
            with part.open("ab") as file:
                file.write(b"garbage")
            reports: list[Progress] = []
            await b.save_content(got, target, progress=reports.append)
            assert reports[0].done_bytes == kept and reports[0].chunks_done == 2
            assert target.read_bytes() == data and not part.exists()

    run(scenario())


def test_revoked_device_cannot_read_later_files(relay: InProcessRelay, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b = fleet.new("a"), fleet.new("b")
            await pair(a, b, [relay.url])
            await connected(a, b)
            await a.revoke_device(b.device_id, "lost")
            ref = await a.put_file(io.BytesIO(os.urandom(MIB)), name="secret")
            assert b._members is not None
            with pytest.raises(EpochKeyError):
                b._members.key_for(ref.manifest.epoch)
            with pytest.raises(DeviceRevokedError):
                await b.save_content(ref, tmp_path / "stolen")
            assert not (tmp_path / "stolen").exists()

    run(scenario())


def test_bad_input_is_refused(relay: InProcessRelay, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a = fleet.new("a")
            await a.create_group([relay.url])
            await connected(a)
            with pytest.raises(LocalProtocolError, match="path or a binary stream"):
                await a.put_file(42)  # type: ignore[arg-type]
            with pytest.raises(LocalProtocolError, match="needs a name"):
                await a.put_file(io.BytesIO(b"x"))
            with pytest.raises(WireError, match="path separators"):
                await a.put_file(io.BytesIO(b"x"), name="../etc/passwd")
            with pytest.raises(WireError, match="media type"):
                await a.put_file(io.BytesIO(b"x"), name="x", media_type="nonsense")
            with pytest.raises(FileNotFoundError):
                await a.put_file(tmp_path / "missing")
            assert await a.resume_uploads() == []  # nothing was recorded

            def blob(data: bytes) -> Blob:
                return Blob(BlobId.random(), 1, a.device_id, data, 0)

            assert a.content_ref(blob(b"plain app data")) is None
            with pytest.raises(WireError, match="malformed manifest"):
                a.content_ref(blob(MANIFEST_MAGIC + b"\xc1"))

    run(scenario())


def test_blocking_client_puts_and_saves(relay: InProcessRelay, tmp_path: Path) -> None:
    data = os.urandom(2 * MIB)
    (tmp_path / "in.bin").write_bytes(data)
    a = blocking.SyncClient(tmp_path / "a", device_name="a")
    b = blocking.SyncClient(tmp_path / "b", device_name="b")
    try:
        a.create_group([relay.url])
        b.join(a.create_invite().url)
        with a, b:
            a.wait_connected()
            b.wait_connected()
            ref = a.put_file(tmp_path / "in.bin")
            [blob] = b.pull().blobs
            got = b.content_ref(blob)
            assert got == ContentRef(ref.blob_id, ref.manifest)
            assert b"".join(b.open_content(got)) == data
            assert b.save_content(got, tmp_path / "out.bin").read_bytes() == data
    finally:
        a.shutdown()
        b.shutdown()
