"""Fixtures for the relay integration tests: real ``zerok relay`` processes.

Every relay is a subprocess (``python -m zerok relay``) bound to 127.0.0.1 port 0; the test
learns the port it got from the banner the relay prints once it is listening, so there is
no port race and no polling. Every process started here is stopped by PID in the fixture's
teardown (SIGTERM, then SIGKILL after a timeout).
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
