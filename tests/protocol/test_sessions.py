"""State-machine tests of ClientSession and RelaySession, driven against each other.

Every transition of both sides, and every illegal message or call in every state, is
exercised here without a network: see conftest.py for the pumping helpers.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import x25519

from tests.protocol.conftest import (
    Pair,
    closed_event,
    deliver,
    handshake,
    inject,
    make_limits,
    make_welcome,
    new_pair,
    open_pair,
    raw_frame,
    send_raw,
    sent_frames,
    sniff,
    state_of,
)
from zerok.crypto import DeviceIdentity, make_hello, verify_hello
from zerok.crypto.entry import TicketKey
from zerok.errors import FrameTooLargeError, InvalidProofError, ProtocolError
from zerok.protocol import (
    CLASSIC,
    HYBRID,
    ClientSession,
    ConnectionClosed,
    HandshakeComplete,
    HelloReceived,
    MessageReceived,
    RelaySession,
    RequestFailed,
    RequestReceived,
    ResponseReceived,
    SessionState,
    Variant,
    Welcomed,
    catalog,
)
from zerok.protocol.relay import HELLO_FRAME
from zerok.wire import (
    U32_MAX,
    Ack,
    BlobId,
    ChunkBegin,
    ChunkData,
    ChunkGet,
    ChunkHave,
    ChunkInfo,
    ChunkPut,
    ChunkStatus,
    Delete,
    DeviceId,
    DeviceInfo,
    Devices,
    Error,
    ErrorCode,
    GroupId,
    Hello,
    ListDevices,
    Log,
    LogAppend,
    LogAppended,
    LogGet,
    Membership,
    Message,
    Notify,
    Presence,
    Pull,
    PullResponse,
    Push,
    PushAck,
    PushPlatform,
    RegisterPush,
    StoredBlob,
    UnregisterPush,
    Welcome,
)
from zerok.wire.manifest import MAX_CHUNKS
from zerok.wire.messages import MAX_CHUNK_PIECE

BLOB = BlobId(b"\x01" * 16)
DEV = DeviceId(b"\x02" * 32)
HEAD = b"\x04" * 32
ENTRY = b"a signed log entry"  # the sessions carry entries; only the relay's log reads them
OTHER = DeviceIdentity.generate()
TICKET = TicketKey(b"\x05" * 32)

WELCOME = make_welcome()
PUSH_ACK = PushAck(blob_id=BLOB, cursor=1, timestamp=5)
PULL_RESPONSE = PullResponse(
    blobs=[StoredBlob(blob_id=BLOB, cursor=1, sender=DEV, ciphertext=b"c", timestamp=5)],
    has_more=False,
    max_cursor=1,
)
NOTIFY = Notify(blob_id=BLOB, cursor=1, sender=DEV, timestamp=5, size=1)
MEMBERSHIP = Membership(start=4, entries=[ENTRY])  # e.g. a Revoke entry another device appended
DEVICES = Devices(devices=[DeviceInfo(device_id=DEV, name="phone")])
LOG = Log(start=1, entries=[ENTRY, ENTRY], head_seq=2)
LOG_APPENDED = LogAppended(head_seq=5, head_hash=HEAD)
ADDR = b"\x06" * 32  # a chunk's address
ADDR_2 = b"\x07" * 32
CHUNK_STATUS = ChunkStatus(
    chunks=[ChunkInfo(address=ADDR, size=100, received=40), ChunkInfo(address=ADDR_2)]
)
CHUNK_DATA = ChunkData(address=ADDR, offset=40, data=b"chunk bytes")

#: One instance of every message a client may send once OPEN.
CLIENT_REQUESTS: list[Message] = [
    Push(blob_id=BLOB, ciphertext=b"sealed", epoch=3, ttl=60, repair=True, chunks=[ADDR]),
    Pull(after=3, limit=10),
    Presence(online=False),
    Ack(cursor=7),
    Delete(blob_id=BLOB, force=True),
    ListDevices(),
    LogGet(start=2, limit=10),
    LogAppend(entries=[ENTRY]),
    RegisterPush(token="tok", platform=PushPlatform.FCM, app_id="app"),
    UnregisterPush(reason="bye"),
    ChunkHave(addresses=[ADDR, ADDR_2]),
    ChunkBegin(address=ADDR, size=100),
    ChunkPut(address=ADDR, offset=40, data=b"piece"),
    ChunkGet(address=ADDR, offset=40, length=60),
]

#: One instance of every relay→client type.
RELAY_TO_CLIENT: list[Message] = [
    WELCOME,
    PUSH_ACK,
    PULL_RESPONSE,
    NOTIFY,
    MEMBERSHIP,
    DEVICES,
    LOG,
    LOG_APPENDED,
    CHUNK_STATUS,
    CHUNK_DATA,
]

#: Each request with the answer that the relay gives to it.
REQUEST_RESPONSES: list[tuple[Message, Message]] = [
    (Push(blob_id=BLOB, ciphertext=b"sealed"), PushAck(blob_id=BLOB, cursor=4, timestamp=9)),
    (Pull(after=0), PullResponse(blobs=[], has_more=False, max_cursor=0)),
    (ListDevices(), Devices(devices=[DeviceInfo(device_id=DEV)])),
    (LogGet(start=1), LOG),
    (LogGet(start=9), Log(start=9, entries=[], head_seq=8)),
    (LogAppend(entries=[ENTRY, ENTRY]), LOG_APPENDED),
    (Delete(blob_id=BLOB), Delete(blob_id=BLOB)),
    (Ack(cursor=3), Ack(cursor=3)),
    (Presence(), Presence()),
    (
        RegisterPush(token="t", platform=PushPlatform.APNS),
        RegisterPush(token="t", platform=PushPlatform.APNS),
    ),
    (UnregisterPush(), UnregisterPush()),
    (ChunkHave(addresses=[ADDR, ADDR_2]), CHUNK_STATUS),
    (
        ChunkBegin(address=ADDR, size=100),
        ChunkStatus(chunks=[ChunkInfo(address=ADDR, size=100)]),
    ),
    (
        ChunkPut(address=ADDR, offset=0, data=bytes(100)),
        ChunkStatus(chunks=[ChunkInfo(address=ADDR, size=100, received=100, complete=True)]),
    ),
    (ChunkGet(address=ADDR), ChunkData(address=ADDR, offset=0, data=bytes(100))),
    (ChunkGet(address=ADDR, offset=100), ChunkData(address=ADDR, offset=100, data=b"")),
]


def _name(message: object) -> str:
    return type(message).__name__


def test_the_message_lists_cover_the_protocol() -> None:
    """Every test parametrized by these lists sees every message type of protocol 2."""
    assert {type(m) for m in CLIENT_REQUESTS} == catalog.CLIENT_REQUESTS
    relay_types = {s.message for s in catalog.CATALOG if s.sender is catalog.Sender.RELAY}
    assert {type(m) for m in RELAY_TO_CLIENT} == relay_types
    assert {type(request) for request, _ in REQUEST_RESPONSES} == catalog.CLIENT_REQUESTS
    assert {type(m) for m in UNSOLICITED_INVALID} | {Notify, Membership} == (
        relay_types | catalog.CLIENT_REQUESTS
    )
    assert {Notify, Membership, Error} == catalog.UNSOLICITED


def _errors_sent(pair: Pair) -> list[tuple[int, int]]:
    """(request id, code) of every frame the relay queued, which must all be ERRORs."""
    out: list[tuple[int, int]] = []
    for frame in sent_frames(pair.relay, pair.client):
        assert isinstance(frame.message, Error), frame
        out.append((frame.request_id, frame.message.code))
    return out


# =========================================================================================
# The happy path, both variants
# =========================================================================================


def test_full_handshake_hello_welcome(variant: Variant) -> None:
    p = new_pair(
        variant,
        now=1.0,
        client_kwargs={"device_name": "laptop", "last_cursor": 42, "client": "zerok/test"},
    )
    assert state_of(p.client) is SessionState.HANDSHAKE
    assert state_of(p.relay) is SessionState.HANDSHAKE

    # msg1: the relay answers with msg2 and stays in HANDSHAKE.
    assert p.to_relay(1.0) == []
    assert state_of(p.relay) is SessionState.HANDSHAKE
    assert len(p.relay._outgoing) == 1

    # msg2: the client completes the handshake and sends msg3 and HELLO.
    events = p.to_client(1.0)
    assert len(events) == 1
    assert isinstance(events[0], HandshakeComplete)
    assert events[0].peer_static == p.relay_public
    assert state_of(p.client) is SessionState.AWAIT_WELCOME
    msg3, hello_msg = p.client.data_to_send()

    # msg3: the relay completes the handshake; the peer's static key is its device id.
    events = p.relay.receive(msg3, 1.0)
    assert events == [HandshakeComplete(bytes(p.identity.device_id), p.client.handshake_hash)]
    assert state_of(p.relay) is SessionState.AWAIT_HELLO
    assert p.relay.device_id == p.identity.device_id
    assert p.relay.peer_static == bytes(p.identity.device_id)
    assert p.relay.handshake_hash == p.client.handshake_hash
    assert p.relay.data_to_send() == []

    # HELLO: handed to the relay for its decision, with what checking its proof takes (the
    # device's key is in the group's log, which only the relay's service holds).
    events = p.relay.receive(hello_msg, 1.0)
    assert len(events) == 1
    received = events[0]
    assert isinstance(received, HelloReceived)
    assert received.device_id == p.identity.device_id
    assert received.handshake_hash == p.relay.handshake_hash == p.client.handshake_hash
    hello = received.hello
    assert hello.group_id == p.group_id
    assert hello.signer == b""  # its own enrolled key
    assert hello.entries == []
    assert hello.device_name == "laptop"
    assert hello.last_cursor == 42
    assert hello.client == "zerok/test"
    verify_hello(hello, received.handshake_hash, received.device_id, p.identity.sign_public)
    assert p.relay.hello == hello
    assert state_of(p.relay) is SessionState.HELLO_PENDING
    assert p.relay.data_to_send() == []

    # accept(): WELCOME reaches the client, which opens.
    welcome = make_welcome(
        p.relay_public, max_cursor=17, pending=3, log_seq=6, epoch=2, server_time=1234
    )
    p.relay.accept(welcome)
    assert state_of(p.relay) is SessionState.OPEN
    events = p.to_client(1.0)
    assert events == [Welcomed(welcome, p.relay_public)]
    assert state_of(p.client) is SessionState.OPEN
    assert p.client.welcome == welcome
    assert p.client.peer_static == p.relay_public
    assert p.client.data_to_send() == []


def test_welcome_naming_another_relay_closes() -> None:
    """WELCOME's relay id must be the key the handshake authenticated."""
    p = new_pair(CLASSIC)
    handshake(p)
    p.relay.accept(make_welcome(bytes(32)))
    closed = closed_event(p.to_client())
    assert closed.code == ErrorCode.INVALID_MESSAGE
    assert "another relay" in closed.reason
    assert state_of(p.client) is SessionState.CLOSED


