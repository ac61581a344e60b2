"""Helpers of the command-line tests: ``zerok ARGS`` as a user runs it, with SYNC_HOME set,
in this process (``zerok.cli.main.main`` with its own standard input, output and error,
see ``run_main``), which is what ``python -m zerok`` runs; ``zerok_process`` runs it as a
child process, for the few tests of the entry point itself. And the steps every test
takes: a device, a group, an invite, a member."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.relay.support import run_main
from zerok.testing import InProcessRelay, clean_env

RELAY_ARGS = ("--invites-per-minute", "0")


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


def usage_error(result: subprocess.CompletedProcess[bytes], *words: str) -> str:
    """Exit code 2 and argparse's usage; the error, which names ``words``."""
    stderr = result.stderr.decode()
    assert result.returncode == 2, (result.returncode, result.stdout, stderr)
    assert "Traceback" not in stderr
    assert "usage:" in stderr or "usage:" in result.stdout.decode()
    flat = " ".join(stderr.split())  # argparse wraps long lines
    for word in words:
        assert word in flat, (word, stderr)
    return stderr


def init(home: Path, name: str) -> str:
    """A device in ``home``; its id."""
    doc = ok_json(zerok(home, "init", "--name", name, "--json"))
    assert doc == {"device_id": doc["device_id"], "home": str(home), "created": True}
    assert (home / "device.key").exists()
    device_id: str = doc["device_id"]
    return device_id


def start(home: Path, name: str, relay: InProcessRelay) -> dict[str, Any]:
    """A device in ``home`` that starts a group through ``relay``: ``init --relay --json``."""
    doc: dict[str, Any] = ok_json(
        zerok(home, "init", "--name", name, "--relay", relay.url, "--json")
    )
    return doc


def invite(home: Path, *args: str) -> dict[str, Any]:
    """``pair create --json`` on ``home``."""
    doc: dict[str, Any] = ok_json(zerok(home, "pair", "create", "--json", *args))
    return doc


def join(admin: Path, home: Path, name: str, *args: str) -> str:
    """A device in ``home`` enrolled by an invite URL from ``admin``; its id."""
    device_id = init(home, name)
    ok(zerok(home, "pair", "join", invite(admin, *args)["url"], "--json"))
    return device_id


def devices(home: Path) -> dict[str, dict[str, Any]]:
    """``zerok devices --json``'s devices, by name."""
    doc = ok_json(zerok(home, "devices", "--json"))
    return {d["name"]: d for d in doc["devices"]}
