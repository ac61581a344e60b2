"""Real relays for integration tests: yours and ours.

Two kinds, one interface (``RunningRelay``: ``url``, ``http_url``, ``address``,
``workdir``, ``key_path``, ``running``, ``sigterm()``, ``wait_exit()``, ``stop()``,
``stdout()``, ``stderr()``, ``output()``):

``InProcessRelay`` runs the real relay (``zerok.relay.server.Relay``: aiohttp on a free
loopback port, real WebSockets, real SQLite or PostgreSQL) on an event loop of its own in
a background thread of the test process. It starts in milliseconds, its code counts for
coverage, and a test's own ``asyncio.run`` is not affected. It takes the same arguments
as ``zerok relay`` (parsed with ``zerok.relay.config``'s own options, the environment
given and relay.toml), relative paths counting from its directory. Give it a
``ManualClock`` to let time pass for TTLs and invites without waiting; ``await
r.cleanup_once()`` runs the relay's cleanup pass now; ``r.call(fn)`` / ``await
r.acall(fn)`` run ``fn(server)`` in the relay's loop; ``with r.paused():`` holds that loop
still, so that what a client sends meanwhile is read by the relay in one go.
``sigterm()`` starts the graceful shutdown (ERROR 3001 to every client), as the signal
does to a process; ``stdout()`` is the banner ``zerok relay`` prints and ``stderr()`` the
relay's log records (those logged in its event loop) in the command's format::

    from zerok.testing import ManualClock, in_process_relay

    with in_process_relay(tmp_path, clock=ManualClock()) as r:
        client = SyncClient(tmp_path / "device")
        await client.create_group([r.url])

``RelayProcess`` / ``relay()`` start ``zerok relay`` as a child process instead, for what
only a process has: SIGKILL, signals, the exit code, the command line's own output::

    from zerok.testing import relay

    with relay(tmp_path) as r:
        client = SyncClient(tmp_path / "device")
        await client.create_group([r.url])

Both wait until the relay listens (no port race: it binds port 0 and reports the port it
got) and stop it when the block ends (a process by PID: SIGTERM, then SIGKILL).

``PostgresDatabases`` makes and drops throwaway databases on a PostgreSQL server, for
relays that share one.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, NoReturn, Protocol, Self, TypeVar

from zerok.crypto.entry import TicketKey
from zerok.crypto.epoch import new_epoch_key
from zerok.crypto.identity import DeviceIdentity
from zerok.crypto.recovery import RecoveryKey
from zerok.errors import ConfigError, SyncError
from zerok.protocol import entries as membership_entries
from zerok.protocol.membership import GroupLog
from zerok.relay.config import OPTIONS, RelayConfig, load_config
from zerok.relay.storage.registry import PATH_SCHEME, default_key_path, url_scheme
from zerok.wire.log import Member, Role

if TYPE_CHECKING:
    from zerok.relay.push import PushSender
    from zerok.relay.server import Relay
    from zerok.relay.storage import Storage

T = TypeVar("T")

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


class RunningRelay(Protocol):
    """What tests use of a relay, whichever kind runs it (``RelayProcess``,
    ``InProcessRelay``)."""

    name: str
    workdir: Path
    key_path: Path
    address: str | None  # HOST:PORT once it listens

    @property
    def url(self) -> str: ...

    @property
    def http_url(self) -> str: ...

    @property
    def running(self) -> bool: ...

    def wait_ready(self, timeout: float = ...) -> Self: ...

    def sigterm(self) -> None: ...

    def wait_exit(self, timeout: float) -> int: ...

    def stop(self) -> int: ...

    def stdout(self) -> str: ...

    def stderr(self) -> str: ...

    def output(self) -> str: ...


class _RelayOutput:
    """What both kinds of test relay derive from their address and their output."""

    address: str | None

    def stdout(self) -> str:
        raise NotImplementedError

    def stderr(self) -> str:
        raise NotImplementedError

    @property
    def url(self) -> str:
        assert self.address is not None, "relay not ready"
        return f"ws://{self.address}/"

    @property
    def http_url(self) -> str:
        assert self.address is not None, "relay not ready"
        return f"http://{self.address}"

    def output(self) -> str:
        return f"--- stdout\n{self.stdout()}--- stderr\n{self.stderr()}"


class RelayProcess(_RelayOutput):
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


# -- in the test process --------------------------------------------------------------------

IN_PROCESS_STOP_TIMEOUT = 30.0  # seconds for a graceful stop (the relay's own grace is 10)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # as ``zerok relay`` logs


class ManualClock:
    """A relay clock (milliseconds since the epoch) that moves only when told to.

    It starts at the real time; ``advance(seconds)`` moves it on. Give it to an
    ``InProcessRelay`` and blob TTLs, invite expiry and cleanup go by it."""

    def __init__(self, start_ms: int | None = None) -> None:
        self._now = int(time.time() * 1000) if start_ms is None else start_ms
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> int:
        """Move the clock on by ``seconds``; the new time in milliseconds."""
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        with self._lock:
            self._now += round(seconds * 1000)
            return self._now


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)


def relay_config(
    argv: Sequence[str], env: Mapping[str, str], workdir: Path | None = None
) -> RelayConfig:
    """The configuration ``zerok relay ARGV`` would run with in ``workdir`` (its working
    directory: relative paths count from it) and environment ``env``: the command's
    options (``zerok.relay.config.OPTIONS``), then ``load_config``; ConfigError if bad."""
    parser = _ArgumentParser(prog="zerok relay", add_help=False, allow_abbrev=False)
    parser.add_argument("--config")
    for option in OPTIONS:
        parser.add_argument(option.flag, dest=option.name, default=None)
    args = parser.parse_args(list(argv))
    base = workdir or Path.cwd()

    def absolute(path: str) -> str:
        return str(base / path) if path and not Path(path).is_absolute() else path

    config_file = args.config or env.get("SYNC_RELAY_CONFIG")
    config = load_config(
        absolute(config_file) if config_file else None,
        env=env,
        overrides={o.name: getattr(args, o.name) for o in OPTIONS},
    )
    on_server = url_scheme(config.database) != PATH_SCHEME
    database = config.database if on_server else absolute(config.database)
    key_file = absolute(config.key_file) or str(base / default_key_path(database))
    return dataclasses.replace(config, database=database, key_file=key_file)


# The relay whose loop the current code runs in (set in its thread, inherited by its tasks).
_CURRENT: contextvars.ContextVar[InProcessRelay] = contextvars.ContextVar("zerok_test_relay")


class _RelayLogs(logging.Handler):
    """One handler on the root logger for every in-process relay: a record goes to the
    relay in whose event loop it was logged. While relays run, the ``zerok.relay`` loggers
    are opened to the lowest level one of them asks for (and restored after)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter(LOG_FORMAT))
        self.active: dict[InProcessRelay, int] = {}
        self.saved_level = logging.NOTSET
        self.guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        relay = _CURRENT.get(None)
        if relay is not None and record.levelno >= relay.log_level:
            relay._log_line(self.format(record))

    def add(self, relay: InProcessRelay) -> None:
        with self.guard:
            if not self.active:
                self.saved_level = logging.getLogger("zerok.relay").level
                logging.getLogger().addHandler(self)
            self.active[relay] = relay.log_level
            self._set_level()

    def remove(self, relay: InProcessRelay) -> None:
        with self.guard:
            if self.active.pop(relay, None) is None:
                return
            if self.active:
                self._set_level()
            else:
                logging.getLogger().removeHandler(self)
                logging.getLogger("zerok.relay").setLevel(self.saved_level)

    def _set_level(self) -> None:
        lowest = min(self.active.values())
        if self.saved_level:
            lowest = min(lowest, self.saved_level)
        logging.getLogger("zerok.relay").setLevel(lowest)