def test_hello_proof_verifies_against_handshake_hash(variant: Variant) -> None:
    p = new_pair(variant)
    handshake(p)
    received = p.relay_events[-1]
    assert isinstance(received, HelloReceived)
    sign_key = p.identity.sign_public
    verify_hello(received.hello, received.handshake_hash, p.identity.device_id, sign_key)
    # ... and only for this connection, this device and its key.
    with pytest.raises(InvalidProofError):
        verify_hello(received.hello, os.urandom(32), p.identity.device_id, sign_key)
    with pytest.raises(InvalidProofError):
        verify_hello(received.hello, received.handshake_hash, DEV, sign_key)
    with pytest.raises(InvalidProofError):
        verify_hello(
            received.hello, received.handshake_hash, p.identity.device_id, OTHER.sign_public
        )


def test_hello_carries_entries_and_a_ticket_signer(variant: Variant) -> None:
    """A device enrolling with an invite: its HELLO brings log entries and is signed by
    the ticket; the session passes both on for the relay to judge."""
    entries = [ENTRY, b"its enrollment"]
    p = new_pair(
        variant, client_kwargs={"entries": entries, "signer": (TICKET.public, TICKET.sign)}
    )
    handshake(p)
    received = p.relay_events[-1]
    assert isinstance(received, HelloReceived)
    assert received.hello.entries == entries
    assert received.hello.signer == TICKET.public
    verify_hello(received.hello, received.handshake_hash, received.device_id, TICKET.public)
    with pytest.raises(InvalidProofError):
        verify_hello(
            received.hello, received.handshake_hash, received.device_id, p.identity.sign_public
        )


def test_a_provisional_welcome_opens_the_session() -> None:
    """Which requests a provisional session may make is the relay's to enforce; the
    client opens and learns that it is provisional, and the relay's log head."""
    welcome = make_welcome(provisional=True, log_seq=3, log_hash=HEAD, epoch=1)
    p = open_pair(CLASSIC, welcome=welcome)
    assert p.client.welcome is not None
    assert p.client.welcome.provisional
    assert (p.client.welcome.log_seq, p.client.welcome.log_hash) == (3, HEAD)
    assert p.client.welcome.epoch == 1
    rid = p.client.send_request(LogGet(start=1), 0.0)
    assert p.to_relay() == [RequestReceived(rid, LogGet(start=1))]


def test_requests_flow_both_variants(any_pair: Pair) -> None:
    p = any_pair
    rid = p.client.send_request(Pull(after=5), 2.0)
    assert p.to_relay(2.0) == [RequestReceived(rid, Pull(after=5))]
    p.relay.send(PullResponse(blobs=[], has_more=False, max_cursor=5), rid)
    assert p.to_client(2.0) == [
        ResponseReceived(rid, PullResponse(blobs=[], has_more=False, max_cursor=5))
    ]
    assert p.client.pending_requests == 0


def test_handshake_hash_and_peer_static_need_a_complete_handshake(variant: Variant) -> None:
    p = new_pair(variant)
    for session in (p.client, p.relay):
        with pytest.raises(ProtocolError):
            _ = session.handshake_hash
        with pytest.raises(ProtocolError):
            _ = session.peer_static


# =========================================================================================
# Relay: HELLO, accept, reject
# =========================================================================================


@pytest.mark.parametrize(
    "code",
    [
        ErrorCode.UNKNOWN_GROUP,
        ErrorCode.UNAUTHORIZED,
        ErrorCode.DEVICE_REVOKED,
        ErrorCode.RELAY_OVERLOADED,
        # Not fatal in OPEN, but a refused HELLO always closes:
        ErrorCode.RATE_LIMITED,
        ErrorCode.LOG_REJECTED,
        ErrorCode.LOG_OUTDATED,
        ErrorCode.TICKET_USED,
        ErrorCode.TICKET_EXPIRED,
        ErrorCode.TICKET_CANCELLED,
    ],
)
def test_reject_closes_and_the_code_reaches_the_client(variant: Variant, code: ErrorCode) -> None:
    p = new_pair(variant)
    handshake(p)
    events = p.relay.reject(code, "go away")
    assert events == [ConnectionClosed(int(code), "go away", False)]
    assert state_of(p.relay) is SessionState.CLOSED
    assert p.relay.close_code == code
    events = p.to_client()
    assert events == [ConnectionClosed(int(code), "go away", True)]
    assert state_of(p.client) is SessionState.CLOSED
    assert p.client.data_to_send() == []


def _flip(data: bytes, index: int = 0) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def _good_hello(s: ClientSession) -> Hello:
    return make_hello(s.identity, s.handshake_hash, s.group_id, device_name="d")


def _relay_key(hello: Hello, identity: DeviceIdentity) -> bytes:
    """The key the relay's service checks a proof with: HELLO's signer if it names one
    (a ticket or the recovery key), else the device's key from the group's log."""
    return bytes(hello.signer) or identity.sign_public


BAD_HELLOS: dict[str, Callable[[ClientSession], Hello]] = {
    "flipped-proof": lambda s: msgspec.structs.replace(
        _good_hello(s), proof=_flip(_good_hello(s).proof)
    ),
    "other-connection": lambda s: make_hello(s.identity, os.urandom(32), s.group_id),
    "other-device": lambda s: make_hello(OTHER, s.handshake_hash, s.group_id),
    "name-changed-after-signing": lambda s: msgspec.structs.replace(
        _good_hello(s), device_name="evil"
    ),
    "cursor-changed-after-signing": lambda s: msgspec.structs.replace(
        _good_hello(s), last_cursor=99
    ),
    "group-changed-after-signing": lambda s: msgspec.structs.replace(
        _good_hello(s), group_id=GroupId.random()
    ),
    "entries-changed-after-signing": lambda s: msgspec.structs.replace(
        _good_hello(s), entries=[ENTRY]
    ),
    "signed-by-another-key": lambda s: msgspec.structs.replace(
        make_hello(
            s.identity, s.handshake_hash, s.group_id, signer=(OTHER.sign_public, OTHER.sign)
        ),
        signer=b"",
    ),
    "signer-swapped-for-a-ticket": lambda s: msgspec.structs.replace(
        _good_hello(s), signer=TICKET.public
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_HELLOS))
def test_bad_proof_is_handed_on_and_refused_by_the_relay(kind: str) -> None:
    """The session cannot check a proof (the key is in the group's log): it hands every
    HELLO on with the handshake hash, with which the relay's check fails, and the relay's
    refusal (ERROR 1002) closes both sides."""
    make_bad = BAD_HELLOS[kind]
    p = new_pair(CLASSIC, first_frame=lambda s: (make_bad(s), 1))
    handshake(p)
    [received] = p.relay_events[1:]
    assert isinstance(received, HelloReceived)
    assert received.handshake_hash == p.relay.handshake_hash
    assert received.device_id == p.identity.device_id
    assert state_of(p.relay) is SessionState.HELLO_PENDING
    with pytest.raises(InvalidProofError):
        verify_hello(
            received.hello,
            received.handshake_hash,
            received.device_id,
            _relay_key(received.hello, p.identity),
        )
    closed = closed_event(p.relay.reject(ErrorCode.UNAUTHORIZED, "proof does not verify"))
    assert closed.code == ErrorCode.UNAUTHORIZED
    assert not closed.by_peer
    assert state_of(p.relay) is SessionState.CLOSED
    assert p.to_client() == [ConnectionClosed(1002, closed.reason, True)]


def test_good_proof_by_the_same_route_verifies() -> None:
    """The counterpart of the bad proofs: the real HELLO passes the relay's check."""
    p = new_pair(CLASSIC, first_frame=lambda s: (_good_hello(s), 1))
    handshake(p)
    received = p.relay_events[-1]
    assert isinstance(received, HelloReceived)
    key = _relay_key(received.hello, p.identity)
    verify_hello(received.hello, received.handshake_hash, received.device_id, key)


def test_bad_proof_is_refused_hybrid() -> None:
    p = new_pair(
        HYBRID, first_frame=lambda s: (make_hello(s.identity, os.urandom(32), s.group_id), 1)
    )
    handshake(p)
    received = p.relay_events[-1]
    assert isinstance(received, HelloReceived)
    with pytest.raises(InvalidProofError):
        verify_hello(
            received.hello, received.handshake_hash, received.device_id, p.identity.sign_public
        )
    assert closed_event(p.relay.reject(ErrorCode.UNAUTHORIZED, "no")).code == 1002
    assert p.to_client()[-1] == ConnectionClosed(1002, p.relay.close_reason, True)


def test_hello_with_any_request_id_is_answered_with_that_id() -> None:
    p = new_pair(CLASSIC, first_frame=lambda s: (_good_hello(s), 77))
    handshake(p)
    assert state_of(p.relay) is SessionState.HELLO_PENDING
    p.relay.accept(make_welcome(p.relay_public))
    frames = sent_frames(p.relay, p.client)
    assert [(f.request_id, type(f.message)) for f in frames] == [(77, Welcome)]


