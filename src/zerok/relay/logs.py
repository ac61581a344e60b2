"""Log lines a stranger can cause are rate-limited: one summary line per interval.

Connections dropped for not reading, sockets refused at the door, bad requests, accept
errors at the file-descriptor limit: each is one log line, and a stranger chooses how many.
``LogThrottle`` lets the first ``burst`` records of a kind (logger and message template)
through in each ``interval``, counts the rest, and says how many it held back in one line
when the interval is over. Throttled kinds lose their tracebacks after the first one: a
traceback per bad request says nothing the first did not.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

INTERVAL = 60.0
BURST = 10
MAX_KINDS = 1000  # kinds tracked at once; more are throttled together
_VARYING = re.compile(r"0x[0-9a-fA-F]+|\d+")
# Loggers whose lines strangers can cause; the relay puts a LogThrottle on each.
NOISY = (
    "asyncio",
    "aiohttp.server",
    "aiohttp.web",
    "aiohttp.access",
    "zerok.relay.connection",
    "zerok.relay.refusals",
)


@dataclass(slots=True)
class _Kind:
    started: float
    passed: int = 0
    held: int = 0


class LogThrottle(logging.Filter):
    def __init__(
        self,
        *,
        interval: float = INTERVAL,
        burst: int = BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval = interval
        self.burst = burst
        self.clock = clock
        self._kinds: dict[tuple[str, str], _Kind] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, _kind_of(str(record.msg)))
        if key not in self._kinds and len(self._kinds) >= MAX_KINDS:
            key = (record.name, "*")
        now = self.clock()
        kind = self._kinds.get(key)
        if kind is None or now - kind.started >= self.interval:
            held = kind.held if kind is not None else 0
            kind = self._kinds[key] = _Kind(now)
            if held:
                record.msg = f"{record.msg} (and {held} more like this held back in the last "
                record.msg += f"{self.interval:g} s)"
        if kind.passed >= self.burst:
            kind.held += 1
            return False
        kind.passed += 1
        if kind.passed > 1:
            record.exc_info = None
            record.exc_text = None
        return True


def _kind_of(message: str) -> str:
    """A message with what varies from one line of a kind to the next (addresses, file
    descriptors, ports, object ids) taken out: asyncio formats these into its messages."""
    first_line = message.split("\n", 1)[0]
    return _VARYING.sub("#", first_line)[:120]


def throttle_noisy_loggers(throttle: LogThrottle) -> Callable[[], None]:
    """Put ``throttle`` on the loggers strangers can make talk; returns its undoing."""
    loggers = [logging.getLogger(name) for name in NOISY]
    for logger in loggers:
        logger.addFilter(throttle)

    def undo() -> None:
        for logger in loggers:
            logger.removeFilter(throttle)

    return undo
