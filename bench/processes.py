"""Start and stop the server processes a benchmark drives (by PID, always cleaned up)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from zerok.relay.config import OPTIONS
from zerok.testing import PostgresDatabases, relay


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def status_bytes(pid: int, field: str) -> int:
    """A size field of /proc/<pid>/status (VmRSS, VmHWM, ...), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for process {pid}")


def rss_bytes(pid: int) -> int:
    return status_bytes(pid, "VmRSS")


def _wait_ready(proc: subprocess.Popen[str], marker: str, timeout: float = 20.0) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"server exited early with code {proc.wait()}")
        if marker in line:
            return
    raise RuntimeError("server did not become ready in time")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on the local PostgreSQL; yields its URL and drops it afterwards."""
    databases = PostgresDatabases()
    try:
        yield databases.create()
    finally:
        databases.drop_all()


def _known(args: list[str]) -> list[str]:
    """``args`` (``--flag value`` pairs) without the options this relay does not know: an
    older relay, benchmarked with PYTHONPATH at its tree, lacks some of the limits."""
    known = {"--" + option.name.replace("_", "-") for option in OPTIONS}
    pairs = zip(args[::2], args[1::2], strict=True)
    return [item for flag, value in pairs if flag in known for item in (flag, value)]


@contextlib.contextmanager
def relay_process(*extra: str, database: str | None = None) -> Iterator[tuple[str, int]]:
    """A real ``zerok relay`` on a free loopback port, limits off; yields (ws URL, PID)."""
    with tempfile.TemporaryDirectory(prefix="zerok-bench-") as tmp:
        args = [
            "--messages-per-minute",
            "0",
            "--connections-per-ip",
            "100000",
            "--new-groups-per-hour",
            "0",
            "--new-devices-per-hour",
            "0",
            "--push-bytes-per-hour",
            "0",
            "--max-connections",
            "100000",
            "--idle-timeout",
            "0",
            "--log-level",
            "ERROR",
            "--key-file",
            os.path.join(tmp, "relay.key"),
        ]
        if database is not None:
            args += ["--database", database]
        with relay(tmp, *_known(args), *extra) as process:
            yield process.url, process.pid


@contextlib.contextmanager
def bare_relay_process() -> Iterator[tuple[str, int]]:
    """The baseline bare websockets relay; yields (ws URL prefix, PID)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.bare_relay", str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        _wait_ready(proc, "ready")
        yield f"ws://127.0.0.1:{port}", proc.pid
    finally:
        _stop(proc)
