"""``zerok init``, ``zerok status`` and ``zerok devices``."""

from __future__ import annotations

import argparse
import contextlib
import sys
from datetime import UTC, datetime

from rich.table import Table
from rich.text import Text

from zerok.cli.common import (
    ConnectionWatch,
    add_common,
    emit_json,
    err,
    home_dir,
    new_client,
    open_client,
    out,
    require_device,
    run_async,
    safe,
    timeout_arg,
    visible,
)
from zerok.client import DeviceRevokedError, NotConnectedError, SyncClient
from zerok.errors import SyncError
from zerok.wire.messages import DeviceInfo

MIN_PREFIX = 4  # characters of a device id to revoke it by


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    init = commands.add_parser("init", help="create this device's identity")
    add_common(init)
    init.add_argument("--name", help="device name shown to the group (env SYNC_DEVICE_NAME)")
    init.set_defaults(run=cmd_init)

    status = commands.add_parser("status", help="device, group, relays, connection, pending")
    add_common(status)
    status.add_argument(
        "--timeout", type=timeout_arg, default=5.0, help="seconds to try the relays (default 5)"
    )
    status.set_defaults(run=cmd_status)

    devices = commands.add_parser("devices", help="list the group's devices, or revoke one")
    add_common(devices)
    devices.add_argument(
        "--timeout", type=timeout_arg, default=15.0, help="seconds to reach a relay (default 15)"
    )
    actions = devices.add_subparsers(dest="action", metavar="ACTION")
    revoke = actions.add_parser("revoke", help="remove a device from the group")
    add_common(revoke, nested=True)
    revoke.add_argument(
        "device_id",
        help=f"the device id, or an unambiguous prefix of at least {MIN_PREFIX} characters "
        "(from `zerok devices`)",
    )
    revoke.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    revoke.add_argument(
        "--self",
        dest="revoke_self",
        action="store_true",
        help="allow revoking the device this command runs on",
    )
    revoke.add_argument(
        "--timeout",
        type=timeout_arg,
        default=argparse.SUPPRESS,
        help="seconds to reach a relay (default 15)",
    )
    revoke.add_argument(
        "--reason",
        default="lost",
        choices=["lost", "decommissioned", "compromised"],
        help="why (default lost)",
    )
    devices.set_defaults(run=cmd_devices)


def _when(ms: int) -> str:
    if not ms:
        return "never"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def cmd_init(args: argparse.Namespace) -> int:
    async def main() -> int:
        home = home_dir(args)
        existed = (home / "device.key").exists()
        client = new_client(home, args.name)
        if args.json:
            emit_json(
                {"device_id": str(client.device_id), "home": str(home), "created": not existed}
            )
        else:
            verb = "already initialised" if existed else "initialised"
            out.print(f"Device {verb} in {home}")
            out.print(f"  device id  {client.device_id}")
            out.print("Next: `zerok pair create --relay ws://HOST:PORT` or `zerok pair join CODE`")
        return 0

    return run_async(main)


def cmd_status(args: argparse.Namespace) -> int:
    async def main() -> int:
        require_device(home_dir(args))  # a read-only command: it creates nothing
        client = open_client(args, need_group=False)
        connection = "no group"
        if client.group_id is not None:
            async with client, ConnectionWatch(client, quiet=True) as watch:
                try:
                    await client.wait_connected(args.timeout)
                    connection = "online"
                except NotConnectedError:
                    connection = "unreachable"
                    if watch.reasons and not args.json:
                        err.print(safe(watch.reasons[-1]))
                except DeviceRevokedError:
                    connection = "revoked"
            if client.status.value == "revoked":
                connection = "revoked"
        doc = {
            "device_id": str(client.device_id),
            "device_name": client.device_name,
            "group_id": str(client.group_id) if client.group_id else None,
            "relays": client.relays,
            "connection": connection,
            "last_cursor": client.last_cursor,
            "pending": client.pending_count,
        }
        if args.json:
            emit_json(doc)
        else:
            for key, value in doc.items():
                shown = ", ".join(value) if isinstance(value, list) else value
                text = visible(str(shown)) if shown is not None else "-"
                out.print(f"{key.replace('_', ' '):<12} {text}", markup=False)
        return 0

    return run_async(main)


