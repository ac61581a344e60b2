"""Push notification senders: wake an offline device that registered a push token.

The notification says only that the group has new data (no ids, no sizes, nothing from
the blob); the device then connects and pulls. APNS and FCM senders plug in here later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import aiohttp

from zerok.relay.metrics import RelayMetrics
from zerok.relay.storage import Storage
from zerok.wire import DeviceId, GroupId

log = logging.getLogger("zerok.relay.push")

PUSH_DEBOUNCE = 30.0  # seconds between wake-ups of one offline device


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


class OfflineWaker:
    """Wakes the devices of a group that were offline when a blob arrived: those with a
    push token, each at most once per ``debounce`` seconds (one wake-up per burst)."""

    def __init__(
        self,
        sender: PushSender,
        storage: Storage,
        metrics: RelayMetrics,
        *,
        monotonic: Callable[[], float],
        debounce: float = PUSH_DEBOUNCE,
    ) -> None:
        self.sender = sender
        self.storage = storage
        self.metrics = metrics
        self.monotonic = monotonic
        self.debounce = debounce
        self._targets: dict[GroupId, dict[DeviceId, PushTarget]] = {}
        self._last_wake: dict[DeviceId, float] = {}

    def forget(self, group_id: GroupId) -> None:
        """The group's tokens changed (registered, unregistered, revoked): reload them."""
        self._targets.pop(group_id, None)

    async def wake(
        self, group_id: GroupId, sender: DeviceId, cursor: int, online: set[DeviceId]
    ) -> None:
        targets = self._targets.get(group_id)
        if targets is None:
            devices = await self.storage.list_devices(group_id)
            targets = self._targets[group_id] = {
                d.device_id: PushTarget(d.push_token, d.push_platform or "", d.push_app_id or "")
                for d in devices
                if d.push_token and not d.revoked
            }
        now = self.monotonic()
        for device_id, target in targets.items():
            if device_id == sender or device_id in online:
                continue
            if now - self._last_wake.get(device_id, -self.debounce) < self.debounce:
                continue
            self._last_wake[device_id] = now
            ok = await self.sender.send(target, cursor=cursor)
            self.metrics.push_notifications.labels("sent" if ok else "failed").inc()
