"""The baseline: a bare ``websockets`` relay that forwards the same frames with no crypto
and no storage. Run as ``python -m bench.bare_relay PORT``.

Frames are binary, first byte the kind: ``P`` push (ack ``A`` to the sender, forward ``N``
to the other connections of the group named by the URL path), ``L`` look-up (answer ``R``
with the pushed frame of that id, as a PULL would).
"""

from __future__ import annotations

import asyncio
import sys
from collections import defaultdict

from websockets.asyncio.server import ServerConnection, serve

groups: dict[str, set[ServerConnection]] = defaultdict(set)
store: dict[bytes, bytes] = {}


async def handler(ws: ServerConnection) -> None:
    group = ws.request.path if ws.request is not None else "/"
    members = groups[group]
    members.add(ws)
    try:
        async for frame in ws:
            assert isinstance(frame, bytes)
            kind, ident = frame[:1], frame[1:17]
            if kind == b"P":
                store[ident] = frame
                await ws.send(b"A" + ident)
                note = b"N" + ident
                for other in members:
                    if other is not ws:
                        await other.send(note)
            elif kind == b"L":
                await ws.send(b"R" + store.get(ident, b""))
    finally:
        members.discard(ws)


async def main(port: int) -> None:
    async with serve(handler, "127.0.0.1", port, compression=None, max_size=2**21):
        print("ready", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
