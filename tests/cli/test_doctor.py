"""``zerok doctor``: the data directory, the group's log (verified again from its
genesis), this device's membership and epoch key, and each relay (health, handshake, its
log, clock), each problem with its fix. Read-only."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from tests.cli.support import RELAY_ARGS, join, ok, ok_json, start, zerok
from tests.relay.support import RelayLauncher
from zerok.testing import InProcessRelay

REFUSED_HINT = "connection refused — is the relay running? (zerok relay)"


def checks_of(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["check"].strip(): c for c in report["checks"]}


def failed(home: Path, *args: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The report of a doctor that found problems, and its failed checks by name."""
    result = zerok(home, "doctor", "--json", *args)
    assert result.returncode == 1, result
    report = json.loads(result.stdout)
    assert report["ok"] is False
    return report, {c["check"].strip(): c for c in report["checks"] if not c["ok"]}


def test_a_healthy_device_and_a_sick_one(launcher: RelayLauncher, tmp_path: Path) -> None:
    relay = launcher.start(*RELAY_ARGS)
    home = tmp_path / "home"
    start(home, "laptop", relay)

    report = ok_json(zerok(home, "doctor", "--json"))
    assert report["ok"] is True
    checks = checks_of(report)
    expected = {
        "data directory",
        "device key",
        "state",
        "log",
        "membership",
        "epoch key",
        f"relay {relay.url}",
        "handshake",
        "relay log",
        "clock",
    }
    assert expected <= set(checks), checks
    assert all(c["ok"] for c in report["checks"])
    assert checks["log"]["detail"] == "1 entry, verified from the genesis; epoch 0"
    assert checks["membership"]["detail"] == "admin, enrolled at #0"
    assert "WELCOME" in checks["handshake"]["detail"]
    assert checks["relay log"]["detail"] == "at #0 as this device, epoch 0"
    assert "all is well" in ok(zerok(home, "doctor"))

    (home / "device.key").chmod(0o644)
    home.chmod(0o755)
    relay.stop()
    _, bad = failed(home, "--timeout", "2")
    assert bad["device key"]["fix"] == f"chmod 600 {home / 'device.key'}"
    assert bad["data directory"]["fix"] == f"chmod 700 {home}"
    assert REFUSED_HINT in bad[f"relay {relay.url}"]["detail"]
    text = zerok(home, "doctor", "--timeout", "2")
    assert text.returncode == 1
    assert "fix: chmod 600" in text.stdout.decode()


def test_a_relay_ahead_is_fine_and_a_revoked_device_is_told_to_recover(
    relay: InProcessRelay, tmp_path: Path
) -> None:
    laptop, phone = tmp_path / "laptop", tmp_path / "phone"
    start(laptop, "laptop", relay)
    join(laptop, phone, "phone")
    ok(zerok(laptop, "group", "rotate"))
    report = ok_json(zerok(phone, "doctor", "--json"))
    assert "ahead of this device (#2)" in checks_of(report)["relay log"]["detail"]

    ok(zerok(phone, "pull"))  # reads the log: at epoch 1 too
    phone_id = ok_json(zerok(phone, "status", "--json"))["device_id"]
    ok(zerok(laptop, "devices", "revoke", phone_id[:8], "--reason", "stolen", "--yes"))
    ok(zerok(phone, "status"))  # the relay refuses it: its saved log still says active
    _, bad = failed(phone)
    assert "revoked" in bad["handshake"]["detail"]
    assert "zerok group recover" in bad["handshake"]["fix"]


def test_a_device_that_knows_it_was_revoked(relay: InProcessRelay, tmp_path: Path) -> None:
    laptop, phone = tmp_path / "laptop", tmp_path / "phone"
    start(laptop, "laptop", relay)
    phone_id = join(laptop, phone, "phone", "--role", "admin")
    ok(zerok(phone, "devices", "revoke", phone_id[:8], "--self", "--yes", "--reason", "sold"))
    report, bad = failed(phone)
    assert bad["membership"]["detail"] == f"revoked at #3 by phone ({phone_id[:8]}) (sold)"
    assert "zerok group recover" in bad["membership"]["fix"]
    assert "handshake" not in checks_of(report)  # a revoked device has none to try


def test_a_damaged_log_and_a_lost_epoch_key(relay: InProcessRelay, tmp_path: Path) -> None:
    laptop, phone = tmp_path / "laptop", tmp_path / "phone"
    start(laptop, "laptop", relay)
    join(laptop, phone, "phone")
    # The phone got epoch 0's key from its invite: nothing in the log gives it back.
    with sqlite3.connect(phone / "state.db") as db:
        db.execute("DELETE FROM epoch_keys")
    _, bad = failed(phone)
    assert set(bad) == {"epoch key"}
    assert "holds no key of epoch 0" in bad["epoch key"]["detail"]

    with sqlite3.connect(laptop / "state.db") as db:
        (entry,) = db.execute("SELECT entry FROM log WHERE seq = 1").fetchone()
        db.execute("UPDATE log SET entry = ? WHERE seq = 1", (entry[:-1] + bytes([entry[-1] ^ 1]),))
    _, bad = failed(laptop)
    assert bad["log"]["detail"].startswith("the saved log does not verify")
    assert "restore state.db from a backup" in bad["log"]["fix"]
