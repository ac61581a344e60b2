"""What every client command shares: the data directory, output for people or scripts,
and turning errors into one line and an exit code (0 ok, 1 user error, 2 usage)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import json
import logging
import math
import os
import re
import sqlite3
import sys
import unicodedata
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from rich.console import Console
from rich.markup import escape

from zerok.cli.advice import explain
from zerok.client import SyncClient, mailbox
from zerok.client.events import Connected, Disconnected, IntegrityAlert
from zerok.errors import NotConnectedError, RelayUnreachableError, StateError, SyncError

DEFAULT_HOME = "~/.zerok"

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def home_dir(args: argparse.Namespace) -> Path:
    return Path(args.home or os.environ.get("SYNC_HOME") or DEFAULT_HOME).expanduser()


def add_common(parser: argparse.ArgumentParser, *, nested: bool = False) -> None:
    """--home and --json; ``nested`` for a sub-action, whose unset options must not
    override what was given before the action (``zerok devices --home D revoke ID``)."""
    default: dict[str, object] = {"default": argparse.SUPPRESS} if nested else {}
    parser.add_argument(
        "--home",
        metavar="DIR",
        help=f"data directory (env SYNC_HOME; default {DEFAULT_HOME})",
        **default,  # type: ignore[arg-type]
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="machine-readable output",
        **default,  # type: ignore[arg-type]
    )


PASSPHRASE_GONE = (
    "passphrase groups are gone in protocol version 2 (anyone holding the passphrase could "
    "join): start a group with `zerok init --relay URL`, which shows its recovery words, "
    "and join devices with an invite (`zerok pair create`, then `zerok pair join CODE`)"
)


class Removed(argparse.Action):
    """An option zerok no longer has: a usage error saying why and what to use instead,
    rather than argparse's bare "unrecognized arguments"."""

    def __init__(
        self, option_strings: Sequence[str], dest: str, *, why: str, **kwargs: Any
    ) -> None:
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS, **kwargs)
        self.why = why

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        parser.error(f"{option_string}: {self.why}")


def emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, separators=(",", ":")) + "\n")
    sys.stdout.flush()


# -- numbers given on the command line (argparse types: a bad one exits 2) ------------------

I64_MAX = 2**63 - 1
INVITE_TTL_MAX = 600  # seconds: the relay's invite mailbox keeps an invite at most this long


def cursor_arg(text: str) -> int:
    """A cursor: a whole number within 0..2^63-1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= value <= I64_MAX:
        raise argparse.ArgumentTypeError(f"a cursor is within 0..{I64_MAX}, not {text}")
    return value


def timeout_arg(text: str) -> float:
    """Seconds to wait: a finite, positive number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"seconds must be finite and positive, not {text}")
    return value


def ttl_arg(text: str) -> int:
    """An invite's lifetime: a whole number of seconds within 1..600."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {text!r}") from None
    if not 1 <= value <= INVITE_TTL_MAX:
        raise argparse.ArgumentTypeError(f"seconds within 1..{INVITE_TTL_MAX}, not {text}")
    return value


T = TypeVar("T")


async def within(timeout: float, step: Awaitable[T], what: str) -> T:
    """``step``, or SyncError once ``timeout`` seconds have passed."""
    try:
        return await asyncio.wait_for(step, timeout)
    except TimeoutError:
        raise SyncError(
            f"{what}: no answer within {timeout:g} s; try again, or --timeout"
        ) from None


# -- text from others (device names, relay URLs, blobs): shown as it is, never obeyed -------


def visible(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with control and format characters (escape sequences included) shown as
    ``\\xNN`` / ``\\uNNNN``, so that it cannot move the cursor, set a terminal title or
    plant a hyperlink; ``keep_newlines`` keeps line feeds and tabs as they are."""
    kept = "\n\t" if keep_newlines else ""
    return "".join(
        ch
        if ch in kept or unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp")
        else ascii(ch)[1:-1]
        for ch in text
    )


def safe(text: str) -> str:
    """``visible(text)``, escaped for Rich markup: to put inside an ``out.print`` string."""
    return escape(visible(text))


# -- errors people can act on ---------------------------------------------------------------

