"""Push notification senders: wake an offline device that registered a push token.

The notification says only that the group has new data (no ids, no sizes, nothing from
the blob); the device then connects and pulls. APNS and FCM senders plug in here later.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp

log = logging.getLogger("zerok.relay.push")


@dataclass(frozen=True, slots=True)
class PushTarget:
    token: str
    platform: str
    app_id: str


class PushSender(Protocol):
    async def send(self, target: PushTarget, *, cursor: int) -> bool:
        """Deliver a wake-up; True if the push service accepted it."""
        ...

    async def close(self) -> None: ...


class LoggingPushSender:
    """Logs what would be sent; the default when no push service is configured."""

    def __init__(self) -> None:
        self.sent: list[tuple[PushTarget, int]] = []

    async def send(self, target: PushTarget, *, cursor: int) -> bool:
        self.sent.append((target, cursor))
        log.info(
            "push (not delivered: no push service configured) platform=%s app=%s cursor=%d",
            target.platform,
            target.app_id or "-",
            cursor,
        )
        return True

    async def close(self) -> None:
        return None


class WebhookPushSender:
    """POSTs ``{"token", "platform", "app_id", "cursor"}`` as JSON to a URL of the operator's."""

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self.url = url
        parts = urlsplit(url)
        self._where = f"{parts.scheme}://{parts.hostname}"  # for logs: no path, no secrets
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def send(self, target: PushTarget, *, cursor: int) -> bool:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        body = {
            "token": target.token,
            "platform": target.platform,
            "app_id": target.app_id,
            "cursor": cursor,
        }
        try:
            async with self._session.post(self.url, json=body) as response:
                if response.status >= 300:
                    log.warning("push webhook answered HTTP %d", response.status)
                    return False
                return True
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("push webhook at %s unreachable: %s", self._where, exc)
            return False

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
