"""``zerok pair create | join | cancel``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import TypeVar

from zerok.cli.common import (
    add_common,
    emit_json,
    err,
    home_dir,
    new_client,
    open_client,
    out,
    relay_health,
    run_async,
    safe,
    timeout_arg,
    ttl_arg,
)
from zerok.errors import SyncError


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pair = commands.add_parser("pair", help="invite a device, or join a group")
    actions = pair.add_subparsers(dest="action", metavar="ACTION", required=True)

    create = actions.add_parser("create", help="make an invite (creates the group on first use)")
    add_common(create)
    create.add_argument(
        "--relay",
        metavar="URL",
        action="append",
        help="relay of a new group (ws://HOST:PORT); repeat for several, tried in order",
    )
    create.add_argument("--passphrase", help="derive the group key from a passphrase (Argon2id)")
    create.add_argument("--qr-png", metavar="FILE", help="also write the QR code as PNG")
    create.add_argument("--qr-svg", metavar="FILE", help="also write the QR code as SVG")
    create.add_argument(
        "--ttl", type=ttl_arg, default=600, help="whole seconds the invite lives (1..600)"
    )
    create.add_argument(
        "--timeout", type=timeout_arg, default=15.0, help="seconds to wait for the relay (15)"
    )
    create.set_defaults(run=cmd_create)

    join = actions.add_parser("join", help="join a group with a short code or invite URL")
    add_common(join)
    join.add_argument("code", metavar="CODE_OR_URL")
    join.add_argument(
        "--relay", metavar="URL", help="relay holding a short code (env SYNC_RELAY_URL)"
    )
    join.add_argument("--name", help="this device's name (env SYNC_DEVICE_NAME)")
    join.add_argument(
        "--timeout", type=timeout_arg, default=15.0, help="seconds to wait for the relay (15)"
    )
    join.set_defaults(run=cmd_join)

    cancel = actions.add_parser("cancel", help="withdraw the last short code made here")
    add_common(cancel)
    cancel.add_argument(
        "--timeout", type=timeout_arg, default=15.0, help="seconds to wait for the relay (15)"
    )
    cancel.set_defaults(run=cmd_cancel)


T = TypeVar("T")


async def within(timeout: float, step: Awaitable[T], what: str) -> T:
    """``step``, or SyncError once ``timeout`` seconds have passed."""
    try:
        return await asyncio.wait_for(step, timeout)
    except TimeoutError:
        raise SyncError(
            f"{what}: no answer within {timeout:g} s; try again, or --timeout"
        ) from None


def cmd_create(args: argparse.Namespace) -> int:
    async def main() -> int:
        home = home_dir(args)
        client = new_client(home)
        relays = list(dict.fromkeys(r.strip() for r in args.relay or []))  # in order, once each
        if client.group_id is None:
            if not relays:
                raise SyncError("a new group needs a relay: pass --relay ws://HOST:PORT")
            # Every relay answers before the group exists: a mistyped URL creates nothing.
            with contextlib.ExitStack() as stack:
                if not args.json:
                    stack.enter_context(err.status(f"checking {safe(', '.join(relays))}…"))
                for relay in relays:
                    await relay_health(relay, args.timeout)
            await client.create_group(relays, args.passphrase)
        else:
            if relays and relays != client.relays:
                err.print(
                    f"note: this group syncs through {safe(', '.join(client.relays))}; --relay "
                    "ignored (change them with `zerok relays add|remove URL`)"
                )
            if args.passphrase:
                err.print("note: this device already has its group; --passphrase ignored")
        with contextlib.ExitStack() as stack:
            if not args.json:
                stack.enter_context(err.status("sealing the invite and storing it at the relay…"))
            invite = await within(
                args.timeout,
                client.create_invite(args.ttl),
                f"storing the invite at {client.relays[0]}",
            )
        if args.qr_png:
            invite.qr_png(args.qr_png)
        if args.qr_svg:
            invite.qr_svg(args.qr_svg)
        if args.json:
            emit_json(
                {
                    "short_code": invite.short_code,
                    "url": invite.url,
                    "expires_at": invite.expires_at,
                    "relay": invite.relay,
                    "group_id": str(client.group_id),
                }
            )
            return 0
        minutes = max(1, round((invite.expires_at - time.time()) / 60))
        out.print(invite.qr())
        out.print(f"Short code  [bold]{invite.short_code}[/]   (valid {minutes} min, single use)")
        out.print(
            f"On the other device: zerok pair join {invite.short_code} --relay {safe(invite.relay)}"
        )
        out.print(f"Or scan the QR code, or use the URL:\n{safe(invite.url)}")
        err.print("The QR code and URL hold the group's key: show them only to your own devices.")
        if args.qr_png:
            out.print(f"QR code written to {args.qr_png}")
        return 0

    return run_async(main)


def cmd_join(args: argparse.Namespace) -> int:
    async def main() -> int:
        home = home_dir(args)
        client = new_client(home, args.name)
        with contextlib.ExitStack() as stack:
            if not args.json:
                stack.enter_context(err.status("fetching and opening the invite…"))
            group_id = await within(
                args.timeout, client.join(args.code, relay=args.relay), "fetching the invite"
            )
        if args.json:
            emit_json({"group_id": str(group_id), "relays": client.relays})
        else:
            relays = safe(", ".join(client.relays))
            out.print(f"Joined group {group_id.short()} (relays {relays})")
            out.print("Try: zerok pull, zerok push --text hello")
        return 0

    return run_async(main)


def cmd_cancel(args: argparse.Namespace) -> int:
    async def main() -> int:
        client = open_client(args)
        invite = client.last_invite()
        if invite is None:
            raise SyncError("this device has made no invite")
        cancelled = await within(
            args.timeout, client.cancel_invite(invite), f"cancelling at {invite.relay}"
        )
        if args.json:
            emit_json({"short_code": invite.short_code, "cancelled": cancelled})
        elif cancelled:
            out.print(f"Cancelled {invite.short_code}")
        else:
            out.print(f"{invite.short_code} was already used, cancelled or expired")
        return 0

    return run_async(main)
