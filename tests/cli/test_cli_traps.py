"""The traps a fresh user fell into (issue 11, item 6), each closed: a mistyped relay URL,
revoking by a one-letter prefix, a lost state file, read-only commands that created an
identity, numbers taken as they came, aiohttp's words, and text from other members
printed as terminal commands. ``zerok relays`` too."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from tests.cli.support import (
    RELAY_ARGS,
    devices,
    init,
    join,
    json_lines,
    ok,
    ok_json,
    start,
    usage_error,
    user_error,
    zerok,
)
from tests.relay.support import RelayLauncher
from zerok.testing import InProcessRelay

REFUSED_HINT = "connection refused — is the relay running? (zerok relay)"


def closed_url() -> str:
    """A ws:// URL on which nothing listens (a port just freed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"ws://127.0.0.1:{port}"


# -- relays ---------------------------------------------------------------------------------


def test_a_group_starts_only_once_every_relay_answers_and_keeps_them_all(
    relay: InProcessRelay, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    typo = closed_url()
    user_error(zerok(home, "init", "--relay", typo), f"cannot reach {typo}", REFUSED_HINT)
    assert not home.exists()  # not even a device key
    init(home, "laptop")
    user_error(zerok(home, "init", "--relay", typo), f"cannot reach {typo}", REFUSED_HINT)
    user_error(zerok(home, "init", "--relay", relay.url, "--relay", typo), REFUSED_HINT)
    user_error(zerok(home, "init", "--relay", "http//oops"), "not a relay URL")
    assert ok_json(zerok(home, "status", "--json"))["group_id"] is None  # nothing was saved

    # Several relays: all kept, in order (the same relay under two spellings here).
    second = relay.url.rstrip("/")
    assert second != relay.url
    doc = ok_json(zerok(home, "init", "--relay", relay.url, "--relay", second, "--json"))
    assert doc["relays"] == [relay.url, second]
    assert ok_json(zerok(home, "relays", "--json")) == {"relays": [relay.url, second]}


def test_relays_list_add_remove(relay: InProcessRelay, tmp_path: Path) -> None:
    home = tmp_path / "home"
    user_error(zerok(home, "relays"), "zerok init")
    start(home, "laptop", relay)
    assert ok(zerok(home, "relays", "list")) == f"1. {relay.url}\n"

    down = closed_url()
    user_error(zerok(home, "relays", "add", down, "--timeout", "5"), REFUSED_HINT)
    ok(zerok(home, "relays", "add", down, "--no-check"))
    other = relay.url.rstrip("/")
    ok(zerok(home, "relays", "add", other, "--first"))
    assert ok_json(zerok(home, "relays", "list", "--json"))["relays"] == [other, relay.url, down]
    user_error(zerok(home, "relays", "add", down, "--no-check"), "already")

    ok(zerok(home, "relays", "remove", down))
    ok(zerok(home, "relays", "remove", other))
    user_error(zerok(home, "relays", "remove", down), "not a relay of this group")
    user_error(zerok(home, "relays", "remove", relay.url), "only relay")
    # The change is kept, and used: this device still syncs through what is left.
    assert ok_json(zerok(home, "status", "--json"))["relays"] == [relay.url]
    assert ok_json(zerok(home, "status", "--json"))["connection"] == "online"


# -- revoke ---------------------------------------------------------------------------------


def test_revoke_asks_for_a_real_prefix_names_the_device_and_spares_this_one(
    relay: InProcessRelay, tmp_path: Path
) -> None:
    laptop_home, phone_home = tmp_path / "laptop", tmp_path / "phone"
    laptop = start(laptop_home, "laptop", relay)["device_id"]
    phone = join(laptop_home, phone_home, "phone")

    for short in ("s", laptop[:3]):
        user_error(zerok(laptop_home, "devices", "revoke", short, "--yes"), "at least 4")
        user_error(zerok(laptop_home, "devices", "role", short, "admin"), "at least 4")
    user_error(zerok(laptop_home, "devices", "revoke", "zzzz9", "--yes"), "no device")
    user_error(
        zerok(laptop_home, "devices", "revoke", laptop[:4], "--yes"), "this device", "--self"
    )
    # No terminal to ask on and no --yes: refused, naming what it would have revoked.
    user_error(zerok(laptop_home, "devices", "revoke", phone[:4]), "--yes", f"phone ({phone})")
    assert all(d["active"] for d in devices(laptop_home).values())

    done = ok_json(zerok(laptop_home, "devices", "revoke", phone[:4], "--yes", "--json"))
    assert done == {"revoked": phone, "name": "phone", "reason": "lost", "epoch": 1}
    user_error(zerok(laptop_home, "devices", "revoke", phone[:4], "--yes"), "revoked already")
    # This very device, on purpose (the last one: no active device is left without admin).
    ok(zerok(laptop_home, "devices", "revoke", laptop[:6], "--self", "--yes"))
    assert ok_json(zerok(laptop_home, "status", "--json"))["connection"] == "revoked"


def test_revoke_confirmation_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from zerok.cli import devices as listing  # noqa: PLC0415

    class Terminal:
        def __init__(self, answer: str) -> None:
            self.answer = answer

        def isatty(self) -> bool:
            return True

        def readline(self) -> str:
            return self.answer

    for answer, expected in (("y\n", True), ("yes\n", True), ("\n", False), ("n\n", False)):
        monkeypatch.setattr(sys, "stdin", Terminal(answer))
        assert listing.confirm("Revoke [b]phone\x1b?", "no terminal") is expected
        assert capsys.readouterr().err == "Revoke [b]phone\\x1b? [y/N] "


# -- the data directory ---------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["emptied", "deleted", "garbage"])
def test_a_lost_state_next_to_a_device_key_stops_everything(
    relay: InProcessRelay, tmp_path: Path, damage: str
) -> None:
    home = tmp_path / "home"
    start(home, "laptop", relay)
    state = home / "state.db"
    for extra in home.glob("state.db-*"):  # SQLite's WAL files: the state is all gone
        extra.unlink()
    if damage == "emptied":
        state.write_bytes(b"")
    elif damage == "deleted":
        state.unlink()
    else:
        state.write_bytes(b"not a database, at all" * 100)
    before = state.read_bytes() if state.exists() else None
    words = {"emptied": "is empty", "deleted": "is missing", "garbage": "unreadable"}[damage]
    for command in (
        ("status",),
        ("pull",),
        ("push", "--text", "x"),
        ("devices",),
        ("init",),
        ("init", "--relay", relay.url),
        ("pair", "create"),
        ("pair", "join", "ABCD-EFGH-JKMN-PQRS", "--relay", relay.url),
        ("relays",),
        ("group", "rotate"),
        ("group", "recover"),
    ):
        user_error(zerok(home, *command), words, "restore", "zerok init")
        assert (state.read_bytes() if state.exists() else None) == before, command


def test_read_only_commands_create_nothing(relay: InProcessRelay, tmp_path: Path) -> None:
    home = tmp_path / "nowhere"
    for command in (("status",), ("devices",), ("pull",), ("relays",), ("group", "recover")):
        user_error(zerok(home, *command), "zerok init")
    doctor = zerok(home, "doctor")
    assert doctor.returncode == 1
    assert "zerok init" in doctor.stdout.decode()
    assert not home.exists(), list(home.rglob("*"))


# -- numbers ----------------------------------------------------------------------------------


def test_numbers_are_checked_before_anything_happens(tmp_path: Path) -> None:
    home = tmp_path / "home"
    for bad in ("99999999999999999999999", str(2**63), "-1", "1.5"):
        usage_error(zerok(home, "pull", "--after", bad))
    for bad in ("nan", "inf", "-inf", "0", "-3", "soon"):
        usage_error(zerok(home, "pull", "--timeout", bad))
        usage_error(zerok(home, "push", "--text", "x", "--timeout", bad))
        usage_error(zerok(home, "status", "--timeout", bad))
        usage_error(zerok(home, "devices", "--timeout", bad))
        usage_error(zerok(home, "doctor", "--timeout", bad))
        usage_error(zerok(home, "pair", "create", "--timeout", bad))
        usage_error(zerok(home, "init", "--relay", "ws://127.0.0.1:1", "--timeout", bad))
        usage_error(zerok(home, "group", "rotate", "--timeout", bad))
        usage_error(zerok(home, "group", "recover", "--timeout", bad))
        usage_error(zerok(home, "devices", "role", "abcd", "admin", "--timeout", bad))
    for bad in ("1e-9", "0", "601", "1.5", "-5", "nan"):
        usage_error(zerok(home, "pair", "create", "--ttl", bad))
    result = zerok(home, "pull", "--after", str(2**63))
    assert f"0..{2**63 - 1}" in result.stderr.decode()
    assert not home.exists()


def test_a_big_cursor_is_fine(relay: InProcessRelay, tmp_path: Path) -> None:
    home = tmp_path / "home"
    start(home, "laptop", relay)
    assert json_lines(zerok(home, "pull", "--after", str(2**63 - 1), "--json")) == []


# -- connection errors ----------------------------------------------------------------------


def test_relay_down_says_so_in_words(launcher: RelayLauncher, tmp_path: Path) -> None:
    relay = launcher.start(*RELAY_ARGS)
    home = tmp_path / "home"
    words = " ".join(start(home, "laptop", relay)["recovery_words"]).encode()
    relay.stop()
    for command in (
        ("devices",),
        ("devices", "revoke", "abcd", "--yes"),
        ("devices", "role", "abcd", "admin"),
        ("group", "rotate"),
        ("pull",),
    ):
        result = zerok(home, *command, "--timeout", "0.3")
        stderr = result.stderr.decode()
        assert result.returncode == 1, (command, stderr)
        *notes, error = stderr.splitlines()
        assert error.startswith("zerok: no relay reachable within 0.3 s"), stderr
        assert error.endswith(REFUSED_HINT), stderr
        assert notes, "no progress while connecting"
        for internal in ("ssl:", "Connect call failed", "Traceback", "aiohttp"):
            assert internal not in stderr, stderr
    user_error(zerok(home, "pair", "create", "--timeout", "2"), REFUSED_HINT)
    user_error(zerok(home, "group", "recover", "--timeout", "2", stdin=words), REFUSED_HINT)


# -- text from other members ----------------------------------------------------------------

HOSTILE = "ev\x1b]0;pwned\x07il \x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\ [bold red]x[/] \u202e"


def test_peer_text_is_shown_not_obeyed(relay: InProcessRelay, tmp_path: Path) -> None:
    laptop_home, phone_home = tmp_path / "laptop", tmp_path / "phone"
    start(laptop_home, "laptop", relay)
    init(phone_home, "x")
    url = ok_json(zerok(laptop_home, "pair", "create", "--json"))["url"]
    ok(zerok(phone_home, "pair", "join", url, "--name", HOSTILE))
    ok(zerok(phone_home, "push", "--text", f"hi {HOSTILE}\nsecond line"))

    table = zerok(laptop_home, "devices")
    pulled = zerok(laptop_home, "pull")
    for result in (table, pulled):
        text = ok(result)
        assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text, text
        assert "\\x1b" in text and "\\u202e" in text, text  # shown, as escapes
        assert "[bold red]x[/]" in text.replace("\n", "").replace("│", ""), text
    assert "\\x1b]0;pwned\\x07il" in ok(pulled)
    assert "\nsecond line" in ok(pulled)  # newlines in a blob are kept
    assert HOSTILE in devices(laptop_home)  # --json gives the text as it is


# -- names --------------------------------------------------------------------------------


def test_a_prefix_matching_several_devices_names_them() -> None:
    from zerok.cli.devices import match  # noqa: PLC0415
    from zerok.client import Device, Role  # noqa: PLC0415
    from zerok.errors import SyncError  # noqa: PLC0415
    from zerok.wire import DeviceId  # noqa: PLC0415

    twins = [
        Device(DeviceId(b"\x00" * 31 + bytes([i])), n, Role.MEMBER, active=True, enrolled_at=i)
        for i, n in ((1, "laptop"), (2, "ph\x1bone"))
    ]
    with pytest.raises(SyncError, match="matches 2 devices") as caught:
        match(twins, "aaaa")
    assert "laptop" in str(caught.value) and "ph\\x1bone" in str(caught.value)
    assert match(twins, str(twins[1].device_id)).name == "ph\x1bone"


def test_visible_and_friendly() -> None:
    from zerok.cli.common import friendly, safe, visible  # noqa: PLC0415

    assert visible("a\x1b[2Jb\x07\x9b\u202e\u200bc") == "a\\x1b[2Jb\\x07\\x9b\\u202e\\u200bc"
    assert visible("line\n\ttab") == "line\\n\\ttab"
    assert visible("line\n\ttab", keep_newlines=True) == "line\n\ttab"
    assert visible("naïve ✓ 日本") == "naïve ✓ 日本"
    assert safe("[bold]x[/]") == "\\[bold]x\\[/]"
    aiohttp_words = (
        "cannot connect to ws://127.0.0.1:9/: Cannot connect to host 127.0.0.1:9 "
        "ssl:default [Connect call failed ('127.0.0.1', 9)]"
    )
    assert friendly(aiohttp_words) == f"cannot reach ws://127.0.0.1:9/: {REFUSED_HINT}"
    assert friendly("plain words stay") == "plain words stay"
