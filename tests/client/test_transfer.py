"""Chunk transfer (``zerok.client.transfer``): resumable upload and download of sealed chunks.

Two halves. Against ``FakeRelay``, an in-memory relay that keeps the rules of the chunk
messages (and round-trips every message through the wire codec, so bounds hold), with
hooks for what a real relay does rarely: a cut connection at an exact request, another
device's upload moving on, damaged bytes kept or served. Then against the real relay in
this process: dedupe, resume after a closed connection, a mismatch refused with nothing
kept, downloads resumed.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest

from tests.relay.support import RelayLauncher, run
from zerok.client.transfer import (
    PIECE,
    ChunkConnection,
    Progress,
    UploadReport,
    download_chunk,
    upload_chunks,
)
from zerok.crypto import DeviceIdentity
from zerok.crypto.content import open_chunk, seal_chunk
from zerok.errors import (
    ConnectError,
    DecryptionError,
    LocalProtocolError,
    RemoteError,
    RemoteProtocolError,
)
from zerok.testing import InProcessRelay, TestGroup
from zerok.transport.connection import RelayConnection
from zerok.wire import (
    ChunkBegin,
    ChunkData,
    ChunkGet,
    ChunkHave,
    ChunkInfo,
    ChunkPut,
    ChunkStatus,
    ErrorCode,
    GroupId,
    Message,
    decode,
    encode,
)
from zerok.wire.manifest import ChunkRef

KIB = 1024
GROUP = GroupId(bytes(range(32)))
CONTENT_KEY = bytes(32)
M = TypeVar("M", bound=Message)


def blob(size: int, seed: int = 0) -> tuple[bytes, bytes]:
    """An (address, bytes) pair: the transfer moves any bytes under their SHA-256."""
    data = hashlib.shake_256(seed.to_bytes(8, "big")).digest(size)
    return hashlib.sha256(data).digest(), data


def sealed(size: int, seed: int = 0) -> tuple[bytes, ChunkRef]:
    plaintext = hashlib.shake_256(b"plain" + seed.to_bytes(8, "big")).digest(size)
    return seal_chunk(plaintext, content_key=CONTENT_KEY, group_id=GROUP)


class FakeRelay:
    """The relay's chunk rules in memory. ``cut_at``: the n-th request of a type (counted
    from 1) fails with ConnectError, unsent; ``served``: what CHUNK_GET serves of a chunk's
    bytes; ``after_put``: runs after each accepted piece (another device, say)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytearray] = {}
        self.size: dict[bytes, int] = {}
        self.complete: set[bytes] = set()
        self.requests: list[Message] = []
        self.cut_at: tuple[type[Message], int] | None = None
        self.served: Callable[[bytes], bytes] = lambda data: data
        self.after_put: Callable[[bytes], None] = lambda address: None

    def sent(self, kind: type[M]) -> list[M]:
        return [m for m in self.requests if isinstance(m, kind)]

    def put_bytes(self) -> int:
        return sum(len(m.data) for m in self.sent(ChunkPut))

    def info(self, address: bytes) -> ChunkInfo:
        if address not in self.size:
            return ChunkInfo(address=address)
        received = len(self.data[address])
        return ChunkInfo(
            address=address,
            size=self.size[address],
            received=received,
            complete=address in self.complete,
        )

    async def request(self, message: Message) -> Message:
        message = decode(encode(message, request_id=1))  # the wire's bounds hold
        if self.cut_at is not None:
            kind, at = self.cut_at
            if isinstance(message, kind) and len(self.sent(kind)) + 1 == at:
                raise ConnectError("the connection ended before the answer: cut")
        self.requests.append(message)
        answer = self.answer(message)
        return decode(encode(answer, request_id=1))

    def answer(self, message: Message) -> Message:
        if isinstance(message, ChunkHave):
            return ChunkStatus(chunks=[self.info(a) for a in message.addresses])
        if isinstance(message, ChunkBegin):
            known = self.size.setdefault(message.address, message.size)
            if known != message.size:
                raise RemoteError(ErrorCode.CHUNK_UNKNOWN, "begun with another size")
            self.data.setdefault(message.address, bytearray())
            return ChunkStatus(chunks=[self.info(message.address)])
        if isinstance(message, ChunkPut):
            return self.put(message)
        if isinstance(message, ChunkGet):
            if message.address not in self.complete:
                raise RemoteError(ErrorCode.CHUNK_UNKNOWN, "no such chunk here whole")
            whole = self.served(bytes(self.data[message.address]))
            data = whole[message.offset : message.offset + message.length]
            return ChunkData(address=message.address, offset=message.offset, data=data)
        raise AssertionError(f"unexpected {message!r}")

    def put(self, put: ChunkPut) -> ChunkStatus:
        address = put.address
        held = self.data.get(address)
        if held is None or address in self.complete or put.offset != len(held):
            raise RemoteError(ErrorCode.CHUNK_UNKNOWN, "not begun, or not at this offset")
        held += put.data
        if len(held) == self.size[address]:
            if hashlib.sha256(held).digest() != address:
                del self.data[address], self.size[address]
                raise RemoteError(ErrorCode.CHUNK_MISMATCH, "nothing of it was kept")
            self.complete.add(address)
        self.after_put(address)
        return ChunkStatus(chunks=[self.info(address)])

    def hold(self, address: bytes, data: bytes, size: int, *, complete: bool = False) -> None:
        self.size[address], self.data[address] = size, bytearray(data)
        if complete:
            self.complete.add(address)


