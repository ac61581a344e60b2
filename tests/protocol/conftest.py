"""Helpers for driving the sans-I/O sessions against each other without a network.

A ``Pair`` is one ClientSession and one RelaySession that talk only through ``pump``: the
messages one side queued (``data_to_send()``) are fed, one by one, into the other side's
``receive()``. Helpers reaching into private attributes (``inject``, ``send_raw``,
``sniff``) exist to play a misbehaving peer or to look at the exact frames a side sent;
they use the session's own Noise transport, so the sessions stay in step afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import x25519

from zerok.crypto import DeviceIdentity
from zerok.protocol import (
    CLASSIC,
    HYBRID,
    ClientSession,
    ConnectionClosed,
    Event,
    RelaySession,
    SessionState,
    Variant,
)
from zerok.protocol.session import Session
from zerok.wire import Frame, GroupId, Limits, Message, Welcome, decode_frame, encode

VARIANTS = (CLASSIC, HYBRID)
VARIANT_IDS = ("classic", "hybrid")

DEFAULT_LIMITS = Limits(
    max_blob_size=1024 * 1024,
    max_group_storage=100 * 1024 * 1024,
    messages_per_minute=100,
    max_frame_size=1024 * 1024 + 64 * 1024,
    default_ttl=7 * 24 * 3600,
    max_ttl=30 * 24 * 3600,
)


def make_limits(**overrides: int) -> Limits:
    """The default relay limits with some fields replaced."""
    fields: dict[str, int] = {
        "max_blob_size": DEFAULT_LIMITS.max_blob_size,
        "max_group_storage": DEFAULT_LIMITS.max_group_storage,
        "messages_per_minute": DEFAULT_LIMITS.messages_per_minute,
        "max_frame_size": DEFAULT_LIMITS.max_frame_size,
        "default_ttl": DEFAULT_LIMITS.default_ttl,
        "max_ttl": DEFAULT_LIMITS.max_ttl,
    }
    fields.update(overrides)
    return Limits(**fields)


def make_welcome(
    relay_id: bytes = bytes(32),
    *,
    max_cursor: int = 0,
    pending: int = 0,
    limits: Limits | None = None,
    log_seq: int = 1,
    log_hash: bytes = b"\x11" * 32,
    epoch: int = 0,
    server_time: int = 0,
    provisional: bool = False,
) -> Welcome:
    return Welcome(
        relay_id=relay_id,
        max_cursor=max_cursor,
        pending=pending,
        limits=limits if limits is not None else DEFAULT_LIMITS,
        log_seq=log_seq,
        log_hash=log_hash,
        epoch=epoch,
        server_time=server_time,
        provisional=provisional,
    )


FirstFrame = Callable[["ScriptedClientSession"], tuple[Message, int]]


class ScriptedClientSession(ClientSession):
    """A client whose first frame after the handshake (normally its HELLO) is replaced.

    ``first_frame`` gets the session (handshake hash, group id and identity are available)
    and returns the message and request id to send instead of the real HELLO.
    """

    first_frame: FirstFrame | None = None

    def _on_handshake_complete(self) -> list[Event]:
        if self.first_frame is None:
            return super()._on_handshake_complete()
        message, request_id = self.first_frame(self)
        self._send_frame(message, request_id)
        self.state = SessionState.AWAIT_WELCOME
        return []


@dataclass
class Pair:
    client: ClientSession
    relay: RelaySession
    identity: DeviceIdentity
    group_id: GroupId
    relay_key: x25519.X25519PrivateKey
    client_events: list[Event] = field(default_factory=list)
    relay_events: list[Event] = field(default_factory=list)

    @property
    def relay_public(self) -> bytes:
        return self.relay_key.public_key().public_bytes_raw()

    def to_relay(self, now: float = 0.0) -> list[Event]:
        """Deliver what the client queued to the relay; return (and record) relay events."""
        events = pump(self.client, self.relay, now)
        self.relay_events += events
        return events

    def to_client(self, now: float = 0.0) -> list[Event]:
        """Deliver what the relay queued to the client; return (and record) client events."""
        events = pump(self.relay, self.client, now)
        self.client_events += events
        return events

    def settle(self, now: float = 0.0, rounds: int = 10) -> None:
        """Pump both ways until neither side has anything left to send."""
        for _ in range(rounds):
            moved = bool(self.client._outgoing or self.relay._outgoing)
            if not moved:
                return
            self.to_relay(now)
            self.to_client(now)
        raise AssertionError("the sessions kept talking")


def state_of(session: Session) -> SessionState:
    """The session's state, read through a call so that type checkers do not narrow it."""
    return session.state


def deliver(receiver: Session, messages: Iterable[bytes], now: float = 0.0) -> list[Event]:
    """Feed Noise messages into ``receiver`` one by one and collect its events."""
    events: list[Event] = []
    for message in messages:
        events += receiver.receive(message, now)
    return events


