"""Fixtures for the relay integration tests: real relays, in this process or as processes.

A relay is the real server bound to 127.0.0.1 port 0, by default an ``InProcessRelay`` (its
own event loop in a thread of the test process), with ``process=True`` a ``python -m zerok
relay`` child; the test learns the port it got once it listens, so there is no port race
and no polling. Every relay started here is stopped in the fixture's teardown: gracefully
in this process (its thread joined), a process by PID (SIGTERM, then SIGKILL after a
timeout).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.relay.support import BACKENDS, RelayLauncher


@pytest.fixture(params=BACKENDS)
def launcher(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RelayLauncher]:
    """Starts relays for one test, once per storage backend; all of them are stopped (and
    their PostgreSQL databases dropped) when the test ends."""
    relays = RelayLauncher(tmp_path, request.param)
    try:
        yield relays
    finally:
        relays.close()


@pytest.fixture(scope="module", params=BACKENDS)
def module_launcher(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[RelayLauncher]:
    """Starts relays shared by the tests of one module (separate groups keep them apart),
    once per storage backend."""
    relays = RelayLauncher(tmp_path_factory.mktemp("relays"), request.param)
    try:
        yield relays
    finally:
        relays.close()
