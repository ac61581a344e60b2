"""A relay at its file-descriptor limit logs a few lines, not a traceback per attempt.

Reproduced before the fix: a relay limited to 64 open files, sent 200 connections, wrote
22,000 lines of asyncio tracebacks in 5 s (its accept loop retries and fails over and over).
This needs a real process: the limit is the process's.
"""

from __future__ import annotations

import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

from zerok.testing import BANNER, clean_env

FILES = 64
CONNECTIONS = 200
WATCH = 1.5  # seconds of the flood the log is judged on (it starts at once)
RELAY = [
    sys.executable,
    "-m",
    "zerok",
    "relay",
    "--bind",
    "127.0.0.1:0",
]  # seconds of the flood the log is judged on


def _limit_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FILES, FILES))


def test_at_the_file_limit_the_relay_logs_a_few_lines(tmp_path: Path) -> None:
    stderr_path = tmp_path / "relay.stderr"
    with stderr_path.open("wb") as stderr:
        relay = subprocess.Popen(
            [*RELAY, "--database", str(tmp_path / "relay.db"), "--max-connections", "10"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=clean_env(),
            preexec_fn=_limit_files,  # noqa: PLW1509 - the child's own limit, set before exec
        )
    sockets: list[socket.socket] = []
    try:
        assert relay.stdout is not None
        address = None
        deadline = time.monotonic() + 20
        while address is None and time.monotonic() < deadline:
            line = relay.stdout.readline().decode()
            if match := BANNER.search(line):
                address = match.group(1)
        assert address is not None, stderr_path.read_text()
        host, _, port = address.rpartition(":")
        for _ in range(CONNECTIONS):
            try:
                sockets.append(socket.create_connection((host, int(port)), timeout=1))
            except OSError:
                break
        time.sleep(WATCH)  # the flood, if any, happens now; nothing else to wait for
        assert relay.poll() is None, "the relay died at its file limit"
    finally:
        for sock in sockets:
            sock.close()
        relay.terminate()
        try:
            relay.wait(10)
        except subprocess.TimeoutExpired:
            relay.kill()
            relay.wait(5)
        if relay.stdout is not None:
            relay.stdout.close()
    lines = stderr_path.read_text("utf-8", "replace").splitlines()
    assert len(sockets) > FILES  # the limit was really reached
    assert len(lines) < 200, f"{len(lines)} log lines; first: {lines[:5]}"