NOT_HELLO: list[Message] = [*CLIENT_REQUESTS, *RELAY_TO_CLIENT]


@pytest.mark.parametrize("message", NOT_HELLO, ids=_name)
def test_anything_but_hello_first_is_invalid(message: Message) -> None:
    p = new_pair(CLASSIC, first_frame=lambda s: (message, 1))
    handshake(p)
    closed = closed_event(p.relay_events)
    assert closed == ConnectionClosed(1000, closed.reason, False)
    assert state_of(p.relay) is SessionState.CLOSED
    assert p.to_client() == [ConnectionClosed(1000, closed.reason, True)]


def test_error_first_closes_by_peer_without_answer() -> None:
    p = new_pair(CLASSIC, first_frame=lambda s: (Error(code=3000, message="bye"), 0))
    handshake(p)
    assert p.relay_events[-1] == ConnectionClosed(3000, "bye", True)
    assert state_of(p.relay) is SessionState.CLOSED
    assert p.relay.data_to_send() == []


def _relay_hello_pending(variant: Variant = CLASSIC) -> Pair:
    p = new_pair(variant)
    handshake(p)
    assert state_of(p.relay) is SessionState.HELLO_PENDING
    return p


@pytest.mark.parametrize(
    "message", [Pull(), Presence(), Push(blob_id=BLOB, ciphertext=b"x"), make_welcome()], ids=_name
)
def test_any_frame_while_hello_pending_is_invalid(message: Message) -> None:
    p = _relay_hello_pending()
    inject(p.client, message, 2)
    events = p.to_relay()
    assert events == [ConnectionClosed(1000, p.relay.close_reason, False)]
    assert state_of(p.relay) is SessionState.CLOSED
    with pytest.raises(ProtocolError):
        p.relay.accept(make_welcome())
    assert p.to_client() == [ConnectionClosed(1000, p.relay.close_reason, True)]


def test_second_hello_while_hello_pending_is_invalid() -> None:
    p = _relay_hello_pending()
    inject(p.client, _good_hello(p.client), 1)
    assert p.to_relay() == [ConnectionClosed(1000, p.relay.close_reason, False)]


def test_error_while_hello_pending_closes_by_peer() -> None:
    p = _relay_hello_pending()
    p.client.close(ErrorCode.INVALID_MESSAGE, "changed my mind")
    assert p.to_relay() == [ConnectionClosed(1000, "changed my mind", True)]
    assert p.relay.data_to_send() == []


# =========================================================================================
# Relay: the OPEN state
# =========================================================================================


def test_second_hello_in_open_is_invalid(pair: Pair) -> None:
    hello = make_hello(pair.identity, pair.client.handshake_hash, pair.group_id)
    inject(pair.client, hello, 9)
    events = pair.to_relay()
    assert events == [ConnectionClosed(1000, pair.relay.close_reason, False)]
    assert state_of(pair.relay) is SessionState.CLOSED
    assert pair.to_client() == [ConnectionClosed(1000, pair.relay.close_reason, True)]


@pytest.mark.parametrize("message", RELAY_TO_CLIENT, ids=_name)
@pytest.mark.parametrize("request_id", [0, 5])
def test_relay_types_from_a_client_are_invalid(
    pair: Pair, message: Message, request_id: int
) -> None:
    inject(pair.client, message, request_id)
    events = pair.to_relay()
    assert events == [ConnectionClosed(1000, pair.relay.close_reason, False)]
    assert state_of(pair.relay) is SessionState.CLOSED
    assert _errors_sent(pair) == [(0, 1000)]


@pytest.mark.parametrize("message", CLIENT_REQUESTS, ids=_name)
@pytest.mark.parametrize("request_id", [0, 1, 2, 123456, U32_MAX])
def test_every_request_type_is_received_with_its_id(
    pair: Pair, message: Message, request_id: int
) -> None:
    inject(pair.client, message, request_id)
    assert pair.to_relay() == [RequestReceived(request_id, message)]
    assert state_of(pair.relay) is SessionState.OPEN
    assert pair.relay.data_to_send() == []


@pytest.mark.parametrize("code", [1000, 2000, 3001, 4242])
def test_client_error_in_open_closes_by_peer(pair: Pair, code: int) -> None:
    inject(pair.client, Error(code=code, message="bye"), 0)
    assert pair.to_relay() == [ConnectionClosed(code, "bye", True)]
    assert state_of(pair.relay) is SessionState.CLOSED
    assert pair.relay.close_code == code
    assert pair.relay.data_to_send() == []


def test_client_close_reaches_relay(pair: Pair) -> None:
    events = pair.client.close(ErrorCode.RELAY_SHUTTING_DOWN, "app quits")
    assert events == [ConnectionClosed(3001, "app quits", False)]
    assert pair.to_relay() == [ConnectionClosed(3001, "app quits", True)]


def test_close_without_code_sends_nothing(pair: Pair) -> None:
    assert pair.relay.close() == [ConnectionClosed(None, "", False)]
    assert pair.relay.data_to_send() == []
    assert pair.relay.close() == []  # closing twice is a no-op


# -- wrong-state calls on the relay --------------------------------------------------------


def _relay_at(stage: str, **relay_kwargs: float) -> Pair:
    """A classic pair whose relay is at ``stage``; the client's pending output is kept."""
    p = new_pair(CLASSIC, relay_kwargs=dict(relay_kwargs))
    if stage == "fresh":
        return p
    p.to_relay()
    if stage == "after-msg1":
        return p
    p.to_client()
    msg3, hello = p.client.data_to_send()
    p.relay_events += p.relay.receive(msg3, 0.0)
    if stage == "await-hello":
        p.client._outgoing.append(hello)
        assert state_of(p.relay) is SessionState.AWAIT_HELLO
        return p
    p.relay_events += p.relay.receive(hello, 0.0)
    if stage == "hello-pending":
        assert state_of(p.relay) is SessionState.HELLO_PENDING
        return p
    p.relay.accept(make_welcome(p.relay_public))
    p.to_client()
    if stage == "open":
        return p
    assert stage == "closed"
    p.relay.close()
    p.relay.data_to_send()
    return p


PRE_OPEN_RELAY = ["fresh", "after-msg1", "await-hello", "hello-pending"]


@pytest.mark.parametrize("stage", ["fresh", "after-msg1", "await-hello", "open", "closed"])
def test_accept_and_reject_need_a_pending_hello(stage: str) -> None:
    p = _relay_at(stage)
    before = p.relay.state
    p.relay.data_to_send()
    with pytest.raises(ProtocolError):
        p.relay.accept(make_welcome(p.relay_public))
    with pytest.raises(ProtocolError):
        p.relay.reject(ErrorCode.UNAUTHORIZED, "no")
    assert state_of(p.relay) is before
    assert p.relay.data_to_send() == []


@pytest.mark.parametrize("stage", [*PRE_OPEN_RELAY, "closed"])
def test_relay_send_needs_open(stage: str) -> None:
    p = _relay_at(stage)
    before = p.relay.state
    p.relay.data_to_send()
    with pytest.raises(ProtocolError):
        p.relay.send(Notify(blob_id=BLOB, cursor=1, sender=DEV, timestamp=0, size=0))
    if stage == "closed":  # once closed, an error has no one to go to: a no-op
        assert p.relay.error(ErrorCode.RATE_LIMITED, "slow down") == []
    else:
        with pytest.raises(ProtocolError):
            p.relay.error(ErrorCode.RATE_LIMITED, "slow down")
    assert state_of(p.relay) is before
    assert p.relay.data_to_send() == []


#: Types that only a client sends (WELCOME goes out through accept(), never send()).
NOT_FROM_RELAY_SEND: list[Message] = [
    make_welcome(),
    Push(blob_id=BLOB, ciphertext=b"sealed"),
    Pull(),
    ListDevices(),
    LogGet(),
    LogAppend(entries=[ENTRY]),
    Hello(group_id=GroupId.random(), proof=bytes(64)),
    ChunkHave(addresses=[ADDR]),
    ChunkBegin(address=ADDR, size=1),
    ChunkPut(address=ADDR, offset=0, data=b"x"),
    ChunkGet(address=ADDR),
]


@pytest.mark.parametrize("message", NOT_FROM_RELAY_SEND, ids=_name)
def test_relay_cannot_send_client_only_types(pair: Pair, message: Message) -> None:
    with pytest.raises(ProtocolError):
        pair.relay.send(message, 3)
    assert pair.relay.data_to_send() == []
    assert state_of(pair.relay) is SessionState.OPEN


@pytest.mark.parametrize(
    "code",
    [
        ErrorCode.NOT_BLOB_OWNER,
        ErrorCode.RATE_LIMITED,
        ErrorCode.BLOB_TOO_LARGE,
        ErrorCode.GROUP_QUOTA_EXCEEDED,
        ErrorCode.INVALID_PUSH_TOKEN,
        ErrorCode.EPOCH_STALE,  # the client re-seals under the new epoch and retries
        ErrorCode.LOG_REJECTED,
        ErrorCode.LOG_OUTDATED,
        ErrorCode.TICKET_USED,
        ErrorCode.TICKET_EXPIRED,
        ErrorCode.TICKET_CANCELLED,
        ErrorCode.CHUNK_MISMATCH,  # the chunk is dropped; the client uploads it again
        ErrorCode.CHUNK_UNKNOWN,
        ErrorCode.STORAGE_FULL,
    ],
)
def test_relay_non_fatal_error_keeps_open(pair: Pair, code: ErrorCode) -> None:
    rid = pair.client.send_request(Push(blob_id=BLOB, ciphertext=b"x"), 0.0)
    pair.to_relay()
    assert pair.relay.error(code, "not now", rid) == []
    assert state_of(pair.relay) is SessionState.OPEN
    assert pair.to_client() == [RequestFailed(rid, int(code), "not now")]
    assert state_of(pair.client) is SessionState.OPEN
    assert pair.client.pending_requests == 0


