"""Files (large content) on the command line: ``zerok push --file PATH`` and what ``zerok
pull --out DIR`` does with a blob that refers to a file.

A pulled file is saved as DIR/<its name> (``name (2).ext`` and so on when that is taken).
``client.pull()`` saves the cursor before the file is fetched, so a run cut short would
never see that blob again: each file is first written down in ``<home>/downloads`` (the
blob, which holds the chunk keys, so it stays in the 0700 data directory) and crossed off
once saved. The next ``pull --out`` into the same DIR finishes it, continuing its
``.part`` file from where it stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from zerok.cli.common import ConnectionWatch, emit_json, err, home_dir, open_client, out, safe
from zerok.client import Blob, BlobPushed, ContentRef, SyncClient
from zerok.client import Progress as Done
from zerok.client.content import ProgressCallback
from zerok.client.streams import EventStream
from zerok.errors import SyncError, WireError
from zerok.wire import BlobId, DeviceId
from zerok.wire.manifest import DEFAULT_MEDIA_TYPE, Manifest

# Waits for the BlobPushed of a file's manifest blob, queued before put_file returns.
CURSOR_WAIT = 1.0


class _Amount(ProgressColumn):
    """Bytes, rate and time left for a file; blobs received of all for the cursor task."""

    def __init__(self) -> None:
        super().__init__()
        self._bytes, self._rate = DownloadColumn(), TransferSpeedColumn()
        self._left, self._count = TimeRemainingColumn(), MofNCompleteColumn()

    def render(self, task: Task) -> RenderableType:
        if task.fields.get("unit") != "bytes":
            return self._count.render(task)
        parts = (self._bytes.render(task), self._rate.render(task), self._left.render(task))
        return Text(" ").join(parts)


class TransferBar:
    """The one live display a command has on stderr (rich allows one at a time): a bar per
    file being moved, and optionally one counting pulled blobs. Off when ``enabled`` is
    false (``--json``, or stderr is not a terminal)."""

    def __init__(self, *, enabled: bool, console: Console = err) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            _Amount(),
            console=console,
            transient=True,
            disable=not enabled,
        )

    def __enter__(self) -> TransferBar:
        self.progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.progress.stop()

    @contextlib.contextmanager
    def file(self, label: str, total: int) -> Iterator[ProgressCallback]:
        """A bar for one file while the block runs, shown from its first progress (none
        when nothing moves); the callback takes the client's Progress, in bytes."""
        tasks: list[TaskID] = []

        def update(done: Done) -> None:
            if not tasks:
                tasks.append(self.progress.add_task(label, total=total, unit="bytes"))
            self.progress.update(tasks[0], completed=done.done_bytes, total=done.total_bytes)

        try:
            yield update
        finally:
            for task in tasks:
                self.progress.remove_task(task)

    def counter(self, label: str) -> TaskID:
        return self.progress.add_task(label, total=None)


def bar_enabled(args: argparse.Namespace) -> bool:
    return not args.json and err.is_terminal


# -- push --file ----------------------------------------------------------------------------


def checked_upload(args: argparse.Namespace) -> tuple[Path, Manifest, int]:
    """The file ``push --file`` is to send, its name and media type checked before any
    connection (in a manifest with no chunks yet: WireError says what is wrong), its size."""
    path = Path(args.large)
    if args.file or args.text is not None:
        raise SyncError("give one of FILE, --text or --file, not several")
    if path.is_dir():
        raise SyncError(f"{path} is a directory: --file takes one file")
    size = path.stat().st_size  # OSError: the user's to fix, reported as such
    name = args.file_name or path.name
    media = args.media_type or DEFAULT_MEDIA_TYPE
    return path, Manifest(name=name, media_type=media, size=0, epoch=0), size


async def push_file(args: argparse.Namespace) -> int:
    """``zerok push --file PATH``: finish what an earlier run left, then put the file (not
    again when it was that)."""
    path, wanted, size = checked_upload(args)
    client = open_client(args)
    async with client, ConnectionWatch(client) as watch:
        await watch.online(args.timeout, spinner=not args.json)
        events = client.events()  # before the push: its BlobPushed gives the cursor
        try:
            with TransferBar(enabled=bar_enabled(args)) as bar:
                with bar.file("resuming an earlier upload", 0) as show:
                    earlier = await client.resume_uploads(progress=show)
                same = next(
                    (ref for ref in earlier if _same_file(ref.manifest, wanted, size)), None
                )
                if same is None:
                    with bar.file(safe(wanted.name), size) as show:
                        same = await client.put_file(
                            path, name=wanted.name, media_type=wanted.media_type, progress=show
                        )
            cursors = await _cursors(events, {ref.blob_id for ref in [*earlier, same]})
        finally:
            await events.aclose()
    for ref in [*(ref for ref in earlier if ref is not same), same]:
        _tell_pushed(ref, cursors.get(ref.blob_id), args, resumed=ref in earlier)
    return 0


