"""SyncClient's large content: files put as sealed chunks and a manifest blob, read back
chunk by chunk, verified as they come (docs/client.md, "Files").

``put_file`` cuts the file with the epoch's keyed chunker, seals one chunk at a time (off
the event loop), has the relay hold each (``zerok.client.transfer``: only what it lacks
is sent) and then pushes the manifest as an ordinary blob whose PUSH names the chunks.
Chunking and sealing are deterministic within an epoch, so an interrupted put is resumed
by doing it again: the chunks the relay holds are skipped, a partial one continues where
it stopped. A put from a path is recorded in the local state until its manifest is
pushed; ``resume_uploads`` finishes those an app restart cut short.

A manifest blob's data is ``MANIFEST_MAGIC`` followed by the encoded manifest, so a
receiver tells it from the app's own blobs (``content_ref``). ``save_content`` writes to
``<path>.part`` and renames it when whole; a ``.part`` left by an earlier attempt is
checked chunk by chunk against the manifest and kept as far as it matches.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from zerok.client.membership import Membership
from zerok.client.receiving import Blob
from zerok.client.sending import PushResult
from zerok.client.state import LocalState
from zerok.client.transfer import Progress, UploadReport, download_chunk, upload_chunks
from zerok.crypto.content import chunking_seed, open_chunk, seal_chunk
from zerok.crypto.epoch import content_key
from zerok.errors import ConnectError, EpochKeyError, LocalProtocolError
from zerok.protocol.chunking import chunks
from zerok.transport import RelayConnection
from zerok.wire import BlobId, GroupId
from zerok.wire.manifest import (
    DEFAULT_MEDIA_TYPE,
    ChunkRef,
    Manifest,
    decode_manifest,
    encode_manifest,
)

log = logging.getLogger("zerok.client")

# Tells a manifest blob from the app's own data; the manifest inside carries its version.
MANIFEST_MAGIC = b"0k-sync/manifest\x00"
# Connection losses in a row, with no chunk finished between them, before a transfer gives
# up (each waits for the client to reconnect, up to its connection timeout).
MAX_LOSSES = 5

ProgressCallback = Callable[[Progress], None]
Source = str | os.PathLike[str] | IO[bytes]


@dataclass(frozen=True)
class ContentRef:
    """A file in the group: the blob that carries its manifest, and the manifest.
    ``uploaded`` tells what ``put_file`` sent (None for a file received)."""

    blob_id: BlobId
    manifest: Manifest
    uploaded: UploadReport | None = field(default=None, compare=False)

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def size(self) -> int:
        return self.manifest.size


def manifest_blob_data(manifest: Manifest) -> bytes:
    """The data of the blob that carries ``manifest``."""
    return MANIFEST_MAGIC + encode_manifest(manifest)


def manifest_of(data: bytes) -> Manifest | None:
    """The manifest a blob's data carries; None if it carries none. WireError if it starts
    as one but is malformed (a sender's bug, or a newer format)."""
    if not data.startswith(MANIFEST_MAGIC):
        return None
    return decode_manifest(data[len(MANIFEST_MAGIC) :])


class _FileProgress:
    """Progress in bytes of the file (plaintext), never going back: an upload started again
    after a lost connection reports nothing until it passes what was reported."""

    def __init__(self, callback: ProgressCallback | None, total: int, count: int) -> None:
        self.callback = callback
        self.total, self.count = total, count
        self.shown = -1

    def report(self, done: int, chunks_done: int) -> None:
        if self.callback is None or done <= self.shown:
            return
        self.shown = done
        total = max(self.total, done)
        count = max(self.count, chunks_done)
        self.callback(Progress(done, total, chunks_done, count))


@dataclass
class _Attempt:
    """One pass over the file: the chunks sealed so far (read by the upload's progress)."""

    refs: list[ChunkRef] = field(default_factory=list)
    sizes: list[int] = field(default_factory=lambda: [0])  # prefix sums of plaintext sizes

    def add(self, ref: ChunkRef) -> None:
        self.refs.append(ref)
        self.sizes.append(self.sizes[-1] + ref.size)

    def reporter(self, shown: _FileProgress) -> ProgressCallback:
        """The upload's progress (sealed bytes) as bytes of the file, a chunk at a time."""
        return lambda p: shown.report(self.sizes[p.chunks_done], p.chunks_done)


@dataclass(frozen=True)
class _Put:
    """What a put is asked to make of its file."""

    name: str
    media_type: str
    ttl: int | None
    progress: ProgressCallback | None


def _next_sealed(
    source: Iterator[bytes], key: bytes, group_id: GroupId
) -> tuple[bytes, ChunkRef] | None:
    plaintext = next(source, None)
    return None if plaintext is None else seal_chunk(plaintext, content_key=key, group_id=group_id)


def _matching_prefix(part: Path, manifest: Manifest, key: bytes | None, group: GroupId) -> int:
    """How many of the manifest's chunks ``part`` holds, in order and intact (checked by
    sealing them again: equal plaintext, equal chunk); it is cut after them."""
    kept = offset = 0
    with part.open("r+b") as file:
        if key is not None:
            for ref in manifest.chunks:
                plaintext = file.read(ref.size)
                if len(plaintext) != ref.size:
                    break
                if seal_chunk(plaintext, content_key=key, group_id=group)[1] != ref:
                    break
                kept, offset = kept + 1, offset + ref.size
        file.truncate(offset)
    return kept


class ContentOps:
    """The large-content half of ``SyncClient`` (which provides what is declared under
    TYPE_CHECKING)."""

    if TYPE_CHECKING:
        _state: LocalState
        _uploading: set[int]

        def _require_group(self) -> Membership: ...
        async def _connection(self) -> RelayConnection: ...
        async def _push_data(
            self,
            data: bytes,
            *,
            ttl: int | None,
            wait: bool,
            chunks: list[bytes] | None = None,
        ) -> PushResult | BlobId: ...

    # -- putting ----------------------------------------------------------------------------

    async def put_file(
        self,
        source: Source,
        *,
        name: str | None = None,
        media_type: str | None = None,
        ttl: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> ContentRef:
        """Put a file (a path, or a binary stream) into the group; return once the relay
        holds its chunks and its manifest blob, which reaches the other devices like any
        blob. ``name`` defaults to the file's name; ``progress`` gets bytes of the file.

        A lost connection is waited out and the upload resumed where it stopped (a stream
        must then be seekable). A put from a path cut short by the app's end is finished by
        ``resume_uploads``."""
        path = Path(source) if isinstance(source, str | os.PathLike) else None
        if path is None and not callable(getattr(source, "read", None)):
            raise LocalProtocolError(f"put_file takes a path or a binary stream: {source!r:.80}")
        if name is None:
            name = path.name if path is not None else Path(str(getattr(source, "name", ""))).name
        if not name:
            raise LocalProtocolError("a file put from a stream needs a name (name=...)")
        media = media_type or DEFAULT_MEDIA_TYPE
        Manifest(name=name, media_type=media, size=0, epoch=0)  # WireError before any upload
        self._require_group()
        job = _Put(name, media, ttl, progress)
        if path is None:
            assert not isinstance(source, str | os.PathLike)
            return await self._put(source, job, known_size=False)
        return await self._put_recorded(None, path, job)

    async def resume_uploads(self, progress: ProgressCallback | None = None) -> list[ContentRef]:
        """Finish the puts from a path that an earlier run did not (the app ended midway):
        chunks the relay holds are not sent again. A file gone since is dropped."""
        refs = []
        for row in await asyncio.to_thread(self._state.uploads_load):
            if row.id in self._uploading:
                continue  # being put in this run
            path = Path(row.path)
            if not path.is_file():
                log.warning("the file %s being put is gone; its upload is dropped", path)
                await asyncio.to_thread(self._state.upload_remove, row.id)
                continue
            job = _Put(row.name, row.media_type, None, progress)
            refs.append(await self._put_recorded(row.id, path, job))
        return refs

    async def _put_recorded(self, upload_id: int | None, path: Path, job: _Put) -> ContentRef:
        """Put the file at ``path``, recorded as upload ``upload_id`` (None: record it once
        it is open) until its manifest is pushed."""
        with path.open("rb") as stream:
            if upload_id is None:
                upload_id = await asyncio.to_thread(
                    self._state.upload_add, str(path.resolve()), job.name, job.media_type
                )
            self._uploading.add(upload_id)
            try:
                ref = await self._put(stream, job, known_size=True)
            finally:
                self._uploading.discard(upload_id)
        await asyncio.to_thread(self._state.upload_remove, upload_id)
        return ref

    async def _put(self, stream: IO[bytes], job: _Put, *, known_size: bool) -> ContentRef:
        start = stream.tell() if stream.seekable() else None
        total = os.fstat(stream.fileno()).st_size - (start or 0) if known_size else 0
        shown = _FileProgress(job.progress, total, 0)
        sent = skipped = resumed = losses = best = 0
        while True:
            members = self._require_group()
            epoch = members.epoch
            key = content_key(members.key_for(epoch))
            attempt = _Attempt()
            conn = await self._connection()
            try:
                report = await upload_chunks(
                    conn,
                    self._sealed(stream, key, members.group_id, attempt),
                    progress=attempt.reporter(shown),
                )
            except ConnectError:
                losses = 0 if len(attempt.refs) > best else losses + 1
                best = max(best, len(attempt.refs))
                if start is None or losses >= MAX_LOSSES:
                    raise
                stream.seek(start)
                continue
            sent += report.bytes_sent
            skipped += report.skipped_chunks
            resumed += report.resumed_bytes
            break
        manifest = Manifest(
            name=job.name,
            media_type=job.media_type,
            size=attempt.sizes[-1],
            epoch=epoch,
            chunks=tuple(attempt.refs),
        )
        addresses = [ref.address for ref in manifest.chunks]
        pushed = await self._push_data(
            manifest_blob_data(manifest), ttl=job.ttl, wait=True, chunks=addresses
        )
        assert isinstance(pushed, PushResult)
        shown.total = manifest.size
        shown.report(manifest.size, len(addresses))
        uploaded = UploadReport(len(addresses), report.total_bytes, sent, skipped, resumed)
        return ContentRef(pushed.blob_id, manifest, uploaded)

    async def _sealed(
        self, stream: IO[bytes], key: bytes, group_id: GroupId, attempt: _Attempt
    ) -> AsyncIterator[tuple[bytes, bytes]]:
        """The file's chunks sealed, one at a time, off the event loop."""
        source = chunks(stream, seed=chunking_seed(key))
        while True:
            item = await asyncio.to_thread(_next_sealed, source, key, group_id)
            if item is None:
                return
            sealed, ref = item
            attempt.add(ref)
            yield ref.address, sealed

    # -- reading ----------------------------------------------------------------------------

    def content_ref(self, blob: Blob) -> ContentRef | None:
        """The file ``blob`` refers to, if it carries a manifest (None: the app's own
        data). WireError if it looks like a manifest blob but is malformed."""
        manifest = manifest_of(blob.data)
        return None if manifest is None else ContentRef(blob.blob_id, manifest)

    async def open_content(
        self, ref: ContentRef, *, progress: ProgressCallback | None = None
    ) -> AsyncIterator[bytes]:
        """The file's bytes, a chunk at a time, in order; each chunk is checked against the
        manifest before it is handed out (DecryptionError otherwise). A lost connection is
        waited out and the chunk resumed where it stopped."""
        group_id = self._require_group().group_id
        shown = _FileProgress(progress, ref.manifest.size, len(ref.manifest.chunks))
        done = 0
        for index, chunk in enumerate(ref.manifest.chunks):
            yield await self._fetch_chunk(chunk, group_id)
            done += chunk.size
            shown.report(done, index + 1)

    async def save_content(
        self,
        ref: ContentRef,
        path: str | os.PathLike[str],
        *,
        progress: ProgressCallback | None = None,
    ) -> Path:
        """Write the file to ``path`` (through ``<path>.part``, renamed when whole) and
        return it. A ``.part`` an earlier attempt left is kept as far as it matches."""
        members = self._require_group()
        manifest = ref.manifest
        target = Path(path)
        part = target.with_name(target.name + ".part")
        try:
            key: bytes | None = content_key(members.key_for(manifest.epoch))
        except EpochKeyError:
            key = None  # nothing to check a .part with: read it all again
        part.touch()
        kept = await asyncio.to_thread(_matching_prefix, part, manifest, key, members.group_id)
        shown = _FileProgress(progress, manifest.size, len(manifest.chunks))
        done = sum(chunk.size for chunk in manifest.chunks[:kept])
        shown.report(done, kept)
        with part.open("ab") as file:
            for index in range(kept, len(manifest.chunks)):
                chunk = manifest.chunks[index]
                plaintext = await self._fetch_chunk(chunk, members.group_id)
                await asyncio.to_thread(file.write, plaintext)
                done += chunk.size
                shown.report(done, index + 1)
            await asyncio.to_thread(_sync, file)
        os.replace(part, target)
        return target

    async def _fetch_chunk(self, chunk: ChunkRef, group_id: GroupId) -> bytes:
        buffer = bytearray()
        losses = 0
        while True:
            conn = await self._connection()
            before = len(buffer)
            try:
                sealed = await download_chunk(conn, chunk, into=buffer, have=len(buffer))
            except ConnectError:
                losses = 0 if len(buffer) > before else losses + 1
                if losses >= MAX_LOSSES:
                    raise
                continue
            return await asyncio.to_thread(open_chunk, sealed, chunk, group_id=group_id)


def _sync(file: IO[bytes]) -> None:
    file.flush()
    os.fsync(file.fileno())


__all__ = [
    "MANIFEST_MAGIC",
    "ContentOps",
    "ContentRef",
    "Progress",
    "manifest_blob_data",
    "manifest_of",
]
