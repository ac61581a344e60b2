"""Transport variants, negotiated by WebSocket subprotocol name (docs/protocol.md §3.1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from zerok.errors import RemoteProtocolError


@dataclass(frozen=True)
class Variant:
    subprotocol: str
    noise_protocol: str


HYBRID = Variant("0k-sync.v2.hfs", "Noise_XXhfs_25519+MLKEM768_ChaChaPoly_BLAKE2s")
CLASSIC = Variant("0k-sync.v2.xx", "Noise_XX_25519_ChaChaPoly_BLAKE2s")
VARIANTS = (HYBRID, CLASSIC)  # in order of preference
SUBPROTOCOLS = tuple(v.subprotocol for v in VARIANTS)


def prologue(offered: Sequence[str], chosen: Variant) -> bytes:
    """The Noise prologue: every subprotocol the client offered, in its order, and the one
    chosen. Both sides must see the same offer, so an attacker who strips the hybrid variant
    from the client's offer (to force classic Noise) makes the handshake fail.
    """
    return (
        f"0k-sync prologue v2\noffered: {','.join(offered)}\nchosen: {chosen.subprotocol}".encode()
    )


def variant_for(subprotocol: str) -> Variant:
    for variant in VARIANTS:
        if variant.subprotocol == subprotocol:
            return variant
    raise RemoteProtocolError(
        f"unsupported subprotocol {subprotocol!r}; this peer speaks {', '.join(SUBPROTOCOLS)}"
    )
