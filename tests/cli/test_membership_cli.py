"""``zerok devices`` (roles, revocations, enrollments, the epoch), ``devices revoke`` and
``devices role``, ``group rotate`` and ``group recover``, against a real relay in this
process: a lost phone, a thief who revoked the owner's laptop, a group recovered on a new
device."""

from __future__ import annotations

import getpass
import io
import sys
from pathlib import Path

import pytest

from tests.cli.support import (
    devices,
    init,
    join,
    ok,
    ok_json,
    start,
    usage_error,
    user_error,
    zerok,
)
from zerok.cli import common
from zerok.testing import InProcessRelay


def test_devices_shows_roles_enrollments_revocations_and_the_epoch(
    relay: InProcessRelay, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    laptop_home, phone_home, tablet_home = (tmp_path / n for n in ("laptop", "phone", "tablet"))
    group = start(laptop_home, "laptop", relay)
    phone = join(laptop_home, phone_home, "phone")
    tablet = join(laptop_home, tablet_home, "tablet", "--role", "admin")
    ok(zerok(phone_home, "pull"))  # the relay has seen the phone

    doc = ok_json(zerok(laptop_home, "devices", "--json"))
    assert (doc["group_id"], doc["epoch"], doc["log_seq"]) == (group["group_id"], 0, 4)
    listed = {d["name"]: d for d in doc["devices"]}
    assert list(listed) == ["laptop", "phone", "tablet"]  # enrollment order
    assert listed["laptop"] == {
        "device_id": group["device_id"],
        "name": "laptop",
        "role": "admin",
        "active": True,
        "revoked": False,
        "enrolled_at": 0,
        "revoked_at": None,
        "revoked_by": None,
        "reason": "",
        "online": True,  # this very command's connection
        "last_seen": listed["laptop"]["last_seen"],
        "pending": 0,
        "this_device": True,
    }
    assert (listed["phone"]["role"], listed["phone"]["enrolled_at"]) == ("member", 2)
    assert listed["phone"]["last_seen"] > 0 and not listed["phone"]["online"]
    assert (listed["tablet"]["role"], listed["tablet"]["enrolled_at"]) == ("admin", 4)

    ok(zerok(tablet_home, "devices", "revoke", phone[:8], "--reason", "left on a train", "--yes"))
    after = devices(laptop_home)
    assert after["phone"]["revoked"] and after["phone"]["revoked_at"] == 5
    assert (after["phone"]["revoked_by"], after["phone"]["reason"]) == (tablet, "left on a train")

    monkeypatch.setattr(common.out, "_width", 160)  # a wide terminal: one line per device
    table = ok(zerok(laptop_home, "devices"))
    flat = " ".join(table.split())
    assert "laptop * admin #0 active online now" in flat, table
    assert "revoked #5 by tablet (left on a train)" in flat, table
    assert f"{phone[:8]} phone member #2" in flat, table
    assert "Group" in table and "epoch 1, log entry #5" in table


def test_revoke_rotates_the_keys_and_shuts_the_device_out(
    relay: InProcessRelay, tmp_path: Path
) -> None:
    laptop_home, phone_home = tmp_path / "laptop", tmp_path / "phone"
    start(laptop_home, "laptop", relay)
    phone = join(laptop_home, phone_home, "phone")
    text = ok(zerok(laptop_home, "devices", "revoke", phone[:10], "--reason", "stolen", "--yes"))
    assert text.startswith(f"Revoked phone ({phone}) (stolen).")
    assert "epoch 1, whose key it never gets" in text
    assert ok_json(zerok(laptop_home, "status", "--json"))["epoch"] == 1
    user_error(
        zerok(phone_home, "push", "--text", "still here?", "--timeout", "10"),
        "revoked",
        "zerok group recover",
    )
    assert ok_json(zerok(phone_home, "status", "--json"))["connection"] == "revoked"


def test_roles_change_and_a_group_keeps_an_admin(relay: InProcessRelay, tmp_path: Path) -> None:
    laptop_home, phone_home = tmp_path / "laptop", tmp_path / "phone"
    laptop = start(laptop_home, "laptop", relay)["device_id"]
    phone = join(laptop_home, phone_home, "phone")

    # A member may not change roles, nor revoke another device; it may revoke itself.
    user_error(zerok(phone_home, "devices", "role", phone[:6], "admin"), "only an admin")
    user_error(zerok(phone_home, "devices", "revoke", laptop[:6], "--yes"), "revoke only itself")

    assert ok(zerok(laptop_home, "devices", "role", phone[:6], "admin")).endswith(
        "is an admin now\n"
    )
    assert "is an admin already" in ok(zerok(laptop_home, "devices", "role", phone[:6], "admin"))
    assert devices(phone_home)["phone"]["role"] == "admin"
    done = ok_json(zerok(phone_home, "devices", "role", laptop[:6], "member", "--json"))
    assert done == {"device_id": laptop, "role": "member"}
    # The last admin cannot step down, nor leave the others without an admin.
    user_error(zerok(phone_home, "devices", "role", phone[:6], "member"), "no admin left")
    user_error(
        zerok(phone_home, "devices", "revoke", phone[:6], "--self", "--yes"), "no admin left"
    )
    ok(zerok(phone_home, "devices", "revoke", laptop[:6], "--yes"))
    user_error(zerok(phone_home, "devices", "role", laptop[:6], "admin"), "revoked")


def test_group_rotate_starts_a_new_epoch_for_every_active_device(
    relay: InProcessRelay, tmp_path: Path
) -> None:
    laptop_home, phone_home = tmp_path / "laptop", tmp_path / "phone"
    start(laptop_home, "laptop", relay)
    join(laptop_home, phone_home, "phone")
    text = ok(zerok(phone_home, "group", "rotate", "--reason", "an invite leaked"))  # a member may
    assert text.startswith("Rotated the group's keys: epoch 1.")
    doc = ok_json(zerok(laptop_home, "group", "rotate", "--json"))
    assert doc == {"epoch": 2, "reason": ""}
    ok(zerok(laptop_home, "push", "--text", "under epoch 2"))
    assert "under epoch 2" in ok(zerok(phone_home, "pull"))  # it reads the log, then the blob
    assert ok_json(zerok(phone_home, "status", "--json"))["epoch"] == 2


# -- recovery -------------------------------------------------------------------------------------


def test_a_thief_revoked_the_laptop_and_the_words_take_the_group_back(
    relay: InProcessRelay, tmp_path: Path
) -> None:
    laptop_home, phone_home, tablet_home = (tmp_path / n for n in ("laptop", "phone", "tablet"))
    group = start(laptop_home, "laptop", relay)
    words = " ".join(group["recovery_words"])
    laptop = group["device_id"]
    phone = join(laptop_home, phone_home, "phone", "--role", "admin")  # stolen
    tablet = join(laptop_home, tablet_home, "tablet")
    ok(zerok(phone_home, "devices", "revoke", laptop[:8], "--reason", "mine now", "--yes"))
    user_error(zerok(laptop_home, "devices"), "revoked", "zerok group recover")

    # Words on the command line: refused, before anything happens.
    user_error(
        zerok(laptop_home, "group", "recover", *group["recovery_words"][:3]),
        "never taken on the command line",
        "shell history",
    )
    mistyped = words.replace(group["recovery_words"][4], "zzzzzz", 1)
    user_error(
        zerok(laptop_home, "group", "recover", stdin=mistyped.encode()),
        "word 5",
        "nothing was changed",
    )

    text = ok(zerok(laptop_home, "group", "recover", "--keep", tablet[:6], stdin=words.encode()))
    assert text.startswith(f"Recovered group {group['group_id'][:8]}: new keys, epoch 2.")
    assert f"Stay, as admins: laptop ({laptop[:8]}, this device), tablet ({tablet[:8]})" in text
    assert f"Revoked now: phone ({phone[:8]})" in text
    listed = devices(laptop_home)
    assert listed["laptop"]["active"] and listed["tablet"]["role"] == "admin"
    assert listed["phone"]["revoked"] and listed["phone"]["revoked_by"] is None
    assert ok_json(zerok(laptop_home, "status", "--json"))["connection"] == "online"
    user_error(zerok(phone_home, "push", "--text", "ha", "--timeout", "10"), "revoked")
    ok(zerok(laptop_home, "push", "--text", "mine again"))
    assert "mine again" in ok(zerok(tablet_home, "pull"))


def test_recover_on_a_new_device_with_a_words_file(relay: InProcessRelay, tmp_path: Path) -> None:
    laptop_home, phone_home, new_home = (tmp_path / n for n in ("laptop", "phone", "new"))
    group = start(laptop_home, "laptop", relay)
    phone = join(laptop_home, phone_home, "phone")
    ok(zerok(laptop_home, "push", "--text", "before the loss"))
    words_file = tmp_path / "words.txt"
    words_file.write_text(" ".join(group["recovery_words"]) + "\n")

    new = init(new_home, "new")
    recover = ("group", "recover", "--words-file", str(words_file))
    user_error(zerok(new_home, *recover), "in no group", "--relay URL --group GROUP_ID")
    user_error(zerok(new_home, *recover, "--relay", relay.url), "--group")
    doc = ok_json(
        zerok(
            new_home,
            *recover,
            "--relay",
            relay.url,
            "--group",
            group["group_id"],
            "--keep",
            phone[:6],
            "--json",
        )
    )
    assert doc["group_id"] == group["group_id"] and doc["epoch"] == 1
    assert sorted(doc["kept"]) == sorted([phone, new])
    assert doc["revoked"] == [group["device_id"]]
    # The recovery key held every epoch's key: the new device reads the history.
    assert "before the loss" in ok(zerok(new_home, "pull"))
    assert ok_json(zerok(new_home, "status", "--json"))["relays"] == [relay.url]
    # Another group's id on a device of a group: refused.
    other = start(tmp_path / "other", "other", relay)["group_id"]
    user_error(zerok(new_home, *recover, "--group", other), "belongs to group")


def test_recover_reads_the_words_at_a_hidden_prompt(
    relay: InProcessRelay,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from zerok.cli import group as group_cli  # noqa: PLC0415
    from zerok.cli.main import main  # noqa: PLC0415

    home = tmp_path / "laptop"
    created = start(home, "laptop", relay)
    asked: list[str] = []

    def prompt(text: str, stream: object = None) -> str:
        asked.append(text)
        return " ".join(created["recovery_words"])

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(getpass, "getpass", prompt)
    monkeypatch.setattr(sys, "stdin", Terminal())
    monkeypatch.setenv("SYNC_HOME", str(home))
    assert main(["group", "recover", "--json"]) == 0
    assert asked == [group_cli.PROMPT]
    assert '"epoch":1' in capsys.readouterr().out


def test_recover_needs_the_right_key(relay: InProcessRelay, tmp_path: Path) -> None:
    home = tmp_path / "laptop"
    start(home, "laptop", relay)
    other = start(tmp_path / "other", "other", relay)
    words = " ".join(other["recovery_words"]).encode()
    user_error(zerok(home, "group", "recover", stdin=words), "not the recovery key of this group")
    user_error(zerok(home, "group", "recover", stdin=b""), "no recovery words")
    user_error(zerok(home, "group", "recover", "--words-file", str(tmp_path / "nope")), "nope")
    usage_error(zerok(home, "group", "recover", "--keep"))
    user_error(zerok(home, "group", "recover", "--keep", "ab", stdin=words), "at least 4")
