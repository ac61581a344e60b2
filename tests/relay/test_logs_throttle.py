"""LogThrottle: log lines a stranger can cause come at most BURST per interval, per kind."""

from __future__ import annotations

import logging
import sys

from zerok.relay.logs import MAX_KINDS, LogThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("bad request")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("zerok.relay.connection", logging.INFO, "x", 1, msg, args, exc_info)


def test_a_burst_passes_the_rest_is_counted_in_one_line() -> None:
    clock = Clock()
    throttle = LogThrottle(interval=60, burst=3, clock=clock)
    passed = [throttle.filter(_record("dropping %s: %s", f"10.0.0.{i}", "x")) for i in range(10)]
    assert passed == [True] * 3 + [False] * 7
    clock.now += 60
    summary = _record("dropping %s: %s", "10.0.0.99", "x")
    assert throttle.filter(summary)
    assert "7 more like this" in summary.getMessage()
    assert "10.0.0.99" in summary.getMessage()


def test_kinds_are_throttled_apart_and_tracebacks_go_after_the_first() -> None:
    throttle = LogThrottle(interval=60, burst=5, clock=Clock())
    first, second = (
        _record("error handling request", exc=True),
        _record("error handling request", exc=True),
    )
    assert throttle.filter(first) and throttle.filter(second)
    assert first.exc_info is not None and second.exc_info is None
    assert throttle.filter(_record("something else"))


def test_the_kinds_tracked_are_bounded() -> None:
    throttle = LogThrottle(interval=60, burst=1, clock=Clock())
    for i in range(MAX_KINDS + 50):
        word = "".join(chr(97 + (i // 26**k) % 26) for k in range(3))  # aaa, baa, ...
        throttle.filter(_record(f"kind {word}"))
    assert len(throttle._kinds) == MAX_KINDS + 1  # the overflow shares one kind


def test_lines_that_differ_only_in_numbers_and_addresses_are_one_kind() -> None:
    # asyncio formats object reprs into its messages: each line would be a kind of its own.
    throttle = LogThrottle(interval=60, burst=2, clock=Clock())
    lines = [
        f"Exception in callback _start_serving(<Server sockets=(<socket fd={fd}>)> at 0x7f{fd:x})"
        for fd in range(10, 30)
    ]
    assert sum(throttle.filter(_record(line)) for line in lines) == 2
