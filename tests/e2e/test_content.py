"""Issue 13 end to end: large files between devices through a ``zerok relay`` process.

A 100 MiB file goes from one device to another byte for byte; uploads and downloads cut
by a lost connection, or by the relay SIGKILLed and restarted on its database, resume
without sending finished chunks again; a file whose manifest blob is deleted loses its
chunks to the relay's cleanup while another file keeps its own.

Bytes are counted on the wire by the relay itself (``sync_relay_bytes_transferred``: the
WebSocket payload it received or sent, per process; a restarted relay counts from zero,
so what it counts crossed the wire after the restart), by the TCP hop that cuts
connections (``CuttingProxy``), and by the client (``ContentRef.uploaded``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import pytest

from tests.client.conftest import RELAY_ARGS, Fleet, connected, pair, url_for
from tests.e2e.conftest import FAST, WAIT, database_of, transaction
from tests.relay.support import RelayLauncher, metric, run, scrape
from zerok.client import SyncClient
from zerok.client.content import ContentRef, Progress
from zerok.client.transfer import GET_WINDOW, PIECE
from zerok.errors import RemoteError
from zerok.testing import RelayProcess
from zerok.wire import ChunkHave, ChunkStatus, ErrorCode
from zerok.wire.manifest import CHUNK_OVERHEAD, ChunkRef

MIB = 1024 * 1024
DAY_MS = 24 * 3600 * 1000
# Room for a file of 100 MiB (the default quota is 100 MiB per group, chunks included);
# cleanup often enough for a test to wait on it, without VACUUM after each pass.
CONTENT_RELAY_ARGS = (
    *RELAY_ARGS,
    "--max-group-storage",
    "1GiB",
    "--cleanup-interval",
    "100ms",
    "--vacuum-on-cleanup",
    "false",
)
# What crosses the wire besides chunk bytes: frame and Noise overhead of each piece, the
# manifest blob, a reconnection's handshake, NOTIFYs and ACKs. A file's chunk bytes are
# megabytes, so one more of its chunks, even the smallest (256 KiB), shows.
SLACK = 128 * 1024
SLACK_PER_CUT = 32 * 1024
# Where a 16 MiB transfer is cut (bytes into it on the wire): mid-chunk, mid-frame.
CUTS = (2 * MIB + 12_345, 7 * MIB + 777, 11 * MIB + 333_333)


def start_content_relay(
    launcher: RelayLauncher, *, port: int | None = None, database: Path | None = None
) -> RelayProcess:
    bind = () if port is None else ("--bind", f"127.0.0.1:{port}")
    return launcher.start(*CONTENT_RELAY_ARGS, *bind, database=database, process=True)


@pytest.fixture(scope="module")
def content_relay(module_launcher: RelayLauncher) -> RelayProcess:
    """``zerok relay`` as a child process, shared by the module's tests (a group each)."""
    return start_content_relay(module_launcher)


def port_of(relay: RelayProcess) -> int:
    assert relay.address is not None
    return int(relay.address.rsplit(":", 1)[1])


async def wire_bytes(relay: RelayProcess, direction: Literal["in", "out"]) -> int:
    """WebSocket payload bytes the relay process has received ("in") or sent ("out")."""
    samples = await asyncio.to_thread(scrape, relay)
    return int(metric(samples, "sync_relay_bytes_transferred_total", direction=direction) or 0)


