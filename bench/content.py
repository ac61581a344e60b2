"""Large content (issue 13): a file of random bytes through a relay process, chunked, sealed
and uploaded, then downloaded, opened and written back to disk, next to a plain copy of the
same file over a bare WebSocket and (when it is installed) magic-wormhole, same machine,
same run. Run as ``python -m bench.content serve PORT DIR`` it is the bare copy's server.

The bare copy streams: 512 KiB messages one after the other (only TCP and WebSocket flow
control hold the sender back) and one acknowledgement at the end, the server writing each
to disk; downloading, the server streams the file back. That is the plain copy the issue
names. Zerok waits for a CHUNK_STATUS after every 512 KiB CHUNK_PUT (the relay runs a
connection's requests concurrently, so puts cannot be pipelined) and keeps 4 CHUNK_GETs in
flight: the ratio shows what those round trips, the crypto and the relay's storage cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import filecmp
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection, serve

from bench.groups import connect, new_group, register
from bench.harness import QUICK, Figure
from bench.processes import free_port, relay_process, status_bytes
from zerok.client.transfer import PIECE, Chunk, download_chunk, upload_chunks
from zerok.crypto.content import ChunkRef, chunking_seed, open_chunk, seal_chunk
from zerok.crypto.epoch import content_key
from zerok.errors import SyncError
from zerok.protocol.chunking import chunks

MIB = 1024 * 1024
SIZE = 2 * MIB if QUICK else 1024 * MIB
GOAL_RSS = 150 * MIB  # issue 13: each side under this for a 2 GiB file
WORMHOLE_TIMEOUT = 900.0  # seconds for one wormhole transfer of the whole file
WORMHOLE_CODE = "7-zerok-bench"
WORMHOLE_ENV = "BENCH_WORMHOLE_BIN"  # a directory holding ``wormhole`` and ``twist``


def _mbps(seconds: float) -> float:
    return SIZE / MIB / seconds


def _reset_peak(pid: int) -> None:
    """Start a process's VmHWM again from its current RSS (Linux: clear_refs 5)."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def _random_file(path: Path) -> None:
    with path.open("wb") as out:
        for start in range(0, SIZE, 16 * MIB):
            out.write(os.urandom(min(16 * MIB, SIZE - start)))


# -- the bare WebSocket copy -------------------------------------------------------------------


async def _serve_copy(ws: ServerConnection, directory: Path) -> None:
    path = directory / "copy"
    request = ws.request.path if ws.request is not None else "/"
    if request == "/up":
        with path.open("wb") as out:
            async for message in ws:
                if isinstance(message, str):  # the end of the file
                    await ws.send("ok")
                    return
                out.write(message)
    elif request == "/down":
        with path.open("rb") as source:
            while data := source.read(PIECE):
                await ws.send(data)
        await ws.send("end")


async def _serve(port: int, directory: Path) -> None:
    async def handler(ws: ServerConnection) -> None:
        await _serve_copy(ws, directory)

    async with serve(handler, "127.0.0.1", port, compression=None, max_size=2 * PIECE):
        print("ready", flush=True)
        await asyncio.Future()