_AIOHTTP = re.compile(r"Cannot connect to host (?P<host>\S+) ssl:\S+ \[(?P<why>[^\]]*)\]")


def _reason(why: str) -> str:
    low = why.lower()
    if "connect call failed" in low or "refused" in low:
        return "connection refused"
    if "name or service not known" in low or "nodename nor servname" in low or "getaddrinfo" in low:
        return "unknown host"
    if "timed out" in low or "timeout" in low:
        return "timed out"
    if "unreachable" in low:
        return "network unreachable"
    return why.strip() or "cannot connect"


def friendly(message: str) -> str:
    """A library error message without aiohttp's internals, with what to do next."""
    match = _AIOHTTP.search(message)
    if match is None:
        return message
    why = _reason(match.group("why"))
    url = re.search(r"((?:wss?|https?)://\S+?)(?=:\s|\s|$)", message)
    where = url.group(1) if url else match.group("host")
    hint = " — is the relay running? (zerok relay)" if why == "connection refused" else ""
    return f"cannot reach {where}: {why}{hint}"


class ConnectionWatch:
    """While a command runs: each failed or lost connection is told on stderr with its
    reason and the next try (``quiet`` keeps them for the final error only), and so is
    anything a relay or a device did wrong (IntegrityAlert), which is never kept quiet."""

    def __init__(self, client: SyncClient, *, quiet: bool = False) -> None:
        self.client = client
        self.quiet = quiet
        self.reasons: list[str] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ConnectionWatch:
        events = self.client.events()

        async def watch() -> None:
            try:
                async for event in events:
                    if isinstance(event, Disconnected):
                        self._note(event)
                    elif isinstance(event, IntegrityAlert):
                        err.print(integrity_line(event), markup=True)
                    elif isinstance(event, Connected) and self.reasons and not self.quiet:
                        err.print(f"connected to {safe(event.relay)}", markup=True)
            finally:
                await events.aclose()

        # Subscribed already (events() does), before the first connection attempt ends.
        self._task = asyncio.get_running_loop().create_task(watch())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _note(self, event: Disconnected) -> None:
        reason = friendly(event.reason)
        self.reasons.append(reason)
        if self.quiet:
            return
        retry = f"; retrying in {event.retry_in:.1f} s" if event.retry_in is not None else ""
        err.print(f"{safe(reason)}{retry}", markup=True)

    async def online(self, timeout: float, *, spinner: bool = True) -> None:
        """Wait for a relay to accept this device; SyncError, with the last reason and what
        to do, after ``timeout`` seconds."""
        relays = ", ".join(self.client.relays)
        with contextlib.ExitStack() as stack:
            if spinner:
                stack.enter_context(err.status(f"connecting to {safe(relays)}…"))
            try:
                await self.client.wait_connected(timeout)
            except NotConnectedError:
                why = f": {self.reasons[-1]}" if self.reasons else ""
                raise SyncError(
                    f"no relay reachable within {timeout:g} s ({relays}){why}"
                ) from None


# -- a relay's HTTP side ---------------------------------------------------------------------


@dataclass(frozen=True)
class Health:
    url: str  # the relay's ws:// URL
    doc: dict[str, Any]  # its /health answer
    date: float | None  # its clock (the Date header), seconds since the epoch


async def relay_health(url: str, timeout: float) -> Health:
    """GET the relay's /health; SyncError, saying what to do, if it does not answer."""
    health = f"{mailbox.http_base(url)}/health"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
            http.get(health) as response,
        ):
            doc = await response.json(content_type=None)
            when = response.headers.get("Date")
    except TimeoutError:
        raise RelayUnreachableError(f"cannot reach {url}: no answer within {timeout:g} s") from None
    except aiohttp.ClientConnectorError as exc:
        why = _reason(str(exc.os_error) if exc.os_error else str(exc))
        hint = " — is the relay running? (zerok relay)" if why == "connection refused" else ""
        raise RelayUnreachableError(f"cannot reach {url}: {why}{hint}") from None
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        raise RelayUnreachableError(
            f"{url} did not answer as a 0k-Sync relay ({type(exc).__name__}): check the URL"
        ) from None
    if not isinstance(doc, dict) or "status" not in doc:
        raise RelayUnreachableError(f"{url} did not answer as a 0k-Sync relay: check the URL")
    date = None
    if when:
        with contextlib.suppress(TypeError, ValueError):
            date = email.utils.parsedate_to_datetime(when).timestamp()
    return Health(url, doc, date)


