"""Storage backends by URL scheme.

``open_storage("relay.db")`` or ``open_storage("sqlite:relay.db")`` gives SQLite,
``open_storage("postgresql://host/db")`` PostgreSQL (imported only then). A backend is a
factory registered for one or more schemes; it gets the URL and the relay's storage
options, and ignores the options that do not apply to it, so the relay passes the same
settings whatever the database.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypedDict, Unpack

from zerok.errors import StorageError
from zerok.relay.config import redact_url
from zerok.relay.storage.base import Storage


class StorageOptions(TypedDict, total=False):
    synchronous: str  # SQLite: NORMAL or FULL
    vacuum: bool  # SQLite: maintain() returns free pages to the file system


Factory = Callable[[str, StorageOptions], Storage]

PATH_SCHEME = "sqlite"  # what a plain file path opens
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")
_backends: dict[str, Factory] = {}


def register_backend(schemes: str | Iterable[str], factory: Factory) -> None:
    """Open URLs of these schemes (case-insensitive) with ``factory(url, options)``; a
    later registration of a scheme replaces the earlier one."""
    for scheme in [schemes] if isinstance(schemes, str) else schemes:
        _backends[scheme.lower()] = factory


def known_schemes() -> list[str]:
    return sorted(_backends)


def url_scheme(url: str) -> str:
    """The scheme ``url`` names: ``scheme://...``, or ``scheme:...`` for a registered
    scheme; anything else is a file path (``PATH_SCHEME``)."""
    match = _SCHEME.match(url)
    if match is not None:
        scheme = match.group(1).lower()
        if scheme in _backends or url[match.end() :].startswith("//"):
            return scheme
    return PATH_SCHEME


def open_storage(url: str, **options: Unpack[StorageOptions]) -> Storage:
    """A Storage for ``url`` (not yet opened: call ``open``). StorageError for a scheme
    no backend is registered for, or a URL the backend cannot use."""
    unknown = set(options) - StorageOptions.__optional_keys__
    if unknown:
        raise TypeError(f"unknown storage options: {', '.join(sorted(unknown))}")
    scheme = url_scheme(url)
    factory = _backends.get(scheme)
    if factory is None:
        raise StorageError(
            f"unknown database URL scheme {scheme!r} in {redact_url(url)}: use a file path "
            f"or a URL of one of the schemes {', '.join(s + ':' for s in known_schemes())}"
        )
    return factory(url, options)


def sqlite_path(url: str) -> Path:
    """The file a plain path, ``sqlite:relative/path`` or ``sqlite:///absolute/path`` names."""
    if not url.lower().startswith("sqlite:"):
        return Path(url)
    rest = url[len("sqlite:") :]
    if rest.startswith("//"):
        host, _, path = rest[2:].partition("/")
        if host:
            raise StorageError(
                f"a sqlite: URL names a local file (sqlite:///absolute/path), not a host: {url}"
            )
        rest = "/" + path
    if rest in ("", "/"):
        raise StorageError(f"no database file in {url!r}")
    return Path(rest)


def default_key_path(url: str) -> Path:
    """Where a relay on this database keeps its key unless told otherwise: beside the
    SQLite file, or ``data/relay.key`` for a database server."""
    if url_scheme(url) == PATH_SCHEME:
        return sqlite_path(url).parent / "relay.key"
    return Path("data") / "relay.key"


def _open_sqlite(url: str, options: StorageOptions) -> Storage:
    from zerok.relay.storage.sqlite import SQLiteStorage  # noqa: PLC0415

    return SQLiteStorage(
        sqlite_path(url),
        synchronous=options.get("synchronous", "NORMAL"),
        vacuum=options.get("vacuum", True),
    )


def _open_postgres(url: str, options: StorageOptions) -> Storage:
    # Imported here: psycopg is loaded only by relays that use PostgreSQL.
    from zerok.relay.storage.postgres import PostgresStorage  # noqa: PLC0415

    return PostgresStorage(url)


register_backend("sqlite", _open_sqlite)
register_backend(("postgresql", "postgres"), _open_postgres)
