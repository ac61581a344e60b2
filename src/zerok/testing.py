"""A real relay for integration tests: yours and ours.

``relay()`` starts ``zerok relay`` as a child process on a free loopback port with a
database in a directory of yours, waits until it listens, and stops it (by PID) when the
block ends::

    from zerok.testing import relay

    with relay(tmp_path) as r:
        client = SyncClient(tmp_path / "device")
        await client.create_group([r.url])

``PostgresDatabases`` makes and drops throwaway databases on a PostgreSQL server, for
relays that share one.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

BANNER = re.compile(r"listening on ws://(\S+)")
READY_TIMEOUT = 20.0  # seconds for a relay to print its banner
STOP_TIMEOUT = 10.0  # seconds for a relay to exit after SIGTERM before it is killed
# Where the tests' PostgreSQL is (trust auth); ZEROK_TEST_PG overrides it.
PG_ADMIN_URL = os.environ.get("ZEROK_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without SYNC_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNC_")}
    env.update(extra or {})
    return env


class RelayProcess:
    """One ``zerok relay`` child process; stdout is read by a thread, stderr goes to a file."""

    def __init__(
        self, argv: Sequence[str], workdir: Path, name: str, env: Mapping[str, str]
    ) -> None:
        self.argv = list(argv)
        self.workdir = workdir
        self.name = name
        self.stderr_path = workdir / f"{name}.stderr.log"
        self.address: str | None = None
        self.key_path = workdir / "data" / "relay.key"  # where the relay keeps its Noise key
        self._stdout: list[str] = []
        self._lock = threading.Lock()
        self._signal = threading.Event()  # set when the banner arrived or stdout ended
        self._stderr: IO[bytes] = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zerok", "relay", *self.argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=workdir,
            env=dict(env),
        )
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace")
            with self._lock:
                self._stdout.append(line)
            match = BANNER.search(line)
            if match and self.address is None:
                self.address = match.group(1)
                self._signal.set()
        self._signal.set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> RelayProcess:
        """Wait for the banner; raise with the relay's output if it exits or stalls."""
        if not self._signal.wait(timeout):
            raise TimeoutError(f"{self.name} printed no banner in {timeout} s:\n{self.output()}")
        if self.address is None:
            code = self.proc.wait(5)
            raise RuntimeError(f"{self.name} exited with {code} before ready:\n{self.output()}")
        return self

    @property
    def url(self) -> str:
        assert self.address is not None, "relay not ready"
        return f"ws://{self.address}/"

    @property
    def http_url(self) -> str:
        assert self.address is not None, "relay not ready"
        return f"http://{self.address}"

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def sigterm(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def sigkill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)

    def wait_exit(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if the relay has not exited after STOP_TIMEOUT."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()
        return self.proc.returncode

    def stdout(self) -> str:
        with self._lock:
            return "".join(self._stdout)

    def stderr(self) -> str:
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text("utf-8", "replace")

    def output(self) -> str:
        return f"--- stdout\n{self.stdout()}--- stderr\n{self.stderr()}"


@contextlib.contextmanager
def relay(
    directory: str | os.PathLike[str], *args: str, env: Mapping[str, str] | None = None
) -> Iterator[RelayProcess]:
    """A relay on 127.0.0.1 (free port), its database and key in ``directory``; ``args``
    are further ``zerok relay`` options (they override these defaults)."""
    workdir = Path(directory)
    workdir.mkdir(parents=True, exist_ok=True)
    argv = ["--bind", "127.0.0.1:0", "--database", str(workdir / "data" / "relay.db"), *args]
    process = RelayProcess(argv, workdir, "relay", clean_env(env))
    try:
        yield process.wait_ready()
    finally:
        process.stop()


class PostgresDatabases:
    """Fresh databases on the test PostgreSQL server, dropped again by ``drop_all``."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def url(self, name: str) -> str:
        base, _, _ = PG_ADMIN_URL.rpartition("/")
        return f"{base}/{name}"

    def create(self) -> str:
        import psycopg  # noqa: PLC0415 - only needed with PostgreSQL
        from psycopg import sql  # noqa: PLC0415

        name = f"zerok_t_{os.urandom(6).hex()}"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.names.append(name)
        return self.url(name)

    def drop_all(self) -> None:
        import psycopg  # noqa: PLC0415
        from psycopg import sql  # noqa: PLC0415

        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            for name in self.names:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
        self.names.clear()
