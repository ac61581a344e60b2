"""``zerok init`` (and a new group with its recovery key) and ``zerok status``."""

from __future__ import annotations

import argparse
from typing import Any

from zerok.cli.common import (
    PASSPHRASE_GONE,
    ConnectionWatch,
    Removed,
    add_common,
    check_state,
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
from zerok.cli.pair import check_relays, register, show_recovery
from zerok.client import DeviceRevokedError, NotConnectedError, SyncClient, SyncStatus
from zerok.errors import SyncError


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    init = commands.add_parser(
        "init",
        help="create this device's identity; with --relay, also start a group",
        description="Creates this device's identity. With --relay, it also starts a new "
        "group with this device as its first admin, and shows the group's recovery key "
        "(24 words and a QR code) this once.",
    )
    add_common(init)
    init.add_argument("--name", help="device name shown to the group (env SYNC_DEVICE_NAME)")
    init.add_argument(
        "--relay",
        metavar="URL",
        action="append",
        help="start a group synced through this relay (ws://HOST:PORT); repeat for several, "
        "tried in order",
    )
    init.add_argument(
        "--timeout", type=timeout_arg, default=15.0, help="seconds to wait for a relay (15)"
    )
    init.add_argument("--passphrase", action=Removed, why=PASSPHRASE_GONE)
    init.set_defaults(run=cmd_init)

    status = commands.add_parser("status", help="device, group, relays, connection, epoch, pending")
    add_common(status)
    status.add_argument(
        "--timeout", type=timeout_arg, default=5.0, help="seconds to try the relays (default 5)"
    )
    status.set_defaults(run=cmd_status)


def cmd_init(args: argparse.Namespace) -> int:
    async def main() -> int:
        home = home_dir(args)
        existed = (home / "device.key").exists()
        relays = list(dict.fromkeys(r.strip() for r in args.relay or []))  # in order, once each
        check_state(home)
        if relays:  # before anything is made: a mistyped URL creates nothing, not even a key
            await check_relays(relays, args.timeout, quiet=args.json)
        client = new_client(home, args.name)
        if relays and client.group_id is not None:
            raise SyncError(
                f"this device already belongs to group {client.group_id.short()}: a data "
                "directory holds one group (start another with --home DIR)"
            )
        created = await client.create_group(relays) if relays else None
        doc: dict[str, Any] = {
            "device_id": str(client.device_id),
            "home": str(home),
            "created": not existed,
        }
        if created is None:
            _show_device(doc, args, alone=True)
            return 0
        if args.json:  # the words go out once, in the one document, whatever follows
            trouble = await register(client, args.timeout)
            doc |= {
                "group_id": str(created.group_id),
                "relays": client.relays,
                "registered": not trouble,
                "recovery_words": created.recovery.words(),
            }
            emit_json(doc)
            return 0
        _show_device(doc, args, alone=False)
        out.print(
            f"Started group {created.group_id.short()} (relays {safe(', '.join(relays))}); "
            "this device is its admin"
        )
        show_recovery(created)
        trouble = await register(client, args.timeout)
        if trouble:
            err.print(
                f"note: no relay holds the group yet ({safe(trouble)}); the next command "
                "that connects brings it",
                markup=True,
            )
        out.print("Next: `zerok pair create` invites your other devices")
        return 0

    return run_async(main)


def _show_device(doc: dict[str, Any], args: argparse.Namespace, *, alone: bool) -> None:
    """The device's part of ``init``; ``alone``: no group was started with it."""
    if args.json:
        emit_json(doc)
        return
    verb = "initialised" if doc["created"] else "already initialised"
    out.print(f"Device {verb} in {safe(doc['home'])}")
    out.print(f"  device id  {doc['device_id']}")
    if alone:
        out.print(
            "Next: `zerok init --relay ws://HOST:PORT` starts a group, `zerok pair join CODE` "
            "joins one"
        )


async def _reach(client: SyncClient, args: argparse.Namespace) -> str:
    """online, unreachable or revoked: what a connection attempt within the timeout says."""
    try:
        async with client, ConnectionWatch(client, quiet=True) as watch:
            try:
                await client.wait_connected(args.timeout)
            except NotConnectedError:
                if watch.reasons and not args.json:
                    err.print(safe(watch.reasons[-1]))
                return "unreachable"
    except DeviceRevokedError:  # known from the log already: connect() refuses to start
        return "revoked"
    return "revoked" if client.status is SyncStatus.REVOKED else "online"


def cmd_status(args: argparse.Namespace) -> int:
    async def main() -> int:
        require_device(home_dir(args))  # a read-only command: it creates nothing
        client = open_client(args, need_group=False)
        connection = "no group" if client.group_id is None else await _reach(client, args)
        head = client.log_head
        doc = {
            "device_id": str(client.device_id),
            "device_name": client.device_name,
            "group_id": str(client.group_id) if client.group_id else None,
            "relays": client.relays,
            "connection": connection,
            "epoch": client.epoch,
            "log_seq": head[0] if head else None,
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
