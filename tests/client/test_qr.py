"""Invite QR codes: terminal text, PNG and SVG carry the invite URL's QR matrix."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import segno

from zerok.client.pairing import Invite

URL = "zerok://sync?invite=hqF2AaZyZWxheXORs3dzOi8vMTI3LjAuMC4xOjgwODCocm9vdF9rZXnEINrtzwe"
INVITE = Invite(URL, "2QXG-BRWF-VJEQ-79P4", 0.0, "ws://127.0.0.1:8080")


def _matrix() -> list[list[bool]]:
    return [[bool(m) for m in row] for row in segno.make(URL, error="m").matrix]


def test_terminal_qr_draws_the_matrix_two_rows_a_line() -> None:
    text = INVITE.qr()
    lines = text.rstrip("\n").split("\n")
    size = len(_matrix())
    # Two module rows per text line, plus a quiet zone of 2 modules on each side.
    assert len(lines) == (size + 4 + 1) // 2
    assert {len(line) for line in lines} == {size + 4}
    assert set("".join(lines)) <= {"█", "▀", "▄", " "}


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_png_is_a_valid_image_of_the_right_size(tmp_path: Path) -> None:
    target = tmp_path / "invite.png"
    INVITE.qr_png(target, scale=4)
    data = target.read_bytes()
    width, height = _png_size(data)
    modules = len(_matrix()) + 8  # segno's default quiet zone is 4 modules a side
    assert width == height == modules * 4
    # The image data inflates: the file is complete, not truncated.
    idat = data.index(b"IDAT")
    (length,) = struct.unpack(">I", data[idat - 4 : idat])
    assert zlib.decompress(data[idat + 4 : idat + 4 + length])


def test_svg_is_well_formed_and_sized(tmp_path: Path) -> None:
    target = tmp_path / "invite.svg"
    INVITE.qr_svg(target, scale=3)
    root = ET.parse(target).getroot()
    assert root.tag.endswith("svg")
    modules = len(_matrix()) + 8
    assert float(root.attrib["width"]) == float(root.attrib["height"]) == modules * 3
