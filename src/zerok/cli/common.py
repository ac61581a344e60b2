"""What every client command shares: the data directory, output for people or scripts,
and turning errors into one line and an exit code (0 ok, 1 user error, 2 usage)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from zerok.client import SyncClient
from zerok.errors import SyncError

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


def emit_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def open_client(args: argparse.Namespace, *, need_group: bool = True) -> SyncClient:
    home = home_dir(args)
    if not (home / "device.key").exists() and need_group:
        raise SyncError(f"no device in {home}: run `zerok init` first")
    client = SyncClient(home, device_name=getattr(args, "name", None))
    if need_group and client.group_id is None:
        raise SyncError(
            "this device is in no group yet: `zerok pair create --relay URL` starts one, "
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
        return await main()
    except SyncError as exc:
        err.print(f"[bold red]zerok:[/] {exc}", markup=True)
        return 1
    except OSError as exc:  # a file to read or write: the user's to fix, not a crash
        where = f" {exc.filename}" if exc.filename else ""
        err.print(f"[bold red]zerok:[/]{where}: {exc.strerror or exc}", markup=True)
        return 1