def _prefix(text: str) -> str:
    prefix = text.strip().lower()
    if len(prefix) < MIN_PREFIX:
        raise SyncError(
            f"give at least {MIN_PREFIX} characters of the device id, not {visible(text)!r} "
            "(see `zerok devices`)"
        )
    return prefix


def _match(devices: list[DeviceInfo], text: str) -> DeviceInfo:
    prefix = _prefix(text)
    matches = [d for d in devices if str(d.device_id).startswith(prefix)]
    if not matches:
        raise SyncError(f"no device of this group has an id starting with {prefix!r}")
    if len(matches) > 1:
        names = ", ".join(f"{visible(d.name) or '?'} ({d.device_id.short()})" for d in matches)
        raise SyncError(f"{prefix!r} matches {len(matches)} devices ({names}): give more of it")
    return matches[0]


def _confirm(question: str, refusal: str) -> bool:
    """Ask on the terminal; ``refusal`` (a SyncError) when there is none to ask on."""
    if not sys.stdin.isatty():
        raise SyncError(refusal)
    err.print(f"{visible(question)} [y/N] ", end="", markup=False)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


async def _revoke(client: SyncClient, args: argparse.Namespace) -> int:
    target = _match(await client.list_devices(), args.device_id)
    name = visible(target.name) or "(no name)"
    label = f"{name} ({target.device_id})"
    if target.device_id == client.device_id and not args.revoke_self:
        raise SyncError(
            f"{args.device_id!r} is this device, {label}: to revoke it, add --self "
            "(it stops syncing for good)"
        )
    if target.revoked:
        raise SyncError(f"{label} is revoked already")
    question = f"Revoke {label}? It can never sync again."
    refusal = f"not revoking {label} without confirmation: add --yes (no terminal to ask on)"
    if not args.yes and not _confirm(question, refusal):
        err.print("not revoked")
        return 1
    with contextlib.ExitStack() as stack:
        if not args.json:
            stack.enter_context(err.status(f"revoking {safe(name)}…"))
        await client.revoke_device(target.device_id, args.reason)
    if args.json:
        emit_json({"revoked": str(target.device_id), "name": target.name, "reason": args.reason})
    else:
        out.print(f"Revoked {label} ({args.reason}); the relay refuses it now.", markup=False)
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    async def main() -> int:
        if args.action == "revoke":
            _prefix(args.device_id)  # before connecting: a short prefix is a usage slip
        client = open_client(args)
        async with client, ConnectionWatch(client) as watch:
            await watch.online(args.timeout, spinner=not args.json)
            if args.action == "revoke":
                return await _revoke(client, args)
            devices = await client.list_devices()
        if args.json:
            for d in devices:
                emit_json(
                    {
                        "device_id": str(d.device_id),
                        "name": d.name,
                        "last_seen": d.last_seen,
                        "pending": d.pending,
                        "online": d.online,
                        "revoked": d.revoked,
                        "this_device": d.device_id == client.device_id,
                    }
                )
            return 0
        table = Table("name", "last seen", "pending", "state", "device id")
        for d in devices:
            state = "revoked" if d.revoked else "online" if d.online else "offline"
            me = " (this device)" if d.device_id == client.device_id else ""
            table.add_row(
                Text(visible(d.name) + me),
                _when(d.last_seen),
                str(d.pending),
                state,
                str(d.device_id),
            )
        out.print(table)
        out.print("Revoke a lost device with: zerok devices revoke ID-PREFIX --reason lost")
        return 0

    return run_async(main)
