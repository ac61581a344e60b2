"""HTTP client of a relay's invite mailbox (docs/operations.md, "Invite mailbox")."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp

from zerok.errors import InviteError, RelayUnreachableError, SyncError


def http_base(relay_url: str) -> str:
    """``ws://host:port/...`` → ``http://host:port`` (and wss → https)."""
    url = relay_url.strip().rstrip("/")
    for ws, http in (("wss://", "https://"), ("ws://", "http://")):
        if url.startswith(ws):
            url = http + url[len(ws) :]
            break
    else:
        if not url.startswith(("http://", "https://")):
            raise SyncError(f"not a relay URL: {relay_url!r} (expected ws://HOST:PORT)")
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"


async def _call(method: str, url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http,
            http.request(method, url, **kwargs) as response,
        ):
            body: dict[str, Any] = {}
            if response.content_type == "application/json":
                body = await response.json()
            return response.status, body
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise RelayUnreachableError(f"cannot reach the relay at {url}: {exc}") from None


async def post_invite(relay_url: str, lookup: str, sealed: bytes) -> int:
    """Store a sealed invite; returns its expiry (ms since the epoch)."""
    payload = base64.urlsafe_b64encode(sealed).decode().rstrip("=")
    status, body = await _call(
        "POST", f"{http_base(relay_url)}/v1/invites", json={"lookup": lookup, "payload": payload}
    )
    if status != 201:
        raise SyncError(f"the relay refused the invite: {body.get('error', f'HTTP {status}')}")
    return int(body["expires_at"])


async def take_invite(relay_url: str, lookup: str) -> bytes:
    status, body = await _call("GET", f"{http_base(relay_url)}/v1/invites/{lookup}")
    if status == 200:
        text = str(body["payload"])
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if status == 410:
        reason = str(body.get("reason", "used"))
        messages = {
            "used": "this short code was already used: ask for a new one",
            "expired": "this short code has expired: ask for a new one",
            "cancelled": "this short code was cancelled by the device that made it",
        }
        raise InviteError(
            reason, messages.get(reason, f"this short code is no longer valid ({reason})")
        )
    if status == 404:
        raise InviteError(
            "unknown",
            "no invite with this short code at this relay: check the code and the relay URL",
        )
    if status == 429:
        raise InviteError("invalid", f"the relay is rate-limiting invites: {body.get('error', '')}")
    raise SyncError(f"the relay answered HTTP {status}: {body.get('error', '')}")


async def cancel_invite(relay_url: str, lookup: str) -> bool:
    status, _ = await _call("DELETE", f"{http_base(relay_url)}/v1/invites/{lookup}")
    return status == 204
