"""A relay on a full disk (issue 10): a push refused for lack of space is answered with
the non-fatal STORAGE_FULL (not RELAY_OVERLOADED), /health says "degraded" and why, acks
and cleanup still work, and once they made room pushes are accepted again by themselves.

The disk is made "full" with SQLite's max_page_count (``max_pages``): the same SQLITE_FULL
as a full file system, deterministic and without root.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from aiohttp.test_utils import make_mocked_request

from tests.relay.test_service import Clocks, FakePeer, hello_from
from zerok.crypto import DeviceIdentity
from zerok.protocol import RequestReceived
from zerok.protocol.membership import GroupLog
from zerok.relay.config import RelayConfig
from zerok.relay.http import HttpApi
from zerok.relay.push import LoggingPushSender
from zerok.relay.service import RelayService
from zerok.relay.storage.sqlite import SQLiteStorage
from zerok.testing import TestGroup
from zerok.wire import Ack, BlobId, Error, ErrorCode, LogAppend, Message, Push, PushAck


async def health(http: HttpApi) -> dict[str, object]:
    response = await http.health(make_mocked_request("GET", "/health"))
    assert response.status == 200  # degraded still serves pulls, acks and deletes
    assert response.text is not None
    body: dict[str, object] = json.loads(response.text)
    return body


def test_a_full_disk_refuses_pushes_with_storage_full_and_recovers(tmp_path: Path) -> None:
    async def main() -> None:
        path = tmp_path / "relay.db"
        config = RelayConfig(database=str(path), messages_per_minute=0).validate()
        storage = SQLiteStorage(path, max_pages=300, reserve_bytes=64 * 1024)
        await storage.open()
        clocks = Clocks()
        service = RelayService(
            config,
            storage,
            DeviceIdentity.generate().private_key,
            LoggingPushSender(),
            clock=lambda: clocks.wall,
            monotonic=lambda: clocks.mono,
        )
        http = HttpApi(service, draining=lambda: False)
        keys = TestGroup()
        ids = iter(range(1, 10_000))

        async def join() -> FakePeer:
            identity = DeviceIdentity.generate()
            keys.enroll(identity)
            peer = FakePeer()
            service.on_connect(peer)
            await service.on_hello(peer, hello_from(identity, keys))
            assert peer.welcome is not None
            return peer

        async def ask(peer: FakePeer, message: Message) -> Message:
            rid = next(ids)
            await service.on_request(peer, RequestReceived(rid, message))
            return peer.answer(rid)

        try:
            sender, reader = await join(), await join()
            assert (await health(http))["status"] == "ok"
            last = 0
            for _ in range(2000):  # 300 pages of 4 KiB hold far fewer blobs of 1 KiB
                answer = await ask(sender, Push(blob_id=BlobId.random(), ciphertext=bytes(1024)))
                if not isinstance(answer, PushAck):
                    break
                last = answer.cursor
            assert isinstance(answer, Error), answer
            assert answer.code == ErrorCode.STORAGE_FULL
            assert not ErrorCode.STORAGE_FULL.fatal and not sender.closed
            body = await health(http)
            assert body["status"] == "degraded" and "full" in str(body["reason"])
            # The log takes nothing either, and says why without ending the session.
            keys.ticket()
            refused = await ask(sender, LogAppend(entries=[keys.entries[-1]]))
            assert isinstance(refused, Error) and refused.code == ErrorCode.STORAGE_FULL
            assert not sender.closed
            keys.entries.pop()
            keys.log = GroupLog.replay(keys.entries)

            # The reader catches up; cleanup (on the full disk) makes room.
            assert isinstance(await ask(reader, Ack(cursor=last)), Ack)
            assert (await storage.cleanup(clocks.wall)).acked_blobs == last
            again = await ask(sender, Push(blob_id=BlobId.random(), ciphertext=bytes(1024)))
            assert isinstance(again, PushAck) and again.cursor == last + 1
            assert (await health(http))["status"] == "ok"
        finally:
            await service.stop()
            await storage.close()

    asyncio.run(asyncio.wait_for(main(), 20))