def pump(sender: Session, receiver: Session, now: float = 0.0) -> list[Event]:
    """Deliver everything ``sender`` queued into ``receiver``; return receiver's events."""
    return deliver(receiver, sender.data_to_send(), now)


def new_pair(
    variant: Variant = CLASSIC,
    *,
    now: float = 0.0,
    client_variant: Variant | None = None,
    relay_variant: Variant | None = None,
    group_id: GroupId | None = None,
    identity: DeviceIdentity | None = None,
    first_frame: FirstFrame | None = None,
    client_kwargs: dict[str, Any] | None = None,
    relay_kwargs: dict[str, Any] | None = None,
) -> Pair:
    """A fresh client and relay; the client has its first handshake message queued.

    The sessions need no group log: the relay's session hands HELLO on unverified (the
    relay's service checks its proof against the log), so a random group id will do."""
    identity = identity if identity is not None else DeviceIdentity.generate()
    group_id = group_id if group_id is not None else GroupId.random()
    relay_key = x25519.X25519PrivateKey.generate()
    client = ScriptedClientSession(
        identity,
        group_id,
        now=now,
        variant=client_variant or variant,
        **(client_kwargs or {}),
    )
    client.first_frame = first_frame
    relay = RelaySession(
        relay_key,
        now=now,
        variant=relay_variant or variant,
        **(relay_kwargs or {}),
    )
    return Pair(client, relay, identity, group_id, relay_key)


def handshake(pair: Pair, now: float = 0.0) -> None:
    """Run the Noise handshake and deliver the client's HELLO (relay: HELLO_PENDING)."""
    pair.to_relay(now)  # msg1
    pair.to_client(now)  # msg2
    pair.to_relay(now)  # msg3 + HELLO


def open_pair(
    variant: Variant = CLASSIC,
    *,
    now: float = 0.0,
    welcome: Welcome | None = None,
    client_kwargs: dict[str, Any] | None = None,
    relay_kwargs: dict[str, Any] | None = None,
) -> Pair:
    """A client and relay with the session OPEN on both sides and nothing in flight."""
    pair = new_pair(variant, now=now, client_kwargs=client_kwargs, relay_kwargs=relay_kwargs)
    handshake(pair, now)
    assert state_of(pair.relay) is SessionState.HELLO_PENDING, pair.relay_events
    if welcome is None:
        welcome = make_welcome(pair.relay_public)
    elif welcome.relay_id == bytes(32):  # a placeholder: the client checks the real id
        welcome = msgspec.structs.replace(welcome, relay_id=pair.relay_public)
    pair.relay.accept(welcome)
    pair.to_client(now)
    assert state_of(pair.client) is SessionState.OPEN, pair.client_events
    assert state_of(pair.relay) is SessionState.OPEN
    assert pair.client.data_to_send() == []
    assert pair.relay.data_to_send() == []
    pair.client_events.clear()
    pair.relay_events.clear()
    return pair


# -- playing a misbehaving peer / looking at frames ------------------------------------------


def inject(sender: Session, message: Message, request_id: int = 0) -> None:
    """Make ``sender`` send any message with any request id, whatever its state allows."""
    sender._send_frame(message, request_id)


def send_raw(sender: Session, frame: bytes) -> None:
    """Make ``sender`` send arbitrary frame bytes through its Noise channel."""
    assert sender._transport is not None
    sender._outgoing.extend(sender._transport.encrypt_frame(frame))


def sniff(receiver: Session, messages: Iterable[bytes]) -> list[Frame]:
    """Decrypt messages meant for ``receiver`` into frames without running its state machine.

    The receiver's channel advances exactly as if it had processed them, so it stays in step
    with the sender for later messages.
    """
    transport = receiver._transport
    assert transport is not None, "the receiver has no channel yet"
    frames: list[Frame] = []
    for message in messages:
        frame = transport.decrypt_message(message)
        if frame is not None:
            frames.append(decode_frame(frame))
    return frames


def sent_frames(sender: Session, receiver: Session) -> list[Frame]:
    """The frames ``sender`` queued, decrypted with ``receiver``'s channel."""
    return sniff(receiver, sender.data_to_send())


def closed_event(events: list[Event]) -> ConnectionClosed:
    """The single ConnectionClosed among ``events`` (which must be the last one)."""
    closes = [e for e in events if isinstance(e, ConnectionClosed)]
    assert len(closes) == 1, events
    assert events[-1] is closes[0], events
    return closes[0]


def raw_frame(message: Message, request_id: int = 0) -> bytes:
    return encode(message, request_id=request_id)


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(params=VARIANTS, ids=VARIANT_IDS)
def variant(request: pytest.FixtureRequest) -> Variant:
    result: Variant = request.param
    return result


@pytest.fixture
def pair() -> Pair:
    """An OPEN classic pair."""
    return open_pair(CLASSIC)


@pytest.fixture
def any_pair(variant: Variant) -> Pair:
    """An OPEN pair, once per variant."""
    return open_pair(variant)
