"""Relay configuration: value parsers, relay.toml loading, precedence, validation, OPTIONS."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import pytest

from zerok.errors import ConfigError
from zerok.relay.config import (
    OPTIONS,
    RelayConfig,
    load_config,
    parse_bool,
    parse_duration,
    parse_int,
    parse_size,
)
from zerok.relay.server import relay_key_path

DEFAULTS = RelayConfig()

# -- value parsers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1MiB", 1024 * 1024),
        ("512kb", 512_000),
        ("1.5 KiB", 1536),
        ("100MiB", 100 * 1024 * 1024),
        ("2 GiB", 2 * 1024**3),
        ("3gb", 3 * 10**9),
        ("4 MB", 4 * 10**6),
        ("10b", 10),
        ("10B", 10),
        ("1048576", 1048576),
        ("  7 kib  ", 7 * 1024),
        (1048576, 1048576),
        (0, 0),
    ],
)
def test_parse_size(raw: Any, expected: int) -> None:
    assert parse_size(raw) == expected
    assert isinstance(parse_size(raw), int)


@pytest.mark.parametrize(
    "raw", ["abc", "", "MiB", "1 XB", "1.5.5 KiB", "-5", "1e6", "5 Mi B", "1,000", True]
)
def test_parse_size_rejects_garbage_with_helpful_message(raw: Any) -> None:
    with pytest.raises(ValueError, match="not a size") as info:
        parse_size(raw)
    message = str(info.value)
    assert repr(raw) in message
    assert "MiB" in message  # shows an example of what works


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("10min", 600.0),
        ("2h", 7200.0),
        ("7d", 7 * 86400.0),
        ("500ms", 0.5),
        ("1.5s", 1.5),
        ("90", 90.0),
        (" 3 S ", 3.0),
        (30, 30.0),
        (1.25, 1.25),
    ],
)
def test_parse_duration(raw: Any, expected: float) -> None:
    value = parse_duration(raw)
    assert value == pytest.approx(expected)
    assert isinstance(value, float)


@pytest.mark.parametrize("raw", ["abc", "", "5 weeks", "-1s", "1y", "s", True])
def test_parse_duration_rejects_garbage(raw: Any) -> None:
    with pytest.raises(ValueError, match="not a duration") as info:
        parse_duration(raw)
    assert repr(raw) in str(info.value)
    assert "7d" in str(info.value)


@pytest.mark.parametrize("raw", [True, "true", "TRUE", " yes ", "on", "1", 1])
def test_parse_bool_true(raw: Any) -> None:
    assert parse_bool(raw) is True


@pytest.mark.parametrize("raw", [False, "false", "False", "no", "off", "0", 0])
def test_parse_bool_false(raw: Any) -> None:
    assert parse_bool(raw) is False


@pytest.mark.parametrize("raw", ["maybe", "", "2", "yess"])
def test_parse_bool_rejects_garbage(raw: Any) -> None:
    with pytest.raises(ValueError, match="not a boolean"):
        parse_bool(raw)


def test_parse_int() -> None:
    assert parse_int("42") == 42
    assert parse_int(7) == 7
    for bad in (True, False, "forty", "1.5"):
        with pytest.raises(ValueError):
            parse_int(bad)


# -- loading relay.toml -------------------------------------------------------------------

FULL_TOML = """
[server]
bind = "0.0.0.0:9443"
max_connections = 500
trust_proxy = true
trusted_proxies = "10.0.0.0/8, 127.0.0.1"
proxy_header = "forwarded"
allow_new_groups = false

[storage]
database = "/var/lib/zerok/relay.db"
key_file = "/etc/zerok/relay.key"
synchronous = "FULL"
max_blob_size = "2MiB"
max_group_storage = "1GiB"
max_group_blobs = 5000
max_log_entries = 2000
max_log_bytes = "4MiB"
max_storage = "20GiB"
default_ttl = "3d"
max_ttl = "14d"

[cleanup]
interval = "10m"
vacuum_on_cleanup = false

[limits]
messages_per_minute = 250
messages_burst = 500
connections_per_ip = 4
new_groups_per_hour = 3
new_devices_per_hour = 30
push_bytes_per_hour = "200MiB"
max_frame_size = "3MiB"
handshake_timeout = "5s"
idle_timeout = 0
request_timeout = "4s"
send_buffer = "16MiB"
send_buffer_total = "1GiB"

[invites]
max_size = "8KiB"
ttl = "15m"
per_minute = 12

[push]
webhook = "https://push.example/hook"

