"""Malformed input: each class ends the offending connection (with ERROR 1000 once there is
a channel to send it on), and the relay goes on serving everyone else."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

import aiohttp
import msgspec
import pytest

from tests.relay.support import (
    RawClient,
    RelayLauncher,
    clients,
    pull_all,
    push,
    queued_events,
    raw_client,
    run,
)
from zerok.crypto import DeviceIdentity, make_hello
from zerok.protocol import (
    CLASSIC,
    HYBRID,
    ClientSession,
    ConnectionClosed,
    Event,
    HandshakeComplete,
    SessionState,
    Variant,
    Welcomed,
)
from zerok.testing import InProcessRelay, TestGroup
from zerok.transport.connection import RelayConnection
from zerok.wire import (
    BlobId,
    DeviceId,
    Devices,
    Error,
    ErrorCode,
    Hello,
    Limits,
    Membership,
    Notify,
    Presence,
    PullResponse,
    Push,
    PushAck,
    Welcome,
    encode,
)


@pytest.fixture(scope="module")
def relay(module_launcher: RelayLauncher) -> InProcessRelay:
    return module_launcher.start()


async def _still_served(healthy: RelayConnection, expected_cursor: int) -> None:
    assert not healthy.closed
    assert queued_events(healthy) == []
    ack = await push(healthy, b"still here")
    assert ack.cursor == expected_cursor
    assert [b.cursor for b in await pull_all(healthy)] == list(range(1, expected_cursor + 1))


# -- before the handshake completes: no channel, so no ERROR -------------------------------


async def _random_first_message(raw: RawClient) -> None:
    await raw.send_noise(os.urandom(16))  # shorter than an ephemeral key


async def _first_message_with_payload(raw: RawClient) -> None:
    await raw.send_noise(os.urandom(32 + 40))  # a key, then a payload version 1 never has


async def _random_third_message(raw: RawClient) -> None:
    group = TestGroup()
    session = ClientSession(DeviceIdentity.generate(), group.group_id, now=0.0, variant=raw.variant)
    [first] = session.data_to_send()
    await raw.send_noise(first)
    msg = await raw.ws.receive(timeout=5)
    assert msg.type.name == "BINARY"  # the relay's message 2
    await raw.send_noise(os.urandom(64))  # fails authentication of the static key


async def _text_before_handshake(raw: RawClient) -> None:
    await raw.ws.send_str("hello?")


PRE_HANDSHAKE: dict[str, tuple[Variant, Callable[[RawClient], Awaitable[None]]]] = {
    "random-first-message": (CLASSIC, _random_first_message),
    "first-message-with-payload": (CLASSIC, _first_message_with_payload),
    "random-first-message-hybrid": (HYBRID, _random_first_message),
    "random-third-message": (CLASSIC, _random_third_message),
    "random-third-message-hybrid": (HYBRID, _random_third_message),
    "text-before-handshake": (CLASSIC, _text_before_handshake),
}


@pytest.mark.parametrize("case", list(PRE_HANDSHAKE))
def test_bad_handshake_input_closes_the_connection(relay: InProcessRelay, case: str) -> None:
    variant, attack = PRE_HANDSHAKE[case]

    async def scenario() -> None:
        keys = TestGroup()
        async with clients(relay.url) as pool:
            healthy = await pool.open(keys)
            async with raw_client(relay.url, variant) as raw:
                await attack(raw)
                assert await raw.raw_until_closed(timeout=5) == []
            await _still_served(healthy, 1)

    run(scenario())


# -- after WELCOME: ERROR 1000, then the connection is closed -------------------------------


async def _text_frame(raw: RawClient) -> None:
    await raw.ws.send_str("not binary")


async def _tampered_noise_message(raw: RawClient) -> None:
    [message] = raw.transport.encrypt_frame(encode(Presence(), request_id=5))
    tampered = bytearray(message)
    tampered[len(tampered) // 2] ^= 0x01
    await raw.send_noise(bytes(tampered))


async def _garbage_msgpack(raw: RawClient) -> None:
    await raw.send_frame(b"\xc1 this is not msgpack \xc1")


async def _not_an_envelope(raw: RawClient) -> None:
    await raw.send_frame(msgspec.msgpack.encode({"type": 16, "body": {}}))


async def _unknown_type(raw: RawClient) -> None:
    await raw.send_frame(msgspec.msgpack.encode([1, 0x77, 5, {}]))


async def _wrong_version(raw: RawClient) -> None:
    frame = msgspec.msgpack.decode(encode(Presence(), request_id=5))
    frame[0] = 1  # a version-1 peer
    await raw.send_frame(msgspec.msgpack.encode(frame))


async def _invalid_body(raw: RawClient) -> None:
    body = {"blob_id": b"abc", "ciphertext": b"x"}  # a blob id is 16 bytes
    await raw.send_frame(msgspec.msgpack.encode([1, 0x10, 5, body]))


async def _bad_fragment_flag(raw: RawClient) -> None:
    await raw.send_fragment(b"\x02" + encode(Presence(), request_id=5))


async def _empty_fragment(raw: RawClient) -> None:
    await raw.send_fragment(b"")


async def _hello_again(raw: RawClient) -> None:
    assert raw.session is not None
    session = raw.session
    hello = make_hello(session.identity, raw.transport.handshake_hash, session.group_id)
    await raw.send(hello, request_id=1)


def _relay_message(name: str) -> Callable[[RawClient], Awaitable[None]]:
    blob_id, device = BlobId(bytes(16)), DeviceId(bytes(32))
    messages = {
        "welcome": Welcome(
            relay_id=bytes(32),
            max_cursor=0,
            pending=0,
            limits=Limits(
                max_blob_size=1,
                max_group_storage=1,
                messages_per_minute=1,
                max_frame_size=1,
                default_ttl=1,
                max_ttl=1,
            ),
            log_seq=0,
            log_hash=bytes(32),
            epoch=0,
        ),
        "push-ack": PushAck(blob_id=blob_id, cursor=1, timestamp=1),
        "pull-response": PullResponse(blobs=[], has_more=False, max_cursor=0),
        "notify": Notify(blob_id=blob_id, cursor=1, sender=device, timestamp=1, size=1),
        "membership": Membership(start=1, entries=[]),
        "devices": Devices(devices=[]),
    }

    async def send(raw: RawClient) -> None:
        await raw.send(messages[name], request_id=5)

    return send


AFTER_WELCOME: dict[str, Callable[[RawClient], Awaitable[None]]] = {
    "text-frame": _text_frame,
    "tampered-noise-message": _tampered_noise_message,
    "undecodable-frame": _garbage_msgpack,
    "not-an-envelope": _not_an_envelope,
    "unknown-message-type": _unknown_type,
    "wrong-protocol-version": _wrong_version,
    "invalid-body": _invalid_body,
    "bad-fragment-flag": _bad_fragment_flag,
    "empty-fragment": _empty_fragment,
    "hello-again": _hello_again,
    **{
        f"relay-type-{name}": _relay_message(name)
        for name in (
            "welcome",
            "push-ack",
            "pull-response",
            "notify",
            "membership",
            "devices",
        )
    },
}


@pytest.mark.parametrize("case", list(AFTER_WELCOME))
def test_bad_input_after_welcome_gets_error_1000_and_close(
    relay: InProcessRelay, case: str
) -> None:
    async def scenario() -> None:
        keys = TestGroup()
        async with clients(relay.url) as pool:
            healthy = await pool.open(keys)
            async with raw_client(relay.url) as raw:
                await raw.open(keys)
                await AFTER_WELCOME[case](raw)
                frames = await raw.frames_until_closed(timeout=5)
                assert len(frames) == 1, frames
                [(request_id, message)] = frames
                assert isinstance(message, Error), message
                assert (message.code, request_id) == (ErrorCode.INVALID_MESSAGE, 0)
                assert message.message
            await _still_served(healthy, 1)

    run(scenario())


def test_error_from_the_client_ends_the_session_without_an_answer(relay: InProcessRelay) -> None:
    async def scenario() -> None:
        keys = TestGroup()
        async with clients(relay.url) as pool:
            healthy = await pool.open(keys)
            async with raw_client(relay.url) as raw:
                await raw.open(keys)
                await raw.send(Error(code=ErrorCode.INVALID_MESSAGE, message="I give up"))
                assert await raw.frames_until_closed(timeout=5) == []
            await _still_served(healthy, 1)

    run(scenario())


def test_oversized_websocket_message_closes_the_connection(relay: InProcessRelay) -> None:
    async def scenario() -> None:
        keys = TestGroup()
        async with clients(relay.url) as pool:
            healthy = await pool.open(keys)
            async with raw_client(relay.url) as raw:
                await raw.open(keys)
                await raw.send_noise(os.urandom(70_000))  # a Noise message is at most 65535
                frames = await raw.frames_until_closed(timeout=5)
                assert all(
                    isinstance(m, Error) and m.code == ErrorCode.INVALID_MESSAGE for _, m in frames
                ), frames
            await _still_served(healthy, 1)

    run(scenario())


# -- between the handshake and WELCOME -------------------------------------------------------


class _PushInsteadOfHello(ClientSession):
    def _on_handshake_complete(self) -> list[Event]:
        self._send_frame(Push(blob_id=BlobId.random(), ciphertext=b"too early"), 1)
        self.state = SessionState.AWAIT_WELCOME
        return []


class _ForgedProof(ClientSession):
    def _on_handshake_complete(self) -> list[Event]:
        hello = Hello(group_id=self.group_id, proof=bytes(64), entries=self.entries)
        self._send_frame(hello, 1)
        self.state = SessionState.AWAIT_WELCOME
        return []


@pytest.mark.parametrize(
    ("session_type", "code"),
    [(_PushInsteadOfHello, ErrorCode.INVALID_MESSAGE), (_ForgedProof, ErrorCode.UNAUTHORIZED)],
    ids=["push-before-hello", "forged-proof"],
)
def test_the_first_frame_must_be_a_valid_hello(
    relay: InProcessRelay, session_type: type[ClientSession], code: ErrorCode
) -> None:
    async def scenario() -> None:
        keys = TestGroup()
        async with clients(relay.url) as pool:
            healthy = await pool.open(keys)
            async with raw_client(relay.url) as raw:
                closed = await raw.handshake(keys, session_type=session_type)
                assert isinstance(closed, ConnectionClosed), closed
                assert (closed.code, closed.by_peer) == (code, True)
                assert await raw.raw_until_closed(timeout=5) == []
            await _still_served(healthy, 1)

    run(scenario())


class _PushRightAfterHello(ClientSession):
    """Sends HELLO and, in the same flight, a PUSH: before WELCOME could have arrived."""

    def _on_handshake_complete(self) -> list[Event]:
        hello = make_hello(self.identity, self.handshake_hash, self.group_id, entries=self.entries)
        self._send_frame(hello, 1)
        self._send_frame(Push(blob_id=BlobId.random(), ciphertext=b"too early"), 2)
        self.state = SessionState.AWAIT_WELCOME
        return []


class _HelloOnly(ClientSession):
    """Sends HELLO and leaves what comes next to the test."""

    def _on_handshake_complete(self) -> list[Event]:
        hello = make_hello(self.identity, self.handshake_hash, self.group_id, entries=self.entries)
        self._send_frame(hello, 1)
        self.state = SessionState.AWAIT_WELCOME
        return []


# The relay decides a HELLO in a task while it goes on reading: a frame that it reads before
# the WELCOME is decided is refused (ERROR 1000, the session ends); one read after it is a
# request like any other. Which of the two a client gets for a frame sent right after HELLO
# depends on timing; each test here makes one of them happen.


def test_frame_between_hello_and_welcome_gets_error_1000(relay: InProcessRelay) -> None:
    """The relay is held still while HELLO and PUSH are sent: it reads both at once, so the
    PUSH arrives before any WELCOME can have been decided."""

    async def scenario() -> None:
        keys = TestGroup()
        async with raw_client(relay.url) as raw:
            result = await raw.handshake(keys, session_type=_PushRightAfterHello, hold=relay.paused)
            assert isinstance(result, ConnectionClosed), result
            assert (result.code, result.by_peer) == (ErrorCode.INVALID_MESSAGE, True)
            assert await raw.raw_until_closed(timeout=5) == []
        async with clients(relay.url) as pool:  # the group was not registered meanwhile
            healthy = await pool.open(keys)
            assert healthy.welcome is not None and healthy.welcome.max_cursor == 0
            await _still_served(healthy, 1)

    run(scenario())


def test_frame_sent_before_welcome_arrived_is_answered_once_welcome_is_decided(
    relay: InProcessRelay,
) -> None:
    """A PUSH sent after HELLO but before the client saw WELCOME, read by the relay after it
    sent WELCOME: a request like any other."""

    async def scenario() -> None:
        keys = TestGroup()
        loop = asyncio.get_running_loop()
        async with raw_client(relay.url) as raw:
            identity = DeviceIdentity.generate()
            keys.enroll(identity)
            session = _HelloOnly(
                identity,
                keys.group_id,
                entries=keys.entries,
                now=loop.time(),
                variant=raw.variant,
                heartbeat_interval=None,
            )
            raw.session = session
            await raw.send_noise(session.data_to_send()[0])
            reply = await raw.ws.receive(timeout=5)  # handshake message 2
            events = session.receive(reply.data, loop.time())
            assert [type(e) for e in events] == [HandshakeComplete], events
            for data in session.data_to_send():  # message 3 and HELLO
                await raw.send_noise(data)
            welcome = await raw.ws.receive(timeout=5)  # WELCOME is on its way: not read yet
            assert welcome.type == aiohttp.WSMsgType.BINARY, welcome
            push_id = raw.new_request_id()
            blob_id = BlobId.random()
            await raw.send(Push(blob_id=blob_id, ciphertext=b"right after HELLO"), push_id)
            [welcomed] = session.receive(welcome.data, loop.time())
            assert isinstance(welcomed, Welcomed), welcomed
            answer = await raw.answer(push_id, timeout=5)
            assert isinstance(answer, PushAck) and answer.blob_id == blob_id, answer
            assert answer.cursor == 1
            assert raw.unsolicited == []

    run(scenario())
