"""Relay configuration: defaults < relay.toml < environment (SYNC_RELAY_*) < command line.

Every option is declared once in OPTIONS, which drives the TOML loader, the environment,
the command-line flags and ``zerok relay --help``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zerok.errors import ConfigError
from zerok.relay.proxy import HEADERS as PROXY_HEADERS
from zerok.relay.proxy import parse_networks

#: What each stored blob costs in the group quota, the relay-wide cap and the per-IP push
#: budget beyond its ciphertext: its row, ids, cursor and index entries. A 0-byte blob is
#: not free.
BLOB_OVERHEAD = 128

_BIND = re.compile(r"\[([^\]]+)\]:(\S*)|([^:\[\]]+):(\S*)")


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 10**6,
    "mib": 1024**2,
    "gb": 10**9,
    "gib": 1024**3,
}
_TIME_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def redact_url(url: str) -> str:
    """``scheme://user:secret@host/...`` → ``scheme://user:***@host/...``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    if "@" not in rest.split("/", 1)[0]:
        return f"{scheme}://{_redact_query(rest)}"
    credentials, _, host = rest.partition("@")
    user, colon, _ = credentials.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{_redact_query(host)}"


def _redact_query(rest: str) -> str:
    """libpq also takes ``?password=...``: hide that too."""
    path, mark, query = rest.partition("?")
    if not mark:
        return rest
    params = [
        f"{k}=***" if k.lower() == "password" else f"{k}{sep}{v}"
        for k, sep, v in (p.partition("=") for p in query.split("&"))
    ]
    return f"{path}?{'&'.join(params)}"


def parse_size(value: Any) -> int:
    """``1048576``, ``"1 MiB"``, ``"512kb"`` → bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"not a size: {value!r} (use e.g. 1048576, 512KiB, 100MiB)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def parse_duration(value: Any) -> float:
    """``30``, ``"30s"``, ``"7d"``, ``"500ms"`` → seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not match or match.group(2).lower() not in _TIME_UNITS:
        raise ValueError(f"not a duration: {value!r} (use e.g. 30, 30s, 5m, 7d)")
    return float(match.group(1)) * _TIME_UNITS[match.group(2).lower()]


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r} (use true or false)")


def parse_int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"not an integer: {value!r}")
    return int(value)


