"""``zerok init``, ``zerok status`` and ``zerok devices``."""

from __future__ import annotations

import argparse
import contextlib
from datetime import UTC, datetime

from rich.table import Table

from zerok.cli.common import add_common, emit_json, err, home_dir, open_client, out, run_async
from zerok.client import DeviceRevokedError, NotConnectedError, SyncClient


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    init = commands.add_parser("init", help="create this device's identity")
    add_common(init)
    init.add_argument("--name", help="device name shown to the group (env SYNC_DEVICE_NAME)")
    init.set_defaults(run=cmd_init)

    status = commands.add_parser("status", help="device, group, relays, connection, pending")
    add_common(status)
    status.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to try the relays (default 5)"
    )
    status.set_defaults(run=cmd_status)

    devices = commands.add_parser("devices", help="list the group's devices, or revoke one")
    add_common(devices)
    actions = devices.add_subparsers(dest="action", metavar="ACTION")
    revoke = actions.add_parser("revoke", help="remove a device from the group")
    add_common(revoke, nested=True)
    revoke.add_argument("device_id", help="the device id (base32, from `zerok devices`)")
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
        client = SyncClient(home, device_name=args.name)
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
        client = open_client(args, need_group=False)
        connection = "no group"
        if client.group_id is not None:
            async with client:
                try:
                    await client.wait_connected(args.timeout)
                    connection = "online"
                except NotConnectedError:
                    connection = "unreachable"
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
                out.print(f"{key.replace('_', ' '):<12} {shown if shown is not None else '-'}")
        return 0

    return run_async(main)


def cmd_devices(args: argparse.Namespace) -> int:
    async def main() -> int:
        client = open_client(args)
        async with client:
            if args.action == "revoke":
                with contextlib.ExitStack() as stack:
                    if not args.json:
                        stack.enter_context(err.status("revoking…"))
                    await client.revoke_device(args.device_id, args.reason)
                if args.json:
                    emit_json({"revoked": args.device_id, "reason": args.reason})
                else:
                    out.print(
                        f"Revoked {args.device_id} ({args.reason}); the relay refuses it now."
                    )
                return 0
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
            table.add_row(d.name + me, _when(d.last_seen), str(d.pending), state, str(d.device_id))
        out.print(table)
        out.print("Revoke a lost device with: zerok devices revoke ID-PREFIX --reason lost")
        return 0

    return run_async(main)
