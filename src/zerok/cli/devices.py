"""``zerok devices``, ``zerok devices revoke`` and ``zerok devices role``: the group's
devices as its log has them (role, active or revoked, by whom and why), with what the
relay sees of each (online, last seen, pending)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from datetime import UTC, datetime
from typing import Any

from rich.box import SIMPLE_HEAD
from rich.table import Table
from rich.text import Text

from zerok.cli.common import (
    ConnectionWatch,
    add_common,
    emit_json,
    err,
    open_client,
    out,
    run_async,
    safe,
    timeout_arg,
    visible,
)
from zerok.client import Device, Role, SyncClient
from zerok.errors import SyncError

MIN_PREFIX = 4  # characters of a device id to name it by
MAX_REASON = 256  # characters: what the log keeps of a reason


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    devices = commands.add_parser(
        "devices", help="list the group's devices; revoke one, or change its role"
    )
    add_common(devices)
    devices.add_argument(
        "--timeout", type=timeout_arg, default=15.0, help="seconds to reach a relay (default 15)"
    )
    actions = devices.add_subparsers(dest="action", metavar="ACTION")
    revoke = actions.add_parser(
        "revoke",
        help="remove a device from the group for good (and rotate the group's keys)",
        description="Revokes a device: a new epoch starts whose key it never gets, relays "
        "refuse it, open invites are closed. An admin may revoke any device, a member only "
        "itself.",
    )
    revoke.add_argument("device_id", metavar="DEVICE", help=_device_help())
    revoke.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    revoke.add_argument(
        "--self",
        dest="revoke_self",
        action="store_true",
        help="allow revoking the device this command runs on",
    )
    revoke.add_argument(
        "--reason",
        type=reason_arg,
        default="lost",
        help="why, for every device to read (default lost; e.g. stolen, sold)",
    )
    role = actions.add_parser(
        "role",
        help="make a device an admin or a member (admins only)",
        description="Admins may invite, revoke any device and change roles; members sync, "
        "rotate keys and may revoke themselves. A group always keeps one admin.",
    )
    role.add_argument("device_id", metavar="DEVICE", help=_device_help())
    role.add_argument("role", choices=[r.value for r in Role])
    for action in (revoke, role):
        add_common(action, nested=True)
        action.add_argument(
            "--timeout",
            type=timeout_arg,
            default=argparse.SUPPRESS,
            help="seconds to reach a relay (default 15)",
        )
    devices.set_defaults(run=cmd_devices)


def _device_help() -> str:
    return (
        f"the device id, or an unambiguous prefix of at least {MIN_PREFIX} characters "
        "(from `zerok devices`)"
    )


def reason_arg(text: str) -> str:
    """A revocation's reason: printable text, 1..256 characters."""
    reason = text.strip()
    if not reason or len(reason) > MAX_REASON:
        raise argparse.ArgumentTypeError(f"a reason has 1..{MAX_REASON} characters")
    if visible(reason) != reason:
        raise argparse.ArgumentTypeError("a reason cannot hold control characters")
    return reason


# -- naming a device ----------------------------------------------------------------------------


def prefix(text: str) -> str:
    """``text`` as an id prefix, or SyncError if it is too short to name one device."""
    found = text.strip().lower()
    if len(found) < MIN_PREFIX:
        raise SyncError(
            f"give at least {MIN_PREFIX} characters of the device id, not {visible(text)!r} "
            "(see `zerok devices`)"
        )
    return found


def match(devices: list[Device], text: str) -> Device:
    """The one device whose id starts with ``text``."""
    start = prefix(text)
    matches = [d for d in devices if str(d.device_id).startswith(start)]
    if not matches:
        raise SyncError(f"no device of this group has an id starting with {start!r}")
    if len(matches) > 1:
        names = ", ".join(f"{visible(d.name) or '?'} ({d.device_id.short()})" for d in matches)
        raise SyncError(f"{start!r} matches {len(matches)} devices ({names}): give more of it")
    return matches[0]


def label(device: Device) -> str:
    return f"{visible(device.name) or '(no name)'} ({device.device_id})"


def confirm(question: str, refusal: str) -> bool:
    """Ask on the terminal; ``refusal`` (a SyncError) when there is none to ask on."""
    if not sys.stdin.isatty():
        raise SyncError(refusal)
    err.print(f"{visible(question)} [y/N] ", end="", markup=False)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


# -- the listing --------------------------------------------------------------------------------


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def _by(device: Device, names: dict[str, str]) -> str:
    if device.revoked_by is None:
        return "the recovery key"
    return visible(names.get(str(device.revoked_by), "")) or device.revoked_by.short()


def _state(device: Device, names: dict[str, str]) -> str:
    if device.active:
        return "active"
    # A recovery's reason is always "recovered": "by the recovery key" says it already.
    said = device.reason and device.revoked_by is not None
    why = f" ({visible(device.reason)})" if said else ""
    return f"revoked #{device.revoked_at} by {_by(device, names)}{why}"


