"""``zerok doctor``: check this device's data directory and its relays, and say how to fix
what is wrong. Read-only: it creates nothing."""

from __future__ import annotations

import argparse
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from zerok.cli.common import (
    add_common,
    check_state,
    emit_json,
    friendly,
    home_dir,
    out,
    relay_health,
    run_async,
    safe,
    timeout_arg,
)
from zerok.client.membership import Membership
from zerok.client.state import LocalState, LogRow
from zerok.crypto import DeviceIdentity
from zerok.errors import EpochKeyError, RemoteError, SyncError
from zerok.transport.connection import RelayConnection
from zerok.version import __version__
from zerok.wire import DeviceId, ErrorCode, GroupId, Welcome

MAX_SKEW = 60.0  # seconds between this clock and a relay's before it is a problem


@dataclass
class Check:
    check: str
    ok: bool
    detail: str
    fix: str = ""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    doctor = commands.add_parser(
        "doctor",
        help="check the data directory, the group's log and the relays; say how to fix "
        "what is wrong",
        description="Checks the data directory (0700), the device key (0600), the local "
        "state, the group's log (verified from its genesis), this device's membership and "
        "its epoch key, and for each relay: /health, its version, the clock skew, a full "
        "handshake and its log. Exit code 0 when all is well, 1 otherwise. Creates nothing.",
    )
    add_common(doctor)
    doctor.add_argument(
        "--timeout", type=timeout_arg, default=5.0, help="seconds per relay check (default 5)"
    )
    doctor.set_defaults(run=cmd_doctor)


def _mode_check(name: str, path: Path, wanted: int) -> Check:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & ~wanted & 0o077:
        return Check(
            name,
            False,
            f"{path} is mode {mode:04o}: other users can read it",
            f"chmod {wanted:o} {path}",
        )
    return Check(name, True, f"{path} (mode {mode:04o})")


@dataclass
class Device:
    """What the handshake needs, from the data directory."""

    identity: DeviceIdentity | None = None
    members: Membership | None = None
    relays: tuple[str, ...] = ()
    name: str = ""
    cursor: int = 0


def _local(home: Path, checks: list[Check]) -> Device:
    found = Device()
    if not home.is_dir():
        fix = "zerok init (or set SYNC_HOME / --home to the right directory)"
        checks.append(Check("data directory", False, f"{home} does not exist", fix))
        return found
    checks.append(_mode_check("data directory", home, 0o700))
    key = home / "device.key"
    if not key.exists():
        checks.append(Check("device key", False, f"no {key}", "zerok init"))
        return found
    checks.append(_mode_check("device key", key, 0o600))
    if checks[-1].ok:
        try:
            found.identity = DeviceIdentity.load(key)
        except SyncError as exc:
            checks.append(Check("device key", False, str(exc), f"restore {key} from a backup"))
    try:
        check_state(home)
    except SyncError as exc:
        checks.append(Check("state", False, str(exc).split("; ", 1)[0], str(exc).split("; ")[-1]))
        return found
    state = LocalState(home)
    try:
        if not state.has_group():
            checks.append(
                Check(
                    "state",
                    False,
                    f"{state.path}: this device is in no group",
                    "zerok init --relay URL starts one, zerok pair join CODE joins one",
                )
            )
            return found
        group = state.load_group()
        found.cursor = state.cursor
        found.name = state.get_value("device_name") or ""
        rows, keys = state.log_load(), state.keys_load()
    except SyncError as exc:
        checks.append(Check("state", False, str(exc), f"restore {state.path} from a backup"))
        return found
    finally:
        state.close()
    shown = f"{state.path}: group {group.group_id.short()}, cursor {found.cursor}"
    checks.append(Check("state", True, shown))
    found.relays = tuple(group.relays)
    if found.identity is not None:
        found.members = _log(found.identity, group.group_id, rows, keys, checks)
    return found


def _log(
    identity: DeviceIdentity,
    group_id: GroupId,
    rows: list[LogRow],
    keys: dict[int, bytes],
    checks: list[Check],
) -> Membership | None:
    """The saved log, verified again from its genesis; this device's place in it; the key
    of its current epoch."""
    fix = "restore state.db from a backup, or start over as a new device and pair again"
    try:
        members = Membership.load(identity, rows, keys)
    except SyncError as exc:
        checks.append(Check("log", False, f"the saved log does not verify: {exc}", fix))
        return None
    if members.group_id != group_id:
        checks.append(Check("log", False, "the saved log is another group's", fix))
        return None
    entries = "1 entry" if len(rows) == 1 else f"{len(rows)} entries"
    detail = f"{entries}, verified from the genesis; epoch {members.epoch}"
    checks.append(Check("log", True, detail))
    checks.append(_membership(members))
    if members.active:
        try:
            members.key_for(members.epoch)
            checks.append(
                Check("epoch key", True, f"this device holds epoch {members.epoch}'s key")
            )
        except EpochKeyError as exc:
            fix = "ask a device of the group to rotate the keys (zerok group rotate)"
            checks.append(Check("epoch key", False, str(exc), fix))
    return members


