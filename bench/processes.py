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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no RSS for process {pid}")


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


PG_ADMIN_URL = os.environ.get("ZEROK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh database on the local PostgreSQL; yields its URL and drops it afterwards."""
    import psycopg  # noqa: PLC0415 - only the scale-out figures need it
    from psycopg import sql  # noqa: PLC0415

    name = f"zerok_bench_{os.urandom(6).hex()}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{PG_ADMIN_URL.rpartition('/')[0]}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextlib.contextmanager
def relay_process(*extra: str, database: str | None = None) -> Iterator[tuple[str, int]]:
    """A real ``zerok relay`` on a free loopback port; yields (ws URL, PID)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="zerok-bench-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "zerok",
            "relay",
            "--bind",
            f"127.0.0.1:{port}",
            "--database",
            database or os.path.join(tmp, "relay.db"),
            "--key-file",
            os.path.join(tmp, "relay.key"),
            "--messages-per-minute",
            "0",
            "--connections-per-ip",
            "100000",
            "--max-connections",
            "100000",
            "--idle-timeout",
            "0",
            "--log-level",
            "WARNING",
            *extra,
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        try:
            _wait_ready(proc, "listening on")
            yield f"ws://127.0.0.1:{port}/", proc.pid
        finally:
            _stop(proc)


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
