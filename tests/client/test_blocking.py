"""``zerok.blocking.SyncClient``: the same client for code that is not async."""

from __future__ import annotations

import itertools
import queue
import threading
from pathlib import Path

from zerok.blocking import SyncClient
from zerok.client import BlobAvailable, BlobPushed, Invite, SyncEvent, SyncStatus
from zerok.testing import RelayProcess


def test_blocking_client(relay: RelayProcess, tmp_path: Path) -> None:
    a = SyncClient(tmp_path / "a", device_name="laptop")
    b = SyncClient(tmp_path / "b", device_name="phone")
    try:
        assert a.group_id is None
        created = a.create_group([relay.url])
        group_id = created.group_id
        assert len(created.recovery.words()) == 24
        invite = a.create_invite()
        assert isinstance(invite, Invite)
        assert b.join(invite.short_code, relay=relay.url) == group_id == a.group_id
        assert b.relays == a.relays == [relay.url]
        assert a.status == b.status == SyncStatus.OFFLINE

        with a, b:
            a.wait_connected(10)
            b.wait_connected(10)
            results = [a.push(f"blocking {n}".encode()) for n in range(4)]
            assert [r.cursor for r in results] == [1, 2, 3, 4]
            assert a.pending_count == 0

            changes = b.changes()
            got = list(itertools.islice(changes, 3))
            changes.close()
            assert [(x.cursor, x.sender, x.data) for x in got] == [
                (n + 1, a.device_id, f"blocking {n}".encode()) for n in range(3)
            ]
            assert b.last_cursor == 2  # the third blob was never followed by a next()
            page = b.pull()
            assert [x.data for x in page.blobs] == [b"blocking 2", b"blocking 3"]
            assert b.last_cursor == 4

            reply = b.push(b"reply")
            assert [(x.cursor, x.data) for x in a.pull().blobs] == [(reply.cursor, b"reply")]

            # events(): a generator; it subscribes on its first next(), here in a daemon
            # thread, so B pushes until A's generator has seen one announced.
            events = a.events()
            seen: queue.Queue[SyncEvent] = queue.Queue()
            watcher = threading.Thread(
                target=lambda: seen.put(next(e for e in events if isinstance(e, BlobAvailable))),
                daemon=True,
            )
            watcher.start()
            announced = None
            for n in range(40):
                pushed = b.push(f"ping {n}".encode())
                try:
                    announced = seen.get(timeout=0.25)
                    break
                except queue.Empty:
                    continue
            assert isinstance(announced, BlobAvailable), "no BlobAvailable event"
            assert announced.sender == b.device_id
            assert announced.cursor <= pushed.cursor
            watcher.join(5)
            events.close()

            devices = {d.device_id: d for d in a.list_devices()}
            assert {d.name for d in devices.values()} == {"laptop", "phone"}
            assert devices[b.device_id].online
            a.pull(limit=1000)  # the pings
            assert a.epoch == 0
            assert a.rotate_keys("a test") == 1 == a.epoch
            after = b.push(b"under epoch 1")  # B learnt the epoch, or re-sealed its push
            got = [(x.cursor, x.data) for x in a.pull().blobs]
            assert got == [(after.cursor, b"under epoch 1")]
            assert b.epoch == 1 and b.log_head == a.log_head
            threads = [a._thread, b._thread]
            assert all(t is not None and t.is_alive() for t in threads)
        # The with block's end stops syncing and ends the background threads.
        assert not any(t is not None and t.is_alive() for t in threads)
        assert a.status == SyncStatus.OFFLINE
        queued = a.enqueue(b"queued outside the with block")  # durable, not sent yet
        assert a.pending_count == 1
        events = a.events()  # subscribed from here on
        with a:  # the thread starts again, and the queued push goes out
            pushed = next(e for e in events if isinstance(e, BlobPushed))
            events.close()
        assert pushed.blob_id == queued
        assert a.pending_count == 0
    finally:
        a.shutdown()
        b.shutdown()
    assert a.status == SyncStatus.OFFLINE
