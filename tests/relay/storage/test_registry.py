"""Backends chosen by URL scheme: ``open_storage`` and ``register_backend``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from zerok.relay.storage import (
    SQLiteStorage,
    Storage,
    StorageError,
    StorageOptions,
    default_key_path,
    known_schemes,
    open_storage,
    register_backend,
    registry,
)
from zerok.relay.storage.postgres import PostgresStorage


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("relay.db", "relay.db"),
        ("./data/relay.db", "data/relay.db"),
        ("/var/lib/zerok/relay.db", "/var/lib/zerok/relay.db"),
        ("odd:name.db", "odd:name.db"),  # no // and no known scheme: a file name
        ("sqlite:relay.db", "relay.db"),
        ("SQLite:data/relay.db", "data/relay.db"),
        ("sqlite:///var/lib/zerok/relay.db", "/var/lib/zerok/relay.db"),
    ],
)
def test_paths_and_sqlite_urls_open_sqlite(url: str, path: str) -> None:
    storage = open_storage(url)
    assert isinstance(storage, SQLiteStorage)
    assert storage.path == Path(path)


@pytest.mark.parametrize("url", ["sqlite://server/relay.db", "sqlite:", "sqlite:///"])
def test_sqlite_urls_without_a_local_file_are_refused(url: str) -> None:
    with pytest.raises(StorageError, match="sqlite:"):
        open_storage(url)


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("relay.db", "relay.key"),
        ("./data/relay.db", "data/relay.key"),
        ("sqlite:///var/lib/zerok/relay.db", "/var/lib/zerok/relay.key"),
        ("sqlite:db/relay.db", "db/relay.key"),
        ("postgresql://zerok@db.example/relay", "data/relay.key"),
    ],
)
def test_the_relay_key_lives_beside_the_sqlite_file_or_in_data(url: str, key: str) -> None:
    assert default_key_path(url) == Path(key)


def test_sqlite_options_apply() -> None:
    storage = open_storage("relay.db", synchronous="full", vacuum=False)
    assert isinstance(storage, SQLiteStorage)
    assert (storage.synchronous, storage.vacuum_on_maintain) == ("FULL", False)
    default = open_storage("relay.db")
    assert isinstance(default, SQLiteStorage)
    assert (default.synchronous, default.vacuum_on_maintain) == ("NORMAL", True)
    with pytest.raises(StorageError, match="synchronous"):
        open_storage("relay.db", synchronous="OFF")


@pytest.mark.parametrize(
    "url", ["postgresql://zerok@db.example/relay", "postgres://zerok:pw@db.example:5433/relay"]
)
def test_postgresql_urls_open_postgresql_ignoring_sqlite_options(url: str) -> None:
    storage = open_storage(url, synchronous="FULL", vacuum=True)
    assert isinstance(storage, PostgresStorage)
    assert storage.url == url


def test_an_unknown_scheme_names_the_known_ones_and_hides_the_password() -> None:
    with pytest.raises(StorageError) as info:
        open_storage("mysql://root:hunter2@db.example/relay")
    message = str(info.value)
    assert "'mysql'" in message
    assert "hunter2" not in message
    for scheme in ("sqlite:", "postgresql:", "postgres:"):
        assert scheme in message
    assert known_schemes() == ["postgres", "postgresql", "sqlite"]


def test_an_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="fsync"):
        open_storage("relay.db", fsync=True)  # type: ignore[call-arg]


def test_a_registered_backend_gets_its_urls_and_the_options(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(registry, "_backends", dict(registry._backends))
    calls: list[tuple[str, StorageOptions]] = []
    made = SQLiteStorage(tmp_path / "relay.db")

    def factory(url: str, options: StorageOptions) -> Storage:
        calls.append((url, options))
        return made

    register_backend(["mem", "Memory"], factory)
    assert open_storage("mem://x", vacuum=False) is made
    assert open_storage("MEMORY:y") is made  # a registered scheme needs no //
    assert calls == [("mem://x", {"vacuum": False}), ("MEMORY:y", {})]
    assert "memory" in known_schemes()
    register_backend("sqlite", factory)  # a later registration replaces the earlier
    assert open_storage("relay.db") is made


def test_sqlite_relays_do_not_load_psycopg() -> None:
    code = (
        "import sys; from zerok.relay.storage import open_storage; open_storage('x.db'); "
        "assert 'psycopg' not in sys.modules, 'psycopg was imported'"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
