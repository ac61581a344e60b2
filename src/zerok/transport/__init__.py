"""Transport layer: Noise messages over WebSocket (later: iroh QUIC)."""

from zerok.transport.connection import RelayConnection

__all__ = ["RelayConnection"]