@pytest.mark.parametrize(
    "code",
    [
        ErrorCode.INVALID_MESSAGE,
        ErrorCode.UNKNOWN_GROUP,
        ErrorCode.UNAUTHORIZED,
        ErrorCode.DEVICE_REVOKED,
        ErrorCode.RELAY_OVERLOADED,
        ErrorCode.RELAY_SHUTTING_DOWN,
    ],
)
def test_relay_fatal_error_closes(pair: Pair, code: ErrorCode) -> None:
    events = pair.relay.error(code, "the end")
    assert events == [ConnectionClosed(int(code), "the end", False)]
    assert state_of(pair.relay) is SessionState.CLOSED
    assert pair.to_client() == [ConnectionClosed(int(code), "the end", True)]
    assert state_of(pair.client) is SessionState.CLOSED


def test_relay_fatal_error_after_close_sends_nothing(pair: Pair) -> None:
    """A closed session says nothing more: error() must not queue a frame or close again."""
    pair.relay.close(ErrorCode.RELAY_SHUTTING_DOWN, "shutdown")
    pair.relay.data_to_send()
    try:
        events = pair.relay.error(ErrorCode.INVALID_MESSAGE, "late")
    except ProtocolError:
        events = []
    assert events == []
    assert pair.relay.data_to_send() == []
    assert pair.relay.close_code == ErrorCode.RELAY_SHUTTING_DOWN


# -- deadlines -----------------------------------------------------------------------------


@pytest.mark.parametrize("stage", PRE_OPEN_RELAY)
def test_relay_handshake_deadline(stage: str) -> None:
    p = _relay_at(stage, handshake_timeout=5.0)
    p.relay.data_to_send()
    assert p.relay.next_deadline() == 5.0
    assert p.relay.check_timeouts(4.999) == []
    assert state_of(p.relay) is not SessionState.CLOSED
    events = p.relay.check_timeouts(5.0)
    assert events == [ConnectionClosed(None, p.relay.close_reason, False)]
    assert state_of(p.relay) is SessionState.CLOSED
    assert p.relay.data_to_send() == []
    assert p.relay.next_deadline() is None
    assert p.relay.check_timeouts(100.0) == []


def test_relay_handshake_deadline_long_after() -> None:
    relay = RelaySession(x25519.X25519PrivateKey.generate(), now=50.0, variant=CLASSIC)
    assert relay.next_deadline() == 60.0  # the default timeout is 10 s
    assert closed_event(relay.check_timeouts(1e9)).code is None
    assert relay.closed


def test_relay_deadline_is_none_in_open_without_idle_timeout(pair: Pair) -> None:
    assert pair.relay.next_deadline() is None
    assert pair.relay.check_timeouts(1e9) == []
    assert state_of(pair.relay) is SessionState.OPEN


def test_relay_idle_timeout() -> None:
    p = open_pair(CLASSIC, now=0.0, relay_kwargs={"idle_timeout": 60.0})
    assert p.relay.next_deadline() == 60.0
    assert p.relay.check_timeouts(59.999) == []
    # Activity pushes the deadline back.
    p.client.send_request(Pull(), 30.0)
    p.to_relay(30.0)
    assert p.relay.next_deadline() == 90.0
    assert p.relay.check_timeouts(60.0) == []
    assert p.relay.check_timeouts(89.999) == []
    assert state_of(p.relay) is SessionState.OPEN
    events = p.relay.check_timeouts(90.0)
    assert events == [ConnectionClosed(None, p.relay.close_reason, False)]
    assert state_of(p.relay) is SessionState.CLOSED
    assert p.relay.data_to_send() == []
    assert p.relay.next_deadline() is None


def test_relay_idle_timeout_does_not_replace_the_handshake_deadline() -> None:
    p = _relay_at("hello-pending", handshake_timeout=5.0, idle_timeout=60.0)
    assert p.relay.next_deadline() == 5.0
    assert p.relay.check_timeouts(5.0)[-1] == ConnectionClosed(None, p.relay.close_reason, False)


# -- after closing, and bad Noise messages -------------------------------------------------


@pytest.mark.parametrize("stage", ["after-msg1", "await-hello", "hello-pending", "open"])
def test_relay_receive_after_close_is_ignored(stage: str) -> None:
    p = _relay_at(stage)
    # Give the client something legitimate to say next ...
    if stage == "after-msg1":
        deliver(p.client, p.relay.data_to_send())  # msg2 -> msg3 and HELLO
    elif stage == "hello-pending":
        inject(p.client, Pull(), 2)
    elif stage == "open":
        p.client.send_request(Pull(), 0.0)
    assert p.client._outgoing
    # ... which arrives after the relay closed.
    p.relay.close(ErrorCode.RELAY_SHUTTING_DOWN, "bye")
    p.relay.data_to_send()
    last_received = p.relay.last_received
    assert p.to_relay(7.0) == []
    assert p.relay.data_to_send() == []
    assert state_of(p.relay) is SessionState.CLOSED
    assert p.relay.close_code == 3001
    assert p.relay.last_received == last_received


def test_relay_receive_garbage_after_close_is_ignored(pair: Pair) -> None:
    pair.relay.close()
    assert pair.relay.receive(os.urandom(100), 1.0) == []
    assert pair.relay.receive(b"", 1.0) == []
    assert pair.relay.data_to_send() == []


@pytest.mark.parametrize(
    ("variant_", "garbage"),
    [
        (CLASSIC, b""),
        (CLASSIC, b"\x01" * 5),
        (CLASSIC, b"\x00" * 31),
        (CLASSIC, b"\x00" * 32),  # the all-zero (low-order) X25519 key: ee fails
        (CLASSIC, b"\x00" * 70000),  # longer than any Noise message
        (HYBRID, b""),
        (HYBRID, os.urandom(32)),  # no e1
        (HYBRID, os.urandom(32 + 1184)),  # e1 that is not an ML-KEM-768 key
    ],
    ids=[
        "classic-empty",
        "classic-5",
        "classic-31",
        "classic-zero-key",
        "classic-huge",
        "hybrid-empty",
        "hybrid-no-e1",
        "hybrid-bad-kem",
    ],
)
def test_relay_garbage_handshake_closes_silently(variant_: Variant, garbage: bytes) -> None:
    relay = RelaySession(x25519.X25519PrivateKey.generate(), now=0.0, variant=variant_)
    events = relay.receive(garbage, 0.0)
    assert events == [ConnectionClosed(None, relay.close_reason, False)]
    assert state_of(relay) is SessionState.CLOSED
    assert relay.data_to_send() == []


@pytest.mark.parametrize("size", [0, 10, 32, 96, 200, 3000])
def test_client_garbage_handshake_closes_silently(variant: Variant, size: int) -> None:
    p = new_pair(variant)
    p.client.data_to_send()
    events = p.client.receive(os.urandom(size), 0.0)
    assert events == [ConnectionClosed(None, p.client.close_reason, False)]
    assert state_of(p.client) is SessionState.CLOSED
    assert p.client.data_to_send() == []


def test_relay_msg1_twice_closes_silently(variant: Variant) -> None:
    p = new_pair(variant)
    (msg1,) = p.client.data_to_send()
    assert p.relay.receive(msg1, 0.0) == []
    p.relay.data_to_send()
    events = p.relay.receive(msg1, 0.0)  # msg3 expected
    assert events == [ConnectionClosed(None, p.relay.close_reason, False)]
    assert p.relay.data_to_send() == []


def test_relay_fed_its_own_msg2_closes_silently(variant: Variant) -> None:
    p = new_pair(variant)
    p.to_relay()
    (msg2,) = p.relay.data_to_send()
    events = p.relay.receive(msg2, 0.0)
    assert events == [ConnectionClosed(None, p.relay.close_reason, False)]
    assert p.relay.data_to_send() == []


def test_client_fed_its_own_msg1_closes_silently(variant: Variant) -> None:
    p = new_pair(variant)
    (msg1,) = p.client.data_to_send()
    events = p.client.receive(msg1, 0.0)
    assert events == [ConnectionClosed(None, p.client.close_reason, False)]
    assert p.client.data_to_send() == []


def test_relay_fed_msg2_of_another_handshake_closes_silently() -> None:
    a = new_pair(CLASSIC)
    b = new_pair(CLASSIC)
    a.to_relay()
    b.to_relay()
    events = deliver(a.client, b.relay.data_to_send())
    assert events == [ConnectionClosed(None, a.client.close_reason, False)]
    assert a.client.data_to_send() == []


# -- oversize frames -----------------------------------------------------------------------


def _push_frame_len(ciphertext_len: int) -> int:
    return len(raw_frame(Push(blob_id=BLOB, ciphertext=bytes(ciphertext_len)), 2))


@pytest.mark.parametrize(
    ("max_frame", "blob"),
    [(1000, 5000), (70_000, 200_000)],
    ids=["one-fragment", "many-fragments"],
)
def test_oversize_frame_in_open_is_refused_and_the_session_goes_on(
    max_frame: int, blob: int
) -> None:
    p = open_pair(CLASSIC, relay_kwargs={"max_frame": max_frame})
    rid = p.client.send_request(Push(blob_id=BLOB, ciphertext=os.urandom(blob)), 1.0)
    assert p.to_relay(1.0) == []
    assert state_of(p.relay) is SessionState.OPEN
    frames = sent_frames(p.relay, p.client)
    assert len(frames) == 1
    assert frames[0].request_id == rid  # read from the frame's first fragment
    error = frames[0].message
    assert isinstance(error, Error)
    assert error.code == ErrorCode.BLOB_TOO_LARGE

    pull = p.client.send_request(Pull(after=1), 2.0)
    assert pull != rid
    assert p.to_relay(2.0) == [RequestReceived(pull, Pull(after=1))]
    assert state_of(p.relay) is SessionState.OPEN


