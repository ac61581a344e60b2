"""Manifests: what a large file is made of.

A file too large for one blob is cut into chunks (``zerok.protocol.chunking``), each sealed
on its own and stored under its address (``zerok.crypto.content``). The manifest names the
file and lists its chunks in order, each with the address, the key and the plaintext size
of one chunk. It travels sealed, as the data of a blob, so this is its plaintext: a
MessagePack map

    {v: 1, name: str, media_type: str, size: int, epoch: int,
     chunks: [[address bin32, key bin32, size int], ...]}

Decoding is strict (no unknown or repeated keys, every bound checked), because a manifest
comes from another device and every device must read one the same way.
"""

from __future__ import annotations

import re
import struct
import unicodedata
from typing import Annotated, Any

import msgspec

from zerok.errors import WireError

MANIFEST_FORMAT = 1
ADDRESS_BYTES = 32  # SHA-256 of a sealed chunk
CHUNK_KEY_BYTES = 32
MAX_CHUNK = 4 * 1024 * 1024  # plaintext bytes in one chunk
CHUNK_OVERHEAD = 1 + 16  # a sealed chunk: format byte, plaintext, AEAD tag
MAX_SEALED_CHUNK = MAX_CHUNK + CHUNK_OVERHEAD  # the largest chunk a relay must take
MAX_CHUNKS = 16384
MAX_FILE_SIZE = MAX_CHUNKS * MAX_CHUNK  # 64 GiB; chunkers reach MAX_CHUNKS well before
MAX_NAME_CHARS = 1024
MAX_MEDIA_TYPE_CHARS = 255
MAX_EPOCH = 2**32 - 1
DEFAULT_MEDIA_TYPE = "application/octet-stream"

_CHUNK_REF_BYTES = 1 + (2 + ADDRESS_BYTES) + (2 + CHUNK_KEY_BYTES) + 5  # array, bin8 x2, u32
# The largest encoding of a valid manifest (a name of 1024 four-byte characters, every chunk
# listed): what a blob carrying a manifest must be able to hold.
MAX_MANIFEST_BYTES = 4096 + MAX_MEDIA_TYPE_CHARS + MAX_CHUNKS * _CHUNK_REF_BYTES + 128

Address = Annotated[bytes, msgspec.Meta(min_length=ADDRESS_BYTES, max_length=ADDRESS_BYTES)]
ChunkKey = Annotated[bytes, msgspec.Meta(min_length=CHUNK_KEY_BYTES, max_length=CHUNK_KEY_BYTES)]
ChunkSize = Annotated[int, msgspec.Meta(ge=1, le=MAX_CHUNK)]

# RFC 6838 type "/" subtype, then optional parameters in printable ASCII.
_TOKEN = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
_MEDIA_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}(?:[ \t]*;[\x20-\x7e]*)?")


