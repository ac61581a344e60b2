"""``zerok push`` and ``zerok pull``. ``push FILE`` sends the file's bytes as one blob (up
to the relay's blob size); ``push --file PATH`` sends a file of any size as large content,
which ``pull --out DIR`` saves under its name (``zerok.cli.files``)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import sys
from pathlib import Path

from rich.markup import escape

from zerok.cli.common import (
    ConnectionWatch,
    add_common,
    cursor_arg,
    emit_json,
    err,
    open_client,
    out,
    run_async,
    timeout_arg,
    visible,
)
from zerok.cli.files import Receiver, TransferBar, bar_enabled, push_file
from zerok.client import Blob
from zerok.errors import BlobTooLargeError, SyncError


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    push = commands.add_parser("push", help="send data to the group's other devices")
    add_common(push)
    push.add_argument("file", nargs="?", help="file to push, or - for standard input")
    push.add_argument("--text", help="push this text instead of a file")
    push.add_argument(
        "--file",
        dest="large",
        metavar="PATH",
        help="push a file of any size, in chunks, with a progress bar; saved under its name "
        "by `zerok pull --out DIR` (a run cut short continues where it stopped)",
    )
    # Not dest="name": open_client takes args.name as the device's name.
    push.add_argument("--name", dest="file_name", help="with --file: the name it is saved as")
    push.add_argument("--media-type", metavar="TYPE", help="with --file: its media type")
    push.add_argument(
        "--timeout",
        type=timeout_arg,
        default=30.0,
        help="seconds to wait for the relay's ack; after that the push stays queued "
        "(--file: seconds to reach a relay; the upload then takes as long as it takes) "
        "(default 30)",
    )
    push.set_defaults(run=cmd_push)

    pull = commands.add_parser("pull", help="receive what the group's other devices pushed")
    add_common(pull)
    pull.add_argument(
        "--after", type=cursor_arg, help="start after this cursor (default: the saved one)"
    )
    pull.add_argument("--follow", "-f", action="store_true", help="keep receiving until Ctrl-C")
    pull.add_argument(
        "--out",
        metavar="DIR",
        help="save files (push --file) as DIR/<name>, other blobs as DIR/<cursor>-<blob id>",
    )
    pull.add_argument(
        "--timeout", type=timeout_arg, default=15.0, help="seconds to reach a relay (default 15)"
    )
    pull.set_defaults(run=cmd_pull)


def _read_input(args: argparse.Namespace) -> bytes:
    if args.text is not None:
        if args.file:
            raise SyncError("give a file or --text, not both")
        return str(args.text).encode()
    if not args.file:
        raise SyncError("nothing to push: give a FILE, - for standard input, or --text")
    if args.file == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(args.file).read_bytes()
    except OSError as exc:
        raise SyncError(f"cannot read {args.file}: {exc.strerror}") from None


def cmd_push(args: argparse.Namespace) -> int:
    if args.large is not None:
        return run_async(lambda: push_file(args))

    async def main() -> int:
        if args.file_name is not None or args.media_type is not None:
            raise SyncError("--name and --media-type go with --file PATH")
        data = _read_input(args)
        client = open_client(args)
        async with client, ConnectionWatch(client):
            push = asyncio.ensure_future(client.push(data))
            with contextlib.ExitStack() as stack:
                if not args.json:
                    stack.enter_context(err.status(f"pushing {len(data):,} bytes…"))
                done, _ = await asyncio.wait({push}, timeout=args.timeout)
            if not done:
                push.cancel()
                if args.json:
                    emit_json({"status": "queued", "pending": client.pending_count})
                else:
                    out.print(
                        f"No relay acknowledged within {args.timeout:g} s: the push is queued "
                        f"({client.pending_count} pending) and goes out on the next connection."
                    )
                return 0
            try:
                result = push.result()
            except BlobTooLargeError as exc:
                raise BlobTooLargeError(
                    f"{exc}: `zerok push --file PATH` sends a file of any size"
                ) from None
        if args.json:
            emit_json({"status": "pushed", "blob_id": str(result.blob_id), "cursor": result.cursor})
        else:
            out.print(
                f"Pushed {len(data):,} bytes as blob {result.blob_id} at cursor {result.cursor}"
            )
        return 0

    return run_async(main)


def _show(blob: Blob, args: argparse.Namespace) -> None:
    if args.out:
        target = Path(args.out) / f"{blob.cursor:010d}-{blob.blob_id}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob.data)
    if args.json:
        emit_json(
            {
                "cursor": blob.cursor,
                "blob_id": str(blob.blob_id),
                "sender": str(blob.sender),
                "timestamp": blob.timestamp,
                "data": base64.b64encode(blob.data).decode("ascii"),
            }
        )
        return
    try:
        shown: str | None = visible(blob.data.decode("utf-8"), keep_newlines=True)
    except UnicodeDecodeError:
        shown = None
    body = shown.removesuffix("\n") if shown is not None else f"<{len(blob.data):,} bytes>"
    out.print(f"[dim]#{blob.cursor} from {blob.sender.short()}:[/] {escape(body)}", markup=True)


def cmd_pull(args: argparse.Namespace) -> int:
    async def main() -> int:
        client = open_client(args)
        count = 0
        async with client, ConnectionWatch(client) as watch:
            await watch.online(args.timeout, spinner=not args.json)
            with TransferBar(enabled=bar_enabled(args)) as bar:
                receiver = Receiver(client, args, bar, lambda blob: _show(blob, args))
                count += await receiver.resume()
                if args.follow:
                    async for blob in client.changes():
                        await receiver.page([blob])
                        count += 1
                after = args.after
                start = client.last_cursor if after is None else after
                task = bar.counter("receiving")
                while True:
                    page = await client.pull(after)
                    await receiver.page(page.blobs)
                    count += len(page.blobs)
                    position = page.blobs[-1].cursor if page.blobs else client.last_cursor
                    bar.progress.update(
                        task,
                        total=max(page.max_cursor - start, 1),
                        completed=max(position - start, 0),
                    )
                    if not page.has_more:
                        break
                    if after is not None:
                        after = page.blobs[-1].cursor if page.blobs else page.max_cursor
        if not args.json and count == 0:
            err.print("nothing new")
        return 1 if receiver.failures else 0

    return run_async(main)