def _same_file(sent: Manifest, wanted: Manifest, size: int) -> bool:
    # An upload's record keeps its path, which a ContentRef does not tell: name, size and
    # media type stand for it (a resumed put of another file so alike is the same file).
    return (sent.name, sent.size, sent.media_type) == (wanted.name, size, wanted.media_type)


async def _cursors(events: EventStream, blob_ids: set[BlobId]) -> dict[BlobId, int]:
    """The cursors the relay gave ``blob_ids`` (their BlobPushed events, already queued)."""
    found: dict[BlobId, int] = {}

    async def read() -> None:
        async for event in events:
            if isinstance(event, BlobPushed) and event.blob_id in blob_ids:
                found[event.blob_id] = event.cursor
                if len(found) == len(blob_ids):
                    return

    with contextlib.suppress(TimeoutError):  # an event dropped: the cursor is unknown
        await asyncio.wait_for(read(), CURSOR_WAIT)
    return found


def _tell_pushed(
    ref: ContentRef, cursor: int | None, args: argparse.Namespace, *, resumed: bool
) -> None:
    up = ref.uploaded
    if args.json:
        emit_json(
            {
                "status": "pushed",
                "name": ref.name,
                "size": ref.size,
                "media_type": ref.manifest.media_type,
                "blob_id": str(ref.blob_id),
                "cursor": cursor,
                "chunks": len(ref.manifest.chunks),
                "bytes_sent": up.bytes_sent if up else None,
                "resumed": resumed,
            }
        )
        return
    how = "Finished an earlier upload: pushed" if resumed else "Pushed"
    where = f" at cursor {cursor}" if cursor is not None else ""
    sent = f"; {up.bytes_sent:,} bytes sent" if up and up.bytes_sent < ref.size else ""
    count = len(ref.manifest.chunks)
    chunks = f"{count} chunk" if count == 1 else f"{count:,} chunks"
    out.print(
        f"{how} file {safe(ref.name)} ({ref.size:,} bytes, {chunks}) "
        f"as blob {ref.blob_id}{where}{sent}",
        markup=True,
    )


# -- pull --out ----------------------------------------------------------------------------


def free_name(directory: Path, name: str) -> str:
    """``name``, or ``stem (2).ext``, ``stem (3).ext``... : the first that neither a file
    (a link counts, even a broken one) nor an unfinished ``.part`` holds in ``directory``."""
    base = Path(name)
    stem, suffix = (base.stem, base.suffix) if base.stem else (name, "")
    number = 1
    while True:
        candidate = name if number == 1 else f"{stem} ({number}){suffix}"
        if not any(os.path.lexists(directory / n) for n in (candidate, candidate + ".part")):
            return candidate
        number += 1


def inside(directory: Path, name: str) -> Path:
    """``directory / name``, checked to stay in ``directory`` once links are followed (the
    file and its ``.part``); SyncError otherwise. Manifests carry plain names already: this
    is the last line should a name, or a link planted in the folder, get past that."""
    home = directory.resolve()
    target = directory / name
    for path in (target, target.with_name(target.name + ".part")):
        if path.resolve().parent != home:
            raise SyncError(f"refusing to save {name!r}: it would be written outside {home}")
    return target


