"""Sans-I/O protocol core: session state machines and the pure helpers around them."""

from zerok.protocol.backoff import Backoff
from zerok.protocol.client import ClientSession
from zerok.protocol.cursor import CursorTracker
from zerok.protocol.events import (
    ConnectionClosed,
    Event,
    HandshakeComplete,
    HelloReceived,
    MessageReceived,
    RequestFailed,
    RequestReceived,
    ResponseReceived,
    Welcomed,
)
from zerok.protocol.outbox import Outbox, OutboxEntry, OutboxState
from zerok.protocol.relay import RelaySession
from zerok.protocol.session import SessionState
from zerok.protocol.variants import CLASSIC, HYBRID, SUBPROTOCOLS, Variant, variant_for

__all__ = [
    "CLASSIC",
    "HYBRID",
    "SUBPROTOCOLS",
    "Backoff",
    "ClientSession",
    "ConnectionClosed",
    "CursorTracker",
    "Event",
    "HandshakeComplete",
    "HelloReceived",
    "MessageReceived",
    "Outbox",
    "OutboxEntry",
    "OutboxState",
    "RelaySession",
    "RequestFailed",
    "RequestReceived",
    "ResponseReceived",
    "SessionState",
    "Variant",
    "Welcomed",
    "variant_for",
]