[log]
level = "DEBUG"
"""


def write(tmp_path: Path, text: str, name: str = "relay.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_config_reads_every_section(tmp_path: Path) -> None:
    path = write(tmp_path, FULL_TOML)
    config = load_config(path, env={})
    assert config == RelayConfig(
        bind="0.0.0.0:9443",
        max_connections=500,
        trust_proxy=True,
        trusted_proxies="10.0.0.0/8, 127.0.0.1",
        proxy_header="forwarded",
        allow_new_groups=False,
        database="/var/lib/zerok/relay.db",
        key_file="/etc/zerok/relay.key",
        synchronous="FULL",
        max_blob_size=2 * 1024 * 1024,
        max_group_storage=1024**3,
        max_group_blobs=5000,
        max_log_entries=2000,
        max_log_bytes=4 * 1024 * 1024,
        max_storage=20 * 1024**3,
        default_ttl=3 * 86400.0,
        max_ttl=14 * 86400.0,
        cleanup_interval=600.0,
        vacuum_on_cleanup=False,
        messages_per_minute=250,
        messages_burst=500,
        connections_per_ip=4,
        new_groups_per_hour=3,
        new_devices_per_hour=30,
        push_bytes_per_hour=200 * 1024 * 1024,
        max_frame_size=3 * 1024 * 1024,
        handshake_timeout=5.0,
        idle_timeout=0.0,
        request_timeout=4.0,
        send_buffer=16 * 1024 * 1024,
        send_buffer_total=1024**3,
        invite_max_size=8192,
        invite_ttl=900.0,
        invites_per_minute=12,
        push_webhook="https://push.example/hook",
        log_level="DEBUG",
    )
    assert (config.host, config.port) == ("0.0.0.0", 9443)
    assert config.frame_limit == 3 * 1024 * 1024
    assert relay_key_path(config) == Path("/etc/zerok/relay.key")
    # The sample really does exercise every option.
    doc = tomllib.loads(FULL_TOML)
    assert {(s, k) for s, table in doc.items() for k in table} == {
        (o.section, o.key) for o in OPTIONS
    }


def test_load_config_without_anything_gives_defaults() -> None:
    assert load_config(env={}) == DEFAULTS
    assert load_config(None, env={}, overrides={o.name: None for o in OPTIONS}) == DEFAULTS


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, ""), env={}) == DEFAULTS


def test_precedence_file_then_env_then_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[limits]\nmessages_per_minute = 50\nconnections_per_ip = 5\n[log]\nlevel = "ERROR"\n',
    )
    env = {"SYNC_RELAY_MESSAGES_PER_MINUTE": "60", "SYNC_RELAY_CONNECTIONS_PER_IP": "6"}

    only_file = load_config(path, env={})
    assert (only_file.messages_per_minute, only_file.connections_per_ip) == (50, 5)

    with_env = load_config(path, env=env)
    assert (with_env.messages_per_minute, with_env.connections_per_ip) == (60, 6)
    assert with_env.log_level == "ERROR"  # untouched by env: still from the file

    with_flags = load_config(
        path, env=env, overrides={"messages_per_minute": 70, "connections_per_ip": None}
    )
    assert with_flags.messages_per_minute == 70
    assert with_flags.connections_per_ip == 6  # None: flag not given, env stays
    assert with_flags.log_level == "ERROR"


def test_environment_defaults_to_os_environ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYNC_RELAY_MAX_BLOB_SIZE", "2MiB")
    monkeypatch.setenv("SYNC_RELAY_VACUUM_ON_CLEANUP", "off")
    config = load_config()
    assert config.max_blob_size == 2 * 1024 * 1024
    assert config.vacuum_on_cleanup is False
    # An explicit env mapping replaces os.environ entirely.
    assert load_config(env={}).max_blob_size == DEFAULTS.max_blob_size


_STR_SAMPLES = {
    "bind": "0.0.0.0:9000",
    "database": "/srv/db/relay.db",
    "key_file": "/srv/keys/relay.key",
    "synchronous": "FULL",
    "push_webhook": "http://127.0.0.1:1/hook",
    "log_level": "WARNING",
    "trusted_proxies": "10.0.0.0/8",
    "proxy_header": "cf-connecting-ip",
}


def _sample(name: str) -> tuple[str, Any]:
    """A raw string for option ``name`` and the non-default value it must produce."""
    if name in _STR_SAMPLES:
        return _STR_SAMPLES[name], _STR_SAMPLES[name]
    default = getattr(DEFAULTS, name)
    if isinstance(default, bool):
        return str(not default).lower(), not default
    if name == "max_frame_size":
        return "4MiB", 4 * 1024 * 1024
    if isinstance(default, int):
        return str(default + 3), default + 3
    return f"{default + 2}s", default + 2.0


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.name)
@pytest.mark.parametrize("source", ["file", "env", "override"])
def test_every_option_is_settable_from_every_source(
    tmp_path: Path, option: Any, source: str
) -> None:
    raw, expected = _sample(option.name)
    assert expected != getattr(DEFAULTS, option.name)
    if source == "file":
        path = write(tmp_path, f'[{option.section}]\n{option.key} = "{raw}"\n')
        config = load_config(path, env={})
    elif source == "env":
        config = load_config(env={option.env: raw})
    else:
        config = load_config(env={}, overrides={option.name: raw})
    assert getattr(config, option.name) == expected
    changed = {
        f.name
        for f in dataclasses.fields(RelayConfig)
        if getattr(config, f.name) != getattr(DEFAULTS, f.name)
    }
    assert changed == {option.name}


# -- loading errors -----------------------------------------------------------------------


def _config_error(path: Path, text: str) -> str:
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    return str(info.value)


def test_unknown_section_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    message = _config_error(path, "[nope]\nsomething = 1\n")
    assert str(path) in message
    assert "[nope] something" in message
    assert "unknown" in message


def test_unknown_key_in_known_section_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    message = _config_error(path, '[server]\nbnd = "0.0.0.0:1"\n')
    assert str(path) in message
    assert "[server] bnd" in message
    # The attribute name is not a TOML key when they differ: [cleanup] interval.
    message = _config_error(path, '[cleanup]\ncleanup_interval = "5m"\n')
    assert "[cleanup] cleanup_interval" in message


@pytest.mark.parametrize(
    ("text", "where", "shown"),
    [
        ('[storage]\nmax_blob_size = "lots"\n', "[storage] max_blob_size", "lots"),
        ('[storage]\ndefault_ttl = "soon"\n', "[storage] default_ttl", "soon"),
        ('[cleanup]\nvacuum_on_cleanup = "maybe"\n', "[cleanup] vacuum_on_cleanup", "maybe"),
        ('[server]\nmax_connections = "many"\n', "[server] max_connections", "many"),
        ("[server]\nmax_connections = [1, 2]\n", "[server] max_connections", ""),
    ],
)
def test_bad_value_names_file_and_key(tmp_path: Path, text: str, where: str, shown: str) -> None:
    path = tmp_path / "relay.toml"
    message = _config_error(path, text)
    assert str(path) in message
    assert where in message
    assert shown in message


def test_top_level_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    message = _config_error(path, 'bind = "0.0.0.0:1"\n')
    assert str(path) in message
    assert "'bind'" in message
    assert "section" in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config(path, env={})
    assert str(path) in str(info.value)


def test_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    message = _config_error(path, "[server\nbind = \n")
    assert str(path) in message
    assert "TOML" in message


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="SYNC_RELAY_MAX_BLOB_SIZE") as info:
        load_config(env={"SYNC_RELAY_MAX_BLOB_SIZE": "huge"})
    assert "huge" in str(info.value)


def test_bad_override_names_the_flag() -> None:
    with pytest.raises(ConfigError, match="--messages-per-minute"):
        load_config(env={}, overrides={"messages_per_minute": "lots"})


def test_values_are_validated_after_loading(tmp_path: Path) -> None:
    path = write(tmp_path, '[storage]\ndefault_ttl = "40d"\n')
    with pytest.raises(ConfigError, match="default_ttl"):
        load_config(path, env={})
    with pytest.raises(ConfigError, match="max_blob_size"):
        load_config(env={"SYNC_RELAY_MAX_BLOB_SIZE": "0"})


# -- validate ---------------------------------------------------------------------------


def test_defaults_are_valid() -> None:
    assert DEFAULTS.validate() is DEFAULTS
    assert (DEFAULTS.host, DEFAULTS.port) == ("127.0.0.1", 8080)


@pytest.mark.parametrize(
    ("bind", "host", "port"),
    [
        ("0.0.0.0:0", "0.0.0.0", 0),
        ("[::1]:8443", "::1", 8443),
        ("relay.example:65535", "relay.example", 65535),
    ],
)
def test_valid_binds(bind: str, host: str, port: int) -> None:
    config = RelayConfig(bind=bind).validate()
    assert (config.host, config.port) == (host, port)


@pytest.mark.parametrize(
    ("bind", "match"),
    [
        ("localhost", "HOST:PORT"),
        ("", "HOST:PORT"),
        ("localhost:", "number"),
        ("localhost:http", "number"),
        ("[::1]", "HOST:PORT"),
        ("::1:8080", "brackets"),
        ("localhost:65536", "out of range"),
        ("localhost:-1", "out of range"),
    ],
)
def test_bad_binds(bind: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RelayConfig(bind=bind).validate()


def test_ipv6_bind_without_port_is_refused() -> None:
    with pytest.raises(ConfigError):
        RelayConfig(bind="::1").validate()


def test_synchronous_validation() -> None:
    assert RelayConfig(synchronous="full").validate().synchronous == "full"
    with pytest.raises(ConfigError, match="synchronous"):
        RelayConfig(synchronous="OFF").validate()


@pytest.mark.parametrize(
    "name",
    [
        "max_connections",
        "max_blob_size",
        "max_group_storage",
        "connections_per_ip",
        "invite_max_size",
        "default_ttl",
        "max_ttl",
        "cleanup_interval",
        "handshake_timeout",
        "invite_ttl",
    ],
)
@pytest.mark.parametrize("value", [0, -1])
def test_non_positive_limits_are_refused(name: str, value: int) -> None:
    changes: dict[str, Any] = {name: value}
    config = dataclasses.replace(DEFAULTS, **changes)
    with pytest.raises(ConfigError, match=name):
        config.validate()


ZERO_IS_OFF = (
    "messages_per_minute",
    "messages_burst",
    "invites_per_minute",
    "new_groups_per_hour",
    "new_devices_per_hour",
    "push_bytes_per_hour",
    "max_storage",
)


def test_rate_limits_may_be_zero_but_not_negative() -> None:
    zeros: dict[str, Any] = dict.fromkeys(ZERO_IS_OFF, 0)
    dataclasses.replace(DEFAULTS, **zeros).validate()
    for name in ZERO_IS_OFF:
        with pytest.raises(ConfigError, match=f"{name} must be 0"):
            changes: dict[str, Any] = {name: -1}
            dataclasses.replace(DEFAULTS, **changes).validate()


def test_push_budget_must_hold_the_largest_blob() -> None:
    RelayConfig(max_blob_size=1000, push_bytes_per_hour=1128).validate()
    with pytest.raises(ConfigError, match="push_bytes_per_hour"):
        RelayConfig(max_blob_size=1000, push_bytes_per_hour=1127).validate()
    with pytest.raises(ConfigError, match="max_group_blobs"):
        RelayConfig(max_group_blobs=0).validate()


def test_default_ttl_must_not_exceed_max_ttl() -> None:
    RelayConfig(default_ttl=100.0, max_ttl=100.0).validate()
    with pytest.raises(ConfigError, match="default_ttl"):
        RelayConfig(default_ttl=101.0, max_ttl=100.0).validate()


def test_frame_limit_default_and_explicit() -> None:
    assert DEFAULTS.frame_limit == 1024 * 1024 + 64 * 1024
    assert RelayConfig(max_blob_size=1000).frame_limit == 1000 + 65536
    explicit = RelayConfig(max_blob_size=1 << 20, max_frame_size=(1 << 20) + 1024).validate()
    assert explicit.frame_limit == (1 << 20) + 1024
    with pytest.raises(ConfigError, match="max_frame_size"):
        RelayConfig(max_blob_size=1 << 20, max_frame_size=(1 << 20) + 1023).validate()
    with pytest.raises(ConfigError, match="max_frame_size"):
        RelayConfig(max_blob_size=1 << 20, max_frame_size=4096).validate()


def test_key_path_defaults_beside_the_database() -> None:
    assert relay_key_path(RelayConfig(database="/srv/zk/relay.db")) == Path("/srv/zk/relay.key")
    assert relay_key_path(RelayConfig(database="relay.db")) == Path("relay.key")
    assert relay_key_path(DEFAULTS) == Path("data/relay.key")
    assert relay_key_path(RelayConfig(database="sqlite:///a/b.db")) == Path("/a/relay.key")
    assert relay_key_path(RelayConfig(database="postgresql://h/db")) == Path("data/relay.key")
    custom = RelayConfig(database="/a/b.db", key_file="/k/x.key")
    assert relay_key_path(custom) == Path("/k/x.key")


# -- OPTIONS ------------------------------------------------------------------------------


def test_options_cover_every_field_once() -> None:
    names = [o.name for o in OPTIONS]
    assert len(names) == len(set(names))
    assert set(names) == {f.name for f in dataclasses.fields(RelayConfig)}


def test_options_have_unique_env_flag_and_toml_key_and_help() -> None:
    envs = [o.env for o in OPTIONS]
    flags = [o.flag for o in OPTIONS]
    keys = [(o.section, o.key) for o in OPTIONS]
    assert len(set(envs)) == len(OPTIONS)
    assert len(set(flags)) == len(OPTIONS)
    assert len(set(keys)) == len(OPTIONS)
    for option in OPTIONS:
        assert option.env == "SYNC_RELAY_" + option.name.upper()
        assert option.env.isupper()
        assert option.flag.startswith("--")
        assert "_" not in option.flag
        assert option.help.strip()
        assert option.section.strip()
        assert option.key.strip()


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.name)
def test_every_default_survives_its_parser(option: Any) -> None:
    default = getattr(DEFAULTS, option.name)
    assert option.parse(default) == default