def test_oversize_error_answers_the_request() -> None:
    p = open_pair(CLASSIC, relay_kwargs={"max_frame": 1000})
    rid = p.client.send_request(Push(blob_id=BLOB, ciphertext=bytes(2000)), 1.0)
    p.to_relay(1.0)
    events = p.to_client(1.0)
    assert len(events) == 1
    assert isinstance(events[0], RequestFailed)
    assert events[0].request_id == rid
    assert events[0].code == ErrorCode.BLOB_TOO_LARGE
    assert p.client.pending_requests == 0
    assert state_of(p.client) is SessionState.OPEN


def test_frame_of_exactly_max_frame_is_accepted() -> None:
    limit = _push_frame_len(3000)
    p = open_pair(CLASSIC, relay_kwargs={"max_frame": limit})
    rid = p.client.send_request(Push(blob_id=BLOB, ciphertext=bytes(3000)), 0.0)
    assert rid == 2
    assert p.to_relay() == [RequestReceived(2, Push(blob_id=BLOB, ciphertext=bytes(3000)))]
    rid = p.client.send_request(Push(blob_id=BLOB, ciphertext=bytes(3001)), 0.0)
    assert p.to_relay() == []
    assert _errors_sent(p) == [(rid, 2001)]


def test_oversize_frame_before_open_closes() -> None:
    # A HELLO is about 160 bytes.
    p = new_pair(CLASSIC, relay_kwargs={"max_frame": 100, "hello_frame": 100})
    handshake(p)
    closed = closed_event(p.relay_events)
    assert closed.code == ErrorCode.INVALID_MESSAGE
    assert state_of(p.relay) is SessionState.CLOSED
    assert p.to_client() == [ConnectionClosed(1000, closed.reason, True)]


def test_oversize_frame_before_open_with_a_tiny_limit_does_not_raise() -> None:
    """Even when the relay's own ERROR would not fit its frame limit, receive() must not
    raise: the session closes all the same."""
    p = new_pair(CLASSIC, relay_kwargs={"max_frame": 40, "hello_frame": 40})
    p.to_relay()
    p.to_client()
    events = p.to_relay()
    assert state_of(p.relay) is SessionState.CLOSED
    assert closed_event(events).code == ErrorCode.INVALID_MESSAGE


def test_a_hello_may_be_larger_than_the_frame_limit_for_blobs(variant: Variant) -> None:
    """HELLO may bring a new group's whole log, which must fit even where the relay keeps
    blobs small; once the session is open, the blob limit applies again."""
    entries = [os.urandom(3000), os.urandom(3000)]
    p = new_pair(variant, client_kwargs={"entries": entries}, relay_kwargs={"max_frame": 1000})
    assert p.relay.hello_frame == HELLO_FRAME == 256 * 1024  # docs/protocol.md §4.3
    handshake(p)
    received = p.relay_events[-1]
    assert isinstance(received, HelloReceived)
    assert received.hello.entries == entries
    p.relay.accept(make_welcome(p.relay_public))
    p.to_client()
    assert state_of(p.client) is SessionState.OPEN
    rid = p.client.send_request(Push(blob_id=BLOB, ciphertext=bytes(2000)), 0.0)
    assert p.to_relay() == []
    assert _errors_sent(p) == [(rid, ErrorCode.BLOB_TOO_LARGE)]
    assert state_of(p.relay) is SessionState.OPEN


def test_a_hello_over_its_own_limit_closes() -> None:
    p = new_pair(
        CLASSIC,
        client_kwargs={"entries": [os.urandom(5000)]},
        relay_kwargs={"max_frame": 1000, "hello_frame": 4000},
    )
    handshake(p)
    closed = closed_event(p.relay_events)
    assert closed.code == ErrorCode.INVALID_MESSAGE
    assert not any(isinstance(e, HelloReceived) for e in p.relay_events)
    assert p.to_client() == [ConnectionClosed(1000, closed.reason, True)]


def test_the_hello_limit_is_never_below_the_frame_limit() -> None:
    p = new_pair(
        CLASSIC,
        client_kwargs={"entries": [os.urandom(3000)]},
        relay_kwargs={"max_frame": 10_000, "hello_frame": 100},
    )
    assert p.relay.hello_frame == 10_000
    handshake(p)
    assert state_of(p.relay) is SessionState.HELLO_PENDING


# -- tampering -----------------------------------------------------------------------------


def test_tampered_message_in_open_closes(pair: Pair) -> None:
    pair.client.send_request(Pull(), 0.0)
    (message,) = pair.client.data_to_send()
    events = pair.relay.receive(_flip(message, len(message) - 1), 0.0)
    assert events == [ConnectionClosed(1000, pair.relay.close_reason, False)]
    assert state_of(pair.relay) is SessionState.CLOSED
    assert pair.to_client() == [ConnectionClosed(1000, pair.relay.close_reason, True)]


def test_tampered_hello_closes() -> None:
    p = new_pair(CLASSIC)
    p.to_relay()
    p.to_client()
    msg3, hello = p.client.data_to_send()
    assert p.relay.receive(msg3, 0.0)
    events = p.relay.receive(_flip(hello, 5), 0.0)
    assert events == [ConnectionClosed(1000, p.relay.close_reason, False)]
    assert p.to_client() == [ConnectionClosed(1000, p.relay.close_reason, True)]


def test_replayed_message_closes(pair: Pair) -> None:
    pair.client.send_request(Pull(), 0.0)
    (message,) = pair.client.data_to_send()
    assert len(pair.relay.receive(message, 0.0)) == 1
    assert closed_event(pair.relay.receive(message, 0.0)).code == 1000


def test_noise_message_over_65535_bytes_closes(pair: Pair) -> None:
    events = pair.relay.receive(bytes(65536), 0.0)
    assert events == [ConnectionClosed(1000, pair.relay.close_reason, False)]


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\xc1",
        b"\x94\x01\x20\x02",  # an array of 4 cut short
        msgspec.msgpack.encode([1, 0x20, 2, {}]),  # protocol version 1
        msgspec.msgpack.encode([3, 0x20, 2, {}]),  # protocol version 3
        msgspec.msgpack.encode([2, 0x99, 2, {}]),  # unknown type
        msgspec.msgpack.encode([2, 0x50, 2, {"device_id": bytes(32), "reason": "lost"}]),
        msgspec.msgpack.encode([2, 0x20, -1, {}]),  # negative request id
        msgspec.msgpack.encode([2, 0x20, 2**32, {}]),  # request id too large
        msgspec.msgpack.encode([2, 0x20, 2, {"limit": 0}]),  # bound violated
        msgspec.msgpack.encode([2, 0x10, 2, {"blob_id": b"short", "ciphertext": b""}]),
        msgspec.msgpack.encode([2, 0x56, 2, {"entries": []}]),  # LOG_APPEND of no entries
    ],
    ids=[
        "empty",
        "reserved-byte",
        "truncated",
        "version-1",
        "version-3",
        "unknown-type",
        "v1-revoke-device",
        "negative-id",
        "big-id",
        "bound",
        "bad-id",
        "empty-append",
    ],
)
def test_undecodable_frame_in_open_closes(pair: Pair, frame: bytes) -> None:
    send_raw(pair.client, frame)
    events = pair.to_relay()
    assert events == [ConnectionClosed(1000, pair.relay.close_reason, False)]
    assert pair.to_client() == [ConnectionClosed(1000, pair.relay.close_reason, True)]


def test_unknown_body_fields_are_ignored(pair: Pair) -> None:
    send_raw(pair.client, msgspec.msgpack.encode([2, 0x20, 2, {"after": 4, "future": "x"}]))
    assert pair.to_relay() == [RequestReceived(2, Pull(after=4))]


# -- variant mismatch ----------------------------------------------------------------------

OTHER_PROLOGUE = Variant("0k-sync.v2.test-other", CLASSIC.noise_protocol)


@pytest.mark.parametrize(
    ("client_variant", "relay_variant"),
    [(HYBRID, CLASSIC), (CLASSIC, HYBRID), (CLASSIC, OTHER_PROLOGUE), (OTHER_PROLOGUE, CLASSIC)],
    ids=["hybrid-vs-classic", "classic-vs-hybrid", "prologue-relay", "prologue-client"],
)
def test_variant_mismatch_fails_the_handshake(
    client_variant: Variant, relay_variant: Variant
) -> None:
    p = new_pair(
        client_variant=client_variant,
        relay_variant=relay_variant,
        relay_kwargs={"handshake_timeout": 5.0},
        client_kwargs={"handshake_timeout": 5.0},
    )
    for _ in range(4):
        p.to_relay()
        p.to_client()
    assert p.client.data_to_send() == []
    assert p.relay.data_to_send() == []
    # At least one side noticed; the other gives up at its deadline.
    assert p.client.closed or p.relay.closed
    p.client_events += p.client.check_timeouts(5.0)
    p.relay_events += p.relay.check_timeouts(5.0)
    assert p.client.closed
    assert p.relay.closed
    for events in (p.client_events, p.relay_events):
        assert not any(isinstance(e, HandshakeComplete) for e in events)
        assert closed_event(events).code is None
    # No channel was ever established, so nothing decryptable was sent.
    for session in (p.client, p.relay):
        assert session._transport is None
        with pytest.raises(ProtocolError):
            _ = session.handshake_hash


# =========================================================================================
# Client
# =========================================================================================


def test_client_initial_state(variant: Variant) -> None:
    identity = DeviceIdentity.generate()
    client = ClientSession(
        identity, GroupId.random(), now=10.0, variant=variant, handshake_timeout=3.0
    )
    assert state_of(client) is SessionState.HANDSHAKE
    assert client.next_deadline() == 13.0
    (msg1,) = client.data_to_send()
    assert len(msg1) == (32 if variant is CLASSIC else 32 + 1184)
    assert client.data_to_send() == []
    assert client.pending_requests == 0
    assert client.welcome is None