def upload(relay: ChunkConnection, chunks: object, **kwargs: object) -> UploadReport:
    return run(upload_chunks(relay, chunks, **kwargs))  # type: ignore[arg-type]


def monotone(reports: list[Progress]) -> None:
    assert reports
    for before, after in itertools.pairwise(reports):
        assert after.done_bytes >= before.done_bytes
        assert after.chunks_done >= before.chunks_done
        assert after.total_bytes >= before.total_bytes
    last = reports[-1]
    assert (last.done_bytes, last.chunks_done) == (last.total_bytes, last.chunks_total)
    assert all(r.done_bytes <= r.total_bytes for r in reports)


# -- upload, against the fake ---------------------------------------------------------------


def test_an_upload_sends_every_chunk_and_a_second_one_sends_nothing() -> None:
    relay = FakeRelay()
    chunks = [blob(100 * KIB, 1), blob(30 * KIB, 2), blob(1, 3)]
    first = upload(relay, chunks, piece=64 * KIB)
    everything = 130 * KIB + 1
    assert first == UploadReport(
        chunks=3, total_bytes=everything, bytes_sent=everything, skipped_chunks=0, resumed_bytes=0
    )
    assert relay.complete == {a for a, _ in chunks}
    assert [len(m.data) for m in relay.sent(ChunkPut)] == [64 * KIB, 36 * KIB, 30 * KIB, 1]
    relay.requests.clear()
    again = upload(relay, chunks)
    assert (again.bytes_sent, again.skipped_chunks) == (0, 3)
    # Known up front: one CHUNK_HAVE answers for all of them, no CHUNK_BEGIN.
    assert [type(m) for m in relay.requests] == [ChunkHave]


@pytest.mark.parametrize("kind", ["iterator", "async"])
def test_chunks_that_come_one_at_a_time_are_deduplicated_by_begin(kind: str) -> None:
    relay = FakeRelay()
    chunks = [blob(10 * KIB, 1), blob(20 * KIB, 2)]
    relay.hold(*chunks[0], 10 * KIB, complete=True)

    async def arrive() -> AsyncIterator[tuple[bytes, bytes]]:
        for chunk in chunks:
            yield chunk

    report = upload(relay, iter(chunks) if kind == "iterator" else arrive())
    assert (report.bytes_sent, report.skipped_chunks, report.chunks) == (20 * KIB, 1, 2)
    assert not relay.sent(ChunkHave)


def test_nothing_to_upload_asks_nothing() -> None:
    relay = FakeRelay()
    nothing: list[tuple[bytes, bytes]] = []
    for chunks in (nothing, iter(nothing)):
        assert upload(relay, chunks) == UploadReport(0, 0, 0, 0, 0)
    assert not relay.requests


def test_a_chunk_listed_twice_is_sent_once() -> None:
    relay = FakeRelay()
    chunk = blob(5 * KIB)
    report = upload(relay, [chunk, chunk])
    assert (report.bytes_sent, report.skipped_chunks, report.chunks) == (5 * KIB, 1, 2)
    assert len(relay.sent(ChunkHave)[0].addresses) == 1


