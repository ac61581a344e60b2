"""Client addresses behind a proxy: believed only from the proxy, only from its header."""

from __future__ import annotations

import pytest

from zerok.errors import ConfigError
from zerok.relay.proxy import ClientAddresses, parse_networks

LOCAL = parse_networks("127.0.0.1, ::1")
XFF = "X-Forwarded-For"
V4 = "198.51.100.9"


def test_without_a_proxy_the_peer_is_the_client_whatever_it_claims() -> None:
    off = ClientAddresses(False)
    assert off.of("203.0.113.7", {"X-Forwarded-For": "1.2.3.4"}) == "203.0.113.7"


def test_a_direct_client_cannot_choose_its_address() -> None:
    # The proxy connects from 127.0.0.1; this socket comes from elsewhere.
    on = ClientAddresses(True, "x-forwarded-for", LOCAL)
    assert on.of("203.0.113.7", {"X-Forwarded-For": "1.2.3.4"}) == "203.0.113.7"


@pytest.mark.parametrize(
    ("header", "headers", "client"),
    [
        # The proxy appended the real address; the client's own claim comes first.
        ("x-forwarded-for", [("X-Forwarded-For", "1.2.3.4, 198.51.100.9")], "198.51.100.9"),
        (
            "x-forwarded-for",
            [("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-For", "2001:db8::5")],
            "2001:db8::5",
        ),
        (
            "forwarded",
            [("Forwarded", 'for=1.2.3.4, for="198.51.100.9:4711";proto=https')],
            "198.51.100.9",
        ),
        ("forwarded", [("Forwarded", 'for="[2001:db8::5]:443"')], "2001:db8::5"),
        (
            "cf-connecting-ip",
            [("CF-Connecting-IP", "198.51.100.9"), ("X-Forwarded-For", "1.2.3.4")],
            "198.51.100.9",
        ),
    ],
)
def test_the_configured_header_of_a_trusted_proxy_names_the_client(
    header: str, headers: list[tuple[str, str]], client: str
) -> None:
    assert ClientAddresses(True, header, LOCAL).of("127.0.0.1", headers) == client


def test_only_the_configured_header_counts() -> None:
    # Behind nginx (X-Forwarded-For), a client's own CF-Connecting-IP is ignored.
    nginx = ClientAddresses(True, "x-forwarded-for", LOCAL)
    headers = [("CF-Connecting-IP", "1.2.3.4"), ("X-Forwarded-For", "198.51.100.9")]
    assert nginx.of("127.0.0.1", headers) == "198.51.100.9"


@pytest.mark.parametrize("value", ["", "not-an-address", "1.2.3.4, garbage"])
def test_a_header_that_names_no_address_leaves_the_proxys(value: str) -> None:
    on = ClientAddresses(True, "x-forwarded-for", LOCAL)
    assert on.of("127.0.0.1", [("X-Forwarded-For", value)]) == "127.0.0.1"
    assert on.of("127.0.0.1", []) == "127.0.0.1"


def test_trusted_networks_parse_and_refuse_nonsense() -> None:
    assert [str(n) for n in parse_networks("10.0.0.0/8, ::1, 192.168.1.7")] == [
        "10.0.0.0/8",
        "::1/128",
        "192.168.1.7/32",
    ]
    with pytest.raises(ConfigError, match=r"proxy\.example"):
        parse_networks("10.0.0.0/8, proxy.example")
