"""Fixtures for the storage tests: every test gets a database of its own, dropped after.

PostgreSQL is not optional here: if the test server cannot be reached, the PostgreSQL
cases fail and say why, so a green run always means both backends kept the contract.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.relay.storage.support import (
    Backend,
    FreshDatabases,
    postgres_backend,
    sqlite_backend,
)
from zerok.relay.config import redact_url
from zerok.testing import PG_ADMIN_URL


@pytest.fixture(scope="session")
def fresh_databases() -> Iterator[FreshDatabases]:
    databases = FreshDatabases()
    try:
        yield databases
    finally:
        databases.close()


@pytest.fixture
def pg_url(fresh_databases: FreshDatabases) -> Iterator[str]:
    """A fresh PostgreSQL database, dropped when the test ends."""
    try:
        url = fresh_databases.take()
    except psycopg.Error as exc:
        problem = str(exc)
    else:
        problem = ""
    if problem:  # outside the except: the reason alone, without a chained traceback
        pytest.fail(
            f"PostgreSQL at {redact_url(PG_ADMIN_URL)} is unreachable ({problem}). The "
            "storage contract must be checked against PostgreSQL too: start the server, or "
            "point ZEROK_TEST_PG at one (trust auth, may create databases).",
            pytrace=False,
        )
    try:
        yield url
    finally:
        fresh_databases.give_back(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Every backend, each on a fresh database."""
    if request.param == "sqlite":
        return sqlite_backend(tmp_path)
    return postgres_backend(request.getfixturevalue("pg_url"))


@pytest.fixture(params=["postgresql"])
def shared_backend(request: pytest.FixtureRequest) -> Backend:
    """Every backend several relays can share, on a fresh database."""
    return postgres_backend(request.getfixturevalue("pg_url"))


@pytest.fixture(params=["sqlite"])
def single_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Every backend with one relay per database, on a fresh database."""
    return sqlite_backend(tmp_path)