def test_many_chunks_are_asked_about_in_batches_of_1024() -> None:
    relay = FakeRelay()
    chunks = [blob(8, n) for n in range(1100)]
    for chunk in chunks[:1050]:
        relay.hold(*chunk, 8, complete=True)
    report = upload(relay, chunks)
    assert [len(m.addresses) for m in relay.sent(ChunkHave)] == [1024, 76]
    assert (report.skipped_chunks, report.bytes_sent) == (1050, 400)
    assert len(relay.sent(ChunkBegin)) == 50


@pytest.mark.parametrize("cut", [1, 2, 4, 5])
def test_a_cut_upload_resumes_where_the_relay_stands(cut: int) -> None:
    """Cut at the ``cut``-th piece (of 5): the next upload sends exactly what is missing."""
    relay = FakeRelay()
    chunks = [blob(10 * KIB, 1), blob(40 * KIB + 7, 2)]
    relay.cut_at = (ChunkPut, cut + 1)  # the first chunk is one piece
    with pytest.raises(ConnectError):
        upload(relay, chunks, piece=10 * KIB)
    held = len(relay.data[chunks[1][0]])
    assert held == (cut - 1) * 10 * KIB
    relay.cut_at = None
    relay.requests.clear()
    report = upload(relay, chunks, piece=10 * KIB)
    assert report.bytes_sent == relay.put_bytes() == 40 * KIB + 7 - held
    assert (report.resumed_bytes, report.skipped_chunks) == (held, 1)
    assert relay.sent(ChunkPut)[0].offset == held
    assert relay.complete == {a for a, _ in chunks}


def test_a_chunk_whose_bytes_do_not_match_its_address_is_refused_before_sending() -> None:
    relay = FakeRelay()
    address, data = blob(1000)
    damaged = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(LocalProtocolError, match=r"do not hash to its address.*nothing"):
        upload(relay, [blob(10, 1), (address, damaged)])
    assert not relay.requests  # a Sequence is checked whole before the first request
    with pytest.raises(LocalProtocolError, match="do not hash"):
        upload(relay, iter([blob(10, 1), (address, damaged)]))
    assert [m.address for m in relay.sent(ChunkBegin)] == [blob(10, 1)[0]]
    assert relay.put_bytes() == 10


@pytest.mark.parametrize(
    ("chunks", "match"),
    [
        ([(b"short", b"x")], "address is 32 bytes"),
        ([(bytes(32), "text")], "sealed chunk is bytes, not str"),
        ([(hashlib.sha256(b"").digest(), b"")], r"1\.\.\d+ bytes, not 0"),
        ([b"not a pair"], "is \\(address, sealed bytes\\)"),
        (iter([(bytes(32),)]), "is \\(address, sealed bytes\\)"),
        (42, "come in an iterable"),
    ],
)
def test_bad_chunks_are_refused_clearly(chunks: object, match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match):
        upload(FakeRelay(), chunks)


@pytest.mark.parametrize("piece", [0, PIECE + 1, True])
def test_a_piece_size_outside_the_wires_bound_is_refused(piece: int) -> None:
    with pytest.raises(LocalProtocolError, match="a piece is"):
        upload(FakeRelay(), [blob(10)], piece=piece)
    with pytest.raises(LocalProtocolError, match="a piece is"):
        ref = sealed(10)[1]
        run(download_chunk(FakeRelay(), ref, piece=piece))


def test_a_damaged_partial_at_the_relay_is_dropped_and_the_chunk_sent_again() -> None:
    relay = FakeRelay()
    address, data = blob(30 * KIB)
    relay.hold(address, b"\xff" * 10 * KIB, len(data))  # another device's damaged bytes
    seen: list[Progress] = []
    report = upload(relay, [(address, data)], piece=10 * KIB, progress=seen.append)
    assert address in relay.complete and relay.data[address] == data
    assert report.bytes_sent == 20 * KIB + 30 * KIB  # resumed, refused, then all of it
    assert report.resumed_bytes == 0
    monotone(seen)


def test_a_mismatch_on_a_fresh_upload_is_a_remote_error_that_says_so() -> None:
    relay = FakeRelay()
    address, data = blob(10 * KIB)
    real_put = relay.put

    def corrupting(put: ChunkPut) -> ChunkStatus:  # the path or the relay changed a byte
        return real_put(ChunkPut(address=put.address, offset=put.offset, data=b"\0" + put.data[1:]))

    relay.put = corrupting  # type: ignore[method-assign]
    with pytest.raises(RemoteError, match="does not hash to its address") as caught:
        upload(relay, [(address, data)])
    assert caught.value.code == ErrorCode.CHUNK_MISMATCH
    assert address not in relay.size  # nothing kept