# -- the data directory ---------------------------------------------------------------------


def check_state(home: Path) -> None:
    """Stop if a device key sits next to a missing, empty or unreadable state file: opening
    it would silently make a new, empty state (no group log, epoch keys, cursor or outbox)."""
    key, state = home / "device.key", home / "state.db"
    if not key.exists():
        return
    recover = (
        f"restore {state} from a backup, or start over as a new device: move {home} away, "
        "`zerok init`, pair again, and revoke the old device from another one"
    )
    try:
        if not state.exists() or state.stat().st_size == 0:
            what = "is missing" if not state.exists() else "is empty"
            raise StateError(
                f"{state} {what} but {key} exists: this device's group log, epoch keys, "
                f"cursor and outbox are lost; {recover}"
            )
        db = sqlite3.connect(f"{state.as_uri()}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM meta WHERE key = 'state_version'").fetchone()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise StateError(f"{state} is unreadable ({exc}); {recover}") from None
    except OSError as exc:
        raise StateError(f"{state} is unreadable ({exc.strerror}); {recover}") from None
    if row is None:
        raise StateError(f"{state} holds no zerok state; {recover}")


def require_device(home: Path) -> None:
    """For commands that only read: no device here is an error, and nothing is created."""
    if not (home / "device.key").exists():
        raise SyncError(f"no device in {home}: run `zerok init` first")
    check_state(home)


_opened: list[SyncClient] = []  # closed when the command ends (see _guarded)


def new_client(home: Path, device_name: str | None = None) -> SyncClient:
    """A SyncClient on ``home`` (after ``check_state``), its state closed at the end."""
    check_state(home)
    client = SyncClient(home, device_name=device_name)
    _opened.append(client)
    return client


def open_client(args: argparse.Namespace, *, need_group: bool = True) -> SyncClient:
    home = home_dir(args)
    if need_group:
        require_device(home)
    client = new_client(home, getattr(args, "name", None))
    if need_group and client.group_id is None:
        raise SyncError(
            "this device is in no group yet: `zerok init --relay URL` starts one, "
            "`zerok pair join CODE` joins one"
        )
    return client


def run_async(main: Callable[[], Awaitable[int]]) -> int:
    """Run a command; a SyncError becomes one line on stderr and exit code 1.

    SYNC_LOG_LEVEL (e.g. DEBUG) shows the library's logs on stderr."""
    level = os.environ.get("SYNC_LOG_LEVEL")
    if level:
        logging.basicConfig(
            level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    try:
        return asyncio.run(_guarded(main))
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


async def _guarded(main: Callable[[], Awaitable[int]]) -> int:
    try:
        return await _closing(main)
    except SyncError as exc:
        err.print(f"[bold red]zerok:[/] {safe(explain(exc, friendly(str(exc))))}", markup=True)
        return 1
    except OSError as exc:  # a file to read or write: the user's to fix, not a crash
        where = f" {exc.filename}" if exc.filename else ""
        err.print(
            f"[bold red]zerok:[/]{safe(where)}: {safe(str(exc.strerror or exc))}", markup=True
        )
        return 1


async def _closing(main: Callable[[], Awaitable[int]]) -> int:
    """``main()``, then the state files it opened closed (their last writes flushed)."""
    try:
        return await main()
    finally:
        while _opened:
            client = _opened.pop()
            await client.close()
            client.close_state()


def integrity_line(alert: IntegrityAlert) -> str:
    """One stderr line (rich markup) for an IntegrityAlert: what, whose, which range."""
    whose = f"device {alert.sender.short()}" if alert.sender is not None else "the relay"
    span = str(alert.first) if alert.first == alert.last else f"{alert.first}..{alert.last}"
    where = f" at {safe(alert.relay)}" if alert.relay else ""
    return (
        f"[yellow]integrity: {escape(alert.kind)}[/] ({whose}, {span}{where}): "
        f"{escape(alert.detail)}"
    )
