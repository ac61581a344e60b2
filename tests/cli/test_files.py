"""Files on the command line (``zerok.cli.files``): ``push --file`` on one device, ``pull
--out DIR`` on another, against the relay in this process; names that collide or would
leave DIR, interrupted pushes and pulls run again, and the progress bar."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
from rich.console import Console

from tests.cli.support import join, json_lines, ok, ok_json, start, usage_error, user_error, zerok
from zerok.cli import files
from zerok.cli.files import TransferBar, free_name, inside
from zerok.client import Progress, SyncClient
from zerok.client.content import MANIFEST_MAGIC, ContentOps
from zerok.errors import ConnectError, SyncError
from zerok.testing import InProcessRelay

MIB = 1024 * 1024


@pytest.fixture
def pair(relay: InProcessRelay, tmp_path: Path) -> tuple[Path, Path]:
    """Two devices of one group: the laptop (admin) and the phone."""
    laptop, phone = tmp_path / "laptop", tmp_path / "phone"
    start(laptop, "laptop", relay)
    join(laptop, phone, "phone")
    return laptop, phone


def random_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def pushed(home: Path, path: Path, *args: str) -> dict[str, Any]:
    doc: dict[str, Any] = ok_json(zerok(home, "push", "--file", str(path), "--json", *args))
    return doc


def test_push_file_then_pull_out_saves_it_under_its_name(
    pair: tuple[Path, Path], tmp_path: Path
) -> None:
    laptop, phone = pair
    # 5 MiB: at least two chunks (4 MiB at most each).
    data = random_file(tmp_path / "holiday.mp4", 5 * MIB)
    doc = pushed(laptop, tmp_path / "holiday.mp4", "--media-type", "video/mp4")
    assert doc["status"] == "pushed" and doc["resumed"] is False
    assert (doc["name"], doc["size"], doc["media_type"]) == ("holiday.mp4", len(data), "video/mp4")
    assert doc["chunks"] >= 2 and doc["bytes_sent"] > len(data)
    assert isinstance(doc["cursor"], int) and len(doc["blob_id"]) == 26

    out = tmp_path / "Downloads"
    [got] = json_lines(zerok(phone, "pull", "--out", str(out), "--json"))
    assert (got["cursor"], got["blob_id"]) == (doc["cursor"], doc["blob_id"])
    assert "data" not in got  # the manifest holds the chunk keys: not printed
    assert got["file"] == {
        "name": "holiday.mp4",
        "size": len(data),
        "media_type": "video/mp4",
        "path": str(out.resolve() / "holiday.mp4"),
    }
    assert (out / "holiday.mp4").read_bytes() == data
    assert sorted(p.name for p in out.iterdir()) == ["holiday.mp4"]  # no .part left
    assert list((phone / "downloads").iterdir()) == []  # nothing left to finish


def test_human_output_and_no_progress_bar_without_a_terminal(
    pair: tuple[Path, Path], tmp_path: Path
) -> None:
    laptop, phone = pair
    random_file(tmp_path / "notes.txt", 1000)
    result = zerok(laptop, "push", "--file", str(tmp_path / "notes.txt"), "--name", "n.txt")
    line = ok(result)
    assert line.startswith("Pushed file n.txt (1,000 bytes, 1 chunk) as blob ")
    assert " at cursor " in line
    assert result.stderr == b""  # stderr is no terminal here: no bar, no spinner

    # Without --out a file is only told, with the command that saves it.
    shown = zerok(phone, "pull")
    assert "file n.txt (1,000 bytes, application/octet-stream)" in ok(shown)
    assert "zerok pull --after 0 --out DIR" in ok(shown) and shown.stderr == b""
    [listed] = json_lines(zerok(phone, "pull", "--after", "0", "--json"))
    assert listed["file"]["path"] is None
    saved = zerok(phone, "pull", "--after", "0", "--out", str(tmp_path / "d"))
    assert f"saved file n.txt (1,000 bytes, application/octet-stream) as {tmp_path}" in ok(saved)
    assert saved.stderr == b""


def test_names_taken_get_a_number(pair: tuple[Path, Path], tmp_path: Path) -> None:
    laptop, phone = pair
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.pdf").write_bytes(b"mine")
    contents = [random_file(tmp_path / f"{i}.bin", 300 + i) for i in range(3)]
    for i in range(3):  # three files of one name, pulled in one page
        pushed(laptop, tmp_path / f"{i}.bin", "--name", "report.pdf")
    docs = json_lines(zerok(phone, "pull", "--out", str(out), "--json"))
    names = [Path(doc["file"]["path"]).name for doc in docs]
    assert names == ["report (2).pdf", "report (3).pdf", "report (4).pdf"]
    assert (out / "report.pdf").read_bytes() == b"mine"  # never overwritten
    assert [(out / name).read_bytes() for name in names] == contents


def test_free_name_and_inside(tmp_path: Path) -> None:
    assert free_name(tmp_path, "a.tar.gz") == "a.tar.gz"
    (tmp_path / "a.tar.gz.part").touch()  # being saved: taken too
    assert free_name(tmp_path, "a.tar.gz") == "a.tar (2).gz"
    (tmp_path / ".env").symlink_to(tmp_path / "missing")  # a broken link is taken
    assert free_name(tmp_path, ".env") == ".env (2)"

    assert inside(tmp_path, "ok.txt") == tmp_path / "ok.txt"
    with pytest.raises(SyncError, match="outside"):
        inside(tmp_path, "../escape.txt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "x.bin.part").symlink_to(elsewhere / "x.bin.part")  # planted in the folder
    with pytest.raises(SyncError, match="outside"):
        inside(folder, "x.bin")


def test_a_manifest_whose_name_leaves_dir_is_refused(
    pair: tuple[Path, Path], tmp_path: Path
) -> None:
    laptop, phone = pair
    evil = {"v": 1, "name": "../evil.sh", "media_type": "text/plain", "size": 0, "epoch": 0}
    crafted = tmp_path / "crafted"
    crafted.write_bytes(MANIFEST_MAGIC + msgspec.msgpack.encode({**evil, "chunks": []}))
    ok(zerok(laptop, "push", str(crafted)))  # a raw blob that claims to be a file
    ok(zerok(laptop, "push", "--text", "after it"))

    out = tmp_path / "box" / "out"
    result = zerok(phone, "pull", "--out", str(out))
    error = user_error(result, "not saved", "file name has no path separators")
    assert "tries again" not in error  # refused for good
    assert "#2 from " in result.stdout.decode()  # the rest of the pull goes on
    assert not (tmp_path / "box" / "evil.sh").exists()
    assert [p.name for p in out.iterdir()] == [p.name for p in out.glob("0000000002-*")]


def test_an_interrupted_pull_continues_its_part_file(
    pair: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    laptop, phone = pair
    data = random_file(tmp_path / "big.iso", 5 * MIB)
    chunks = pushed(laptop, tmp_path / "big.iso")["chunks"]
    fetched: list[int] = []
    real = ContentOps._fetch_chunk

    async def failing(self: ContentOps, chunk: Any, group_id: Any) -> bytes:
        if len(fetched) == 1:
            raise ConnectError("connection lost", reason="connection lost")
        fetched.append(chunk.size)
        return await real(self, chunk, group_id)

    monkeypatch.setattr(ContentOps, "_fetch_chunk", failing)
    out = tmp_path / "out"
    user_error(zerok(phone, "pull", "--out", str(out)), "not saved", "tries again")
    assert (out / "big.iso.part").read_bytes() == data[: fetched[0]]
    assert not (out / "big.iso").exists()

    # The cursor moved past the blob; the journal in the data directory still has it.
    async def counting(self: ContentOps, chunk: Any, group_id: Any) -> bytes:
        fetched.append(chunk.size)
        return await real(self, chunk, group_id)

    monkeypatch.setattr(ContentOps, "_fetch_chunk", counting)
    saved = ok(zerok(phone, "pull", "--out", str(out)))
    assert "saved file big.iso" in saved
    assert (out / "big.iso").read_bytes() == data
    assert len(fetched) == chunks  # the first chunk was not fetched again
    assert json_lines(zerok(phone, "pull", "--out", str(out), "--json")) == []
    assert sorted(p.name for p in out.iterdir()) == ["big.iso"]


def test_an_interrupted_push_is_finished_not_pushed_twice(
    pair: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    laptop, phone = pair
    data = random_file(tmp_path / "film.mkv", 2 * MIB)
    real = SyncClient._push_data
    cut = [True]

    async def once_lost(self: SyncClient, data: bytes, **kwargs: Any) -> Any:
        if kwargs.get("chunks") and cut:
            cut.pop()
            raise ConnectError("connection lost", reason="connection lost")  # chunks are sent
        return await real(self, data, **kwargs)

    monkeypatch.setattr(SyncClient, "_push_data", once_lost)
    user_error(zerok(laptop, "push", "--file", str(tmp_path / "film.mkv")), "connection lost")
    again = pushed(laptop, tmp_path / "film.mkv")
    assert again["resumed"] is True and again["bytes_sent"] == 0  # the relay had every chunk
    [got] = json_lines(zerok(phone, "pull", "--out", str(tmp_path / "out"), "--json"))
    assert got["blob_id"] == again["blob_id"]
    assert (tmp_path / "out" / "film.mkv").read_bytes() == data


def test_push_file_usage_errors(pair: tuple[Path, Path], tmp_path: Path) -> None:
    laptop, _ = pair
    small = tmp_path / "small.txt"
    small.write_text("x")
    user_error(zerok(laptop, "push", str(small), "--name", "y"), "--name", "--file PATH")
    user_error(zerok(laptop, "push", str(small), "--file", str(small)), "not several")
    user_error(zerok(laptop, "push", "--file", str(tmp_path)), "is a directory")
    user_error(zerok(laptop, "push", "--file", str(tmp_path / "nope")), "nope")
    user_error(zerok(laptop, "push", "--file", str(small), "--name", "a/b"), "path separators")
    user_error(
        zerok(laptop, "push", "--file", str(small), "--media-type", "video"), "not a media type"
    )
    usage_error(zerok(laptop, "push", "--file"), "--file")


def test_the_bar_shows_bytes_rate_and_time_left() -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=120, color_system=None)
    clock = [0.0]
    with TransferBar(enabled=True, console=console) as bar:
        bar.progress.get_time = lambda: clock[0]  # seconds as the test says
        with bar.file("movie.mp4", 4 * MIB) as show:
            assert not bar.progress.tasks  # nothing moved yet: no bar
            for second in (1, 2):
                clock[0] = second
                show(Progress(second * MIB, 4 * MIB, second, 4))
            [task] = bar.progress.tasks
            assert (task.completed, task.total) == (2 * MIB, 4 * MIB)
            console.print(bar.progress.make_tasks_table(bar.progress.tasks))
        assert not bar.progress.tasks  # gone once the file is done
    [line] = [line for line in screen.getvalue().split("\x1b[2K") if "MB/s" in line]
    assert "movie.mp4" in line and "2.1/4.2 MB" in line  # bytes
    assert "1.0 MB/s" in line and "0:00:02" in line  # rate, time left
    disabled = TransferBar(enabled=False, console=Console(file=io.StringIO()))
    with disabled, disabled.file("x", 1) as show:
        show(Progress(1, 1, 1, 1))  # no display, no error


def test_follow_saves_files_as_they_come(
    pair: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    laptop, phone = pair
    data = random_file(tmp_path / "clip.mov", 300_000)
    pushed(laptop, tmp_path / "clip.mov")
    told = files.show_file

    def then_ctrl_c(*args: Any) -> None:
        told(*args)
        raise KeyboardInterrupt  # what the user does to end --follow

    monkeypatch.setattr(files, "show_file", then_ctrl_c)
    out = tmp_path / "out"
    result = zerok(phone, "pull", "--follow", "--out", str(out))
    assert result.returncode == 130, result
    assert "saved file clip.mov" in result.stdout.decode()
    assert (out / "clip.mov").read_bytes() == data
