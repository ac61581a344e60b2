"""Manifests: the frozen encoding, the round trip, and every bound the decoder enforces."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from zerok.errors import WireError
from zerok.wire.manifest import (
    DEFAULT_MEDIA_TYPE,
    MAX_CHUNK,
    MAX_CHUNKS,
    MAX_MANIFEST_BYTES,
    MAX_NAME_CHARS,
    ChunkRef,
    Manifest,
    decode_manifest,
    encode_manifest,
    name_problem,
)

# "The quick brown fox jumps over the lazy dog." cut after 20 bytes, both parts sealed in
# the group and epoch of tests/crypto/test_content.py (which checks these refs).
VECTOR_MANIFEST = Manifest(
    name="fox.txt",
    media_type="text/plain; charset=utf-8",
    size=44,
    epoch=1,
    chunks=(
        ChunkRef(
            address=bytes.fromhex(
                "7abe92e488e42b0ffdb49cbe29d9d4b83fe8da826cd673ec9f2abdd91289fdd2"
            ),
            key=bytes.fromhex("b1df2d7c6c2cff103438f390cfbfb9e4c6d3f446ab3fca792e241786f53715e3"),
            size=20,
        ),
        ChunkRef(
            address=bytes.fromhex(
                "b80b9bb4d7e80a737798806ef5c240c766400e1f3f6d0c5ca742bdc6b24a62eb"
            ),
            key=bytes.fromhex("191e111b8e3b133fd4c3bb5e65a2ee4596de15886fbe5bc8eebc9e783cf31ff5"),
            size=24,
        ),
    ),
)
VECTOR_BYTES = bytes.fromhex(
    "86a17601a46e616d65a7666f782e747874aa6d656469615f74797065b9746578742f706c61696e3b2063"
    "6861727365743d7574662d38a473697a652ca565706f636801a66368756e6b739293c4207abe92e488e4"
    "2b0ffdb49cbe29d9d4b83fe8da826cd673ec9f2abdd91289fdd2c420b1df2d7c6c2cff103438f390cfbf"
    "b9e4c6d3f446ab3fca792e241786f53715e31493c420b80b9bb4d7e80a737798806ef5c240c766400e1f"
    "3f6d0c5ca742bdc6b24a62ebc420191e111b8e3b133fd4c3bb5e65a2ee4596de15886fbe5bc8eebc9e78"
    "3cf31ff518"
)

A32, B32 = bytes(range(32)), bytes(range(32, 64))


def fields(**changes: Any) -> dict[str, Any]:
    """The vector's fields as plain MessagePack values, with ``changes`` applied."""
    base: dict[str, Any] = {
        "v": 1,
        "name": "fox.txt",
        "media_type": "text/plain; charset=utf-8",
        "size": 44,
        "epoch": 1,
        "chunks": [[c.address, c.key, c.size] for c in VECTOR_MANIFEST.chunks],
    }
    base.update(changes)
    return base


def raw(**changes: Any) -> bytes:
    return msgspec.msgpack.encode(fields(**changes))


def test_vector() -> None:
    assert encode_manifest(VECTOR_MANIFEST) == VECTOR_BYTES
    assert decode_manifest(VECTOR_BYTES) == VECTOR_MANIFEST
    assert raw() == VECTOR_BYTES  # a plain map in this key order: the documented layout


def test_an_empty_file_has_no_chunks() -> None:
    empty = Manifest(name="empty", size=0, epoch=0)
    assert empty.media_type == DEFAULT_MEDIA_TYPE and empty.chunks == ()
    assert decode_manifest(encode_manifest(empty)) == empty


def test_other_key_orders_are_read() -> None:
    reordered = dict(reversed(list(fields().items())))
    assert decode_manifest(msgspec.msgpack.encode(reordered)) == VECTOR_MANIFEST


