"""``zerok pair create | join | cancel``, and starting a group (``zerok init --relay``),
which shows the group's recovery key once."""

from __future__ import annotations

import argparse
import contextlib
import time

from zerok.cli.common import (
    PASSPHRASE_GONE,
    ConnectionWatch,
    Removed,
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
    within,
)
from zerok.client import NewGroup, Role, SyncClient
from zerok.errors import SyncError

WORDS_PER_ROW = 4
RELAY_GONE = (
    "`pair create` no longer starts a group: `zerok init --relay URL` does (and shows its "
    "recovery words); `zerok relays` changes the relays of a group"
)


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pair = commands.add_parser("pair", help="invite a device, or join a group")
    actions = pair.add_subparsers(dest="action", metavar="ACTION", required=True)

    create = actions.add_parser(
        "create",
        help="invite another device into this device's group (admins only)",
        description="Makes a one-use invite: a ticket in the group's log, shown as a QR "
        "code, a URL and a short code. `zerok pair cancel` withdraws it, in all three forms.",
    )
    add_common(create)
    create.add_argument(
        "--role",
        choices=[r.value for r in Role],
        default=Role.MEMBER.value,
        help="what the new device may do: admin (invite, revoke, change roles) or member "
        "(sync; the default)",
    )
    create.add_argument("--qr-png", metavar="FILE", help="also write the QR code as PNG")
    create.add_argument("--qr-svg", metavar="FILE", help="also write the QR code as SVG")
    create.add_argument(
        "--ttl", type=ttl_arg, default=600, help="whole seconds the invite lives (1..600)"
    )
    create.add_argument(
        "--timeout", type=timeout_arg, default=15.0, help="seconds to wait for the relay (15)"
    )
    create.add_argument("--relay", action=Removed, why=RELAY_GONE)
    create.add_argument("--passphrase", action=Removed, why=PASSPHRASE_GONE)
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
    join.add_argument("--passphrase", action=Removed, why=PASSPHRASE_GONE)
    join.set_defaults(run=cmd_join)

    cancel = actions.add_parser(
        "cancel", help="withdraw the last invite made here (its code, URL and QR code)"
    )
    add_common(cancel)
    cancel.add_argument(
        "--timeout", type=timeout_arg, default=15.0, help="seconds to wait for the relay (15)"
    )
    cancel.set_defaults(run=cmd_cancel)


# -- a new group ------------------------------------------------------------------------------


async def check_relays(relays: list[str], timeout: float, *, quiet: bool) -> None:
    """Every relay answers before a group is started on it: a mistyped URL creates nothing."""
    with contextlib.ExitStack() as stack:
        if not quiet:
            stack.enter_context(err.status(f"checking {safe(', '.join(relays))}…"))
        for relay in relays:
            await relay_health(relay, timeout)


async def register(client: SyncClient, timeout: float) -> str:
    """Bring the new group's log to its relays now (the first connection does), so that a
    relay refusing new groups says so at once: "" once one holds it, else why not. Never
    raises: the group exists on this device whatever the relays say."""
    watch = ConnectionWatch(client, quiet=True)
    try:
        async with client, watch:
            await client.wait_connected(timeout)
    except SyncError as exc:
        return watch.reasons[-1] if watch.reasons else str(exc)
    return ""


def show_recovery(created: NewGroup) -> None:
    """The recovery key, this once: numbered words to copy on paper, and its QR code."""
    words = created.recovery.words()
    out.print()
    out.print("[bold]RECOVERY KEY[/] — write these 24 words down now, on paper, in order:")
    out.print()
    for start in range(0, len(words), WORDS_PER_ROW):
        row = words[start : start + WORDS_PER_ROW]
        cells = (f"{start + i + 1:>2}. {word:<10}" for i, word in enumerate(row))
        out.print("  " + "  ".join(cells).rstrip(), markup=False)
    out.print()
    out.print(created.recovery.qr(), markup=False)
    out.print(
        "They are the only way to take the group back if a device is lost or stolen "
        "(`zerok group recover`). They are shown this once and never stored on this "
        "device: keep them offline, not in a photo, a file or a password manager on a "
        "device of the group.",
        markup=False,
    )
    out.print(f"Keep the group id with them: {created.group_id}", markup=False)
    out.print()


# -- the commands -------------------------------------------------------------------------------


def cmd_create(args: argparse.Namespace) -> int:
    async def main() -> int:
        client = open_client(args)
        role = Role(args.role)
        with contextlib.ExitStack() as stack:
            if not args.json:
                stack.enter_context(err.status("writing the invite to the group's log…"))
            invite = await within(
                args.timeout,
                client.create_invite(args.ttl, role=role),
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
                    "role": role.value,
                    "group_id": str(client.group_id),
                }
            )
            return 0
        minutes = max(1, round((invite.expires_at - time.time()) / 60))
        out.print(invite.qr(), markup=False)
        out.print(
            f"Short code  [bold]{invite.short_code}[/]   (valid {minutes} min, single use, "
            f"joins as {role.value})"
        )
        out.print(
            f"On the other device: zerok pair join {invite.short_code} --relay {safe(invite.relay)}"
        )
        out.print(f"Or scan the QR code, or use the URL:\n{safe(invite.url)}")
        err.print(
            "The QR code and URL hold the group's current key: show them only to your own "
            "devices. `zerok pair cancel` withdraws the invite."
        )
        for path in (args.qr_png, args.qr_svg):
            if path:
                out.print(f"QR code written to {safe(path)}")
        return 0

    return run_async(main)


def cmd_join(args: argparse.Namespace) -> int:
    async def main() -> int:
        home = home_dir(args)
        client = new_client(home, args.name)
        with contextlib.ExitStack() as stack:
            if not args.json:
                stack.enter_context(err.status("fetching the invite and enrolling…"))
            group_id = await within(
                args.timeout, client.join(args.code, relay=args.relay), "joining the group"
            )
        if args.json:
            emit_json({"group_id": str(group_id), "relays": client.relays, "epoch": client.epoch})
        else:
            relays = safe(", ".join(client.relays))
            out.print(f"Joined group {group_id.short()} (relays {relays})")
            out.print("Try: zerok pull, zerok push --text hello, zerok devices")
        return 0

    return run_async(main)


def cmd_cancel(args: argparse.Namespace) -> int:
    async def main() -> int:
        client = open_client(args)
        invite = client.last_invite()
        if invite is None:
            raise SyncError("this device has made no invite")
        cancelled = await within(
            args.timeout, client.cancel_invite(invite), "cancelling the invite"
        )
        if args.json:
            emit_json({"short_code": invite.short_code, "cancelled": cancelled})
        elif cancelled:
            out.print(
                f"Cancelled the invite {invite.short_code}: its short code, URL and QR code "
                "enroll nobody now"
            )
        else:
            out.print(f"The invite {invite.short_code} was already used, cancelled or expired")
        return 0

    return run_async(main)