def write_random(path: Path, size: int) -> str:
    """A file of ``size`` random bytes (no chunk of it equals another); its SHA-256."""
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def sha256_of(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def sealed(chunks: Iterable[ChunkRef]) -> int:
    """Bytes of these chunks as they travel (sealed)."""
    return sum(chunk.size + CHUNK_OVERHEAD for chunk in chunks)


async def received_ref(client: SyncClient) -> ContentRef:
    """The one file among the blobs ``client`` pulls next."""
    page = await client.pull()
    found = [ref for ref in map(client.content_ref, page.blobs) if ref is not None]
    assert len(found) == 1, found
    return found[0]


async def two_devices(fleet: Fleet, url: str) -> tuple[SyncClient, SyncClient]:
    a, b = fleet.new("a", timing=FAST), fleet.new("b", timing=FAST)
    await pair(a, b, [url])
    await connected(a, b)
    return a, b


Direction = Literal["up", "down"]


class CuttingProxy:
    """A TCP hop between devices and the relay that cuts the connection through it (both
    ways at once, mid-frame) when the bytes it forwarded one way reach each offset given
    to ``cut``: a network that fails, not a client that hangs up. It counts the bytes
    that crossed it each way, as the device's side of the wire sees them."""

    def __init__(self, relay: RelayProcess) -> None:
        self.port = port_of(relay)
        self.forwarded: dict[Direction, int] = {"up": 0, "down": 0}
        self.cuts_made: dict[Direction, int] = {"up": 0, "down": 0}
        self._cuts: dict[Direction, list[int]] = {"up": [], "down": []}
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return url_for(self._server.sockets[0].getsockname()[1])

    def cut(self, direction: Direction, *offsets: int) -> None:
        """Cut when ``offsets`` more bytes (each counted from now) went ``direction``."""
        self._cuts[direction] = sorted(self.forwarded[direction] + o for o in offsets)

    async def __aenter__(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for link in list(self._links):
            _abort(link)
        await self._server.wait_closed()

    async def _link(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            relay_r, relay_w = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            client_w.transport.abort()
            return
        link = (client_w, relay_w)
        self._links.add(link)
        try:
            await asyncio.gather(
                self._pump(client_r, relay_w, "up", link),
                self._pump(relay_r, client_w, "down", link),
            )
        finally:
            self._links.discard(link)
            _abort(link)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: Direction,
        link: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(64 * 1024):
                cuts = self._cuts[direction]
                if cuts and self.forwarded[direction] + len(data) >= cuts[0]:
                    # Counted as forwarded, though the abort may drop them unsent: the cut
                    # lands at the offset or before, never after.
                    data = data[: cuts.pop(0) - self.forwarded[direction]]
                    writer.write(data)
                    self.forwarded[direction] += len(data)
                    self.cuts_made[direction] += 1
                    _abort(link)
                    return
                writer.write(data)
                self.forwarded[direction] += len(data)
                await writer.drain()
        _abort(link)  # one side ended: so does the other


def _abort(link: tuple[asyncio.StreamWriter, asyncio.StreamWriter]) -> None:
    for writer in link:
        writer.transport.abort()


class KillSwitch:
    """Progress of a transfer; ``reached`` is set once ``chunks`` of it are done."""

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        self.reports: list[Progress] = []
        self.reached = asyncio.Event()

    def __call__(self, progress: Progress) -> None:
        self.reports.append(progress)
        if progress.chunks_done >= self.chunks:
            self.reached.set()

    async def wait(self) -> None:
        async with asyncio.timeout(WAIT):
            await self.reached.wait()


async def restart(relay: RelayProcess, launcher: RelayLauncher, database: Path) -> RelayProcess:
    """The relay process, SIGKILLed already, started again on its port and database."""
    await asyncio.to_thread(relay.wait_exit, WAIT)
    return await asyncio.to_thread(
        start_content_relay, launcher, port=port_of(relay), database=database
    )


async def chunk_states(client: SyncClient, chunks: Sequence[ChunkRef]) -> dict[bytes, bool]:
    """Whether the relay holds each chunk whole (CHUNK_HAVE, as a client asks it)."""
    conn = await client._connection()
    answer = await conn.request(ChunkHave(addresses=[c.address for c in chunks]))
    assert isinstance(answer, ChunkStatus)
    return {info.address: info.complete for info in answer.chunks}


# -- a large file, whole ----------------------------------------------------------------------


def test_a_100_mib_file_arrives_byte_identical(content_relay: RelayProcess, tmp_path: Path) -> None:
    """The issue's figure: about 3 s here (100 MiB up, then down, loopback)."""

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b = await two_devices(fleet, content_relay.url)
            digest = write_random(tmp_path / "big.bin", 100 * MIB)
            received = await wire_bytes(content_relay, "in")
            ref = await a.put_file(tmp_path / "big.bin")
            total = sealed(ref.manifest.chunks)
            assert ref.uploaded is not None and ref.uploaded.bytes_sent == total
            assert await wire_bytes(content_relay, "in") - received <= total + SLACK

            got = await received_ref(b)
            assert got == ContentRef(ref.blob_id, ref.manifest)
            sent = await wire_bytes(content_relay, "out")
            out = await b.save_content(got, tmp_path / "out.bin")
            assert await wire_bytes(content_relay, "out") - sent <= total + SLACK
            assert out.stat().st_size == 100 * MIB and sha256_of(out) == digest

    run(scenario(), timeout=60)


# -- a lost connection ------------------------------------------------------------------------


def test_an_upload_cut_at_several_points_resumes(
    content_relay: RelayProcess, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with CuttingProxy(content_relay) as proxy, Fleet(tmp_path) as fleet:
            a, b = fleet.new("a", timing=FAST), fleet.new("b", timing=FAST)
            await pair(a, b, [proxy.url])
            await connected(a)  # alone on the proxy: the cuts are A's
            digest = write_random(tmp_path / "up.bin", 16 * MIB)
            proxy.cut("up", *CUTS)
            before = proxy.forwarded["up"]
            ref = await a.put_file(tmp_path / "up.bin")
            assert proxy.cuts_made["up"] == len(CUTS)
            # On the wire: every chunk once, plus at most the piece in flight at each cut.
            total = sealed(ref.manifest.chunks)
            extra = len(CUTS) * (PIECE + SLACK_PER_CUT) + SLACK
            assert proxy.forwarded["up"] - before <= total + extra
            # The attempt after the last cut found the chunks before it held whole.
            assert ref.uploaded is not None and ref.uploaded.skipped_chunks >= 1
            assert ref.uploaded.bytes_sent <= total + len(CUTS) * PIECE

            await connected(b)
            got = await received_ref(b)
            assert sha256_of(await b.save_content(got, tmp_path / "got.bin")) == digest

    run(scenario())


@pytest.mark.xfail(
    strict=True,
    reason="ContentOps._put adds up the UploadReport of the attempt that finished only: the "
    "chunk bytes sent by attempts a lost connection ended are in no count, so after a cut "
    "ContentRef.uploaded.bytes_sent is less than what put_file sent (less than the file)",
)
def test_an_upload_report_counts_bytes_sent_before_a_cut(
    content_relay: RelayProcess, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with CuttingProxy(content_relay) as proxy, Fleet(tmp_path) as fleet:
            a = fleet.new("a", timing=FAST)
            await a.create_group([proxy.url])
            await connected(a)
            write_random(tmp_path / "up.bin", 8 * MIB)
            proxy.cut("up", 5 * MIB)
            ref = await a.put_file(tmp_path / "up.bin")
            assert proxy.cuts_made["up"] == 1 and ref.uploaded is not None
            # A random file: nothing of it was on the relay, all of it went out once.
            sent, total = ref.uploaded.bytes_sent, sealed(ref.manifest.chunks)
            assert sent >= total

    run(scenario())


def test_a_download_cut_at_several_points_resumes(
    content_relay: RelayProcess, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with CuttingProxy(content_relay) as proxy, Fleet(tmp_path) as fleet:
            a, b = fleet.new("a", timing=FAST), fleet.new("b", timing=FAST)
            await pair(a, b, [proxy.url])
            await connected(a)
            digest = write_random(tmp_path / "down.bin", 16 * MIB)
            await a.put_file(tmp_path / "down.bin")
            await a.close()  # B alone on the proxy: the cuts are B's
            await connected(b)
            got = await received_ref(b)
            proxy.cut("down", *CUTS)
            before = proxy.forwarded["down"]
            out = await b.save_content(got, tmp_path / "got.bin")
            assert proxy.cuts_made["down"] == len(CUTS)
            assert sha256_of(out) == digest
            # Every chunk once, plus at most the reads in flight at each cut, asked again.
            total = sealed(got.manifest.chunks)
            extra = len(CUTS) * (GET_WINDOW * PIECE + SLACK_PER_CUT) + SLACK
            assert proxy.forwarded["down"] - before <= total + extra

    run(scenario())


def test_a_download_outlives_a_connection_the_client_ends(
    content_relay: RelayProcess, tmp_path: Path
) -> None:
    """The connection ended from this side, as the in-process upload test does
    (tests/client/test_content.py): the download waits for the next one."""

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b = await two_devices(fleet, content_relay.url)
            digest = write_random(tmp_path / "down.bin", 4 * MIB)
            await a.put_file(tmp_path / "down.bin")
            got = await received_ref(b)
            assert len(got.manifest.chunks) > 1
            closing: list[asyncio.Task[None]] = []

            def drop(progress: Progress) -> None:
                if progress.chunks_done == 1 and not closing and b._conn is not None:
                    closing.append(asyncio.get_running_loop().create_task(b._conn.close()))

            try:
                out = await b.save_content(got, tmp_path / "got.bin", progress=drop)
            finally:
                async with asyncio.timeout(WAIT):
                    await asyncio.gather(*closing)
            assert closing and sha256_of(out) == digest

    run(scenario())


# -- the relay SIGKILLed ----------------------------------------------------------------------


def test_relay_killed_mid_upload_then_restarted_the_upload_resumes(
    launcher: RelayLauncher, tmp_path: Path
) -> None:
    relay = start_content_relay(launcher)
    database = database_of(relay)

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b = await two_devices(fleet, relay.url)
            digest = write_random(tmp_path / "up.bin", 16 * MIB)
            switch = KillSwitch(chunks=4)
            put = asyncio.get_running_loop().create_task(
                a.put_file(tmp_path / "up.bin", progress=switch)
            )
            await switch.wait()
            relay.sigkill()
            # Nothing ran in this loop since: the relay held these chunks whole.
            held = switch.reports[-1].chunks_done
            again = await restart(relay, launcher, database)
            async with asyncio.timeout(WAIT):
                ref = await put
            chunks = ref.manifest.chunks
            assert len(chunks) > held + 2  # the kill came mid-upload
            assert ref.uploaded is not None
            assert ref.uploaded.skipped_chunks >= held
            assert ref.uploaded.bytes_sent <= sealed(chunks) + PIECE
            # The restarted relay received only what the killed one had not made durable.
            assert await wire_bytes(again, "in") <= sealed(chunks[held:]) + SLACK

            got = await received_ref(b)
            assert sha256_of(await b.save_content(got, tmp_path / "got.bin")) == digest

    run(scenario())


def test_relay_killed_mid_download_then_restarted_save_resumes_from_part(
    launcher: RelayLauncher, tmp_path: Path
) -> None:
    """The app gives the download up while the relay is down; saved again once it is
    back, the file continues from the chunks the ``.part`` holds."""
    relay = start_content_relay(launcher)
    database = database_of(relay)

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b = await two_devices(fleet, relay.url)
            digest = write_random(tmp_path / "down.bin", 16 * MIB)
            await a.put_file(tmp_path / "down.bin")
            got = await received_ref(b)
            target = tmp_path / "got.bin"
            switch = KillSwitch(chunks=4)
            save = asyncio.get_running_loop().create_task(
                b.save_content(got, target, progress=switch)
            )
            await switch.wait()
            relay.sigkill()
            written = switch.reports[-1]  # in the .part: reported after the write
            await asyncio.to_thread(relay.wait_exit, WAIT)
            save.cancel()
            with pytest.raises(asyncio.CancelledError):
                await save
            part = target.with_name("got.bin.part")
            assert part.stat().st_size >= written.done_bytes and not target.exists()

            again = await restart(relay, launcher, database)
            resumed = KillSwitch(chunks=len(got.manifest.chunks))
            out = await b.save_content(got, target, progress=resumed)
            first = resumed.reports[0]  # what the .part held, kept without a read
            assert first.chunks_done >= written.chunks_done
            assert first.done_bytes == sum(c.size for c in got.manifest.chunks[: first.chunks_done])
            assert sha256_of(out) == digest and not part.exists()
            rest = sealed(got.manifest.chunks[first.chunks_done :])
            assert await wire_bytes(again, "out") <= rest + SLACK

    run(scenario())


# -- garbage collection -----------------------------------------------------------------------


def test_cleanup_collects_the_chunks_of_a_deleted_file_only(
    content_relay: RelayProcess, tmp_path: Path
) -> None:
    """B never connects, so neither manifest blob is delivered (retired) by cleanup; A
    deletes one. The chunks are made a day idle in the relay's database (its clock cannot
    be moved from outside); the next cleanup pass takes those of the deleted file only."""

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            a, b = fleet.new("a", timing=FAST), fleet.new("b", timing=FAST)
            await pair(a, b, [content_relay.url])
            await connected(a)
            group = a.group_id
            assert group is not None
            write_random(tmp_path / "gone.bin", 3 * MIB)
            digest = write_random(tmp_path / "kept.bin", 3 * MIB)
            gone = await a.put_file(tmp_path / "gone.bin")
            kept = await a.put_file(tmp_path / "kept.bin")
            every = [*gone.manifest.chunks, *kept.manifest.chunks]
            assert all((await chunk_states(a, every)).values())

            await a.force_delete(gone.blob_id)
            with transaction(database_of(content_relay)) as db:
                db.execute(
                    "UPDATE chunks SET touched_at = touched_at - ? WHERE group_id = ?",
                    (2 * DAY_MS, group),
                )
            files = database_of(content_relay).parent / "chunks" / group.hex()
            gone_files = {c.address.hex() for c in gone.manifest.chunks}

            def on_disk() -> set[str]:
                return {path.name for path in files.iterdir()}

            # The rows go first, the files right after: both are waited for.
            async with asyncio.timeout(WAIT):
                while any((await chunk_states(a, gone.manifest.chunks)).values()) or (
                    on_disk() & gone_files
                ):
                    await asyncio.sleep(0.02)  # polled: cleanup tells no client
            assert all((await chunk_states(a, kept.manifest.chunks)).values())
            assert on_disk() == {c.address.hex() for c in kept.manifest.chunks}

            await connected(b)
            refs = [b.content_ref(blob) for blob in (await b.pull()).blobs]
            assert [r.blob_id for r in refs if r is not None] == [kept.blob_id]
            assert sha256_of(await b.save_content(kept, tmp_path / "k.bin")) == digest
            with pytest.raises(RemoteError) as refused:
                await b.save_content(gone, tmp_path / "g.bin")
            assert refused.value.code == ErrorCode.CHUNK_UNKNOWN

    run(scenario())