class ChunkRef(msgspec.Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """One chunk of a file: where it is stored, the key that opens it, its plaintext size."""

    address: Address
    key: ChunkKey
    size: ChunkSize

    def __post_init__(self) -> None:
        # msgspec checks the Annotated bounds when decoding only; this covers construction.
        if not isinstance(self.address, bytes) or len(self.address) != ADDRESS_BYTES:
            raise WireError(f"a chunk address is {ADDRESS_BYTES} bytes")
        if not isinstance(self.key, bytes) or len(self.key) != CHUNK_KEY_BYTES:
            raise WireError(f"a chunk key is {CHUNK_KEY_BYTES} bytes")
        if not _is_int(self.size) or not 1 <= self.size <= MAX_CHUNK:
            raise WireError(f"a chunk holds 1..{MAX_CHUNK} bytes, not {self.size!r}")


class Manifest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A file: its name (a plain file name, no directories), media type, size in bytes,
    the epoch whose content key derived its chunk keys, and its chunks in order."""

    v: int = MANIFEST_FORMAT
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_CHARS)]
    media_type: Annotated[str, msgspec.Meta(max_length=MAX_MEDIA_TYPE_CHARS)] = DEFAULT_MEDIA_TYPE
    size: Annotated[int, msgspec.Meta(ge=0, le=MAX_FILE_SIZE)]
    epoch: Annotated[int, msgspec.Meta(ge=0, le=MAX_EPOCH)]
    chunks: Annotated[tuple[ChunkRef, ...], msgspec.Meta(max_length=MAX_CHUNKS)] = ()

    def __post_init__(self) -> None:
        problem = _manifest_problem(self)
        if problem:
            raise WireError(f"invalid manifest: {problem}")


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a plain file name, or None. A receiver writes the file under this
    name, so it must not reach outside the folder it is written to."""
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_CHARS:
        return f"a file name is 1..{MAX_NAME_CHARS} characters"
    if name in (".", ".."):
        return f"{name!r} is not a file name"
    if "/" in name or "\\" in name:
        return f"a file name has no path separators: {name!r}"
    for char in name:
        # Cc: NUL and other controls, which file systems and terminals treat specially;
        # Cs: lone surrogates, which have no UTF-8 encoding.
        if unicodedata.category(char) in ("Cc", "Cs"):
            return f"a file name has no control characters: {name!r}"
    return None


def _manifest_problem(m: Manifest) -> str | None:
    if m.v != MANIFEST_FORMAT:
        return f"unsupported manifest format {m.v!r} (this device reads {MANIFEST_FORMAT})"
    problem = name_problem(m.name)
    if problem:
        return problem
    if not isinstance(m.media_type, str) or len(m.media_type) > MAX_MEDIA_TYPE_CHARS:
        return f"a media type is text of at most {MAX_MEDIA_TYPE_CHARS} characters"
    if not _MEDIA_TYPE.fullmatch(m.media_type):
        return f"not a media type (type/subtype[; parameters]): {m.media_type!r}"
    if not _is_int(m.size) or not 0 <= m.size <= MAX_FILE_SIZE:
        return f"size {m.size!r} is outside 0..{MAX_FILE_SIZE}"
    if not _is_int(m.epoch) or not 0 <= m.epoch <= MAX_EPOCH:
        return f"epoch {m.epoch!r} is outside 0..{MAX_EPOCH}"
    if not isinstance(m.chunks, tuple) or len(m.chunks) > MAX_CHUNKS:
        return f"a manifest lists at most {MAX_CHUNKS} chunks, as a tuple"
    if not all(isinstance(ref, ChunkRef) for ref in m.chunks):
        return "every chunk is a ChunkRef"
    total = sum(ref.size for ref in m.chunks)
    if total != m.size:
        return f"the chunks hold {total} bytes but the file is {m.size}"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Manifest)
_keys_decoder = msgspec.msgpack.Decoder(dict[str, msgspec.Raw])


def encode_manifest(manifest: Manifest) -> bytes:
    """The manifest's MessagePack bytes (the plaintext of a manifest blob)."""
    if not isinstance(manifest, Manifest):
        raise WireError(f"cannot encode {type(manifest).__name__} as a manifest")
    return _encoder.encode(manifest)


def decode_manifest(data: bytes) -> Manifest:
    """Read a manifest; WireError if it is malformed, out of bounds or inconsistent."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise WireError(f"a manifest is at most {MAX_MANIFEST_BYTES} bytes, got {len(data)}")
    try:
        # msgspec keeps the last of repeated keys; two readers that keep different ones
        # would see two different files, so a repeated key is an error.
        if len(_keys_decoder.decode(data)) != _map_length(data):
            raise WireError("malformed manifest: a key is repeated")
        return _decoder.decode(data)
    except (msgspec.DecodeError, ValueError) as exc:  # ValueError: invalid UTF-8
        raise WireError(f"malformed manifest: {exc}") from None
    except RecursionError:
        raise WireError("malformed manifest: nested too deeply") from None


def _map_length(data: bytes) -> int:
    """The number of pairs a MessagePack map's header announces (the data decoded as a map
    already, so the header is there)."""
    lead = data[0]
    if 0x80 <= lead <= 0x8F:
        return lead & 0x0F
    count: int = struct.unpack_from(">H" if lead == 0xDE else ">I", data, 1)[0]
    return count
