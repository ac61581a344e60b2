"""``zerok relay`` configuration: relay.toml < environment < flags, and clean failures."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.relay.support import RelayLauncher, clients, run, run_cli, run_main
from zerok.relay import server
from zerok.testing import InProcessRelay, TestGroup
from zerok.wire import Limits


def _limits(relay: InProcessRelay) -> Limits:
    async def scenario() -> Limits:
        async with clients(relay.url) as pool:
            conn = await pool.open(TestGroup())
            assert conn.welcome is not None
            return conn.welcome.limits

    return run(scenario())


def _write_config(path: Path, database: Path) -> Path:
    path.write_text(
        f"""
[server]
bind = "127.0.0.1:0"
max_connections = 50

[storage]
database = "{database}"
max_blob_size = "2KiB"
max_group_storage = "3 MiB"
default_ttl = "2h"
max_ttl = "1d"

[cleanup]
interval = "1m"
vacuum_on_cleanup = false

[limits]
messages_per_minute = 7
connections_per_ip = 20
handshake_timeout = "5s"
"""
    )
    return path


def test_config_file_is_honoured_and_env_and_flags_override_it(
    launcher: RelayLauncher, tmp_path: Path
) -> None:
    database = tmp_path / "from-config" / "relay.db"
    config = _write_config(tmp_path / "relay.toml", database)

    relay = launcher.start("--config", str(config), defaults=False)
    limits = _limits(relay)
    assert limits == Limits(
        max_blob_size=2048,
        max_group_storage=3 * 1024 * 1024,
        messages_per_minute=7,
        max_frame_size=2048 + 64 * 1024,
        default_ttl=7200,
        max_ttl=86400,
        idle_timeout=120,  # the default: the file does not set it
        heartbeat_interval=30,  # a quarter of the idle timeout
    )
    assert f"database   {database}" in relay.stdout()
    assert database.exists()
    relay.stop()

    # SYNC_RELAY_CONFIG names the file too; the environment beats the file...
    env = {"SYNC_RELAY_CONFIG": str(config), "SYNC_RELAY_MAX_BLOB_SIZE": "3KiB"}
    relay = launcher.start(env=env, defaults=False)
    limits = _limits(relay)
    assert (limits.max_blob_size, limits.messages_per_minute) == (3072, 7)
    relay.stop()

    # ...and the command line beats the environment.
    env["SYNC_RELAY_MESSAGES_PER_MINUTE"] = "9"
    relay = launcher.start("--max-blob-size", "4KiB", env=env, defaults=False)
    limits = _limits(relay)
    assert (limits.max_blob_size, limits.messages_per_minute) == (4096, 9)
    assert limits.max_group_storage == 3 * 1024 * 1024  # still from the file


def _must_not_start(*args: Any, **kwargs: Any) -> NoReturn:
    raise AssertionError("the configuration was accepted: the relay would start")


def relay_main(
    monkeypatch: pytest.MonkeyPatch, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``zerok relay ARGS`` run in this process (``zerok.cli.main.main``), for a configuration
    that must be refused before a relay starts: making one fails the test instead of
    serving for ever. (test_main and the real-process cases below run the entry point.)"""
    monkeypatch.setattr(server, "Relay", _must_not_start)
    result = run_main("relay", *args, env=env)
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def _assert_fails_cleanly(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("zerok relay: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


BAD_FILES = {
    "unknown-key": ('[server]\ncolour = "red"\n', ["colour"]),
    "unknown-section": ("[nonsense]\nx = 1\n", ["nonsense"]),
    "key-outside-a-section": ('bind = "127.0.0.1:0"\n', ["bind"]),
    "bad-size": ('[storage]\nmax_blob_size = "lots"\n', ["max_blob_size", "lots"]),
    "bad-duration": ('[storage]\ndefault_ttl = "forever"\n', ["default_ttl", "forever"]),
    "bad-integer": ('[limits]\nmessages_per_minute = "many"\n', ["messages_per_minute"]),
    "bad-boolean": ('[cleanup]\nvacuum_on_cleanup = "sometimes"\n', ["vacuum_on_cleanup"]),
    "negative": ("[server]\nmax_connections = -1\n", ["max_connections"]),
    "not-toml": ("[server\nbind = \n", ["TOML"]),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_config_file_exits_1_with_one_line(
    tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    text, needles = BAD_FILES[case]
    config = tmp_path / "relay.toml"
    config.write_text(text)
    result = relay_main(monkeypatch, "--config", str(config), "--database", str(tmp_path / "r.db"))
    _assert_fails_cleanly(result, *needles)
    assert not (tmp_path / "r.db").exists()


BAD_ARGS = {
    "missing-config-file": (["--config", "/nonexistent/relay.toml"], {}, ["relay.toml"]),
    "bad-flag-size": (["--max-blob-size", "12XB"], {}, ["--max-blob-size"]),
    "bad-flag-duration": (["--idle-timeout", "-5"], {}, ["--idle-timeout"]),
    "bad-env": ([], {"SYNC_RELAY_HANDSHAKE_TIMEOUT": "soon"}, ["SYNC_RELAY_HANDSHAKE_TIMEOUT"]),
    "frame-below-blob": (["--max-frame-size", "1KiB"], {}, ["max_frame_size"]),
    "ttl-above-max": (["--default-ttl", "2d", "--max-ttl", "1d"], {}, ["default_ttl"]),
    "bind-without-port": (["--bind", "localhost"], {}, ["bind"]),
    "bind-port-range": (["--bind", "127.0.0.1:70000"], {}, ["70000"]),
    "log-level": (["--log-level", "LOUD"], {}, ["LOUD"]),
    "synchronous": (["--synchronous", "SOMETIMES"], {}, ["synchronous"]),
}


@pytest.mark.parametrize("case", list(BAD_ARGS))
def test_bad_value_exits_1_with_one_line(
    tmp_path: Path, case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    args, env, needles = BAD_ARGS[case]
    base = ["--bind", "127.0.0.1:0", "--database", str(tmp_path / "r.db")]
    result = relay_main(monkeypatch, *base, *args, env=env)
    _assert_fails_cleanly(result, *needles)


def test_port_in_use_exits_1_with_one_line(tmp_path: Path) -> None:
    """A real process: the entry point's exit code for a relay that cannot start."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("--bind", f"127.0.0.1:{port}", "--database", str(tmp_path / "r.db"))
    _assert_fails_cleanly(result, "cannot listen", str(port))


def test_fractional_integer_option_is_refused(launcher: RelayLauncher, tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text("[server]\nmax_connections = 2.5\n")
    relay = launcher.start("--config", str(config), wait=False)  # in this process
    with pytest.raises(RuntimeError, match="exited with 1"):
        relay.wait_ready()
    lines = relay.stderr().strip().splitlines()
    assert len(lines) == 1 and "max_connections" in lines[0], lines


def test_unusable_database_path_exits_1_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    database = blocker / "relay.db"
    result = run_cli("--bind", "127.0.0.1:0", "--database", str(database))
    _assert_fails_cleanly(result)
    assert "a-file" in result.stderr
    assert "cannot listen" not in result.stderr
