"""The client commands of ``zerok`` as a user runs them, with SYNC_HOME set, against real
relays (started by ``tests.relay.support.RelayLauncher``, in this process).

The commands run in this process (``zerok.cli.main.main`` with its own standard input,
output and error, see ``run_main``), which is what ``python -m zerok`` runs; test_relay_down
runs one as a subprocess, to cover the entry point and its exit code end to end (test_main
does too).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.relay.support import RelayLauncher, run, run_main
from zerok.client import SyncClient, pairing
from zerok.testing import InProcessRelay, clean_env

RELAY_ARGS = ("--invites-per-minute", "0")


@pytest.fixture(scope="module")
def relay(module_launcher: RelayLauncher) -> InProcessRelay:
    return module_launcher.start(*RELAY_ARGS)


def zerok(home: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """``zerok ARGS`` with SYNC_HOME=home and no other SYNC_* setting, in this process."""
    return run_main(*args, env={"SYNC_HOME": str(home)}, stdin=stdin or b"")


def zerok_process(
    home: Path, *args: str, stdin: bytes | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    """The same as a child process: ``python -m zerok ARGS``."""
    return subprocess.run(
        [sys.executable, "-m", "zerok", *args],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        env=clean_env({"SYNC_HOME": str(home)}),
        timeout=timeout,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout.decode()


def ok_json(result: subprocess.CompletedProcess[bytes]) -> Any:
    lines = ok(result).splitlines()
    assert len(lines) == 1, lines
    return json.loads(lines[0])


def json_lines(result: subprocess.CompletedProcess[bytes]) -> list[Any]:
    return [json.loads(line) for line in ok(result).splitlines()]


def user_error(result: subprocess.CompletedProcess[bytes], *words: str) -> str:
    """Exit code 1, one line on stderr, no traceback; the line, which names ``words``."""
    stderr = result.stderr.decode()
    assert result.returncode == 1, (result.returncode, result.stdout, stderr)
    assert "Traceback" not in stderr
    assert stderr.endswith("\n") and stderr.count("\n") == 1, repr(stderr)
    assert stderr.startswith("zerok: "), repr(stderr)
    for word in words:
        assert word in stderr, (word, stderr)
    return stderr


def usage_error(result: subprocess.CompletedProcess[bytes]) -> None:
    stderr = result.stderr.decode()
    assert result.returncode == 2, (result.returncode, result.stdout, stderr)
    assert "Traceback" not in stderr
    assert "usage:" in stderr or "usage:" in result.stdout.decode()


def init(home: Path, name: str) -> str:
    doc = ok_json(zerok(home, "init", "--name", name, "--json"))
    assert doc == {"device_id": doc["device_id"], "home": str(home), "created": True}
    assert (home / "device.key").exists()
    device_id: str = doc["device_id"]
    return device_id


def test_pair_push_pull_status_devices_revoke(relay: InProcessRelay, tmp_path: Path) -> None:
    laptop_home, phone_home = tmp_path / "laptop", tmp_path / "phone"
    laptop = init(laptop_home, "laptop")
    again = ok_json(zerok(laptop_home, "init", "--json"))
    assert again == {"device_id": laptop, "home": str(laptop_home), "created": False}
    phone = init(phone_home, "phone")

    invite = ok_json(zerok(laptop_home, "pair", "create", "--relay", relay.url, "--json"))
    assert set(invite) == {"short_code", "url", "expires_at", "relay", "group_id"}
    assert pairing.normalize_code(invite["short_code"])  # a well-formed code
    assert invite["url"].startswith(pairing.URL_PREFIX)
    assert invite["relay"] == relay.url
    assert isinstance(invite["expires_at"], float)

    joined = ok_json(
        zerok(phone_home, "pair", "join", invite["short_code"], "--relay", relay.url, "--json")
    )
    assert joined == {"group_id": invite["group_id"], "relays": [relay.url]}

    pushed = ok_json(zerok(laptop_home, "push", "--text", "hello", "--json"))
    assert pushed["status"] == "pushed" and pushed["cursor"] == 1
    assert len(pushed["blob_id"]) == 26  # base32 of 16 bytes

    blobs = json_lines(zerok(phone_home, "pull", "--json"))
    assert len(blobs) == 1
    blob = blobs[0]
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
    assert status["device_id"] == phone
    assert status["device_name"] == "phone"
    assert status["group_id"] == invite["group_id"]
    assert status["relays"] == [relay.url]
    assert status["connection"] == "online"
    assert status["last_cursor"] == 2
    assert status["pending"] == 0

    devices = {d["device_id"]: d for d in json_lines(zerok(laptop_home, "devices", "--json"))}
    assert set(devices) == {laptop, phone}
    assert devices[laptop]["name"] == "laptop" and devices[laptop]["this_device"]
    assert devices[phone]["name"] == "phone" and not devices[phone]["this_device"]
    assert not devices[phone]["revoked"]

    revoked = ok(zerok(laptop_home, "devices", "revoke", phone[:10], "--reason", "lost", "--yes"))
    assert revoked.startswith(f"Revoked phone ({phone}) (lost)")
    devices = {d["device_id"]: d for d in json_lines(zerok(laptop_home, "devices", "--json"))}
    assert devices[phone]["revoked"] and not devices[laptop]["revoked"]
    user_error(zerok(phone_home, "push", "--text", "still here?", "--timeout", "10"), "revoked")


def test_status_of_a_revoked_device(relay: InProcessRelay, tmp_path: Path) -> None:
    laptop_home, phone_home = tmp_path / "laptop", tmp_path / "phone"

    async def revoke_phone() -> str:
        laptop, phone = SyncClient(laptop_home), SyncClient(phone_home)
        try:
            await laptop.create_group([relay.url])
            await phone.join((await laptop.create_invite()).url)
            for client in (laptop, phone):
                await client.connect()
                await client.wait_connected(10)
            await laptop.revoke_device(phone.device_id, "lost")
            return str(phone.device_id)
        finally:
            for client in (laptop, phone):
                await client.close()
                client.close_state()

    phone = run(revoke_phone())
    status = ok_json(zerok(phone_home, "status", "--timeout", "5", "--json"))
    assert (status["device_id"], status["connection"]) == (phone, "revoked")


def test_pair_cancel(relay: InProcessRelay, tmp_path: Path) -> None:
    creator, joiner = tmp_path / "creator", tmp_path / "joiner"
    init(creator, "creator")
    user_error(zerok(creator, "pair", "cancel"), "no group")
    first = ok_json(zerok(creator, "pair", "create", "--relay", relay.url, "--json"))
    second = ok_json(zerok(creator, "pair", "create", "--json"))  # the group exists already
    assert second["group_id"] == first["group_id"]
    assert second["short_code"] != first["short_code"]
    cancelled = ok_json(zerok(creator, "pair", "cancel", "--json"))
    assert cancelled == {"short_code": second["short_code"], "cancelled": True}
    again = ok_json(zerok(creator, "pair", "cancel", "--json"))
    assert again == {"short_code": second["short_code"], "cancelled": False}
    user_error(
        zerok(joiner, "pair", "join", second["short_code"], "--relay", relay.url), "cancelled"
    )
    # The first code, not cancelled, still works.
    joined = ok_json(
        zerok(joiner, "pair", "join", first["short_code"], "--relay", relay.url, "--json")
    )
    assert joined["group_id"] == first["group_id"]


def test_user_errors_are_one_line(relay: InProcessRelay, tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    user_error(zerok(fresh, "push", "--text", "hello"), "zerok init")
    user_error(zerok(fresh, "pull"), "zerok init")
    user_error(zerok(fresh, "devices"), "zerok init")

    home = tmp_path / "home"
    init(home, "device")
    user_error(zerok(home, "push", "--text", "hello"), "no group")
    user_error(zerok(home, "pair", "create"), "--relay")
    code = pairing.new_short_code()
    typo = code[:-1] + next(c for c in pairing.ALPHABET if c != code[-1])
    user_error(zerok(home, "pair", "join", typo, "--relay", relay.url), "mistyped")
    user_error(zerok(home, "pair", "join", code[:-2], "--relay", relay.url), "16 characters")
    user_error(zerok(home, "pair", "join", code, "--relay", relay.url), "no invite")
    user_error(zerok(home, "pair", "join", code), "SYNC_RELAY_URL")
    user_error(zerok(home, "pair", "join", "zerok://sync?invite=AAAA"), "damaged")
    user_error(zerok(home, "push", "does-not-exist.bin"), "does-not-exist.bin")
    assert ok_json(zerok(home, "status", "--json"))["group_id"] is None


def test_relay_down(launcher: RelayLauncher, tmp_path: Path) -> None:
    relay = launcher.start(*RELAY_ARGS)
    home = tmp_path / "home"
    init(home, "device")
    ok_json(zerok(home, "pair", "create", "--relay", relay.url, "--json"))
    relay.stop()
    # A child process: the entry point's exit code and output for a user error, end to end.
    pull = zerok_process(home, "pull", "--timeout", "1")
    # What happened while it tried (the reason, in words), then the error and what to do.
    *notes, error = pull.stderr.decode().splitlines()
    assert notes and all(n.startswith(f"cannot reach {relay.url}: ") for n in notes)
    user_error(
        subprocess.CompletedProcess(
            pull.args, pull.returncode, pull.stdout, (error + "\n").encode()
        ),
        "no relay reachable within 1 s",
        relay.url,
        "connection refused — is the relay running? (zerok relay)",
    )
    assert "ssl:default" not in pull.stderr.decode()
    queued = ok_json(zerok(home, "push", "--text", "later", "--timeout", "1", "--json"))
    assert queued == {"status": "queued", "pending": 1}
    status = ok_json(zerok(home, "status", "--timeout", "1", "--json"))
    assert (status["connection"], status["pending"]) == ("unreachable", 1)


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    home = tmp_path / "home"
    usage_error(zerok(home, "pair"))
    usage_error(zerok(home, "pair", "join"))
    usage_error(zerok(home, "push", "--timeout", "soon", "--text", "x"))
    usage_error(zerok(home, "pull", "--after", "last"))
    usage_error(zerok(home, "devices", "revoke"))
    usage_error(zerok(home, "devices", "revoke", "abc", "--reason", "bored"))
    usage_error(zerok(home, "init", "--frobnicate"))
    assert not home.exists(), "a usage error created the data directory"