def _membership(members: Membership) -> Check:
    me = members.log.member(members.me)
    if me is None:
        return Check("membership", False, "this device is not in its group's log", "pair again")
    if me.active:
        return Check("membership", True, f"{me.role.value}, enrolled at #{me.since}")
    by = members.device_of(me.revoked_by) if me.revoked_by else None
    author = "the recovery key" if by is None else _name(members, by)
    why = f" ({me.reason})" if me.reason else ""
    fix = (
        "if nobody you trust did this (a stolen device?), take the group back: zerok group "
        "recover; else start over as a new device (zerok init in a new --home)"
    )
    return Check("membership", False, f"revoked at #{me.revoked_at} by {author}{why}", fix)


def _name(members: Membership, device: DeviceId) -> str:
    state = members.log.member(device)
    return f"{state.name or '?'} ({device.short()})" if state else device.short()


def _skew(name: str, relay_time: float) -> Check:
    skew = time.time() - relay_time
    detail = f"this clock is {abs(skew):.1f} s {'ahead of' if skew > 0 else 'behind'} the relay"
    if abs(skew) > MAX_SKEW:
        return Check(name, False, detail, "set this machine's clock (enable NTP)")
    return Check(name, True, detail)


async def _relay(url: str, device: Device, timeout: float) -> list[Check]:
    checks: list[Check] = []
    try:
        health = await relay_health(url, timeout)
    except SyncError as exc:
        return [Check(f"relay {url}", False, str(exc), "start the relay, or fix the URL")]
    status = str(health.doc.get("status"))
    version = str(health.doc.get("version", "?"))
    if status == "ok":
        checks.append(Check(f"relay {url}", True, f"/health ok, version {version}"))
    else:
        fix = "wait for it, or try another relay (zerok relays add URL)"
        checks.append(Check(f"relay {url}", False, f"/health says {status!r}", fix))
    if version != __version__:
        checks.append(
            Check("  version", True, f"relay {version}, this client {__version__} (they differ)")
        )
    members = device.members
    if device.identity is None or members is None or not members.active:
        if health.date is not None:
            checks.append(_skew("  clock", health.date))
        return checks
    started = time.time()
    try:
        conn = await RelayConnection.open(
            url,
            device.identity,
            members.group_id,
            timeout=timeout,
            heartbeat=None,
            device_name=device.name,
            last_cursor=device.cursor,
        )
    except RemoteError as exc:
        checks.append(Check("  handshake", False, f"refused: {exc.message}", _fix_remote(exc)))
        if health.date is not None:
            checks.append(_skew("  clock", health.date))
        return checks
    except SyncError as exc:
        checks.append(Check("  handshake", False, friendly(str(exc)), "see the relay's log"))
        return checks
    try:
        welcome = conn.welcome
        elapsed = time.time() - started
        assert welcome is not None
        checks.append(Check("  handshake", True, f"WELCOME after {elapsed * 1000:.0f} ms"))
        checks.append(_relay_log(members, welcome))
        if welcome.server_time:
            checks.append(_skew("  clock", welcome.server_time / 1000))
        elif health.date is not None:
            checks.append(_skew("  clock", health.date))
    finally:
        await conn.close()
    return checks


def _relay_log(members: Membership, welcome: Welcome) -> Check:
    """The relay's log head against this device's: behind or ahead heals itself when the
    device syncs; another entry at a position both hold is a fork."""
    ours = members.head_seq
    theirs = welcome.log_seq
    if theirs <= ours and members.log.hashes[theirs] != welcome.log_hash:
        fix = "stop using this relay (zerok relays remove URL) and tell its operator"
        detail = f"its log differs from this device's at #{theirs}: it showed another history"
        return Check("  relay log", False, detail, fix)
    if theirs == ours:
        return Check("  relay log", True, f"at #{theirs} as this device, epoch {welcome.epoch}")
    if theirs < ours:
        detail = f"at #{theirs}, behind this device (#{ours}): it gets the rest on the next sync"
    else:
        detail = f"at #{theirs}, ahead of this device (#{ours}): the next sync reads it"
    return Check("  relay log", True, detail)


def _fix_remote(exc: RemoteError) -> str:
    if exc.code == ErrorCode.DEVICE_REVOKED:
        return (
            "this device was revoked: if nobody you trust did it, zerok group recover; else "
            "start over as a new device (zerok init in a new --home)"
        )
    if exc.code in (ErrorCode.UNKNOWN_GROUP, ErrorCode.UNAUTHORIZED):
        return "the relay lacks the group's log: zerok pull brings it (then run doctor again)"
    return "see the relay's log"


def cmd_doctor(args: argparse.Namespace) -> int:
    async def main() -> int:
        home = home_dir(args)
        checks: list[Check] = []
        device = _local(home, checks)
        for url in device.relays:
            checks.extend(await _relay(url, device, args.timeout))
        healthy = all(c.ok for c in checks)
        if args.json:
            emit_json(
                {"ok": healthy, "version": __version__, "checks": [asdict(c) for c in checks]}
            )
        else:
            out.print(f"zerok {__version__}, data directory {safe(str(home))}")
            for c in checks:
                mark = "[green]ok[/]  " if c.ok else "[bold red]FAIL[/]"
                out.print(f"{mark} {safe(c.check)}: {safe(c.detail)}")
                if c.fix:
                    out.print(f"       fix: {safe(c.fix)}")
            out.print("all is well" if healthy else "problems found: see fix above")
        return 0 if healthy else 1

    return run_async(main)