def test_when_another_device_sends_the_same_piece_the_upload_follows_it() -> None:
    relay = FakeRelay()
    address, data = blob(40 * KIB)

    def other_device(put_address: bytes) -> None:
        held = relay.data[put_address]
        if len(held) == 10 * KIB:  # it sends bytes 10..20 KiB meanwhile
            held += data[10 * KIB : 20 * KIB]

    relay.after_put = other_device
    report = upload(relay, iter([(address, data)]), piece=10 * KIB, window=1)
    assert relay.data[address] == data and address in relay.complete
    offsets = [m.offset for m in relay.sent(ChunkPut)]
    assert offsets == [0, 20 * KIB, 30 * KIB]  # no byte sent twice
    assert report.bytes_sent == 30 * KIB


def test_with_pieces_in_flight_an_upload_that_moved_on_is_followed() -> None:
    relay = FakeRelay()
    address, data = blob(80 * KIB)

    def other_device(put_address: bytes) -> None:
        held = relay.data[put_address]
        if len(held) == 10 * KIB:  # it sends bytes 10..20 KiB meanwhile
            held += data[10 * KIB : 20 * KIB]

    relay.after_put = other_device
    report = upload(relay, iter([(address, data)]), piece=10 * KIB, window=4)
    assert relay.data[address] == data and address in relay.complete
    offsets = [m.offset for m in relay.sent(ChunkPut)]
    assert len(offsets) == len(set(offsets))  # this device never sent a piece twice
    assert report.bytes_sent <= len(data)


def test_a_relay_that_keeps_refusing_pieces_ends_the_upload() -> None:
    relay = FakeRelay()

    def refuse(put: ChunkPut) -> ChunkStatus:
        raise RemoteError(ErrorCode.CHUNK_UNKNOWN, "not at this offset")

    relay.put = refuse  # type: ignore[method-assign]
    with pytest.raises(RemoteError) as caught:
        upload(relay, [blob(100)])
    assert caught.value.code == ErrorCode.CHUNK_UNKNOWN
    assert len(relay.sent(ChunkBegin)) == 4  # then it gives up


def test_other_refusals_keep_their_code() -> None:
    relay = FakeRelay()

    def quota(message: Message) -> Message:
        raise RemoteError(ErrorCode.GROUP_QUOTA_EXCEEDED, "the group's storage is full")

    relay.answer = quota  # type: ignore[method-assign]
    with pytest.raises(RemoteError) as caught:
        upload(relay, iter([blob(100)]))
    assert caught.value.code == ErrorCode.GROUP_QUOTA_EXCEEDED


class Scripted:
    """A relay that answers every request with the next of ``answers``."""

    def __init__(self, *answers: Message) -> None:
        self.answers = list(answers)

    async def request(self, message: Message) -> Message:
        return self.answers.pop(0)


def status(address: bytes, size: int, received: int = 0, complete: bool = False) -> ChunkStatus:
    info = ChunkInfo(address=address, size=size, received=received, complete=complete)
    return ChunkStatus(chunks=[info])


@pytest.mark.parametrize(
    ("answers", "match"),
    [
        ([status(bytes(32), 100)], "answered about chunk 0000"),
        ([status(blob(100)[0], 99)], "as 99 bytes; it has 100"),
        ([status(blob(100)[0], 100, 100)], "has not completed it"),
        ([ChunkStatus(chunks=[])], "not one chunk's status"),
        ([status(blob(100)[0], 100, 50), status(blob(100)[0], 100, 40)], "has 40 of it"),
    ],
)
def test_answers_that_cannot_be_about_the_chunk_are_a_protocol_error(
    answers: list[Message], match: str
) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        upload(Scripted(*answers), iter([blob(100)]))


def test_a_have_answer_about_other_chunks_is_a_protocol_error() -> None:
    chunk = blob(100)
    for answer in (ChunkStatus(chunks=[]), status(bytes(32), 100, complete=True)):
        with pytest.raises(RemoteProtocolError, match="CHUNK_STATUS"):
            upload(Scripted(answer), [chunk])