def test_client_sends_msg3_and_hello_after_msg2(variant: Variant) -> None:
    p = new_pair(variant)
    p.to_relay()
    p.to_client()
    assert state_of(p.client) is SessionState.AWAIT_WELCOME
    messages = p.client.data_to_send()
    assert len(messages) == 2
    assert p.relay.receive(messages[0], 0.0)[0] == HandshakeComplete(
        bytes(p.identity.device_id), p.client.handshake_hash
    )
    (frame,) = sniff(p.relay, messages[1:])
    assert frame.request_id == 1
    assert isinstance(frame.message, Hello)
    assert frame.message.group_id == p.group_id
    verify_hello(
        frame.message, p.relay.handshake_hash, p.identity.device_id, p.identity.sign_public
    )


def test_client_deadline_in_await_welcome(variant: Variant) -> None:
    p = new_pair(variant, now=100.0, client_kwargs={"handshake_timeout": 5.0})
    handshake(p, 101.0)
    assert state_of(p.client) is SessionState.AWAIT_WELCOME
    assert p.client.next_deadline() == 105.0
    assert p.client.check_timeouts(104.999) == []
    events = p.client.check_timeouts(105.0)
    assert events == [ConnectionClosed(None, p.client.close_reason, False)]
    assert p.client.data_to_send() == []
    assert p.client.next_deadline() is None


def test_client_deadline_in_handshake() -> None:
    p = new_pair(CLASSIC, now=0.0, client_kwargs={"handshake_timeout": 2.0})
    assert p.client.check_timeouts(1.0) == []
    assert p.client.check_timeouts(2.5)[0] == ConnectionClosed(None, p.client.close_reason, False)
    assert p.client.closed


@pytest.mark.parametrize("request_id", [0, 2, 7, U32_MAX])
def test_welcome_with_wrong_request_id_is_invalid(request_id: int) -> None:
    p = _relay_hello_pending()
    inject(p.relay, make_welcome(p.relay_public), request_id)
    events = p.to_client()
    assert events == [ConnectionClosed(1000, p.client.close_reason, False)]
    assert state_of(p.client) is SessionState.CLOSED
    assert p.client.welcome is None
    assert p.to_relay() == [ConnectionClosed(1000, p.client.close_reason, True)]


@pytest.mark.parametrize(
    "message", [m for m in [*RELAY_TO_CLIENT, *CLIENT_REQUESTS] if m is not WELCOME], ids=_name
)
def test_non_welcome_in_await_welcome_is_invalid(message: Message) -> None:
    p = _relay_hello_pending()
    inject(p.relay, message, 1)
    assert p.to_client() == [ConnectionClosed(1000, p.client.close_reason, False)]
    assert state_of(p.client) is SessionState.CLOSED


@pytest.mark.parametrize("request_id", [0, 1, 9])
def test_error_in_await_welcome_closes_by_peer(request_id: int) -> None:
    p = _relay_hello_pending()
    inject(p.relay, Error(code=ErrorCode.DEVICE_REVOKED, message="revoked"), request_id)
    assert p.to_client() == [ConnectionClosed(1003, "revoked", True)]
    assert p.client.data_to_send() == []


def _client_at(stage: str) -> Pair:
    p = new_pair(CLASSIC)
    if stage == "handshake":
        return p
    p.to_relay()
    p.to_client()
    if stage == "await-welcome":
        return p
    assert stage == "closed"
    p.client.close()
    return p


@pytest.mark.parametrize("stage", ["handshake", "await-welcome", "closed"])
def test_client_cannot_send_before_open(stage: str) -> None:
    p = _client_at(stage)
    p.client.data_to_send()
    with pytest.raises(ProtocolError):
        p.client.send_request(Pull(), 0.0)
    with pytest.raises(ProtocolError):
        p.client.send_message(Ack(cursor=1), 0.0)
    assert p.client.data_to_send() == []
    assert p.client.pending_requests == 0


def test_client_cannot_send_after_close(pair: Pair) -> None:
    pair.client.close()
    with pytest.raises(ProtocolError):
        pair.client.send_request(Pull(), 0.0)
    assert pair.client.data_to_send() == []


@pytest.mark.parametrize(
    "message",
    [
        *RELAY_TO_CLIENT,
        Error(code=1000),
        Hello(group_id=GroupId.random(), proof=bytes(64)),
    ],
    ids=_name,
)
def test_client_cannot_send_non_requests(pair: Pair, message: Message) -> None:
    with pytest.raises(ProtocolError):
        pair.client.send_request(message, 0.0)
    with pytest.raises(ProtocolError):
        pair.client.send_message(message, 0.0)
    assert pair.client.data_to_send() == []
    assert pair.client.pending_requests == 0
    assert state_of(pair.client) is SessionState.OPEN


def test_send_message_uses_request_id_zero(pair: Pair) -> None:
    pair.client.send_message(Ack(cursor=9), 0.0)
    assert pair.to_relay() == [RequestReceived(0, Ack(cursor=9))]
    assert pair.client.pending_requests == 0


# -- request ids ---------------------------------------------------------------------------


def test_request_ids_are_unique_and_never_0_or_1(pair: Pair) -> None:
    ids = [pair.client.send_request(Presence(), 0.0) for _ in range(500)]
    assert len(set(ids)) == 500
    assert 0 not in ids
    assert 1 not in ids
    assert pair.client.pending_requests == 500
    events = pair.to_relay()
    assert [e.request_id for e in events if isinstance(e, RequestReceived)] == ids


def test_request_ids_wrap_past_u32_max(pair: Pair) -> None:
    pair.client._next_id = U32_MAX - 1
    ids = [pair.client.send_request(Pull(), 0.0) for _ in range(4)]
    assert ids == [U32_MAX - 1, U32_MAX, 2, 3]
    events = pair.to_relay()
    assert [e.request_id for e in events if isinstance(e, RequestReceived)] == ids
    # The answers to the ids at the top of the range still match.
    for rid in ids:
        pair.relay.send(PullResponse(blobs=[], has_more=False, max_cursor=0), rid)
    assert [e.request_id for e in pair.to_client() if isinstance(e, ResponseReceived)] == ids


def test_request_ids_skip_ids_still_in_flight(pair: Pair) -> None:
    first = pair.client.send_request(Pull(), 0.0)
    assert first == 2
    pair.client._next_id = U32_MAX
    assert pair.client.send_request(Pull(), 0.0) == U32_MAX
    assert pair.client.send_request(Pull(), 0.0) == 3  # 2 is still pending; 1 is HELLO's


# -- responses -----------------------------------------------------------------------------


@pytest.mark.parametrize(("req", "response"), REQUEST_RESPONSES, ids=_name)
def test_responses_are_matched(pair: Pair, req: Message, response: Message) -> None:
    rid = pair.client.send_request(req, 0.0)
    assert pair.to_relay() == [RequestReceived(rid, req)]
    pair.relay.send(response, rid)
    assert pair.to_client() == [ResponseReceived(rid, response)]
    assert pair.client.pending_requests == 0
    assert state_of(pair.client) is SessionState.OPEN


WRONG_RESPONSES: list[tuple[Message, Message]] = [
    (Push(blob_id=BLOB, ciphertext=b"x"), PullResponse(blobs=[], has_more=False, max_cursor=0)),
    (Push(blob_id=BLOB, ciphertext=b"x"), Push(blob_id=BLOB, ciphertext=b"x")),
    (Pull(), Pull()),
    (Pull(), PushAck(blob_id=BLOB, cursor=1, timestamp=0)),
    (ListDevices(), ListDevices()),
    (ListDevices(), MEMBERSHIP),
    (LogGet(), LOG_APPENDED),
    (LogGet(), MEMBERSHIP),
    (LogAppend(entries=[ENTRY]), LOG),
    (LogAppend(entries=[ENTRY]), MEMBERSHIP),
    (LogAppend(entries=[ENTRY]), LogAppend(entries=[ENTRY])),
    (Ack(cursor=1), Presence()),
    (Presence(), Notify(blob_id=BLOB, cursor=1, sender=DEV, timestamp=0, size=0)),
    (Delete(blob_id=BLOB), make_welcome()),
    (UnregisterPush(), RegisterPush(token="t", platform=PushPlatform.WEB)),
    (ChunkHave(addresses=[ADDR]), CHUNK_DATA),
    (ChunkHave(addresses=[ADDR]), ChunkHave(addresses=[ADDR])),
    (ChunkBegin(address=ADDR, size=1), ChunkBegin(address=ADDR, size=1)),
    (ChunkBegin(address=ADDR, size=1), PushAck(blob_id=BLOB, cursor=1, timestamp=0)),
    (ChunkPut(address=ADDR, offset=0, data=b"x"), CHUNK_DATA),
    (ChunkGet(address=ADDR), CHUNK_STATUS),
    (ChunkGet(address=ADDR), ChunkGet(address=ADDR)),
]


@pytest.mark.parametrize(("req", "response"), WRONG_RESPONSES, ids=_name)
def test_wrong_response_type_is_invalid(pair: Pair, req: Message, response: Message) -> None:
    rid = pair.client.send_request(req, 0.0)
    pair.to_relay()
    inject(pair.relay, response, rid)
    assert pair.to_client() == [ConnectionClosed(1000, pair.client.close_reason, False)]
    assert state_of(pair.client) is SessionState.CLOSED
    assert pair.to_relay() == [ConnectionClosed(1000, pair.client.close_reason, True)]


@pytest.mark.parametrize("unknown", [1, 3, 99, U32_MAX])
def test_response_to_unknown_id_is_invalid(pair: Pair, unknown: int) -> None:
    pair.client.send_request(Pull(), 0.0)  # id 2 is pending
    pair.to_relay()
    pair.relay.send(PullResponse(blobs=[], has_more=False, max_cursor=0), unknown)
    assert pair.to_client() == [ConnectionClosed(1000, pair.client.close_reason, False)]


