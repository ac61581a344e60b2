"""Push senders: the logging default and the webhook, against a real local HTTP server."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from zerok.relay.push import SENT_KEPT, LoggingPushSender, PushTarget, WebhookPushSender

SECRET_TOKEN = "device-token-7f3a9c-SECRET"
TARGET = PushTarget(token=SECRET_TOKEN, platform="apns", app_id="com.example.notes")


class Hook:
    """A webhook receiver on 127.0.0.1 answering with ``status``; records what it got."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.received: list[Any] = []
        self.content_types: list[str] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.content_types.append(request.content_type)
        self.received.append(await request.json())
        return web.Response(status=self.status, text="ok")


@asynccontextmanager
async def serve(hook: Hook) -> AsyncIterator[Hook]:
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        hook.url = f"http://{host}:{port}/hook"
        yield hook
    finally:
        await runner.cleanup()


def closed_port() -> int:
    """A local port nothing listens on (bound once, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- LoggingPushSender ------------------------------------------------------------------


def test_logging_sender_keeps_only_the_latest_wake_ups() -> None:
    sender = LoggingPushSender()

    async def main() -> None:
        for cursor in range(SENT_KEPT + 50):
            await sender.send(TARGET, cursor=cursor)

    asyncio.run(main())
    assert len(sender.sent) == SENT_KEPT
    assert sender.sent[0][1] == 50 and sender.sent[-1][1] == SENT_KEPT + 49


def test_logging_sender_records_and_never_logs_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="zerok.relay.push")
    sender = LoggingPushSender()

    async def main() -> list[bool]:
        results = [
            await sender.send(TARGET, cursor=41),
            await sender.send(PushTarget("other-token", "fcm", ""), cursor=42),
        ]
        await sender.close()
        await sender.close()
        return results

    assert asyncio.run(main()) == [True, True]
    assert list(sender.sent) == [(TARGET, 41), (PushTarget("other-token", "fcm", ""), 42)]
    records = [r for r in caplog.records if r.name == "zerok.relay.push"]
    assert len(records) == 2
    text = caplog.text
    assert SECRET_TOKEN not in text
    assert "other-token" not in text
    assert "apns" in text
    assert "41" in text


# -- WebhookPushSender ------------------------------------------------------------------


def test_webhook_posts_json_and_reports_success() -> None:
    async def main() -> tuple[list[bool], Hook]:
        async with serve(Hook(200)) as hook:
            sender = WebhookPushSender(hook.url, timeout=5)
            try:
                results = [
                    await sender.send(TARGET, cursor=7),
                    await sender.send(PushTarget("t2", "fcm", ""), cursor=8),
                ]
            finally:
                await sender.close()
            return results, hook

    results, hook = asyncio.run(main())
    assert results == [True, True]
    assert hook.received == [
        {"token": SECRET_TOKEN, "platform": "apns", "app_id": "com.example.notes", "cursor": 7},
        {"token": "t2", "platform": "fcm", "app_id": "", "cursor": 8},
    ]
    assert hook.content_types == ["application/json", "application/json"]


@pytest.mark.parametrize("status", [500, 404, 429, 302])
def test_webhook_error_status_is_a_failure_without_leaking_token(
    status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="zerok.relay.push")

    async def main() -> tuple[bool, Hook]:
        async with serve(Hook(status)) as hook:
            sender = WebhookPushSender(hook.url, timeout=5)
            try:
                return await sender.send(TARGET, cursor=3), hook
            finally:
                await sender.close()

    ok, hook = asyncio.run(main())
    assert ok is False
    assert len(hook.received) == 1  # it was delivered; the answer said no
    assert str(status) in caplog.text
    assert SECRET_TOKEN not in caplog.text


def test_webhook_unreachable_is_a_failure_not_an_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="zerok.relay.push")
    url = f"http://127.0.0.1:{closed_port()}/hook"

    async def main() -> bool:
        sender = WebhookPushSender(url, timeout=5)
        try:
            return await sender.send(TARGET, cursor=1)
        finally:
            await sender.close()

    assert asyncio.run(main()) is False
    assert "unreachable" in caplog.text
    assert SECRET_TOKEN not in caplog.text


def test_webhook_timeout_is_a_failure() -> None:
    class SlowHook(Hook):
        def __init__(self) -> None:
            super().__init__()
            self.release = asyncio.Event()

        async def handle(self, request: web.Request) -> web.Response:
            await self.release.wait()
            return await super().handle(request)

    async def main() -> bool:
        slow = SlowHook()
        async with serve(slow) as hook:
            sender = WebhookPushSender(hook.url, timeout=0.2)
            try:
                return await sender.send(TARGET, cursor=1)
            finally:
                slow.release.set()
                await sender.close()

    assert asyncio.run(main()) is False


def test_webhook_close_is_idempotent_and_sender_reusable() -> None:
    async def main() -> tuple[list[bool], Hook]:
        async with serve(Hook(204)) as hook:
            sender = WebhookPushSender(hook.url)
            await sender.close()  # never used: nothing to close
            first = await sender.send(TARGET, cursor=1)
            await sender.close()
            await sender.close()
            second = await sender.send(TARGET, cursor=2)  # a new session is made
            await sender.close()
            await sender.close()
            return [first, second], hook

    results, hook = asyncio.run(main())
    assert results == [True, True]
    assert [r["cursor"] for r in hook.received] == [1, 2]
