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
from zerok.client.state import LocalState
from zerok.crypto import DeviceIdentity, GroupKeys
from zerok.errors import RemoteError, SyncError
from zerok.transport.connection import RelayConnection
from zerok.version import __version__

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
        help="check the data directory and the relays; say how to fix what is wrong",
        description="Checks the data directory (0700), the device key (0600), the local "
        "state, and for each relay: /health, its version, the clock skew and a full "
        "handshake. Exit code 0 when all is well, 1 otherwise. Creates nothing.",
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
    keys: GroupKeys | None = None
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
                    "zerok pair create --relay URL, or zerok pair join CODE",
                )
            )
            return found
        group = state.load_group()
        found.cursor = state.cursor
        found.name = state.get_value("device_name") or ""
    except SyncError as exc:
        checks.append(Check("state", False, str(exc), f"restore {state.path} from a backup"))
        return found
    finally:
        state.close()
    shown = f"{state.path}: group {group.keys.group_id.short()}, cursor {found.cursor}"
    checks.append(Check("state", True, shown))
    found.keys, found.relays = group.keys, tuple(group.relays)
    return found


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
    if device.identity is None or device.keys is None:
        if health.date is not None:
            checks.append(_skew("  clock", health.date))
        return checks
    started = time.time()
    try:
        conn = await RelayConnection.open(
            url,
            device.identity,
            device.keys,
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
        if welcome.server_time:
            checks.append(_skew("  clock", welcome.server_time / 1000))
        elif health.date is not None:
            checks.append(_skew("  clock", health.date))
    finally:
        await conn.close()
    return checks


def _fix_remote(exc: RemoteError) -> str:
    if "revoked" in exc.message.lower():
        return "this device was revoked: start over as a new device (zerok init in a new --home)"
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
