"""DeviceId, GroupId and BlobId: fixed sizes, base32/base64url text forms, bytes behaviour."""

from __future__ import annotations

import base64

import pytest

from zerok.errors import WireError
from zerok.wire import BlobId, DeviceId, FixedId, GroupId

ID_TYPES: list[tuple[type[FixedId], int]] = [(DeviceId, 32), (GroupId, 32), (BlobId, 16)]
ID_PARAMS = pytest.mark.parametrize(
    ("cls", "size"), ID_TYPES, ids=[cls.__name__ for cls, _ in ID_TYPES]
)


def _b32_len(size: int) -> int:
    return len(base64.b32encode(bytes(size)).rstrip(b"="))


def _b64_len(size: int) -> int:
    return len(base64.urlsafe_b64encode(bytes(size)).rstrip(b"="))


def test_sizes_are_the_documented_ones() -> None:
    assert DeviceId.SIZE == 32
    assert GroupId.SIZE == 32
    assert BlobId.SIZE == 16


@ID_PARAMS
def test_exact_size_is_accepted(cls: type[FixedId], size: int) -> None:
    raw = bytes(range(size))
    value = cls(raw)
    assert len(value) == size
    assert bytes(value) == raw
    assert isinstance(value, bytes)
    assert type(value) is cls


@ID_PARAMS
def test_bytearray_and_memoryview_are_accepted(cls: type[FixedId], size: int) -> None:
    raw = bytes(range(size))
    # the annotation says bytes; at run time bytearray and memoryview are accepted as well
    assert cls(bytearray(raw)) == raw  # type: ignore[arg-type]
    assert cls(memoryview(raw)) == raw  # type: ignore[arg-type]
    assert type(cls(bytearray(raw))) is cls  # type: ignore[arg-type]


@ID_PARAMS
@pytest.mark.parametrize("delta", [-1, 1, None])
def test_wrong_size_is_rejected(cls: type[FixedId], size: int, delta: int | None) -> None:
    length = 0 if delta is None else size + delta
    with pytest.raises(WireError, match=str(size)):
        cls(bytes(length))


@ID_PARAMS
@pytest.mark.parametrize("value", ["a" * 32, 0, None, [0] * 32])
def test_non_bytes_is_rejected(cls: type[FixedId], size: int, value: object) -> None:
    with pytest.raises(WireError):
        cls(value)  # type: ignore[arg-type]


@ID_PARAMS
def test_str_is_lowercase_unpadded_base32(cls: type[FixedId], size: int) -> None:
    raw = bytes(range(200, 200 + size))
    value = cls(raw)
    text = str(value)
    assert text == base64.b32encode(raw).decode("ascii").rstrip("=").lower()
    assert text == value.b32
    assert len(text) == _b32_len(size)
    assert "=" not in text
    assert text == text.lower()
    assert repr(value) == f"{cls.__name__}({text!r})"


def test_known_base32_form() -> None:
    value = DeviceId(bytes(range(32)))
    assert str(value) == "aaaqeayeaudaocajbifqydiob4ibceqtcqkrmfyydenbwha5dypq"
    assert value.b64 == "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"
    assert str(BlobId(bytes(16))) == "a" * 26


@ID_PARAMS
def test_base32_round_trip(cls: type[FixedId], size: int) -> None:
    for _ in range(50):
        value = cls.random()
        parsed = cls.parse(str(value))
        assert parsed == value
        assert type(parsed) is cls


@ID_PARAMS
def test_parse_accepts_uppercase_and_surrounding_whitespace(cls: type[FixedId], size: int) -> None:
    value = cls.random()
    assert cls.parse(str(value).upper()) == value
    assert cls.parse(f"  {value}\n") == value


@ID_PARAMS
def test_base64url_parse(cls: type[FixedId], size: int) -> None:
    for _ in range(50):
        value = cls.random()
        text = base64.urlsafe_b64encode(value).decode("ascii").rstrip("=")
        assert len(text) == _b64_len(size)
        assert text == value.b64
        parsed = cls.parse(text)
        assert parsed == value
        assert type(parsed) is cls


