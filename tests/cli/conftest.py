"""Fixtures of the command-line tests: one in-process relay per module, and short codes
stretched cheaply (the real Argon2id cost is the client tests' business, not the CLI's)."""

from __future__ import annotations

import pytest

from tests.cli.support import RELAY_ARGS
from tests.relay.support import RelayLauncher
from zerok.client import pairing
from zerok.testing import InProcessRelay


@pytest.fixture(scope="module")
def relay(module_launcher: RelayLauncher) -> InProcessRelay:
    return module_launcher.start(*RELAY_ARGS)


@pytest.fixture(autouse=True)
def cheap_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2id at its floor (8 MiB, one pass) for the codes these tests make and open."""
    monkeypatch.setitem(pairing.CODE_KDF, "memory_kib", 8 * 1024)
    monkeypatch.setitem(pairing.CODE_KDF, "iterations", 1)
