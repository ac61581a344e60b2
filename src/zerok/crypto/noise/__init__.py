"""Noise Protocol Framework: patterns, handshake and transport (25519, ChaChaPoly, BLAKE2s)."""

from zerok.crypto.noise.handshake import HandshakeResult, HandshakeState
from zerok.crypto.noise.patterns import HandshakePattern, pattern_by_name
from zerok.crypto.noise.symmetric import CipherState
from zerok.crypto.noise.transport import MAX_FRAGMENT_PAYLOAD, NoiseTransport

__all__ = [
    "MAX_FRAGMENT_PAYLOAD",
    "CipherState",
    "HandshakePattern",
    "HandshakeResult",
    "HandshakeState",
    "NoiseTransport",
    "pattern_by_name",
]
