"""Which address a connection comes from, behind a reverse proxy or a tunnel.

Per-IP limits and logs need the client's address. Behind a proxy every socket comes from
the proxy, which names the client in a header. The header is believed only when the socket
comes from one of ``trusted`` networks (the proxy's own address: a client that reaches the
relay directly cannot choose its address), and only the one header the operator's proxy
sets: the last ``X-Forwarded-For`` entry (the one the proxy appended), the last ``for=`` of
``Forwarded`` (RFC 7239), or ``CF-Connecting-IP`` (Cloudflare's tunnel).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from zerok.errors import ConfigError

HEADERS = ("x-forwarded-for", "forwarded", "cf-connecting-ip")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(text: str) -> tuple[Network, ...]:
    """``"127.0.0.1, ::1, 10.0.0.0/8"`` → networks; ConfigError naming a bad entry."""
    networks: list[Network] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(
                f"trusted_proxies: {item!r} is not an IP address or network (e.g. 10.0.0.0/8)"
            ) from None
    return tuple(networks)


@dataclass(frozen=True)
class ClientAddresses:
    """``enabled`` False: the socket's peer is the client (no proxy)."""

    enabled: bool
    header: str = "x-forwarded-for"
    trusted: tuple[Network, ...] = ()

    def of(self, peer: str | None, headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
        """The client's address, from the socket's ``peer`` and the request's headers."""
        if not self.enabled or peer is None or not self._trusted(peer):
            return peer or "?"
        named = _last_address(self.header, _values(headers, self.header))
        return named or peer

    def _trusted(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.trusted)


def _values(headers: Mapping[str, str] | Iterable[tuple[str, str]], name: str) -> list[str]:
    getall = getattr(headers, "getall", None)
    if getall is not None:
        return list(getall(name, []))
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [value for key, value in items if key.lower() == name]


def _last_address(header: str, values: Sequence[str]) -> str | None:
    """The address the proxy put last in ``header``, if it is an IP address."""
    if not values:
        return None
    if header == "forwarded":
        last = values[-1].split(",")[-1]
        pairs = (p.strip().split("=", 1) for p in last.split(";"))
        found = next((v for k, *rest in pairs if k.strip().lower() == "for" for v in rest), "")
        candidate = found.strip().strip('"')
        if candidate.startswith("["):  # [v6]:port
            candidate = candidate[1:].split("]", 1)[0]
        elif candidate.count(":") == 1:  # v4:port
            candidate = candidate.split(":", 1)[0]
    else:
        candidate = values[-1].split(",")[-1].strip()
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return None  # not an address: the proxy's header is not what we were told
