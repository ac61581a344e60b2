"""Push notifications wake offline devices: a real relay posts to a webhook of the test's.

The webhook is a small aiohttp server in the test process on 127.0.0.1; the relay is told
its URL with --push-webhook. It stands in for APNS/FCM, which cannot run here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from tests.relay.support import RelayLauncher, clients, push, revoke, run
from zerok.crypto import DeviceIdentity
from zerok.errors import RemoteError
from zerok.testing import TestGroup
from zerok.wire import (
    ErrorCode,
    PushPlatform,
    RegisterPush,
    UnregisterPush,
)


class Webhook:
    def __init__(self) -> None:
        self.calls: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.put_nowait(await request.json())
        return web.Response(status=204)

    async def next_call(self, timeout: float = 5.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.calls.get(), timeout)


@asynccontextmanager
async def webhook() -> AsyncIterator[Webhook]:
    hook = Webhook()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    hook.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield hook
    finally:
        await runner.cleanup()


def test_an_offline_device_with_a_token_is_woken_once_per_burst(launcher: RelayLauncher) -> None:
    async def scenario() -> None:
        async with webhook() as hook:
            relay = launcher.start("--push-webhook", hook.url)
            keys = TestGroup()
            phone = DeviceIdentity.generate()
            async with clients(relay.url) as pool:
                laptop = await pool.open(keys)
                online = await pool.open(keys, phone)
                registered = await online.request(
                    RegisterPush(token="tok-123", platform=PushPlatform.FCM, app_id="notes"),
                )
                assert isinstance(registered, RegisterPush)
                await push(laptop, b"while the phone is online")
                await online.close()  # the phone goes offline
                ack = await push(laptop, b"while the phone is offline")
                call = await hook.next_call()
                assert call == {
                    "token": "tok-123",
                    "platform": "fcm",
                    "app_id": "notes",
                    "cursor": ack.cursor,
                }
                await push(laptop, b"a second one, moments later")
                with pytest.raises(TimeoutError):  # one wake-up per 30 s is enough
                    await hook.next_call(timeout=1.0)
                assert hook.calls.empty()

    run(scenario())


def test_no_wake_up_after_unregistering_or_revocation(launcher: RelayLauncher) -> None:
    async def scenario() -> None:
        async with webhook() as hook:
            relay = launcher.start("--push-webhook", hook.url)
            keys = TestGroup()
            quiet, lost = DeviceIdentity.generate(), DeviceIdentity.generate()
            async with clients(relay.url) as pool:
                laptop = await pool.open(keys)
                for device, token in ((quiet, "tok-quiet"), (lost, "tok-lost")):
                    conn = await pool.open(keys, device)
                    await conn.request(RegisterPush(token=token, platform=PushPlatform.APNS))
                    if device is quiet:
                        await conn.request(UnregisterPush(reason="notifications off"))
                    await conn.close()
                await revoke(laptop, keys, lost)
                await push(laptop, b"nobody should be woken", epoch=keys.epoch)
                with pytest.raises(TimeoutError):
                    await hook.next_call(timeout=1.5)

    run(scenario())


def test_a_malformed_push_token_is_refused_with_2003(launcher: RelayLauncher) -> None:
    relay = launcher.start()

    async def scenario() -> None:
        async with clients(relay.url) as pool:
            conn = await pool.open(TestGroup())
            with pytest.raises(RemoteError) as refused:
                await conn.request(RegisterPush(token="bad\x00token", platform=PushPlatform.WEB))
            assert refused.value.code == ErrorCode.INVALID_PUSH_TOKEN
            assert (await push(conn, b"still usable")).cursor == 1

    run(scenario())