def test_progress_is_monotone_and_ends_at_the_totals() -> None:
    chunks = [blob(25 * KIB, 1), blob(5 * KIB, 2), blob(12 * KIB, 3)]
    for source in (lambda: chunks, lambda: iter(chunks)):
        relay = FakeRelay()
        relay.hold(*chunks[1], 5 * KIB, complete=True)
        relay.hold(chunks[2][0], chunks[2][1][: 4 * KIB], 12 * KIB)
        seen: list[Progress] = []
        report = upload(relay, source(), piece=8 * KIB, progress=seen.append)
        monotone(seen)
        assert seen[-1] == Progress(42 * KIB, 42 * KIB, 3, 3)
        assert report.resumed_bytes == 4 * KIB
        assert report.bytes_sent == 25 * KIB + 8 * KIB
    assert seen[0].total_bytes == 25 * KIB  # from an iterator, totals grow as chunks come


# -- download, against the fake ---------------------------------------------------------------


def stored(relay: FakeRelay, size: int, seed: int = 0) -> tuple[bytes, ChunkRef]:
    data, ref = sealed(size, seed)
    relay.hold(ref.address, data, len(data), complete=True)
    return data, ref


@pytest.mark.parametrize("window", [1, 3])
def test_a_chunk_is_downloaded_in_ranges_and_checked(window: int) -> None:
    relay = FakeRelay()
    data, ref = stored(relay, 50 * KIB)
    seen: list[Progress] = []
    got = run(download_chunk(relay, ref, piece=16 * KIB, window=window, progress=seen.append))
    assert got == data
    assert len(open_chunk(got, ref, group_id=GROUP)) == 50 * KIB
    gets = relay.sent(ChunkGet)
    assert [(m.offset, m.length) for m in gets] == [
        (0, 16 * KIB), (16 * KIB, 16 * KIB), (32 * KIB, 16 * KIB), (48 * KIB, 2 * KIB + 17),
    ]  # fmt: skip
    monotone(seen)
    assert seen[-1] == Progress(len(data), len(data), 1, 1)


def test_a_cut_download_resumes_from_what_arrived() -> None:
    relay = FakeRelay()
    data, ref = stored(relay, 70 * KIB)
    relay.cut_at = (ChunkGet, 3)
    into = bytearray()
    with pytest.raises(ConnectError):
        run(download_chunk(relay, ref, into=into, piece=16 * KIB, window=1))
    assert into == data[: 32 * KIB]
    relay.cut_at = None
    relay.requests.clear()
    got = run(download_chunk(relay, ref, into=into, have=len(into), piece=16 * KIB))
    assert got == data == into
    assert relay.sent(ChunkGet)[0].offset == 32 * KIB
    # Bytes past ``have`` in ``into`` are not trusted: read again.
    into[20 * KIB :] = b"junk"
    assert run(download_chunk(relay, ref, into=into, have=20 * KIB)) == data


def test_a_relay_serving_bytes_that_do_not_match_the_address_is_caught() -> None:
    relay = FakeRelay()
    _, ref = stored(relay, 20 * KIB)
    relay.served = lambda whole: whole[:100] + bytes([whole[100] ^ 1]) + whole[101:]
    into = bytearray()
    with pytest.raises(DecryptionError, match="do not hash to its address"):
        run(download_chunk(relay, ref, into=into, piece=8 * KIB))
    assert into == b""  # nothing kept to resume from: the wrong byte may be anywhere
    relay.served = lambda whole: whole[:-1]
    with pytest.raises(DecryptionError, match="not the chunk addressed"):
        run(download_chunk(relay, ref))


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (ChunkStatus(chunks=[]), "is not bytes 0"),
        (ChunkData(address=bytes(32), offset=0, data=b"x"), "is not bytes 0"),
        ("offset", "is not bytes 0"),
        ("long", "were asked"),
    ],
)
def test_data_that_is_not_the_range_asked_is_a_protocol_error(
    answer: Message | str, match: str
) -> None:
    data, ref = sealed(100)
    if answer == "offset":
        answer = ChunkData(address=ref.address, offset=1, data=data)
    elif answer == "long":
        answer = ChunkData(address=ref.address, offset=0, data=data + b"x")
    assert not isinstance(answer, str)
    with pytest.raises(RemoteProtocolError, match=match):
        run(download_chunk(Scripted(answer), ref))


def test_a_chunk_the_relay_does_not_hold_is_a_remote_error_1011() -> None:
    with pytest.raises(RemoteError) as caught:
        run(download_chunk(FakeRelay(), sealed(100)[1], window=2))
    assert caught.value.code == ErrorCode.CHUNK_UNKNOWN


