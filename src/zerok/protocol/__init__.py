"""Sans-I/O protocol core: session state machines and the pure helpers around them."""

from zerok.protocol.backoff import Backoff, ClientTiming
from zerok.protocol.client import ClientSession
from zerok.protocol.client_core import ClientCore
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
from zerok.protocol.relay import RelaySession
from zerok.protocol.session import SessionState
from zerok.protocol.variants import CLASSIC, HYBRID, SUBPROTOCOLS, Variant, variant_for

__all__ = [
    "CLASSIC",
    "HYBRID",
    "SUBPROTOCOLS",
    "Backoff",
    "ClientCore",
    "ClientSession",
    "ClientTiming",
    "ConnectionClosed",
    "Event",
    "HandshakeComplete",
    "HelloReceived",
    "MessageReceived",
    "RelaySession",
    "RequestFailed",
    "RequestReceived",
    "ResponseReceived",
    "SessionState",
    "Variant",
    "Welcomed",
    "variant_for",
]
