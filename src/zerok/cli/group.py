"""``zerok group rotate`` and ``zerok group recover``: new keys for the group, and taking
the group back with its recovery key (on a device a thief revoked, or on a new one)."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import sys
from pathlib import Path

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
    timeout_arg,
    visible,
    within,
)
from zerok.cli.devices import prefix, reason_arg
from zerok.client import Device, RecoveryKey, SyncClient
from zerok.errors import SyncError, WireError
from zerok.wire import DeviceId, GroupId

NOT_ON_ARGV = (
    "recovery words are never taken on the command line: they would stay in your shell "
    "history (remove them from it now). Give them on standard input, at the prompt, or "
    "with --words-file FILE"
)
PROMPT = "Recovery words (24, separated by spaces; what you type is not shown): "


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = commands.add_parser("group", help="rotate the group's keys, or recover the group")
    actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)

    rotate = actions.add_parser(
        "rotate",
        help="start a new epoch: new keys for every active device (a suspected leak)",
        description="Starts a new epoch: blobs pushed from now on are sealed under a new key "
        "that only the group's active devices get; open invites are closed. Any member may.",
    )
    add_common(rotate)
    rotate.add_argument("--reason", type=reason_arg, help="why, for every device")
    rotate.add_argument(
        "--timeout", type=timeout_arg, default=15.0, help="seconds to reach a relay (default 15)"
    )
    rotate.set_defaults(run=cmd_rotate)

    recover = actions.add_parser(
        "recover",
        help="take the group back with its recovery words",
        description="Takes the group back with its recovery key: the kept devices (this one, "
        "and each --keep) stay as admins, every other device is revoked, a new epoch starts. "
        "Works on a device that was revoked (by a thief) and on a new device (`zerok init`, "
        "then give --relay and --group). The words are read from standard input, a prompt, "
        "or --words-file; never from the command line.",
    )
    add_common(recover)
    recover.add_argument("words", nargs="*", help=argparse.SUPPRESS)  # refused: shell history
    recover.add_argument("--words-file", metavar="FILE", help="read the recovery words from FILE")
    recover.add_argument(
        "--keep",
        metavar="DEVICE",
        action="append",
        default=[],
        help="another device that stays (id or prefix); repeat for several. This device "
        "always stays",
    )
    recover.add_argument(
        "--relay",
        metavar="URL",
        action="append",
        help="a relay of the group (needed on a new device; repeat for several)",
    )
    recover.add_argument(
        "--group",
        metavar="GROUP_ID",
        type=group_arg,
        help="the group's id (needed on a new device; shown with the recovery words)",
    )
    recover.add_argument(
        "--timeout", type=timeout_arg, default=30.0, help="seconds to reach a relay (default 30)"
    )
    recover.set_defaults(run=cmd_recover)


def group_arg(text: str) -> GroupId:
    try:
        return GroupId.parse(text)
    except WireError:
        raise argparse.ArgumentTypeError(f"not a group id: {text!r}") from None


# -- rotate -------------------------------------------------------------------------------------


def cmd_rotate(args: argparse.Namespace) -> int:
    async def main() -> int:
        client = open_client(args)
        async with client, ConnectionWatch(client) as watch:
            await watch.online(args.timeout, spinner=not args.json)
            epoch = await client.rotate_keys(args.reason or "")
        if args.json:
            emit_json({"epoch": epoch, "reason": args.reason or ""})
        else:
            out.print(
                f"Rotated the group's keys: epoch {epoch}. Only the active devices get its key; "
                "open invites are closed.",
                markup=False,
            )
        return 0

    return run_async(main)


# -- recover ------------------------------------------------------------------------------------


def _read_words(args: argparse.Namespace) -> str:
    if args.words_file:
        return Path(args.words_file).read_text("utf-8")
    if sys.stdin.isatty():
        return getpass.getpass(PROMPT, stream=sys.stderr)
    return sys.stdin.read()


def _check(client: SyncClient, args: argparse.Namespace) -> None:
    """What the command line can tell before the words are read."""
    if client.group_id is None:
        if not args.relay or args.group is None:
            raise SyncError(
                "this device is in no group: to recover a group on it, give the group's "
                "relays and id: --relay URL --group GROUP_ID (kept with the recovery words)"
            )
    elif args.group is not None and args.group != client.group_id:
        raise SyncError(
            f"this device belongs to group {client.group_id.short()}, not "
            f"{args.group.short()}: recover that one from another --home"
        )


def _named(device: Device) -> str:
    me = ", this device" if device.this_device else ""
    return f"{visible(device.name) or '(no name)'} ({device.device_id.short()}{me})"


def _summary(client: SyncClient, seq: int, devices: list[Device], args: argparse.Namespace) -> None:
    kept = [d for d in devices if d.active]
    revoked = [d for d in devices if d.revoked_at == seq]
    if args.json:
        emit_json(
            {
                "group_id": str(client.group_id),
                "epoch": client.epoch,
                "kept": [str(d.device_id) for d in kept],
                "revoked": [str(d.device_id) for d in revoked],
            }
        )
        return
    group = client.group_id.short() if client.group_id else "?"
    out.print(f"Recovered group {group}: new keys, epoch {client.epoch}.", markup=False)
    if devices:
        out.print(f"Stay, as admins: {', '.join(_named(d) for d in kept)}", markup=False)
        out.print(f"Revoked now: {', '.join(_named(d) for d in revoked) or 'none'}", markup=False)
    else:
        out.print("`zerok devices` shows who stays and who was revoked.", markup=False)
    out.print(
        "Invite your other devices again with `zerok pair create`. The recovery words stay "
        "the same: keep them safe.",
        markup=False,
    )


def cmd_recover(args: argparse.Namespace) -> int:
    async def main() -> int:
        if args.words:
            raise SyncError(NOT_ON_ARGV)
        for item in args.keep:
            prefix(item)
        home = home_dir(args)
        require_device(home)
        client = new_client(home)
        _check(client, args)
        key = RecoveryKey.from_words(_read_words(args))
        fresh = client.group_id is None
        keep: list[DeviceId | str] = list(args.keep) if fresh else [client.device_id, *args.keep]
        relays = list(dict.fromkeys(r.strip() for r in args.relay or []))
        with contextlib.ExitStack() as stack:
            if not args.json:
                stack.enter_context(err.status("recovering the group…"))
            await within(
                args.timeout,
                client.recover(
                    key, keep=keep or None, relays=relays, group_id=args.group if fresh else None
                ),
                "recovering the group",
            )
        head = client.log_head
        assert head is not None
        try:
            devices = await within(args.timeout, client.list_devices(), "listing the devices")
        except SyncError as exc:  # recovered all the same: say so, and what is unknown
            err.print(f"(the devices could not be listed: {exc})", markup=False)
            devices = []
        _summary(client, head[0], devices, args)
        return 0

    return run_async(main)