def _seen(device: Device) -> str:
    if device.online:
        return "online now"
    return _when(device.last_seen) if device.last_seen else "never"


def device_doc(device: Device) -> dict[str, Any]:
    return {
        "device_id": str(device.device_id),
        "name": device.name,
        "role": device.role.value,
        "active": device.active,
        "revoked": device.revoked,
        "enrolled_at": device.enrolled_at,
        "revoked_at": device.revoked_at,
        "revoked_by": str(device.revoked_by) if device.revoked_by else None,
        "reason": device.reason,
        "online": device.online,
        "last_seen": device.last_seen,
        "pending": device.pending,
        "this_device": device.this_device,
    }


def _show(client: SyncClient, devices: list[Device], args: argparse.Namespace) -> None:
    head = client.log_head
    seq = head[0] if head else None
    if args.json:
        emit_json(
            {
                "group_id": str(client.group_id),
                "epoch": client.epoch,
                "log_seq": seq,
                "devices": [device_doc(d) for d in devices],
            }
        )
        return
    names = {str(d.device_id): d.name for d in devices}
    table = Table(box=SIMPLE_HEAD, padding=(0, 1, 0, 0), show_edge=False)
    for column in ("device", "name", "role", "enrolled", "state", "last seen (UTC)", "pending"):
        table.add_column(column, no_wrap=column not in ("name", "state"), ratio=column == "state")
    for d in devices:
        table.add_row(
            d.device_id.short(),
            Text(visible(d.name) + (" *" if d.this_device else "")),
            d.role.value,
            f"#{d.enrolled_at}",
            Text(_state(d, names)),
            _seen(d),
            str(d.pending),
        )
    out.print(table)
    group = client.group_id.short() if client.group_id else "-"
    out.print(
        f"* this device. Group {group} is at epoch {client.epoch}, log entry #{seq}.",
        markup=False,
    )
    out.print("Revoke a lost device with: zerok devices revoke DEVICE --reason lost")


# -- changes --------------------------------------------------------------------------------------


async def _revoke(client: SyncClient, args: argparse.Namespace) -> int:
    target = match(await client.list_devices(), args.device_id)
    name = label(target)
    if target.this_device and not args.revoke_self:
        raise SyncError(
            f"{args.device_id!r} is this device, {name}: to revoke it, add --self "
            "(it stops syncing for good)"
        )
    if target.revoked:
        raise SyncError(f"{name} is revoked already")
    question = f"Revoke {name}? It can never sync again."
    refusal = f"not revoking {name} without confirmation: add --yes (no terminal to ask on)"
    if not args.yes and not confirm(question, refusal):
        err.print("not revoked")
        return 1
    with contextlib.ExitStack() as stack:
        if not args.json:
            stack.enter_context(err.status(f"revoking {safe(visible(target.name))}…"))
        await client.revoke_device(target.device_id, args.reason)
    if args.json:
        emit_json(
            {
                "revoked": str(target.device_id),
                "name": target.name,
                "reason": args.reason,
                "epoch": client.epoch,
            }
        )
        return 0
    out.print(f"Revoked {name} ({visible(args.reason)}).", markup=False)
    if target.this_device:
        out.print("This device is out of the group: it cannot sync any more.", markup=False)
    else:
        out.print(
            f"The group's keys were rotated: epoch {client.epoch}, whose key it never gets; "
            "relays refuse it, and open invites are closed.",
            markup=False,
        )
    return 0


async def _set_role(client: SyncClient, args: argparse.Namespace) -> int:
    target = match(await client.list_devices(), args.device_id)
    wanted = Role(args.role)
    if target.revoked:
        raise SyncError(f"{label(target)} is revoked: it has no role to change")
    if target.role is not wanted:
        await client.set_role(target.device_id, wanted)
    if args.json:
        emit_json({"device_id": str(target.device_id), "role": wanted.value})
    else:
        what = "is an admin now" if wanted is Role.ADMIN else "is a member now"
        if target.role is wanted:
            what = what.replace(" now", " already")
        out.print(f"{label(target)} {what}", markup=False)
    return 0


def cmd_devices(args: argparse.Namespace) -> int:
    async def main() -> int:
        if args.action in ("revoke", "role"):
            prefix(args.device_id)  # before connecting: a short prefix is a usage slip
        client = open_client(args)
        async with client, ConnectionWatch(client) as watch:
            await watch.online(args.timeout, spinner=not args.json)
            if args.action == "revoke":
                return await _revoke(client, args)
            if args.action == "role":
                return await _set_role(client, args)
            devices = await client.list_devices()
        _show(client, devices, args)
        return 0

    return run_async(main)
