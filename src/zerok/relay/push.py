"""Push notification senders: wake an offline device that registered a push token.

The notification says only that the group has new data (no ids, no sizes, nothing from
the blob); the device then connects and pulls. APNS and FCM senders plug in here later.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
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
CACHED_GROUPS = 10_000  # groups whose push targets are kept in memory
SENT_KEPT = 100  # wake-ups LoggingPushSender remembers (for tests and debugging)


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
        self.sent: deque[tuple[PushTarget, int]] = deque(maxlen=SENT_KEPT)

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
    push token, each at most once per ``debounce`` seconds (one wake-up per burst).

    Its memory is bounded: the push targets of at most ``cached_groups`` groups (the least
    recently used go), and the time of a device's last wake-up only while it still matters
    (for ``debounce`` seconds)."""

    def __init__(
        self,
        sender: PushSender,
        storage: Storage,
        metrics: RelayMetrics,
        *,
        monotonic: Callable[[], float],
        debounce: float = PUSH_DEBOUNCE,
        cached_groups: int = CACHED_GROUPS,
    ) -> None:
        self.sender = sender
        self.storage = storage
        self.metrics = metrics
        self.monotonic = monotonic
        self.debounce = debounce
        self.cached_groups = cached_groups
        self._targets: OrderedDict[GroupId, dict[DeviceId, PushTarget]] = OrderedDict()
        self._last_wake: OrderedDict[DeviceId, float] = OrderedDict()  # oldest first
        # Bumped by every forget(): targets read before a change are not cached after it
        # (a read still in flight when a token is registered or a device revoked).
        self._changes = 0

    @property
    def remembered_wake_ups(self) -> int:
        return len(self._last_wake)

    def forget(self, group_id: GroupId) -> None:
        """The group's tokens changed (registered, unregistered, revoked): reload them."""
        self._targets.pop(group_id, None)
        self._changes += 1

    def prune(self) -> None:
        """Forget wake-ups older than the debounce: they no longer hold anything back."""
        horizon = self.monotonic() - self.debounce
        while self._last_wake:
            device_id, at = next(iter(self._last_wake.items()))
            if at > horizon:
                break
            del self._last_wake[device_id]

    async def _targets_of(self, group_id: GroupId) -> dict[DeviceId, PushTarget]:
        targets = self._targets.get(group_id)
        if targets is not None:
            self._targets.move_to_end(group_id)
            return targets
        changes = self._changes
        devices = await self.storage.list_devices(group_id)
        targets = {
            d.device_id: PushTarget(d.push_token, d.push_platform or "", d.push_app_id or "")
            for d in devices
            if d.push_token and not d.revoked
        }
        if changes == self._changes:  # nothing changed while reading: safe to keep
            self._targets[group_id] = targets
            while len(self._targets) > self.cached_groups:
                self._targets.popitem(last=False)
        return targets

    async def wake(
        self, group_id: GroupId, sender: DeviceId, cursor: int, online: set[DeviceId]
    ) -> None:
        targets = await self._targets_of(group_id)
        self.prune()
        now = self.monotonic()
        for device_id, target in targets.items():
            if device_id == sender or device_id in online:
                continue
            if now - self._last_wake.get(device_id, -self.debounce) < self.debounce:
                continue
            self._last_wake[device_id] = now
            self._last_wake.move_to_end(device_id)
            ok = await self.sender.send(target, cursor=cursor)
            self.metrics.push_notifications.labels("sent" if ok else "failed").inc()