def test_bad_download_arguments_are_refused_clearly() -> None:
    relay = FakeRelay()
    data, ref = stored(relay, 100)
    cases: list[tuple[dict[str, object], str]] = [
        ({"have": 5}, "`have` counts"),
        ({"into": bytearray(3), "have": 4}, "`have` counts"),
        ({"into": bytearray(200), "have": len(data) + 1}, "`have` counts"),
        ({"into": b"bytes"}, "into a bytearray"),
        ({"window": 0}, "1 or more"),
    ]
    for kwargs, match in cases:
        with pytest.raises(LocalProtocolError, match=match):
            run(download_chunk(relay, ref, **kwargs))  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="by its ChunkRef"):
        run(download_chunk(relay, ref.address))  # type: ignore[arg-type]
    assert not relay.requests


# -- against the real relay -----------------------------------------------------------------


@pytest.fixture(scope="module")
def relay(module_launcher: RelayLauncher) -> InProcessRelay:
    return module_launcher.start()


class Device:
    """One enrolled device of a fresh group, connecting to the relay as often as asked."""

    def __init__(self, url: str) -> None:
        self.url, self.group, self.identity = url, TestGroup(), DeviceIdentity.generate()
        self.group.enroll(self.identity)
        self.opened: list[RelayConnection] = []

    async def connect(self) -> RelayConnection:
        conn = await RelayConnection.open(
            self.url, self.identity, self.group.group_id, entries=self.group.entries
        )
        self.opened.append(conn)
        return conn

    def chunks(self, *sizes: int) -> list[tuple[bytes, ChunkRef]]:
        key = os.urandom(32)
        return [
            seal_chunk(os.urandom(size), content_key=key, group_id=self.group.group_id)
            for size in sizes
        ]

    async def close(self) -> None:
        for conn in self.opened:
            await conn.close()


def on_device(relay: InProcessRelay, test: Callable[[Device], Awaitable[None]]) -> None:
    async def body() -> None:
        device = Device(relay.url)
        try:
            await test(device)
        finally:
            await device.close()

    run(body())


class Cutting:
    """A connection closed (for real) when the ``at``-th request of a kind is sent."""

    def __init__(self, conn: RelayConnection, kind: type[Message], at: int) -> None:
        self.conn, self.kind, self.left = conn, kind, at

    async def request(self, message: Message) -> Message:
        if isinstance(message, self.kind):
            self.left -= 1
            if self.left == 0:
                await self.conn.close()
        return await self.conn.request(message)


async def have(conn: RelayConnection, address: bytes) -> ChunkInfo:
    answer = await conn.request(ChunkHave(addresses=[address]))
    assert isinstance(answer, ChunkStatus)
    return answer.chunks[0]


def test_real_relay_dedupes_and_serves_what_was_uploaded(relay: InProcessRelay) -> None:
    async def test(device: Device) -> None:
        chunks = device.chunks(150 * KIB, 3 * KIB, 1)
        pairs = [(ref.address, data) for data, ref in chunks]
        conn = await device.connect()
        first = await upload_chunks(conn, pairs, piece=64 * KIB)
        total = sum(len(d) for d, _ in chunks)
        assert (first.bytes_sent, first.total_bytes, first.skipped_chunks) == (total, total, 0)
        again = await upload_chunks(conn, iter(pairs))
        assert (again.bytes_sent, again.skipped_chunks) == (0, 3)
        for data, ref in chunks:
            got = await download_chunk(conn, ref, piece=32 * KIB)
            assert got == data
            assert len(open_chunk(got, ref, group_id=device.group.group_id)) == ref.size

    on_device(relay, test)


