"""The client commands of ``zerok`` as a user runs them, against a real relay (in this
process): a group started with its recovery key, invites by URL and short code, push,
pull, status, cancelling invites, and errors that say what to do next. test_relay_down
runs one command as a child process, to cover the entry point and its exit code end to
end (test_main does too)."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import pytest

from tests.cli.support import (
    init,
    invite,
    join,
    json_lines,
    ok,
    ok_json,
    start,
    usage_error,
    user_error,
    zerok,
    zerok_process,
)
from tests.relay.support import RelayLauncher
from zerok.client import RecoveryKey, pairing
from zerok.testing import InProcessRelay

# -- starting a group -------------------------------------------------------------------------


def test_init_starts_a_group_and_shows_the_recovery_key_once(
    relay: InProcessRelay, tmp_path: Path
) -> None:
    home = tmp_path / "laptop"
    text = ok(zerok(home, "init", "--name", "laptop", "--relay", relay.url))
    lines = text.splitlines()
    assert lines[0] == f"Device initialised in {home}"
    assert "this device is its admin" in text
    # The 24 words, numbered in order, four to a row; then the QR code of the same key.
    numbered = [line.split() for line in lines if line.strip().startswith("1. ")]
    assert len(numbered) == 1
    start_row = lines.index(next(line for line in lines if line.strip().startswith("1. ")))
    cells = " ".join(lines[start_row : start_row + 6]).split()
    assert cells[0::2] == [f"{i}." for i in range(1, 25)]
    words = cells[1::2]
    key = RecoveryKey.from_words(" ".join(words))  # a valid key: its checksum holds
    assert "█" in text  # the QR code
    assert "write these 24 words down" in text
    assert "only way to take the group back" in text
    assert "shown this once and never stored on this device" in text
    group_id = ok_json(zerok(home, "status", "--json"))["group_id"]
    assert f"Keep the group id with them: {group_id}" in text

    # Never stored: neither the words nor the key are anywhere in the data directory.
    for path in home.rglob("*"):
        data = path.read_bytes()
        assert key.secret not in data, path
        assert " ".join(words).encode() not in data and words[0].encode() + b" " not in data

    # One group per data directory; a second init only says who the device is.
    user_error(zerok(home, "init", "--relay", relay.url), "already belongs to group")
    again = ok(zerok(home, "init"))
    assert "already initialised" in again and "RECOVERY" not in again


def test_init_json_gives_the_words_to_the_script(relay: InProcessRelay, tmp_path: Path) -> None:
    home = tmp_path / "home"
    doc = start(home, "laptop", relay)
    keys = {"device_id", "home", "created", "group_id", "relays", "registered", "recovery_words"}
    assert set(doc) == keys
    assert doc["relays"] == [relay.url] and doc["created"] is True and doc["registered"] is True
    assert len(doc["recovery_words"]) == 24
    RecoveryKey.from_words(" ".join(doc["recovery_words"]))
    status = ok_json(zerok(home, "status", "--json"))
    assert (status["group_id"], status["epoch"], status["log_seq"]) == (doc["group_id"], 0, 0)


def test_passphrase_options_are_gone_with_a_reason(tmp_path: Path) -> None:
    home = tmp_path / "home"
    for command in (
        ("init", "--passphrase", "hunter2"),
        ("init", "--relay", "ws://127.0.0.1:1", "--passphrase"),
        ("pair", "create", "--passphrase", "hunter2"),
        ("pair", "join", "ABCD", "--passphrase", "x"),
    ):
        usage_error(zerok(home, *command), "--passphrase: passphrase groups are gone", "init")
    usage_error(zerok(home, "pair", "create", "--relay", "ws://x"), "zerok init --relay URL")
    assert not home.exists()


# -- the whole tour -------------------------------------------------------------------------------


def test_pair_push_pull_status(relay: InProcessRelay, tmp_path: Path) -> None:
    laptop_home, phone_home = tmp_path / "laptop", tmp_path / "phone"
    group = start(laptop_home, "laptop", relay)
    laptop = group["device_id"]
    phone = init(phone_home, "phone")

    made = invite(laptop_home)
    assert set(made) == {"short_code", "url", "expires_at", "relay", "role", "group_id"}
    assert pairing.normalize_code(made["short_code"])  # a well-formed code
    assert made["url"].startswith(pairing.URL_PREFIX)
    assert (made["relay"], made["role"], made["group_id"]) == (
        relay.url,
        "member",
        group["group_id"],
    )
    assert isinstance(made["expires_at"], float)

    joined = ok_json(zerok(phone_home, "pair", "join", made["url"], "--json"))
    assert joined == {"group_id": group["group_id"], "relays": [relay.url], "epoch": 0}

    pushed = ok_json(zerok(laptop_home, "push", "--text", "hello", "--json"))
    assert pushed["status"] == "pushed" and pushed["cursor"] == 1
    assert len(pushed["blob_id"]) == 26  # base32 of 16 bytes

    [blob] = json_lines(zerok(phone_home, "pull", "--json"))
    assert set(blob) == {"cursor", "blob_id", "sender", "timestamp", "data"}
    assert (blob["cursor"], blob["blob_id"], blob["sender"]) == (1, pushed["blob_id"], laptop)
    assert base64.b64decode(blob["data"]) == b"hello"
    assert isinstance(blob["timestamp"], int) and blob["timestamp"] > 0
    assert json_lines(zerok(phone_home, "pull", "--json")) == []  # the cursor was saved

    # `push -` reads standard input, bytes as they are; `pull --out` writes them to files.
    data = os.urandom(300) + b"\x00\xff\n"
    from_stdin = ok_json(zerok(laptop_home, "push", "-", "--json", stdin=data))
    assert from_stdin["status"] == "pushed" and from_stdin["cursor"] == 2
    out = tmp_path / "received"
    [second] = json_lines(zerok(phone_home, "pull", "--json", "--out", str(out)))
    assert base64.b64decode(second["data"]) == data
    assert [p.name for p in out.iterdir()] == [f"{2:010d}-{from_stdin['blob_id']}"]
    assert (out / f"{2:010d}-{from_stdin['blob_id']}").read_bytes() == data

    status = ok_json(zerok(phone_home, "status", "--json"))
    assert status == {
        "device_id": phone,
        "device_name": "phone",
        "group_id": group["group_id"],
        "relays": [relay.url],
        "connection": "online",
        "epoch": 0,
        "log_seq": 2,  # genesis, invite, enrollment
        "last_cursor": 2,
        "pending": 0,
    }
    text = ok(zerok(phone_home, "status"))
    assert "epoch        0" in text and "connection   online" in text


def test_join_by_short_code_and_as_admin(relay: InProcessRelay, tmp_path: Path) -> None:
    laptop_home, tablet_home = tmp_path / "laptop", tmp_path / "tablet"
    start(laptop_home, "laptop", relay)
    text = ok(zerok(laptop_home, "pair", "create", "--role", "admin"))
    code = next(line.split()[2] for line in text.splitlines() if line.startswith("Short code"))
    assert "joins as admin" in text
    assert f"zerok pair join {code} --relay {relay.url}" in text
    init(tablet_home, "tablet")
    joined = ok(zerok(tablet_home, "pair", "join", code.lower(), "--relay", relay.url))
    assert joined.startswith("Joined group ")
    # The tablet is an admin: it may invite in turn.
    assert invite(tablet_home)["role"] == "member"


def test_pair_cancel_withdraws_the_code_the_url_and_the_qr_code(
    relay: InProcessRelay, tmp_path: Path
) -> None:
    creator, joiner = tmp_path / "creator", tmp_path / "joiner"
    init(creator, "creator")
    user_error(zerok(creator, "pair", "cancel"), "no group", "zerok init --relay URL")
    ok(zerok(creator, "init", "--relay", relay.url, "--json"))
    first, second = invite(creator), invite(creator)
    assert second["short_code"] != first["short_code"]
    cancelled = ok_json(zerok(creator, "pair", "cancel", "--json"))
    assert cancelled == {"short_code": second["short_code"], "cancelled": True}
    again = ok(zerok(creator, "pair", "cancel"))
    assert f"The invite {second['short_code']} was already used, cancelled or expired" in again

    init(joiner, "joiner")
    for code_or_url in (second["url"], second["short_code"]):
        user_error(
            zerok(joiner, "pair", "join", code_or_url, "--relay", relay.url),
            "cancelled",
            "`zerok pair create` makes a new invite",
        )
    # The first invite, not cancelled, still works, once.
    joined = ok_json(zerok(joiner, "pair", "join", first["url"], "--json"))
    assert joined["group_id"] == first["group_id"]
    other = tmp_path / "other"
    init(other, "other")
    user_error(zerok(other, "pair", "join", first["url"]), "used", "an invite enrolls one device")


def test_a_rotation_closes_open_invites(relay: InProcessRelay, tmp_path: Path) -> None:
    laptop, phone = tmp_path / "laptop", tmp_path / "phone"
    start(laptop, "laptop", relay)
    made = invite(laptop)
    ok(zerok(laptop, "group", "rotate"))
    init(phone, "phone")
    user_error(zerok(phone, "pair", "join", made["url"]), "rotated", "new invite")


def test_user_errors_are_one_line(relay: InProcessRelay, tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    user_error(zerok(fresh, "push", "--text", "hello"), "zerok init")
    user_error(zerok(fresh, "pull"), "zerok init")
    user_error(zerok(fresh, "devices"), "zerok init")

    home = tmp_path / "home"
    init(home, "device")
    user_error(zerok(home, "push", "--text", "hello"), "no group", "zerok init --relay URL")
    user_error(zerok(home, "pair", "create"), "no group")
    code = pairing.new_short_code()
    typo = code[:-1] + next(c for c in pairing.ALPHABET if c != code[-1])
    user_error(zerok(home, "pair", "join", typo, "--relay", relay.url), "mistyped")
    user_error(zerok(home, "pair", "join", code[:-2], "--relay", relay.url), "16 characters")
    user_error(zerok(home, "pair", "join", code, "--relay", relay.url), "no invite", "--relay")
    user_error(zerok(home, "pair", "join", code), "SYNC_RELAY_URL")
    user_error(zerok(home, "pair", "join", "zerok://sync?invite=AAAA"), "damaged")
    user_error(zerok(home, "push", "does-not-exist.bin"), "does-not-exist.bin")
    assert ok_json(zerok(home, "status", "--json"))["group_id"] is None


def test_a_member_may_not_invite(relay: InProcessRelay, tmp_path: Path) -> None:
    laptop, phone = tmp_path / "laptop", tmp_path / "phone"
    start(laptop, "laptop", relay)
    join(laptop, phone, "phone")
    user_error(
        zerok(phone, "pair", "create"), "only an admin", "`zerok devices` shows which devices"
    )


def test_relay_down(launcher: RelayLauncher, tmp_path: Path) -> None:
    relay = launcher.start("--invites-per-minute", "0")
    home = tmp_path / "home"
    start(home, "device", relay)
    ok(zerok(home, "push", "--text", "registers the group"))
    relay.stop()
    # A child process: the entry point's exit code and output for a user error, end to end.
    pull = zerok_process(home, "pull", "--timeout", "0.5")
    # What happened while it tried (the reason, in words), then the error and what to do.
    *notes, error = pull.stderr.decode().splitlines()
    assert notes and all(n.startswith(f"cannot reach {relay.url}: ") for n in notes)
    user_error(
        subprocess.CompletedProcess(
            pull.args, pull.returncode, pull.stdout, (error + "\n").encode()
        ),
        "no relay reachable within 0.5 s",
        relay.url,
        "connection refused — is the relay running? (zerok relay)",
    )
    assert "ssl:default" not in pull.stderr.decode()
    queued = ok_json(zerok(home, "push", "--text", "later", "--timeout", "0.3", "--json"))
    assert queued == {"status": "queued", "pending": 1}
    status = ok_json(zerok(home, "status", "--timeout", "0.3", "--json"))
    assert (status["connection"], status["pending"]) == ("unreachable", 1)
    user_error(
        zerok(home, "pair", "create", "--timeout", "2"), "cannot reach", "is the relay running"
    )


@pytest.mark.parametrize(
    "command",
    [
        ("pair",),
        ("pair", "join"),
        ("push", "--timeout", "soon", "--text", "x"),
        ("pull", "--after", "last"),
        ("devices", "revoke"),
        ("devices", "role", "abcd"),
        ("devices", "role", "abcd", "owner"),
        ("devices", "revoke", "abcd", "--reason", ""),
        ("devices", "revoke", "abcd", "--reason", "x" * 257),
        ("devices", "revoke", "abcd", "--reason", "a\x1b[2Jb"),
        ("group",),
        ("group", "rotate", "--reason", ""),
        ("group", "recover", "--group", "not-a-group"),
        ("pair", "create", "--role", "owner"),
        ("init", "--frobnicate"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, command: tuple[str, ...]) -> None:
    home = tmp_path / "home"
    usage_error(zerok(home, *command))
    assert not home.exists(), "a usage error created the data directory"
