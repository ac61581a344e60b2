"""The same client for code that is not async: every call runs on a private event loop in
a background thread and blocks until it is done; iterators become generators.

The thread runs while it is needed: it starts with the first call, ends when the ``with``
block ends (``__exit__``) and starts again for a later call; ``shutdown()`` ends it and
releases the state file and the loop for good."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from zerok.client import sync
from zerok.client.content import ContentRef, ProgressCallback, Source
from zerok.client.events import SyncEvent, SyncStatus
from zerok.client.groups import MAX_INVITE_TTL, NewGroup
from zerok.client.membership import Device
from zerok.client.pairing import Invite
from zerok.crypto.recovery import RecoveryKey
from zerok.errors import StateError
from zerok.protocol.backoff import ClientTiming
from zerok.protocol.integrity import KeepPolicy
from zerok.wire import BlobId, DeviceId, GroupId
from zerok.wire.log import Role

T = TypeVar("T")


class SyncClient:
    """``zerok.SyncClient`` with blocking methods; use it as a context manager to sync."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        device_name: str | None = None,
        pad: bool = True,
        timing: ClientTiming | None = None,
        keep: KeepPolicy | None = None,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None

        async def make() -> sync.SyncClient:
            return sync.SyncClient(
                data_dir, device_name=device_name, pad=pad, timing=timing, keep=keep, clock=clock
            )

        self._client: sync.SyncClient = self._call(make())

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if self._loop.is_closed():
            coro.close()
            raise StateError("this client was shut down")
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._loop.run_forever, name="zerok-client", daemon=True
            )
            self._thread.start()
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    def _stop_thread(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            thread.join()

    def _iterate(self, source: AsyncIterator[T]) -> Iterator[T]:
        try:
            while True:
                try:
                    yield self._call(anext(source))  # type: ignore[arg-type]
                except StopAsyncIteration:
                    return
        finally:
            self._call(source.aclose())  # type: ignore[attr-defined]

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> SyncClient:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop syncing and end the background thread (a later call starts it again)."""
        self.close()
        self._stop_thread()

    def connect(self) -> None:
        self._call(self._client.connect())

    def wait_connected(self, timeout: float | None = sync.DEFAULT_TIMEOUT) -> None:
        self._call(self._client.wait_connected(timeout))

    def close(self) -> None:
        self._call(self._client.close())

    def shutdown(self) -> None:
        """Close, release the state file, end the background thread and its loop."""
        if self._loop.is_closed():
            return
        self.close()
        self._call(self._finish())
        self._client.close_state()
        self._stop_thread()
        self._loop.close()

    async def _finish(self) -> None:
        """Let what the client left running (receipts, callbacks) end before the loop."""
        await asyncio.sleep(0)
        await self._loop.shutdown_asyncgens()

    # -- properties -----------------------------------------------------------------------

    @property
    def device_id(self) -> DeviceId:
        return self._client.device_id

    @property
    def group_id(self) -> GroupId | None:
        return self._client.group_id

    @property
    def relays(self) -> list[str]:
        return self._client.relays

    @property
    def epoch(self) -> int | None:
        return self._client.epoch

    @property
    def log_head(self) -> tuple[int, bytes] | None:
        return self._client.log_head

    @property
    def status(self) -> SyncStatus:
        return self._client.status

    @property
    def last_cursor(self) -> int:
        return self._client.last_cursor

    @property
    def pending_count(self) -> int:
        return self._client.pending_count

    # -- operations -----------------------------------------------------------------------

    def create_group(self, relays: list[str], *, name: str = "") -> NewGroup:
        return self._call(self._client.create_group(relays, name=name))

    def create_invite(self, ttl: float = MAX_INVITE_TTL, *, role: Role = Role.MEMBER) -> Invite:
        return self._call(self._client.create_invite(ttl, role=role))

    def last_invite(self) -> Invite | None:
        return self._client.last_invite()

    def cancel_invite(self, invite: Invite) -> bool:
        return self._call(self._client.cancel_invite(invite))

    def join(self, code_or_url: str, *, relay: str | None = None) -> GroupId:
        return self._call(self._client.join(code_or_url, relay=relay))

    def push(self, data: bytes, *, ttl: int | None = None) -> sync.PushResult:
        """Return once the relay has it; NotConnectedError outside ``with client:``."""
        return self._call(self._client.push(data, ttl=ttl))

    def enqueue(self, data: bytes, *, ttl: int | None = None) -> BlobId:
        """``push(data, wait=False)``: return the blob id once it is durably queued."""
        return self._call(self._client.push(data, ttl=ttl, wait=False))

    def pull(self, after: int | None = None, limit: int = 100) -> sync.PullResult:
        return self._call(self._client.pull(after, limit))

    def changes(self) -> Iterator[sync.Blob]:
        return self._iterate(self._client.changes())

    def events(self) -> Iterator[SyncEvent]:
        return self._iterate(self._call(self._subscribe()))

    async def _subscribe(self) -> AsyncIterator[SyncEvent]:
        return self._client.events()

    # -- files (progress callbacks run on the client's thread: keep them short) -----------

    def put_file(
        self,
        source: Source,
        *,
        name: str | None = None,
        media_type: str | None = None,
        ttl: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> ContentRef:
        return self._call(
            self._client.put_file(
                source, name=name, media_type=media_type, ttl=ttl, progress=progress
            )
        )

    def resume_uploads(self, progress: ProgressCallback | None = None) -> list[ContentRef]:
        return self._call(self._client.resume_uploads(progress))

    def content_ref(self, blob: sync.Blob) -> ContentRef | None:
        return self._client.content_ref(blob)

    def open_content(
        self, ref: ContentRef, *, progress: ProgressCallback | None = None
    ) -> Iterator[bytes]:
        return self._iterate(self._client.open_content(ref, progress=progress))

    def save_content(
        self,
        ref: ContentRef,
        path: str | os.PathLike[str],
        *,
        progress: ProgressCallback | None = None,
    ) -> Path:
        return self._call(self._client.save_content(ref, path, progress=progress))

    def list_devices(self) -> list[Device]:
        return self._call(self._client.list_devices())

    def revoke_device(self, device: DeviceId | str, reason: str = "lost") -> None:
        self._call(self._client.revoke_device(device, reason))

    def rotate_keys(self, reason: str = "") -> int:
        return self._call(self._client.rotate_keys(reason))

    def set_role(self, device: DeviceId | str, role: Role | str) -> None:
        self._call(self._client.set_role(device, role))

    def recover(
        self,
        recovery: RecoveryKey | str,
        *,
        keep: Sequence[DeviceId | str] | None = None,
        relays: Sequence[str] = (),
        group_id: GroupId | None = None,
    ) -> GroupId:
        return self._call(
            self._client.recover(recovery, keep=keep, relays=relays, group_id=group_id)
        )

    def force_delete(self, blob_id: BlobId | str) -> None:
        self._call(self._client.force_delete(blob_id))

    def register_push_token(self, token: str, platform: str, app_id: str = "") -> None:
        self._call(self._client.register_push_token(token, platform, app_id))

    def unregister_push_token(self) -> None:
        self._call(self._client.unregister_push_token())