@ID_PARAMS
def test_base64url_uses_url_safe_alphabet(cls: type[FixedId], size: int) -> None:
    value = cls(b"\xff" * size)  # all ones: standard base64 would give '/'
    assert "/" not in value.b64
    assert "+" not in value.b64
    assert "_" in value.b64
    assert cls.parse(value.b64) == value


def test_base32_and_base64url_lengths_differ() -> None:
    for _, size in ID_TYPES:
        assert _b32_len(size) != _b64_len(size)


@ID_PARAMS
def test_parse_rejects_bad_lengths(cls: type[FixedId], size: int) -> None:
    value = cls.random()
    b32, b64 = str(value), value.b64
    for text in ("", "a", b32[:-1], b32 + "a", b64[:-1], b64 + "A", b32 + b32, "a" * 100):
        with pytest.raises(WireError):
            cls.parse(text)


@ID_PARAMS
@pytest.mark.parametrize("bad", ["0", "1", "8", "9", "!", "=", "-", "é", " "])
def test_parse_rejects_bad_base32_characters(cls: type[FixedId], size: int, bad: str) -> None:
    text = str(cls.random())
    text = text[:5] + bad + text[6:]
    assert len(text) == _b32_len(size)
    with pytest.raises(WireError):
        cls.parse(text)


@ID_PARAMS
@pytest.mark.parametrize("bad", ["!", "*", ".", "é", "$"])
def test_parse_rejects_bad_base64url_characters(cls: type[FixedId], size: int, bad: str) -> None:
    text = cls.random().b64
    text = text[:5] + bad + text[6:]
    assert len(text) == _b64_len(size)
    with pytest.raises(WireError):
        cls.parse(text)


@ID_PARAMS
def test_parse_rejects_all_garbage(cls: type[FixedId], size: int) -> None:
    for length in (_b32_len(size), _b64_len(size)):
        for char in ("!", "é", "\x00"):
            with pytest.raises(WireError):
                cls.parse(char * length)


def test_parse_of_other_size_fails() -> None:
    blob = BlobId.random()
    with pytest.raises(WireError):
        DeviceId.parse(str(blob))
    with pytest.raises(WireError):
        BlobId.parse(str(DeviceId.random()))


@ID_PARAMS
def test_random_has_right_size_and_differs(cls: type[FixedId], size: int) -> None:
    values = {cls.random() for _ in range(100)}
    assert len(values) == 100
    for value in values:
        assert type(value) is cls
        assert len(value) == size


@ID_PARAMS
def test_short_is_first_eight_base32_chars(cls: type[FixedId], size: int) -> None:
    value = cls.random()
    assert value.short() == str(value)[:8]
    assert len(value.short()) == 8
    assert cls(bytes(size)).short() == "aaaaaaaa"


@ID_PARAMS
def test_behaves_as_bytes(cls: type[FixedId], size: int) -> None:
    raw = bytes(range(1, size + 1))
    value = cls(raw)
    assert value == raw
    assert raw == value
    assert value == cls(raw)
    assert value != cls(bytes(size))
    assert hash(value) == hash(raw)
    by_id: dict[bytes, int] = {value: 1}
    by_raw: dict[bytes, int] = {raw: 2}
    assert by_id[raw] == 1
    assert by_raw[value] == 2
    assert raw in {value}
    assert len({value, raw, cls(raw)}) == 1
    assert value[0] == 1
    assert value[:2] == raw[:2]
    assert value.hex() == raw.hex()
    assert value + b"x" == raw + b"x"


def test_ids_of_same_bytes_are_equal_across_types() -> None:
    # They are bytes: a DeviceId and a GroupId with the same 32 bytes compare equal.
    raw = bytes(range(32))
    device: bytes = DeviceId(raw)
    group: bytes = GroupId(raw)
    assert device == group
    assert hash(device) == hash(group)
