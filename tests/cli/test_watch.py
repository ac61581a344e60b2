"""What a command tells on stderr while it syncs (ConnectionWatch)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from zerok.cli.common import ConnectionWatch, integrity_line
from zerok.client.events import Disconnected, IntegrityAlert, SyncEvent
from zerok.wire import DeviceId

SENDER = DeviceId(bytes([7]) * 32)


class _Events:
    def __init__(self, events: list[SyncEvent]) -> None:
        self._events = events

    def __aiter__(self) -> AsyncIterator[SyncEvent]:
        return self._gen()

    async def _gen(self) -> AsyncIterator[SyncEvent]:
        for event in self._events:
            yield event
        await asyncio.Event().wait()  # a live stream: it ends when the watch is cancelled

    async def aclose(self) -> None:
        return None


class _Client:
    def __init__(self, events: list[SyncEvent]) -> None:
        self._stream = _Events(events)

    def events(self) -> _Events:
        return self._stream


def test_integrity_alerts_are_told_even_when_connection_trouble_is_kept_quiet(
    capsys: pytest.CaptureFixture[str],
) -> None:
    gap = IntegrityAlert("gap", SENDER, 3, 5, "ws://r", "blobs 3..5 of this device are missing")
    lost = Disconnected("ws://r", "connection lost", 1.0)

    async def main() -> None:
        async with ConnectionWatch(_Client([lost, gap]), quiet=True) as watch:  # type: ignore[arg-type]
            for _ in range(3):
                await asyncio.sleep(0)
            assert watch.reasons == ["connection lost"]

    asyncio.run(main())
    stderr = capsys.readouterr().err
    assert "integrity: gap" in stderr and SENDER.short() in stderr and "3..5" in stderr
    assert "connection lost" not in stderr  # quiet: kept for the final error


def test_an_integrity_line_names_kind_whose_range_and_relay() -> None:
    rollback = IntegrityAlert("rollback", None, 4, 4, "ws://r[x]", "the relay went back")
    line = integrity_line(rollback)
    assert "rollback" in line and "the relay" in line and "(the relay, 4 at" in line
    assert "\\[x]" in line  # markup in the relay's URL is escaped