_LOGS = _RelayLogs()


class InProcessRelay(_RelayOutput):
    """The real relay in a thread of this process, with its own event loop.

    ``argv`` are ``zerok relay`` options; ``env`` stands for the environment (SYNC_RELAY_*
    and SYNC_RELAY_CONFIG are read from it, default: none); ``workdir`` is what relative
    paths count from. ``clock`` replaces the relay's clock (milliseconds, see
    ``ManualClock``); ``storage`` and ``push_sender`` replace the ones the configuration
    would make. Construction starts the relay; ``wait_ready`` waits until it listens (or
    raises with its output if it failed to start, as ``zerok relay`` exits with 1).
    Thread-safe where it matters: ``stop``, ``sigterm``, ``call`` and ``acall`` may be used
    from any thread but the relay's own.
    """

    def __init__(
        self,
        argv: Sequence[str],
        workdir: Path,
        name: str = "relay",
        env: Mapping[str, str] | None = None,
        *,
        clock: Callable[[], int] | None = None,
        storage: Storage | None = None,
        push_sender: PushSender | None = None,
    ) -> None:
        self.argv = list(argv)
        self.workdir = workdir
        self.name = name
        self.clock = clock
        self.address: str | None = None
        self.config: RelayConfig | None = None
        self.server: Relay | None = None  # the zerok.relay.server.Relay, once it listens
        self.exit_code: int | None = None
        self.key_path = workdir / "data" / "relay.key"
        self.log_level = logging.INFO
        self._storage = storage
        self._push_sender = push_sender
        self._stdout: list[str] = []
        self._stderr: list[str] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()  # set once listening, or once the thread ended
        self._stop_requested = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._main: asyncio.Task[int] | None = None
        self._thread: threading.Thread | None = None
        try:
            self.config = relay_config(self.argv, dict(env or {}), workdir)
            level = logging.getLevelName(self.config.log_level.upper())
            if not isinstance(level, int):
                raise ConfigError(f"unknown log level {self.config.log_level!r}")
        except ConfigError as exc:
            self._log_line(f"zerok relay: {exc}")
            self._finished(1)
            return
        self.log_level = level
        self.key_path = Path(self.config.key_file)  # relay_config always sets it
        self._thread = threading.Thread(target=self._run, name=f"zerok-{name}", daemon=True)
        self._thread.start()

    # -- the relay's thread ---------------------------------------------------------------

    def _run(self) -> None:
        _CURRENT.set(self)  # asyncio.run's tasks inherit it: the relay's log records
        _LOGS.add(self)
        code = 1
        try:
            code = asyncio.run(self._serve())
        except BaseException:  # the relay's own failure: report it as the process would
            logging.getLogger("zerok.testing").exception("%s crashed", self.name)
        finally:
            _LOGS.remove(self)
            self._finished(code)

    async def _serve(self) -> int:
        from zerok.relay.server import Relay  # noqa: PLC0415 - the server stack, on demand

        assert self.config is not None
        loop = asyncio.get_running_loop()
        self._main = asyncio.current_task()
        self._stop = asyncio.Event()
        self._loop = loop
        if self._stop_requested.is_set():
            self._stop.set()
        config = self.config
        server: Relay | None = None
        try:
            server = Relay(config, storage=self._storage, push_sender=self._push_sender)
            if self.clock is not None:
                server.service.clock = self.clock
            await server.start()
        except (SyncError, OSError) as exc:
            if isinstance(exc, SyncError):
                self._log_line(f"zerok relay: {exc}")
            else:
                self._log_line(f"zerok relay: cannot listen on {config.bind}: {exc.strerror}")
            if server is not None:
                with contextlib.suppress(Exception):
                    await server.stop()
            return 1
        self.server = server
        self.address = server.bound_address
        with self._lock:
            self._stdout.append(_banner(config, self.address, str(server.identity.device_id)))
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await server.stop()
        return 0

    def _finished(self, code: int) -> None:
        self.exit_code = code
        self._ready.set()

    def _log_line(self, line: str) -> None:
        with self._lock:
            self._stderr.append(line if line.endswith("\n") else line + "\n")

    # -- the RunningRelay interface -------------------------------------------------------

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> Self:
        """Wait until the relay listens; raise with its output if it failed or stalled."""
        if not self._ready.wait(timeout):
            raise TimeoutError(f"{self.name} was not listening in {timeout} s:\n{self.output()}")
        if self.address is None:
            self.wait_exit(READY_TIMEOUT)
            raise RuntimeError(
                f"{self.name} exited with {self.exit_code} before ready:\n{self.output()}"
            )
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def sigterm(self) -> None:
        """Start the graceful shutdown (returns at once, as sending the signal does)."""
        self._stop_requested.set()
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already closed
                loop.call_soon_threadsafe(stop.set)

    def wait_exit(self, timeout: float) -> int:
        """The exit code (0 after a graceful stop) once the relay has stopped;
        TimeoutError if it is still running after ``timeout`` seconds."""
        if self._thread is not None:
            if self._thread is threading.current_thread():
                raise RuntimeError("wait_exit() from the relay's own thread would never return")
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"{self.name} still running after {timeout} s")
        assert self.exit_code is not None
        return self.exit_code

    def stop(self) -> int:
        """Graceful shutdown and wait for it; if it hangs, cancel the relay's main task."""
        self.sigterm()
        try:
            return self.wait_exit(IN_PROCESS_STOP_TIMEOUT)
        except TimeoutError:
            loop, main = self._loop, self._main
            if loop is not None and main is not None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(main.cancel)
            return self.wait_exit(5)

    def stdout(self) -> str:
        """The banner ``zerok relay`` prints once it listens."""
        with self._lock:
            return "".join(self._stdout)

    def stderr(self) -> str:
        """The relay's log records and a failure to start, as ``zerok relay`` writes them."""
        with self._lock:
            return "".join(self._stderr)

    # -- in the relay's loop --------------------------------------------------------------

    def _submit(self, fn: Callable[[Relay], Awaitable[T]]) -> concurrent.futures.Future[T]:
        loop, server = self._loop, self.server
        if loop is None or server is None or not self.running:
            raise RuntimeError(f"{self.name} is not running")
        if self._thread is threading.current_thread():
            raise RuntimeError("already in the relay's loop: await the call directly")

        async def invoke() -> T:
            return await fn(server)

        return asyncio.run_coroutine_threadsafe(invoke(), loop)

    def call(self, fn: Callable[[Relay], Awaitable[T]], timeout: float = 10.0) -> T:
        """``await fn(server)`` in the relay's loop, from a thread without a running loop
        (a synchronous test); its result or exception."""
        return self._submit(fn).result(timeout)

    async def acall(self, fn: Callable[[Relay], Awaitable[T]], timeout: float = 10.0) -> T:
        """``await fn(server)`` in the relay's loop, awaited from another event loop."""
        return await asyncio.wait_for(asyncio.wrap_future(self._submit(fn)), timeout)

    @contextlib.contextmanager
    def paused(self, timeout: float = 10.0) -> Iterator[None]:
        """Hold the relay's event loop still inside the block: it runs nothing, so what a
        client sends meanwhile waits in the socket and is read together afterwards. Do not
        wait for the relay inside the block (it is held for at most ``timeout`` seconds)."""
        loop = self._loop
        if loop is None or not self.running:
            raise RuntimeError(f"{self.name} is not running")
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            held.set()
            release.wait(timeout)

        loop.call_soon_threadsafe(hold)
        try:
            if not held.wait(timeout):
                raise TimeoutError(f"{self.name}'s loop did not come round in {timeout} s")
            yield
        finally:
            release.set()

    async def cleanup_once(self) -> None:
        """Run the relay's cleanup pass (expired and fully acknowledged blobs, expired
        invites) now, and wait for it."""
        await self.acall(lambda server: server.cleanup_once())


