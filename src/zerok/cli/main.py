"""The ``zerok`` command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from zerok.cli import data, device, devices, doctor, group, pair, relay, relays
from zerok.version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zerok",
        description="0k-Sync: zero-knowledge sync for local-first applications.",
    )
    parser.add_argument("--version", action="version", version=f"zerok {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    device.add_parsers(commands)
    pair.add_parsers(commands)
    data.add_parsers(commands)
    devices.add_parsers(commands)
    group.add_parsers(commands)
    relays.add_parsers(commands)
    doctor.add_parser(commands)
    relay.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    result: int = args.run(args)
    return result
