"""``zerok relays list | add | remove``: the relays this device's group syncs through."""

from __future__ import annotations

import argparse
import contextlib

from zerok.cli.common import (
    add_common,
    emit_json,
    err,
    open_client,
    out,
    relay_health,
    run_async,
    safe,
    timeout_arg,
)
from zerok.client import SyncClient
from zerok.errors import SyncError


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    relays = commands.add_parser(
        "relays",
        help="list or change the relays of this device's group",
        description="The relays this device syncs through, tried in order. A change is this "
        "device's only: run it on each device (new invites carry the new list).",
    )
    add_common(relays)
    actions = relays.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser("list", help="the relays, in the order they are tried")
    add = actions.add_parser("add", help="add a relay (it must answer first)")
    add.add_argument("url", metavar="URL", help="ws://HOST:PORT or wss://HOST")
    add.add_argument("--first", action="store_true", help="try it before the others")
    add.add_argument(
        "--no-check", action="store_true", help="add it even if it does not answer now"
    )
    add.add_argument(
        "--timeout", type=timeout_arg, default=10.0, help="seconds to wait for it (default 10)"
    )
    remove = actions.add_parser("remove", help="stop using a relay")
    remove.add_argument("url", metavar="URL")
    for action in (add, remove, actions.choices["list"]):
        add_common(action, nested=True)
    relays.set_defaults(run=cmd_relays)


def _show(client: SyncClient, args: argparse.Namespace, note: str = "") -> None:
    if args.json:
        emit_json({"relays": client.relays})
        return
    if note:
        out.print(note, markup=False)
    for index, url in enumerate(client.relays, 1):
        out.print(f"{index}. {safe(url)}")


def cmd_relays(args: argparse.Namespace) -> int:
    async def main() -> int:
        client = open_client(args)
        relays = client.relays
        action = args.action or "list"
        if action == "list":
            _show(client, args)
            return 0
        url = str(args.url).strip()
        if action == "add":
            if url in relays:
                raise SyncError(f"{url} is already a relay of this group")
            if not args.no_check:
                with contextlib.ExitStack() as stack:
                    if not args.json:
                        stack.enter_context(err.status(f"checking {safe(url)}…"))
                    await relay_health(url, args.timeout)
            client.set_relays([url, *relays] if args.first else [*relays, url])
            _show(client, args, f"Added {url}; relays now:")
            return 0
        if url not in relays:
            raise SyncError(f"{url} is not a relay of this group (it has {', '.join(relays)})")
        if len(relays) == 1:
            raise SyncError(f"{url} is this group's only relay: add another one first")
        client.set_relays([r for r in relays if r != url])
        _show(client, args, f"Removed {url}; relays now:")
        return 0

    return run_async(main)