def test_the_largest_manifest_fits_its_bound() -> None:
    refs = (ChunkRef(address=A32, key=B32, size=MAX_CHUNK),) * MAX_CHUNKS
    name = "\U0001f600" * MAX_NAME_CHARS  # 4 UTF-8 bytes each
    biggest = Manifest(
        name=name, media_type="a/" + "b" * 127, size=MAX_CHUNK * MAX_CHUNKS, epoch=2**32 - 1,
        chunks=refs,
    )  # fmt: skip
    data = encode_manifest(biggest)
    assert len(data) <= MAX_MANIFEST_BYTES
    assert decode_manifest(data) == biggest


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "malformed"),
        (b"\xc1", "malformed"),
        (msgspec.msgpack.encode([1, 2]), "malformed"),
        (raw()[:-1], "malformed"),
        (raw() + b"\x00", "malformed"),
        (raw(extra=1), "unknown field"),
        (msgspec.msgpack.encode({k: v for k, v in fields().items() if k != "name"}), "name"),
        (raw(v=2), "format 2"),
        (raw(v=0), "format 0"),
        (raw(size=43), "hold 44 bytes but the file is 43"),
        (raw(size=-1), "size"),
        (raw(size=True), "size"),
        (raw(size=44.0), "size"),
        (raw(epoch=2**32), "epoch"),
        (raw(epoch=-1), "epoch"),
        (raw(name=b"fox.txt"), "name"),
        (raw(media_type=None), "media_type"),
        (raw(chunks=[[A32, B32, 0]]), "chunks"),
        (raw(chunks=[[A32, B32, MAX_CHUNK + 1]]), "chunks"),
        (raw(chunks=[[A32[:31], B32, 44]]), "chunks"),
        (raw(chunks=[[A32, B32 + b"\x00", 44]]), "chunks"),
        (raw(chunks=[[A32, B32]]), "chunks"),
        (raw(chunks=[[A32, B32, 44, 0]]), "chunks"),
        (raw(chunks=[{"address": A32, "key": B32, "size": 44}]), "chunks"),
        (raw(chunks=[[A32, B32, 1]] * (MAX_CHUNKS + 1), size=MAX_CHUNKS + 1), "chunks"),
        (b"\xff" * (MAX_MANIFEST_BYTES + 1), "at most"),
        (b"\x91" * 100_000, "malformed"),
    ],
)
def test_malformed_manifests_are_refused(data: bytes, match: str) -> None:
    with pytest.raises(WireError, match=match):
        decode_manifest(data)


def test_a_repeated_key_is_refused() -> None:
    pairs = [*fields().items(), ("name", "evil.exe")]
    data = bytes((0x80 | len(pairs),)) + b"".join(
        msgspec.msgpack.encode(key) + msgspec.msgpack.encode(value) for key, value in pairs
    )
    with pytest.raises(WireError, match="repeated"):
        decode_manifest(data)
    long_header = b"\xde\x00\x06" + VECTOR_BYTES[1:]  # map16 header, the same 6 pairs
    assert decode_manifest(long_header) == VECTOR_MANIFEST


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "a/b",
        "/etc",
        "a\\b",
        "a\x00b",
        "line\nbreak",
        "del\x7f",
        "x" * 1025,
        "\ud800",
    ],
)
def test_names_that_are_not_plain_file_names_are_refused(name: str) -> None:
    assert name_problem(name)
    with pytest.raises(WireError, match="invalid manifest"):
        Manifest(name=name, size=0, epoch=0)
    if name != "\ud800":  # no UTF-8 encoding, so it cannot arrive
        with pytest.raises(WireError):
            decode_manifest(raw(name=name))


@pytest.mark.parametrize("name", ["fox.txt", "...", ".hidden", "Résumé 2026 (1).pdf", "x" * 1024])
def test_plain_file_names_are_accepted(name: str) -> None:
    assert name_problem(name) is None
    assert decode_manifest(raw(name=name)).name == name


@pytest.mark.parametrize(
    "media_type", ["", "text", "text/", "/plain", "te xt/plain", "text/plain\n", "a/" + "b" * 254]
)
def test_bad_media_types_are_refused(media_type: str) -> None:
    with pytest.raises(WireError, match=r"media type|media_type"):
        decode_manifest(raw(media_type=media_type))


@pytest.mark.parametrize(
    "media_type", ["image/jpeg", "application/vnd.oasis.opendocument.text", "text/html;charset=x"]
)
def test_media_types_are_accepted(media_type: str) -> None:
    assert decode_manifest(raw(media_type=media_type)).media_type == media_type


@pytest.mark.parametrize(
    "changes",
    [
        {"size": 45},
        {"epoch": -1},
        {"size": -1, "chunks": ()},
        {"v": 2},
        {"media_type": "nope"},
        {"chunks": [VECTOR_MANIFEST.chunks[0], VECTOR_MANIFEST.chunks[1]]},  # a list
        {"chunks": ((A32, B32, 44),)},
    ],
)
def test_construction_checks_the_same_rules(changes: dict[str, Any]) -> None:
    values = {name: getattr(VECTOR_MANIFEST, name) for name in VECTOR_MANIFEST.__struct_fields__}
    with pytest.raises(WireError, match="invalid manifest"):
        Manifest(**{**values, **changes})


@pytest.mark.parametrize(
    ("address", "key", "size"),
    [(A32[:31], B32, 1), (A32, B32[:31], 1), (A32, B32, 0), (A32, B32, MAX_CHUNK + 1),
     (A32, B32, True), ("a" * 32, B32, 1)],
)  # fmt: skip
def test_chunk_refs_check_their_fields(address: Any, key: Any, size: Any) -> None:
    with pytest.raises(WireError, match="chunk"):
        ChunkRef(address=address, key=key, size=size)


def test_only_manifests_are_encoded() -> None:
    with pytest.raises(WireError, match="cannot encode dict"):
        encode_manifest(fields())  # type: ignore[arg-type]
