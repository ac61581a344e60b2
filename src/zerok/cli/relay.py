"""``zerok relay``: run a relay server."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys

from zerok.errors import ConfigError, SyncError
from zerok.relay.config import OPTIONS, RelayConfig, load_config
from zerok.version import __version__


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "relay",
        help="run a relay server",
        description="Run a 0k-Sync relay: WebSocket sync, /health, /metrics and the invite "
        "mailbox on one port. Every option can also be set in the config file ([section] key "
        "shown) or in the environment variable shown; the command line wins over the "
        "environment, which wins over the file.",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="relay.toml to read (env SYNC_RELAY_CONFIG)"
    )
    for option in OPTIONS:
        parser.add_argument(
            option.flag,
            dest=option.name,
            metavar="VALUE",
            default=None,
            help=f"{option.help} ([{option.section}] {option.key}; env {option.env})",
        )
    parser.set_defaults(run=run)


def _prog() -> str:
    """How the user ran us, so that the hint can be pasted as is (``make run`` uses
    ``.venv/bin/zerok``, which is not on PATH)."""
    argv0 = sys.argv[0]
    if os.path.basename(argv0) == "zerok":
        return "zerok" if shutil.which("zerok") == os.path.abspath(argv0) else argv0
    return f"{os.path.basename(sys.executable)} -m zerok"


def _banner(config: RelayConfig, address: str, relay_id: str) -> str:
    return (
        f"0k-Sync relay {__version__} listening on ws://{address}\n"
        f"  relay id   {relay_id}\n"
        f"  database   {config.database_display}\n"
        f"  health     http://{address}/health    metrics  http://{address}/metrics\n"
        f"Start a group: {_prog()} init --relay ws://{address}, then {_prog()} pair create\n"
        "Stop with Ctrl-C: connections are told and drained first."
    )


def run(args: argparse.Namespace) -> int:
    # Imported here so that other commands start without loading the server stack.
    from zerok.relay.server import Relay  # noqa: PLC0415

    overrides = {o.name: getattr(args, o.name) for o in OPTIONS}
    try:
        config = load_config(
            args.config or os.environ.get("SYNC_RELAY_CONFIG"), overrides=overrides
        )
    except ConfigError as exc:
        print(f"zerok relay: {exc}", file=sys.stderr)
        return 1
    level = logging.getLevelName(config.log_level.upper())
    if not isinstance(level, int):
        print(f"zerok relay: unknown log level {config.log_level!r}", file=sys.stderr)
        return 1
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def ready(relay: Relay) -> None:
        print(_banner(config, relay.bound_address, str(relay.identity.device_id)), flush=True)

    try:
        asyncio.run(Relay(config).serve_forever(ready))
    except SyncError as exc:
        print(f"zerok relay: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"zerok relay: cannot listen on {config.bind}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0