@dataclass(frozen=True)
class Option:
    name: str  # attribute of RelayConfig, also the --flag and SYNC_RELAY_* suffix
    section: str  # [section] in relay.toml
    key: str  # key inside the section
    parse: Callable[[Any], Any]
    help: str

    @property
    def env(self) -> str:
        return "SYNC_RELAY_" + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class RelayConfig:
    bind: str = "127.0.0.1:8080"
    max_connections: int = 10_000
    trust_proxy: bool = False
    trusted_proxies: str = "127.0.0.1, ::1"  # where the proxy connects from
    proxy_header: str = "x-forwarded-for"  # or forwarded, cf-connecting-ip
    allow_new_groups: bool = True
    database: str = "./data/relay.db"
    key_file: str = ""  # default: relay.key beside the database
    synchronous: str = "NORMAL"
    max_blob_size: int = 1024 * 1024
    max_group_storage: int = 100 * 1024 * 1024
    max_group_blobs: int = 100_000
    max_log_entries: int = 10_000  # entries in one group's membership log
    max_log_bytes: int = 16 * 1024 * 1024  # bytes of one group's membership log
    max_storage: int = 0  # 0: no relay-wide cap
    default_ttl: float = 7 * 86400.0
    max_ttl: float = 30 * 86400.0
    cleanup_interval: float = 300.0
    vacuum_on_cleanup: bool = True
    messages_per_minute: int = 600
    messages_burst: int = 2000
    connections_per_ip: int = 256
    new_groups_per_hour: int = 20  # per client IP
    new_devices_per_hour: int = 200  # per client IP
    push_bytes_per_hour: int = 1024**3  # per client IP, each blob counted + BLOB_OVERHEAD
    max_frame_size: int = 0  # 0: max_blob_size + 64 KiB
    handshake_timeout: float = 10.0
    idle_timeout: float = 120.0
    request_timeout: float = 10.0  # for the HTTP request (or WebSocket upgrade) to arrive
    send_buffer: int = 8 * 1024 * 1024  # bytes waiting to be sent to one connection
    send_buffer_total: int = 256 * 1024 * 1024  # the same, all connections together
    invite_max_size: int = 4096
    invite_ttl: float = 600.0
    invites_per_minute: int = 30
    push_webhook: str = ""
    log_level: str = "INFO"

    @property
    def host(self) -> str:
        return self.bind.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.bind.rsplit(":", 1)[1])

    @property
    def frame_limit(self) -> int:
        return self.max_frame_size or self.max_blob_size + 64 * 1024

    @property
    def database_display(self) -> str:
        """The database for logs and banners: a URL without its password."""
        return redact_url(self.database)

    def validate(self) -> RelayConfig:
        match = _BIND.fullmatch(self.bind)
        if match is None:
            hint = " (an IPv6 address needs brackets)" if self.bind.count(":") > 1 else ""
            raise ConfigError(
                f"bind must be HOST:PORT, e.g. 127.0.0.1:8080{hint}, not {self.bind!r}"
            )
        try:
            port = int(match.group(2) or match.group(4))
        except ValueError:
            raise ConfigError(f"bind port must be a number, got {self.bind!r}") from None
        if not 0 <= port <= 65535:
            raise ConfigError(f"bind port {port} is out of range")
        if self.synchronous.upper() not in ("NORMAL", "FULL"):
            raise ConfigError("synchronous must be NORMAL or FULL")
        for name in (
            "max_connections",
            "max_blob_size",
            "max_group_storage",
            "connections_per_ip",
            "invite_max_size",
            "max_group_blobs",
            "max_log_entries",
            "max_log_bytes",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.frame_limit < self.max_blob_size + 1024:
            raise ConfigError("max_frame_size must exceed max_blob_size by at least 1 KiB")
        for name in (
            "messages_per_minute",
            "messages_burst",
            "invites_per_minute",
            "new_groups_per_hour",
            "new_devices_per_hour",
            "push_bytes_per_hour",
            "max_storage",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 (off) or positive")
        if 0 < self.push_bytes_per_hour < self.max_blob_size + BLOB_OVERHEAD:
            raise ConfigError(
                f"push_bytes_per_hour must be 0 (off) or at least max_blob_size + {BLOB_OVERHEAD}"
            )
        for name in (
            "default_ttl",
            "max_ttl",
            "cleanup_interval",
            "handshake_timeout",
            "invite_ttl",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.idle_timeout < 0:
            raise ConfigError("idle_timeout must be 0 (never) or positive")
        parse_networks(self.trusted_proxies)
        if self.proxy_header.lower() not in PROXY_HEADERS:
            raise ConfigError(f"proxy_header must be one of {', '.join(PROXY_HEADERS)}")
        if self.request_timeout <= 0:
            raise ConfigError("request_timeout must be positive")
        if self.send_buffer < 2 * self.frame_limit:
            # Room for the largest answer while the one before it is still being written.
            raise ConfigError(
                f"send_buffer must be at least twice the frame limit ({2 * self.frame_limit})"
            )
        if self.send_buffer_total < self.send_buffer:
            raise ConfigError("send_buffer_total must be at least send_buffer")
        if self.default_ttl > self.max_ttl:
            raise ConfigError("default_ttl must not exceed max_ttl")
        return self


OPTIONS: tuple[Option, ...] = (
    Option("bind", "server", "bind", str, "HOST:PORT to listen on"),
    Option(
        "max_connections", "server", "max_connections", parse_int, "connections accepted at once"
    ),
    Option(
        "trust_proxy",
        "server",
        "trust_proxy",
        parse_bool,
        "behind one reverse proxy: take the client IP from X-Forwarded-For",
    ),
    Option(
        "trusted_proxies",
        "server",
        "trusted_proxies",
        str,
        "with trust_proxy: addresses or networks the proxy connects from",
    ),
    Option(
        "proxy_header",
        "server",
        "proxy_header",
        str,
        "with trust_proxy: x-forwarded-for, forwarded or cf-connecting-ip",
    ),
    Option(
        "allow_new_groups",
        "server",
        "allow_new_groups",
        parse_bool,
        "register groups on their first HELLO (false: a private relay, known groups only)",
    ),
    Option("database", "storage", "database", str, "SQLite file, or postgresql:// URL"),
    Option(
        "key_file",
        "storage",
        "key_file",
        str,
        "relay's Noise key (default: relay.key beside the database)",
    ),
    Option(
        "synchronous",
        "storage",
        "synchronous",
        str,
        "SQLite synchronous: NORMAL (fast) or FULL (fsync each commit)",
    ),
    Option(
        "max_blob_size", "storage", "max_blob_size", parse_size, "largest blob accepted, e.g. 1MiB"
    ),
    Option(
        "max_group_storage",
        "storage",
        "max_group_storage",
        parse_size,
        "bytes buffered per group, e.g. 100MiB (each blob counts 128 bytes more)",
    ),
    Option(
        "max_group_blobs",
        "storage",
        "max_group_blobs",
        parse_int,
        "blobs buffered per group",
    ),
    Option(
        "max_log_entries",
        "storage",
        "max_log_entries",
        parse_int,
        "entries in one group's membership log",
    ),
    Option(
        "max_log_bytes",
        "storage",
        "max_log_bytes",
        parse_size,
        "bytes of one group's membership log, e.g. 16MiB",
    ),
    Option(
        "max_storage",
        "storage",
        "max_storage",
        parse_size,
        "bytes buffered by the whole relay, all groups (0 = no cap), e.g. 50GiB",
    ),
    Option(
        "default_ttl",
        "storage",
        "default_ttl",
        parse_duration,
        "how long a blob is kept by default, e.g. 7d",
    ),
    Option("max_ttl", "storage", "max_ttl", parse_duration, "longest TTL a client may ask for"),
    Option(
        "cleanup_interval",
        "cleanup",
        "interval",
        parse_duration,
        "how often expired and fully acked blobs are removed",
    ),
    Option(
        "vacuum_on_cleanup",
        "cleanup",
        "vacuum_on_cleanup",
        parse_bool,
        "return freed pages to the file system after cleanup",
    ),
    Option(
        "messages_per_minute",
        "limits",
        "messages_per_minute",
        parse_int,
        "messages per device per minute (0 = unlimited)",
    ),
    Option(
        "messages_burst",
        "limits",
        "messages_burst",
        parse_int,
        "messages a device may send at once (0 = messages_per_minute)",
    ),
    Option(
        "connections_per_ip",
        "limits",
        "connections_per_ip",
        parse_int,
        "simultaneous connections per client IP",
    ),
    Option(
        "new_groups_per_hour",
        "limits",
        "new_groups_per_hour",
        parse_int,
        "groups registered per client IP per hour (0 = unlimited)",
    ),
    Option(
        "new_devices_per_hour",
        "limits",
        "new_devices_per_hour",
        parse_int,
        "first HELLOs of unknown devices per client IP per hour (0 = unlimited)",
    ),
    Option(
        "push_bytes_per_hour",
        "limits",
        "push_bytes_per_hour",
        parse_size,
        "bytes pushed per client IP per hour, 128 more per blob (0 = unlimited)",
    ),
    Option(
        "max_frame_size",
        "limits",
        "max_frame_size",
        parse_size,
        "largest protocol frame (default: max_blob_size + 64KiB)",
    ),
    Option(
        "handshake_timeout",
        "limits",
        "handshake_timeout",
        parse_duration,
        "time allowed for handshake and HELLO",
    ),
    Option(
        "idle_timeout",
        "limits",
        "idle_timeout",
        parse_duration,
        "close a connection silent this long (0 = never)",
    ),
    Option(
        "request_timeout",
        "limits",
        "request_timeout",
        parse_duration,
        "time a new connection has to send its HTTP request or WebSocket upgrade",
    ),
    Option(
        "send_buffer",
        "limits",
        "send_buffer",
        parse_size,
        "bytes waiting to be sent to one client before it is cut",
    ),
    Option(
        "send_buffer_total",
        "limits",
        "send_buffer_total",
        parse_size,
        "bytes waiting to be sent to all clients together before the largest is cut",
    ),
    Option("invite_max_size", "invites", "max_size", parse_size, "largest invite payload"),
    Option(
        "invite_ttl", "invites", "ttl", parse_duration, "how long an invite waits to be fetched"
    ),
    Option(
        "invites_per_minute",
        "invites",
        "per_minute",
        parse_int,
        "invite requests per client IP per minute",
    ),
    Option(
        "push_webhook",
        "push",
        "webhook",
        str,
        "URL that receives push notifications for offline devices",
    ),
    Option("log_level", "log", "level", str, "DEBUG, INFO, WARNING or ERROR"),
)
_BY_NAME = {o.name: o for o in OPTIONS}
assert set(_BY_NAME) == {f.name for f in dataclasses.fields(RelayConfig)}


def _apply(values: dict[str, Any], option: Option, raw: Any, origin: str) -> None:
    try:
        values[option.name] = option.parse(raw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{origin}: {exc}") from None


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> RelayConfig:
    """Build the configuration from a TOML file, the environment and explicit overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            doc = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        known = {(o.section, o.key): o for o in OPTIONS}
        for section, table in doc.items():
            if not isinstance(table, dict):
                raise ConfigError(f"{path}: expected a [section], found key {section!r}")
            for key, raw in table.items():
                option = known.get((section, key))
                if option is None:
                    raise ConfigError(f"{path}: unknown option [{section}] {key}")
                _apply(values, option, raw, f"{path} [{section}] {key}")
    environ = os.environ if env is None else env
    for option in OPTIONS:
        if option.env in environ:
            _apply(values, option, environ[option.env], option.env)
    for name, raw in (overrides or {}).items():
        if name not in _BY_NAME:
            raise ConfigError(f"unknown option {name!r}")
        if raw is not None:
            _apply(values, _BY_NAME[name], raw, _BY_NAME[name].flag)
    return RelayConfig(**values).validate()