def test_second_response_to_the_same_id_is_invalid(pair: Pair) -> None:
    rid = pair.client.send_request(Ack(cursor=1), 0.0)
    pair.to_relay()
    pair.relay.send(Ack(cursor=1), rid)
    pair.relay.send(Ack(cursor=1), rid)
    events = pair.to_client()
    assert events[0] == ResponseReceived(rid, Ack(cursor=1))
    assert events[1:] == [ConnectionClosed(1000, pair.client.close_reason, False)]


def test_error_for_unknown_id_is_invalid(pair: Pair) -> None:
    pair.relay.send(Error(code=ErrorCode.RATE_LIMITED), 42)
    assert pair.to_client() == [ConnectionClosed(1000, pair.client.close_reason, False)]


@pytest.mark.parametrize(
    "code",
    [1004, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 2000, 2001, 2002, 2003, 2004, 3002, 4242, 0],
)
def test_non_fatal_error_for_a_request_fails_it(pair: Pair, code: int) -> None:
    rid = pair.client.send_request(Delete(blob_id=BLOB, force=True), 0.0)
    other = pair.client.send_request(Pull(), 0.0)
    pair.to_relay()
    pair.relay.send(Error(code=code, message="no", retry_after=5), rid)
    assert pair.to_client() == [RequestFailed(rid, code, "no", retry_after=5)]
    assert state_of(pair.client) is SessionState.OPEN
    assert pair.client.pending_requests == 1
    pair.relay.send(PullResponse(blobs=[], has_more=False, max_cursor=0), other)
    assert pair.to_client() == [
        ResponseReceived(other, PullResponse(blobs=[], has_more=False, max_cursor=0))
    ]


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 3000, 3001])
def test_fatal_error_for_a_request_fails_it_and_closes(pair: Pair, code: int) -> None:
    rid = pair.client.send_request(Pull(), 0.0)
    pair.to_relay()
    inject(pair.relay, Error(code=code, message="down"), rid)
    assert pair.to_client() == [
        RequestFailed(rid, code, "down"),
        ConnectionClosed(code, "down", True),
    ]
    assert state_of(pair.client) is SessionState.CLOSED
    assert pair.client.data_to_send() == []


@pytest.mark.parametrize("message", [NOTIFY, MEMBERSHIP], ids=_name)
def test_unsolicited_notify_and_membership(pair: Pair, message: Message) -> None:
    pair.relay.send(message)
    assert pair.to_client() == [MessageReceived(message)]
    assert state_of(pair.client) is SessionState.OPEN


@pytest.mark.parametrize("code", [1004, 1005, 1006, 1010, 1011, 2000, 2001, 2002, 2003, 2004, 4242])
def test_unsolicited_non_fatal_error_is_a_message(pair: Pair, code: int) -> None:
    error = Error(code=code, message="fyi", retry_after=3)
    pair.relay.send(error)
    assert pair.to_client() == [MessageReceived(error)]
    assert state_of(pair.client) is SessionState.OPEN


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 3000, 3001])
def test_unsolicited_fatal_error_closes(pair: Pair, code: int) -> None:
    inject(pair.relay, Error(code=code, message="shutting down"), 0)
    assert pair.to_client() == [ConnectionClosed(code, "shutting down", True)]
    assert state_of(pair.client) is SessionState.CLOSED
    assert pair.client.data_to_send() == []


def test_relay_shutdown_reaches_the_client(pair: Pair) -> None:
    pair.relay.error(ErrorCode.RELAY_SHUTTING_DOWN, "bye")
    assert pair.to_client() == [ConnectionClosed(3001, "bye", True)]


#: Relay messages that only answer a request (all but NOTIFY and MEMBERSHIP), and requests.
UNSOLICITED_INVALID: list[Message] = [
    WELCOME,
    PUSH_ACK,
    PULL_RESPONSE,
    DEVICES,
    LOG,
    LOG_APPENDED,
    CHUNK_STATUS,
    CHUNK_DATA,
    *CLIENT_REQUESTS,
]


@pytest.mark.parametrize("message", UNSOLICITED_INVALID, ids=_name)
def test_unsolicited_response_types_are_invalid(pair: Pair, message: Message) -> None:
    inject(pair.relay, message, 0)
    assert pair.to_client() == [ConnectionClosed(1000, pair.client.close_reason, False)]
    assert state_of(pair.client) is SessionState.CLOSED
    assert pair.to_relay() == [ConnectionClosed(1000, pair.client.close_reason, True)]


def test_client_receive_after_close_is_ignored(pair: Pair) -> None:
    pair.client.close()
    pair.relay.send(Notify(blob_id=BLOB, cursor=1, sender=DEV, timestamp=0, size=0))
    assert pair.to_client() == []
    assert pair.client.receive(os.urandom(64), 0.0) == []
    assert pair.client.data_to_send() == []


def test_tampered_message_to_client_closes(pair: Pair) -> None:
    pair.relay.send(Notify(blob_id=BLOB, cursor=1, sender=DEV, timestamp=0, size=0))
    (message,) = pair.relay.data_to_send()
    events = pair.client.receive(_flip(message, 3), 0.0)
    assert events == [ConnectionClosed(1000, pair.client.close_reason, False)]
    assert pair.to_relay() == [ConnectionClosed(1000, pair.client.close_reason, True)]


def _big_pull_response(size: int) -> PullResponse:
    blob = StoredBlob(blob_id=BLOB, cursor=1, sender=DEV, ciphertext=bytes(size), timestamp=0)
    return PullResponse(blobs=[blob], has_more=False, max_cursor=1)


def test_oversize_frame_to_client_closes() -> None:
    # The relay announces no frame limit, so the client keeps its own.
    p = open_pair(
        CLASSIC,
        welcome=make_welcome(limits=make_limits(max_frame_size=0)),
        client_kwargs={"max_frame": 1000},
    )
    rid = p.client.send_request(Pull(), 0.0)
    p.to_relay()
    p.relay.send(_big_pull_response(5000), rid)
    events = p.to_client()
    assert events == [ConnectionClosed(1000, p.client.close_reason, False)]
    assert "1000-byte limit" in p.client.close_reason
    assert p.to_relay() == [ConnectionClosed(1000, p.client.close_reason, True)]


def test_client_accepts_frames_up_to_the_relays_announced_frame_size() -> None:
    p = open_pair(
        CLASSIC,
        welcome=make_welcome(limits=make_limits(max_frame_size=10_000)),
        client_kwargs={"max_frame": 1000},
    )
    rid = p.client.send_request(Pull(), 0.0)
    p.to_relay()
    p.relay.send(_big_pull_response(5000), rid)
    assert p.to_client() == [ResponseReceived(rid, _big_pull_response(5000))]
    rid = p.client.send_request(Pull(), 0.0)
    p.to_relay()
    p.relay.send(_big_pull_response(11_000), rid)
    assert closed_event(p.to_client()).code == 1000


def test_a_smaller_announced_frame_size_does_not_lower_the_clients_limit() -> None:
    p = open_pair(
        CLASSIC,
        welcome=make_welcome(limits=make_limits(max_frame_size=1000)),
        client_kwargs={"max_frame": 10_000},
    )
    rid = p.client.send_request(Pull(), 0.0)
    p.to_relay()
    p.relay.send(_big_pull_response(5000), rid)
    assert p.to_client() == [ResponseReceived(rid, _big_pull_response(5000))]


# -- local limits --------------------------------------------------------------------------


def test_push_over_the_welcomed_limit_is_refused_locally() -> None:
    p = open_pair(CLASSIC, welcome=make_welcome(limits=make_limits(max_blob_size=1000)))
    with pytest.raises(FrameTooLargeError):
        p.client.send_request(Push(blob_id=BLOB, ciphertext=bytes(1001)), 5.0)
    with pytest.raises(FrameTooLargeError):
        p.client.send_message(Push(blob_id=BLOB, ciphertext=bytes(1001)), 5.0)
    assert p.client.data_to_send() == []
    assert p.client.pending_requests == 0
    assert p.client.last_sent == 0.0
    assert state_of(p.client) is SessionState.OPEN
    # At the limit is fine.
    rid = p.client.send_request(Push(blob_id=BLOB, ciphertext=bytes(1000)), 5.0)
    assert p.to_relay() == [RequestReceived(rid, Push(blob_id=BLOB, ciphertext=bytes(1000)))]


def test_zero_blob_limit_means_no_local_limit() -> None:
    p = open_pair(CLASSIC, welcome=make_welcome(limits=make_limits(max_blob_size=0)))
    rid = p.client.send_request(Push(blob_id=BLOB, ciphertext=bytes(5000)), 0.0)
    assert p.to_relay() == [RequestReceived(rid, Push(blob_id=BLOB, ciphertext=bytes(5000)))]


def test_frame_over_the_relays_frame_limit_is_refused_locally() -> None:
    p = open_pair(
        CLASSIC,
        welcome=make_welcome(limits=make_limits(max_blob_size=0, max_frame_size=2000)),
    )
    with pytest.raises(FrameTooLargeError):
        p.client.send_request(Push(blob_id=BLOB, ciphertext=bytes(3000)), 0.0)
    assert p.client.data_to_send() == []
    assert p.client.pending_requests == 0


# -- heartbeat -----------------------------------------------------------------------------


def test_heartbeat_is_a_presence_the_relay_answers() -> None:
    p = open_pair(CLASSIC, now=0.0, client_kwargs={"heartbeat_interval": 30.0})
    assert p.client.next_deadline() == 30.0
    assert p.client.check_timeouts(29.999) == []
    assert p.client.data_to_send() == []
    assert p.client.check_timeouts(30.0) == []
    assert state_of(p.client) is SessionState.OPEN
    [probe] = p.to_relay(30.0)
    assert isinstance(probe, RequestReceived) and probe.message == Presence(online=True)
    assert probe.request_id != 0  # answered: the relay echoes it (catalog: answer=Presence)
    assert p.client.next_deadline() == 60.0  # the answer's deadline (timeout = interval)
    assert p.client.pending_requests == 1
    p.relay.send(Presence(online=True), probe.request_id)
    assert p.to_client(31.0) == []  # the answer is the session's own business
    assert p.client.pending_requests == 0
    assert p.client.next_deadline() == 60.0  # the next probe: 30 s after the last traffic
    # Any request counts as activity and moves the next heartbeat.
    p.client.send_request(Pull(), 45.0)
    p.to_relay(45.0)
    p.relay.send(PullResponse(blobs=[], has_more=False, max_cursor=0), 3)
    p.to_client(45.0)
    assert p.client.next_deadline() == 75.0
    assert p.client.check_timeouts(74.0) == []
    assert p.client.data_to_send() == []