@pytest.mark.parametrize(("cut", "window"), [(1, 1), (2, 1), (4, 1), (2, 4), (4, 4)])
def test_real_relay_resumes_an_upload_cut_by_a_closed_connection(
    relay: InProcessRelay, cut: int, window: int
) -> None:
    async def test(device: Device) -> None:
        (data, ref), (small, small_ref) = device.chunks(200 * KIB, 10 * KIB)
        pairs = [(small_ref.address, small), (ref.address, data)]
        conn = await device.connect()
        with pytest.raises(ConnectError):
            await upload_chunks(
                Cutting(conn, ChunkPut, cut + 1), pairs, piece=64 * KIB, window=window
            )
        conn = await device.connect()
        held = (await have(conn, ref.address)).received
        if window == 1:
            assert held == (cut - 1) * 64 * KIB
        else:  # pieces were in flight when it closed: the relay kept some of them
            assert held % (64 * KIB) == 0 and held <= cut * 64 * KIB
        report = await upload_chunks(conn, pairs, piece=64 * KIB)
        assert report.skipped_chunks == 1
        if window == 1:
            assert report.bytes_sent == len(data) - held
            assert report.resumed_bytes == held
        else:
            # Pieces that reached the relay before the close may still be written after
            # it was asked: nothing it held then is sent again, perhaps less.
            assert report.bytes_sent <= len(data) - held
        assert await download_chunk(conn, ref) == data

    on_device(relay, test)


def test_real_relay_resumes_after_a_connection_closed_mid_request(relay: InProcessRelay) -> None:
    """The close races the piece in flight: whatever the relay kept, the next upload sends
    exactly the rest."""

    async def test(device: Device) -> None:
        ((data, ref),) = device.chunks(300 * KIB)
        conn = await device.connect()
        loop = asyncio.get_running_loop()
        closing: list[asyncio.Task[None]] = []

        def cut(progress: Progress) -> None:
            if progress.done_bytes >= 64 * KIB and not closing:
                closing.append(loop.create_task(conn.close()))

        with pytest.raises(ConnectError):
            await upload_chunks(conn, [(ref.address, data)], piece=32 * KIB, progress=cut)
        await closing[0]
        conn = await device.connect()
        held = (await have(conn, ref.address)).received
        assert 64 * KIB <= held < len(data)
        report = await upload_chunks(conn, iter([(ref.address, data)]), piece=32 * KIB)
        # Pieces in flight at the close may have landed since it was asked: never more
        # than the rest is sent.
        assert report.bytes_sent <= len(data) - held
        assert await download_chunk(conn, ref) == data

    on_device(relay, test)


def test_real_relay_refuses_a_mismatch_and_keeps_nothing(relay: InProcessRelay) -> None:
    async def test(device: Device) -> None:
        ((data, ref),) = device.chunks(100 * KIB)
        conn = await device.connect()
        wrong = data[:-1] + bytes([data[-1] ^ 1])
        await conn.request(ChunkBegin(address=ref.address, size=len(data)))
        await conn.request(ChunkPut(address=ref.address, offset=0, data=wrong[: 64 * KIB]))
        with pytest.raises(RemoteError) as caught:
            await conn.request(
                ChunkPut(address=ref.address, offset=64 * KIB, data=wrong[64 * KIB :])
            )
        assert caught.value.code == ErrorCode.CHUNK_MISMATCH
        assert await have(conn, ref.address) == ChunkInfo(address=ref.address)
        with pytest.raises(RemoteError) as caught:
            await download_chunk(conn, ref)
        assert caught.value.code == ErrorCode.CHUNK_UNKNOWN
        # A damaged partial left by another device: resumed, refused, sent again whole.
        await conn.request(ChunkBegin(address=ref.address, size=len(data)))
        damaged = bytes([data[0] ^ 1]) + data[1 : 64 * KIB - 1]
        await conn.request(ChunkPut(address=ref.address, offset=0, data=damaged))
        report = await upload_chunks(conn, [(ref.address, data)], piece=64 * KIB)
        assert report.bytes_sent == (len(data) - 64 * KIB + 1) + len(data)
        assert await download_chunk(conn, ref) == data

    on_device(relay, test)


def test_real_relay_download_in_ranges_resumes_after_a_cut(relay: InProcessRelay) -> None:
    async def test(device: Device) -> None:
        ((data, ref),) = device.chunks(260 * KIB)
        conn = await device.connect()
        await upload_chunks(conn, [(ref.address, data)])
        into = bytearray()
        with pytest.raises(ConnectError):
            await download_chunk(
                Cutting(conn, ChunkGet, 3), ref, into=into, piece=64 * KIB, window=1
            )
        assert into == data[: 128 * KIB]
        conn = await device.connect()
        seen: list[Progress] = []
        got = await download_chunk(
            conn, ref, into=into, have=len(into), piece=64 * KIB, progress=seen.append
        )
        assert got == data
        assert seen[0].done_bytes == 192 * KIB
        monotone(seen)

    on_device(relay, test)