@contextlib.contextmanager
def _bare_server(directory: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    argv = [sys.executable, "-m", "bench.content", "serve", str(port), str(directory)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        if "ready" not in proc.stdout.readline():
            raise SyncError(f"the bare copy server exited with code {proc.wait()}")
        yield f"ws://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def bare_copy(url: str, source: Path, target: Path) -> tuple[float, float]:
    """Seconds to stream ``source`` up to the server, then back down into ``target``."""
    start = time.perf_counter()
    async with ws_connect(url + "/up", compression=None, max_size=2 * PIECE) as ws:
        with source.open("rb") as data:
            while piece := data.read(PIECE):
                await ws.send(piece)
        await ws.send("end")
        if await ws.recv() != "ok":
            raise SyncError("the bare copy server did not acknowledge the upload")
    up = time.perf_counter() - start
    start = time.perf_counter()
    async with ws_connect(url + "/down", compression=None, max_size=2 * PIECE) as ws:
        with target.open("wb") as out:
            async for message in ws:
                if isinstance(message, str):
                    break
                out.write(message)
    return up, time.perf_counter() - start


# -- zerok through a relay process -------------------------------------------------------------


async def zerok_copy(url: str, source: Path, target: Path) -> tuple[float, float]:
    """Seconds to chunk, seal and upload ``source`` from one device, then to download,
    open and write every chunk into ``target`` from another."""
    group, (reader,) = new_group(1)
    key = content_key(group.epoch_key)
    refs: list[ChunkRef] = []

    def sealed() -> Iterator[Chunk]:
        with source.open("rb") as data:
            for plain in chunks(data, seed=chunking_seed(key)):
                chunk, ref = seal_chunk(plain, content_key=key, group_id=group.group_id)
                refs.append(ref)
                yield ref.address, chunk

    writer = await register(url, group)
    try:
        start = time.perf_counter()
        report = await upload_chunks(writer, sealed())
        up = time.perf_counter() - start
    finally:
        await writer.close()
    if report.total_bytes < SIZE:
        raise SyncError(f"the upload moved {report.total_bytes} bytes of {SIZE}")
    conn = await connect(url, group, reader)
    try:
        start = time.perf_counter()
        with target.open("wb") as out:
            for ref in refs:
                chunk = await download_chunk(conn, ref)
                out.write(open_chunk(chunk, ref, group_id=group.group_id))
        down = time.perf_counter() - start
    finally:
        await conn.close()
    return up, down


def seal_seconds(source: Path) -> float:
    """Seconds to chunk and seal ``source`` with no network: the upload's own CPU share."""
    group, _ = new_group(0)
    key = content_key(group.epoch_key)
    start = time.perf_counter()
    with source.open("rb") as data:
        for plain in chunks(data, seed=chunking_seed(key)):
            seal_chunk(plain, content_key=key, group_id=group.group_id)
    return time.perf_counter() - start


# -- magic-wormhole ----------------------------------------------------------------------------


def _wormhole_bin() -> Path | None:
    configured = os.environ.get(WORMHOLE_ENV)
    if configured:
        return Path(configured)
    found = shutil.which("wormhole")
    return Path(found).parent if found else None


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SyncError(f"a wormhole server exited with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)  # polling a server we started: no readiness line to wait for
    raise SyncError(f"a wormhole server did not listen on {port} in {timeout:.0f} s")


def _spawn(argv: list[str], work: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wormhole_seconds(bindir: Path, source: Path, target: Path, work: Path) -> float:
    """Seconds for ``wormhole send`` to ``wormhole receive`` of ``source``, both through a
    local mailbox and transit relay (``--no-listen``: no direct connection)."""
    mailbox, transit = free_port(), free_port()
    twist = str(bindir / "twist")
    servers = [
        _spawn([twist, "wormhole-mailbox", f"--port=tcp:{mailbox}:interface=127.0.0.1"], work),
        _spawn([twist, "transitrelay", f"--port=tcp:{transit}:interface=127.0.0.1"], work),
    ]
    peers: list[subprocess.Popen[bytes]] = []
    try:
        _wait_port(mailbox, servers[0])
        _wait_port(transit, servers[1])
        common = [
            str(bindir / "wormhole"),
            "--relay-url",
            f"ws://127.0.0.1:{mailbox}/v1",
            "--transit-helper",
            f"tcp:127.0.0.1:{transit}",
        ]
        start = time.perf_counter()
        send = [*common, "send", "--no-listen", "--hide-progress", "--code", WORMHOLE_CODE]
        peers.append(_spawn([*send, str(source)], work))
        receive = [*common, "receive", "--no-listen", "--hide-progress", "--accept-file"]
        peers.append(_spawn([*receive, "-o", str(target), WORMHOLE_CODE], work))
        for name, peer in zip(("send", "receive"), peers, strict=True):
            if peer.wait(timeout=WORMHOLE_TIMEOUT) != 0:
                raise SyncError(f"wormhole {name} exited with code {peer.returncode}")
        return time.perf_counter() - start
    finally:
        _stop_all(peers + servers)


# -- the section -------------------------------------------------------------------------------


def _wormhole(source: Path, work: Path, zerok_seconds: float) -> tuple[list[Figure], str]:
    if QUICK:
        return [], "magic-wormhole: not run in quick mode"
    bindir = _wormhole_bin()
    if bindir is None or not (bindir / "twist").exists():
        return [], (
            "magic-wormhole: not installed; pip install magic-wormhole "
            "magic-wormhole-mailbox-server magic-wormhole-transit-relay into a venv and set "
            f"{WORMHOLE_ENV} to its bin directory"
        )
    target = work / "wormhole-out"
    try:
        seconds = wormhole_seconds(bindir, source, target, work)
    except (SyncError, OSError, subprocess.TimeoutExpired) as exc:
        return [], f"magic-wormhole: did not run offline here: {exc}"
    if not filecmp.cmp(source, target, shallow=False):
        return [], "magic-wormhole: the received file differs from the one sent"
    figure = Figure(
        "zerok upload + download, end to end",
        "MB/s",
        _mbps(zerok_seconds),
        "wormhole send -> receive (local relays)",
        _mbps(seconds),
    )
    note = (
        "magic-wormhole: its own mailbox and transit relay on 127.0.0.1, --no-listen on both "
        "sides so the bytes go through the transit relay; the time includes the code exchange; "
        "zerok's is the upload then the download (wormhole streams both at once)"
    )
    return [figure], note


def all_figures() -> tuple[list[Figure], list[str]]:
    with tempfile.TemporaryDirectory(prefix="zerok-bench-content-") as tmp:
        work = Path(tmp)
        source = work / "source"
        _random_file(source)
        served = work / "served"
        served.mkdir()
        with _bare_server(served) as (bare_url, bare_pid):
            bare_up, bare_down = asyncio.run(bare_copy(bare_url, source, work / "bare-out"))
            bare_peak = status_bytes(bare_pid, "VmHWM")
        if not filecmp.cmp(source, work / "bare-out", shallow=False):
            raise SyncError("the bare copy came back different")
        (work / "bare-out").unlink()
        (served / "copy").unlink()
        with relay_process("--max-group-storage", str(4 * SIZE)) as (url, pid):
            _reset_peak(pid)
            _reset_peak(os.getpid())
            up, down = asyncio.run(zerok_copy(url, source, work / "zerok-out"))
            relay_peak = status_bytes(pid, "VmHWM")
            client_peak = status_bytes(os.getpid(), "VmHWM")
        if not filecmp.cmp(source, work / "zerok-out", shallow=False):
            raise SyncError("the file came back different through the relay")
        (work / "zerok-out").unlink()
        sealing = seal_seconds(source)
        wormhole, wormhole_note = _wormhole(source, work, up + down)
    size = f"{SIZE // MIB} MiB"
    goal, limit = "issue 13 goal (2 GiB)", GOAL_RSS / MIB
    figures = [
        Figure(f"upload {size}: chunk, seal, CHUNK_PUT", "MB/s", _mbps(up),
               "bare WebSocket stream up", _mbps(bare_up)),
        Figure(f"download {size}: CHUNK_GET, open, write", "MB/s", _mbps(down),
               "bare WebSocket stream down", _mbps(bare_down)),
        Figure(f"relay peak RSS, {size} up and down", "MiB", relay_peak / MIB, goal, limit),
        Figure(f"client peak RSS, {size} up and down", "MiB", client_peak / MIB, goal, limit),
        *wormhole,
    ]  # fmt: skip
    notes = [
        "bare copy: 512 KiB messages streamed, one ack at the end, written to disk by a "
        "websockets server process; zerok: one CHUNK_STATUS per 512 KiB put, 4 gets in flight",
        f"chunk + seal alone (no network, same thread as the upload): {_mbps(sealing):.0f} MB/s",
        f"peak RSS is VmHWM, reset before the upload (the client is this process, whatever "
        f"earlier sections left included); bare copy server: {bare_peak / MIB:.0f} MiB",
        wormhole_note,
    ]
    return figures, notes


if __name__ == "__main__":
    if sys.argv[1:2] != ["serve"] or len(sys.argv) != 4:
        raise SystemExit("usage: python -m bench.content serve PORT DIR")
    asyncio.run(_serve(int(sys.argv[2]), Path(sys.argv[3])))