def _banner(config: RelayConfig, address: str, relay_id: str) -> str:
    from zerok.cli.relay import _banner as banner  # noqa: PLC0415 - the command's own

    return banner(config, address, relay_id) + "\n"


@contextlib.contextmanager
def in_process_relay(
    directory: str | os.PathLike[str],
    *args: str,
    env: Mapping[str, str] | None = None,
    clock: Callable[[], int] | None = None,
) -> Iterator[InProcessRelay]:
    """Like ``relay()``, but an ``InProcessRelay``: in a thread of this process, with its
    database and key in ``directory``; ``env`` stands for the environment (none of the
    process's SYNC_* settings are read), ``clock`` replaces its clock."""
    workdir = Path(directory)
    workdir.mkdir(parents=True, exist_ok=True)
    argv = ["--bind", "127.0.0.1:0", "--database", str(workdir / "data" / "relay.db"), *args]
    server = InProcessRelay(argv, workdir, "relay", env, clock=clock)
    try:
        yield server.wait_ready()
    finally:
        server.stop()


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


# -- groups for tests -----------------------------------------------------------------------


class TestGroup:
    """A group made the way a client makes one (a genesis with a recovery key and epoch 0),
    whose creator enrolls any device a test connects: ``enroll`` appends an invite and the
    device's enrollment to the log. A HELLO carrying ``entries`` brings the relay whatever
    of the log it lacks, so a test can connect any device of the group to any relay."""

    __test__ = False  # not a pytest class

    def __init__(self, creator: DeviceIdentity | None = None, *, now: int | None = None) -> None:
        self.creator = creator or DeviceIdentity.generate()
        self.recovery = RecoveryKey.generate()
        self.epoch_key = new_epoch_key()
        self.keys = {0: self.epoch_key}
        self.now = now or int(time.time() * 1000)
        genesis = membership_entries.genesis(
            member_of(self.creator),
            self.creator.sign,
            recovery_sign=self.recovery.sign_public,
            recovery_wrap=self.recovery.wrap_public,
            epoch_key=self.epoch_key,
            now=self.now,
        )
        self.log = GroupLog.from_genesis(genesis)
        self.entries = [genesis]
        self.group_id = self.log.group_id

    @property
    def epoch(self) -> int:
        return self.log.epoch

    def append(self, entry: bytes) -> bytes:
        self.log.apply(entry)
        self.entries.append(entry)
        return entry

    def enroll(self, identity: DeviceIdentity, *, role: Role = Role.MEMBER) -> None:
        """Make ``identity`` a member (nothing to do if it is one, or was revoked)."""
        if self.log.member(identity.device_id) is not None:
            return
        ticket = self.ticket(role=role)
        self.append(
            membership_entries.enroll(
                self.log, member_of(identity), identity.sign, ticket, now=self.now
            )
        )

    def ticket(self, *, role: Role = Role.MEMBER, ttl_ms: int = 600_000) -> TicketKey:
        """Open a ticket (an Invite entry by the creator) and return its key."""
        ticket = TicketKey(os.urandom(32))
        self.append(
            membership_entries.invite(
                self.log,
                self.creator.sign_public,
                self.creator.sign,
                ticket.public,
                role=role,
                expires_at=self.now + ttl_ms,
                now=self.now,
            )
        )
        return ticket

    def revoke(self, *identities: DeviceIdentity, by: DeviceIdentity | None = None) -> bytes:
        """Revoke devices (by the creator unless ``by``), starting a new epoch."""
        author = by or self.creator
        new_key = new_epoch_key()
        entry = membership_entries.revoke(
            self.log,
            author.sign_public,
            author.sign,
            [bytes(i.device_id) for i in identities],
            old_key=self.epoch_key,
            new_key=new_key,
            reason="lost",
            now=self.now,
        )
        self.append(entry)
        self.epoch_key = new_key
        self.keys[self.log.epoch] = new_key
        return entry


def member_of(identity: DeviceIdentity, name: str = "") -> Member:
    """The log's record of a device: its id and public keys."""
    return Member(
        device=bytes(identity.device_id),
        sign=identity.sign_public,
        wrap=identity.wrap_public,
        name=name,
    )
