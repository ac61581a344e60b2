"""Shared test configuration."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.relay.support import RelayLauncher

# CI machines are small and noisy: no per-example deadline, a fixed example budget.
settings.register_profile(
    "default",
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("ci", parent=settings.get_profile("default"), derandomize=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[RelayLauncher]:
    """Starts relays (SQLite) for one test; all of them are stopped when the test ends.
    The relay tests override this with one run per storage backend."""
    relays = RelayLauncher(tmp_path / "relays")
    try:
        yield relays
    finally:
        relays.close()


@pytest.fixture(scope="module")
def module_launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayLauncher]:
    """Starts relays (SQLite) shared by the tests of one module (separate groups keep them
    apart); all of them are stopped when the module ends."""
    relays = RelayLauncher(tmp_path_factory.mktemp("relays"))
    try:
        yield relays
    finally:
        relays.close()