def test_an_unanswered_heartbeat_closes_the_session() -> None:
    p = open_pair(
        CLASSIC,
        now=0.0,
        client_kwargs={"heartbeat_interval": 10.0, "heartbeat_timeout": 5.0},
    )
    assert p.client.check_timeouts(10.0) == []
    p.to_relay(10.0)  # the relay gets it, but its answer never arrives
    assert p.client.next_deadline() == 15.0
    assert p.client.check_timeouts(14.9) == []
    [closed] = p.client.check_timeouts(15.0)
    assert isinstance(closed, ConnectionClosed)
    assert closed.code is None and not closed.by_peer
    assert "heartbeat" in closed.reason
    assert state_of(p.client) is SessionState.CLOSED


def test_a_request_without_answer_closes_the_session_at_its_deadline() -> None:
    p = open_pair(
        CLASSIC,
        now=0.0,
        client_kwargs={"heartbeat_interval": None, "request_timeout": 7.0},
    )
    assert p.client.next_deadline() is None
    p.client.send_request(Pull(), 1.0)
    second = p.client.send_request(ListDevices(), 2.0)
    assert p.client.next_deadline() == 8.0
    p.to_relay(2.0)
    # An answered request no longer has a deadline; the oldest one left counts.
    p.relay.send(Error(code=int(ErrorCode.RATE_LIMITED), message="later"), 2)
    p.to_client(3.0)
    assert p.client.next_deadline() == 9.0
    assert p.client.check_timeouts(8.99) == []
    [closed] = p.client.check_timeouts(9.0)
    assert isinstance(closed, ConnectionClosed) and closed.code is None
    assert "LIST_DEVICES" in closed.reason and second == 3


def test_the_client_probes_as_often_as_the_relay_announces() -> None:
    welcome = make_welcome(limits=make_limits(idle_timeout=40, heartbeat_interval=10))
    p = open_pair(CLASSIC, now=0.0, welcome=welcome, client_kwargs={"heartbeat_interval": 30.0})
    assert p.client.next_deadline() == 10.0
    welcome = make_welcome(limits=make_limits(idle_timeout=12))
    p = open_pair(CLASSIC, now=0.0, welcome=welcome, client_kwargs={"heartbeat_interval": 30.0})
    assert p.client.next_deadline() == 6.0  # well within the idle timeout


def test_heartbeat_default_is_30_seconds() -> None:
    p = open_pair(CLASSIC, now=100.0)
    assert p.client.next_deadline() == 130.0


def test_no_heartbeat() -> None:
    p = open_pair(CLASSIC, client_kwargs={"heartbeat_interval": None})
    assert p.client.next_deadline() is None
    assert p.client.check_timeouts(1e9) == []
    assert p.client.data_to_send() == []
    assert state_of(p.client) is SessionState.OPEN


def test_client_deadline_after_close_is_none(pair: Pair) -> None:
    pair.client.close()
    assert pair.client.next_deadline() is None
    assert pair.client.check_timeouts(1e9) == []
    assert pair.client.data_to_send() == []


# -- pipelining and fragmentation ----------------------------------------------------------


def test_pipelined_requests_answered_out_of_order() -> None:
    p = open_pair(CLASSIC)
    sent = {p.client.send_request(Pull(after=i), 0.0): i for i in range(50)}
    assert len(sent) == 50
    received = p.to_relay()
    assert [(e.request_id, e.message) for e in received if isinstance(e, RequestReceived)] == [
        (rid, Pull(after=after)) for rid, after in sent.items()
    ]
    order = list(sent)
    random.Random(7).shuffle(order)
    for rid in order:
        p.relay.send(PullResponse(blobs=[], has_more=False, max_cursor=sent[rid]), rid)
    events = p.to_client()
    assert events == [
        ResponseReceived(rid, PullResponse(blobs=[], has_more=False, max_cursor=sent[rid]))
        for rid in order
    ]
    assert p.client.pending_requests == 0


def test_large_push_is_fragmented_and_arrives_intact(variant: Variant) -> None:
    p = open_pair(variant)
    push = Push(blob_id=BLOB, ciphertext=os.urandom(300 * 1024), ttl=3600)
    rid = p.client.send_request(push, 0.0)
    messages = p.client.data_to_send()
    assert len(messages) == 5  # 307 200 bytes and the envelope over 65 518-byte fragments
    assert all(len(m) <= 65535 for m in messages)
    events = [p.relay.receive(m, 0.0) for m in messages]
    assert events[:-1] == [[]] * 4
    assert events[-1] == [RequestReceived(rid, push)]
    # And a large answer comes back the same way.
    blob = StoredBlob(
        blob_id=BLOB, cursor=1, sender=p.identity.device_id, ciphertext=push.ciphertext, timestamp=1
    )
    pull = p.client.send_request(Pull(), 0.0)
    p.to_relay()
    response = PullResponse(blobs=[blob], has_more=False, max_cursor=1)
    p.relay.send(response, pull)
    assert p.to_client() == [ResponseReceived(pull, response)]


def test_full_chunk_pieces_are_fragmented_and_arrive_intact(variant: Variant) -> None:
    """A piece of the largest size goes up in a CHUNK_PUT and down in a CHUNK_DATA."""
    p = open_pair(variant)
    piece = os.urandom(MAX_CHUNK_PIECE)
    put = ChunkPut(address=ADDR, offset=MAX_CHUNK_PIECE, data=piece)
    rid = p.client.send_request(put, 0.0)
    messages = p.client.data_to_send()
    assert len(messages) == 9  # 524 288 bytes and the envelope over 65 518-byte fragments
    events = [p.relay.receive(m, 0.0) for m in messages]
    assert events[:-1] == [[]] * 8
    assert events[-1] == [RequestReceived(rid, put)]
    get = p.client.send_request(ChunkGet(address=ADDR, offset=MAX_CHUNK_PIECE), 0.0)
    p.to_relay()
    data = ChunkData(address=ADDR, offset=MAX_CHUNK_PIECE, data=piece)
    p.relay.send(data, get)
    assert p.to_client() == [ResponseReceived(get, data)]


def test_a_push_naming_the_most_chunks_fits_the_default_frame() -> None:
    """A manifest of 16384 chunks: the PUSH that keeps them all goes through as one frame."""
    p = open_pair(CLASSIC)
    chunks = [i.to_bytes(32, "big") for i in range(MAX_CHUNKS)]
    push = Push(blob_id=BLOB, ciphertext=b"manifest", chunks=chunks)
    rid = p.client.send_request(push, 0.0)
    assert p.to_relay() == [RequestReceived(rid, push)]
    assert state_of(p.relay) is SessionState.OPEN


# -- downgrade, id-0 requests, fatal errors with an id, bounded names -------------------------


def test_an_offer_stripped_of_the_hybrid_variant_fails_the_handshake() -> None:
    """The client offered hybrid and classic; an attacker removed hybrid from the offer."""
    hfs, xx = HYBRID.subprotocol, CLASSIC.subprotocol
    p = new_pair(
        CLASSIC,
        client_kwargs={"offered": (hfs, xx)},
        relay_kwargs={"offered": (xx,)},
    )
    p.to_relay()
    p.to_client()
    assert state_of(p.client) is SessionState.CLOSED
    assert closed_event(p.client_events).code is None  # no channel to send an ERROR on


def test_the_same_offer_on_both_sides_agrees() -> None:
    offer = (HYBRID.subprotocol, CLASSIC.subprotocol)
    p = new_pair(CLASSIC, client_kwargs={"offered": offer}, relay_kwargs={"offered": offer})
    handshake(p)
    assert state_of(p.relay) is SessionState.HELLO_PENDING


@pytest.mark.parametrize(
    "answer",
    [
        PushAck(blob_id=BLOB, cursor=1, timestamp=0),
        PullResponse(blobs=[], has_more=False, max_cursor=0),
        Presence(),
    ],
    ids=_name,
)
def test_a_request_with_id_0_gets_no_answer(answer: Message) -> None:
    p = open_pair(CLASSIC)
    p.relay.send(answer, 0)
    assert p.relay.data_to_send() == []
    assert state_of(p.relay) is SessionState.OPEN


def test_fatal_error_answers_the_request_and_closes() -> None:
    p = open_pair(CLASSIC)
    rid = p.client.send_request(Pull(), 0.0)
    p.to_relay()
    p.relay.error(ErrorCode.RELAY_OVERLOADED, "too busy", rid)
    events = p.to_client()
    assert events[0] == RequestFailed(rid, int(ErrorCode.RELAY_OVERLOADED), "too busy")
    assert closed_event(events).code == ErrorCode.RELAY_OVERLOADED
    assert state_of(p.client) is SessionState.CLOSED


def test_error_messages_are_cut_to_the_wire_bound() -> None:
    p = open_pair(CLASSIC)
    p.relay.error(ErrorCode.RATE_LIMITED, "x" * 5000)
    events = p.to_client()
    assert len(events) == 1 and isinstance(events[0], MessageReceived)
    assert isinstance(events[0].message, Error)
    assert len(events[0].message.message) == 1024


def test_device_name_longer_than_the_wire_allows_is_refused_up_front() -> None:
    with pytest.raises(ProtocolError, match="64"):
        new_pair(CLASSIC, client_kwargs={"device_name": "n" * 65})
