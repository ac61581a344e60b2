"""Transport variants, negotiated by WebSocket subprotocol name (DESIGN §3)."""

from __future__ import annotations

from dataclasses import dataclass

from zerok.errors import ProtocolError


@dataclass(frozen=True)
class Variant:
    subprotocol: str
    noise_protocol: str

    @property
    def prologue(self) -> bytes:
        # Binding the negotiated subprotocol into the handshake makes a downgrade by
        # rewriting the subprotocol header fail the handshake.
        return self.subprotocol.encode("ascii")


HYBRID = Variant("0k-sync.v1.hfs", "Noise_XXhfs_25519+MLKEM768_ChaChaPoly_BLAKE2s")
CLASSIC = Variant("0k-sync.v1.xx", "Noise_XX_25519_ChaChaPoly_BLAKE2s")
VARIANTS = (HYBRID, CLASSIC)  # in order of preference
SUBPROTOCOLS = tuple(v.subprotocol for v in VARIANTS)


def variant_for(subprotocol: str) -> Variant:
    for variant in VARIANTS:
        if variant.subprotocol == subprotocol:
            return variant
    raise ProtocolError(
        f"unsupported subprotocol {subprotocol!r}; this peer speaks {', '.join(SUBPROTOCOLS)}"
    )
