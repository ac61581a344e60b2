"""Events that the sans-I/O sessions hand to the code driving them."""

from __future__ import annotations

from dataclasses import dataclass

from zerok.wire import DeviceId, Hello, Message, Welcome


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of session events."""


@dataclass(frozen=True, slots=True)
class HandshakeComplete(Event):
    """The Noise handshake finished; ``peer_static`` is the peer's authenticated key."""

    peer_static: bytes
    handshake_hash: bytes


@dataclass(frozen=True, slots=True)
class HelloReceived(Event):
    """Relay side: a HELLO arrived. Its proof is not checked yet: that needs the device's
    signing key from the group's log (``zerok.crypto.membership.verify_hello``). Answer
    with accept() or reject()."""

    device_id: DeviceId
    hello: Hello
    handshake_hash: bytes


@dataclass(frozen=True, slots=True)
class Welcomed(Event):
    """Client side: the relay accepted our HELLO; requests may flow now."""

    welcome: Welcome
    relay_id: bytes


@dataclass(frozen=True, slots=True)
class RequestReceived(Event):
    """Relay side: a client request; ``request_id`` 0 means it wants no answer."""

    request_id: int
    message: Message


@dataclass(frozen=True, slots=True)
class ResponseReceived(Event):
    """Client side: the answer to one of our requests."""

    request_id: int
    message: Message


@dataclass(frozen=True, slots=True)
class RequestFailed(Event):
    """Client side: the relay answered one of our requests with an ERROR."""

    request_id: int
    code: int
    message: str
    retry_after: int = 0  # seconds, for RATE_LIMITED and RELAY_OVERLOADED


@dataclass(frozen=True, slots=True)
class MessageReceived(Event):
    """A message that answers nothing (NOTIFY, MEMBERSHIP, a non-fatal ERROR, ...)."""

    message: Message


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The session ended. ``code`` is the ERROR code that ended it, if any."""

    code: int | None
    reason: str
    by_peer: bool