class FileSaver:
    """Saves the files that pulled blobs refer to in ``directory``, journalled so that an
    interrupted save is finished by the next run (see the module's docstring)."""

    def __init__(self, client: SyncClient, args: argparse.Namespace, bar: TransferBar) -> None:
        self.client, self.bar = client, bar
        self.directory = Path(args.out).resolve()
        self.journal = home_dir(args) / "downloads"
        self.saved: dict[BlobId, Path] = {}  # in this run: changes() may hand a blob again

    def entry(self, blob_id: BlobId) -> Path:
        return self.journal / f"{blob_id}.json"

    def plan(self, blob: Blob, ref: ContentRef) -> str:
        """Pick the name ``ref`` is saved under, note it in the journal and hold it (an
        empty ``.part``, so the next file of the same name picks another)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        name = free_name(self.directory, ref.name)
        target = inside(self.directory, name)
        self.journal.mkdir(mode=0o700, exist_ok=True)
        doc = {
            "dir": str(self.directory),
            "name": name,
            "blob_id": str(blob.blob_id),
            "cursor": blob.cursor,
            "sender": str(blob.sender),
            "timestamp": blob.timestamp,
            "data": base64.b64encode(blob.data).decode("ascii"),
        }
        entry = self.entry(blob.blob_id)
        temporary = entry.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump(doc, file)
        os.replace(temporary, entry)
        target.with_name(name + ".part").touch()
        return name

    def noted(self) -> list[tuple[Blob, str]]:
        """The unfinished saves into this directory that an earlier run left."""
        found = []
        for entry in sorted(self.journal.glob("*.json")) if self.journal.is_dir() else []:
            try:
                doc = json.loads(entry.read_text())
                if doc["dir"] != str(self.directory):
                    continue  # finished by a pull into that directory
                blob = Blob(
                    BlobId.parse(doc["blob_id"]),
                    int(doc["cursor"]),
                    DeviceId.parse(doc["sender"]),
                    base64.b64decode(doc["data"], validate=True),
                    int(doc["timestamp"]),
                )
            except (ValueError, KeyError, TypeError, WireError):
                raise SyncError(f"{entry} is unreadable: delete it to go on") from None
            found.append((blob, str(doc["name"])))
        return found

    async def finish(self, blob: Blob, ref: ContentRef, name: str) -> Path:
        """Save ``ref`` as ``name`` (planned), continuing its ``.part``; crossed off the
        journal once whole."""
        target = inside(self.directory, name)
        with self.bar.file(safe(name), ref.size) as show:
            path = await self.client.save_content(ref, target, progress=show)
        self.entry(blob.blob_id).unlink(missing_ok=True)
        self.saved[blob.blob_id] = path
        return path


ShowRaw = Callable[[Blob], None]


class Receiver:
    """What ``pull`` does with the blobs it receives: the app's own data is shown (and
    written) by ``show_raw`` as before; a file reference is saved with ``--out``, else
    only told. A file that cannot be saved is said on stderr and counted in ``failures``:
    the pull goes on (its cursor has moved past the whole page already)."""

    def __init__(
        self, client: SyncClient, args: argparse.Namespace, bar: TransferBar, show_raw: ShowRaw
    ) -> None:
        self.client, self.args, self.show_raw = client, args, show_raw
        self.saver = FileSaver(client, args, bar) if args.out else None
        self.failures = 0

    async def resume(self) -> int:
        """Finish the saves into DIR that an earlier run cut short; how many there were."""
        if self.saver is None:
            return 0
        noted = self.saver.noted()
        for blob, name in noted:
            ref = self.client.content_ref(blob)
            assert ref is not None  # only file references are noted
            await self._finish(blob, ref, name)
        return len(noted)

    async def page(self, blobs: list[Blob]) -> None:
        """Every file of the page is noted before any is fetched: the cursor is saved."""
        saved = self.saver.saved if self.saver is not None else {}
        todo: list[tuple[Blob, ContentRef | None, str | None]] = []
        for blob in blobs:
            if blob.blob_id in saved:
                continue  # finished by resume(): changes() hands it again
            try:
                ref = self.client.content_ref(blob)
                name = self.saver.plan(blob, ref) if ref and self.saver else None
            except (SyncError, OSError) as exc:
                self._refuse(blob, exc, kept=False)
                continue
            todo.append((blob, ref, name))
        for blob, ref, name in todo:
            if ref is None:
                self.show_raw(blob)
            elif name is None:
                show_file(blob, ref, None, self.args)
            else:
                await self._finish(blob, ref, name)

    async def _finish(self, blob: Blob, ref: ContentRef, name: str) -> None:
        assert self.saver is not None
        try:
            path = await self.saver.finish(blob, ref, name)
        except (SyncError, OSError) as exc:
            self._refuse(blob, exc, kept=True)
            return
        show_file(blob, ref, path, self.args)

    def _refuse(self, blob: Blob, why: SyncError | OSError, *, kept: bool) -> None:
        self.failures += 1
        if isinstance(why, SyncError):
            text = str(why)
        else:
            text = f"{why.filename or ''}: {why.strerror or why}".removeprefix(": ")
        again = "; the next `zerok pull --out` into the same folder tries again" if kept else ""
        err.print(
            f"[bold red]zerok:[/] #{blob.cursor} (blob {blob.blob_id}) not saved: "
            f"{safe(text)}{again}",
            markup=True,
        )


def show_file(blob: Blob, ref: ContentRef, path: Path | None, args: argparse.Namespace) -> None:
    """One line for a pulled file reference: where it was saved, or how to save it."""
    if args.json:
        emit_json(
            {
                "cursor": blob.cursor,
                "blob_id": str(blob.blob_id),
                "sender": str(blob.sender),
                "timestamp": blob.timestamp,
                "file": {
                    "name": ref.name,
                    "size": ref.size,
                    "media_type": ref.manifest.media_type,
                    "path": str(path) if path is not None else None,
                },
            }
        )
        return
    what = f"file {safe(ref.name)} ({ref.size:,} bytes, {safe(ref.manifest.media_type)})"
    if path is not None:
        done = f"saved {what} as {safe(str(path))}"
    else:
        done = f"{what}: `zerok pull --after {blob.cursor - 1} --out DIR` saves it"
    out.print(f"[dim]#{blob.cursor} from {blob.sender.short()}:[/] {done}", markup=True)


__all__ = [
    "FileSaver",
    "Receiver",
    "TransferBar",
    "bar_enabled",
    "free_name",
    "inside",
    "push_file",
    "show_file",
]
