"""The ``zerok`` command as a user runs it: a subprocess."""

from __future__ import annotations

import subprocess
import sys

from zerok import __version__
from zerok.relay.config import OPTIONS


def zerok(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zerok", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_version() -> None:
    result = zerok("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"zerok {__version__}"


def test_no_command_prints_help_and_exits_2() -> None:
    result = zerok()
    assert result.returncode == 2
    assert "relay" in result.stdout


def test_unknown_command_is_a_usage_error() -> None:
    result = zerok("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
    assert "Traceback" not in result.stderr


def test_relay_help_documents_every_option_with_its_env_var() -> None:
    result = zerok("relay", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps lines
    for option in OPTIONS:
        assert option.flag in text
        assert option.env in text


def test_relay_bad_option_value_is_one_line_without_traceback() -> None:
    result = zerok("relay", "--max-blob-size", "lots")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert "--max-blob-size" in result.stderr
