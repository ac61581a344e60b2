"""The ``zerok`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from zerok import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zerok",
        description="0k-Sync: zero-knowledge sync for local-first applications.",
    )
    parser.add_argument("--version", action="version", version=f"zerok {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("relay", help="run a relay (arrives with the relay release)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "relay":
        print(
            f"zerok {__version__}: the wire protocol, cryptography and protocol core are in "
            "place;\nthe relay server (`zerok relay`) arrives in the next release.",
            file=sys.stderr,
        )
        return 0
    parser.print_help()
    return 0
