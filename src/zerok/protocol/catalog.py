"""The message catalogue: who sends each message type, what answers it, what comes unasked.

This table is the one place these rules are written; the sessions (what a client may send,
what a relay may answer, what may arrive with request id 0), the relay's handler registry
and the specification's checks (docs/protocol.md §6.1 and §6.2) are all derived from it.
Adding a message type means adding its ``Message`` class in ``zerok.wire.messages`` and one
``Spec`` here; tests then name whatever else is missing (a relay handler, a doc section, a
test vector).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from zerok.wire.messages import (
    ALL_MESSAGES,
    Ack,
    ChunkBegin,
    ChunkData,
    ChunkGet,
    ChunkHave,
    ChunkPut,
    ChunkStatus,
    Delete,
    Devices,
    Error,
    Hello,
    ListDevices,
    Log,
    LogAppend,
    LogAppended,
    LogGet,
    Membership,
    Message,
    Notify,
    Presence,
    Pull,
    PullResponse,
    Push,
    PushAck,
    RegisterPush,
    UnregisterPush,
    Welcome,
)


class Sender(enum.Enum):
    """Which side sends a message type (the direction column of docs/protocol.md §6.1)."""

    CLIENT = "C→R"
    RELAY = "R→C"
    BOTH = "both"


@dataclass(frozen=True, slots=True)
class Spec:
    """What the protocol says about one message type.

    ``answer``: for a request, the type of its success answer (the request's own type when
    it is confirmed by an echo); None for a message that is not a request. Any request may
    also be answered by ERROR. ``needs_id``: the request exists for its answer, so it is
    sent with a non-zero request id. ``unsolicited``: the relay may send it with request id
    0, unasked. ``opening``: it belongs to the opening exchange (HELLO, WELCOME), not to an
    open session.
    """

    message: type[Message]
    sender: Sender
    answer: type[Message] | None = None
    needs_id: bool = False
    unsolicited: bool = False
    opening: bool = False

    @property
    def is_request(self) -> bool:
        return self.answer is not None

    @property
    def echoed(self) -> bool:
        """Confirmed by the request's own body sent back."""
        return self.answer is self.message


CATALOG: tuple[Spec, ...] = (
    Spec(Hello, Sender.CLIENT, answer=Welcome, needs_id=True, opening=True),
    Spec(Welcome, Sender.RELAY, opening=True),
    Spec(Push, Sender.CLIENT, answer=PushAck, needs_id=True),
    Spec(PushAck, Sender.RELAY),
    Spec(Pull, Sender.CLIENT, answer=PullResponse, needs_id=True),
    Spec(PullResponse, Sender.RELAY),
    Spec(Presence, Sender.CLIENT, answer=Presence),
    Spec(Notify, Sender.RELAY, unsolicited=True),
    Spec(Ack, Sender.CLIENT, answer=Ack),
    Spec(Delete, Sender.CLIENT, answer=Delete),
    Spec(ListDevices, Sender.CLIENT, answer=Devices, needs_id=True),
    Spec(Devices, Sender.RELAY),
    Spec(LogGet, Sender.CLIENT, answer=Log, needs_id=True),
    Spec(Log, Sender.RELAY),
    Spec(LogAppend, Sender.CLIENT, answer=LogAppended, needs_id=True),
    Spec(LogAppended, Sender.RELAY),
    Spec(Membership, Sender.RELAY, unsolicited=True),
    Spec(ChunkHave, Sender.CLIENT, answer=ChunkStatus, needs_id=True),
    Spec(ChunkStatus, Sender.RELAY),
    Spec(ChunkBegin, Sender.CLIENT, answer=ChunkStatus, needs_id=True),
    Spec(ChunkPut, Sender.CLIENT, answer=ChunkStatus, needs_id=True),
    Spec(ChunkGet, Sender.CLIENT, answer=ChunkData, needs_id=True),
    Spec(ChunkData, Sender.RELAY),
    Spec(RegisterPush, Sender.CLIENT, answer=RegisterPush),
    Spec(UnregisterPush, Sender.CLIENT, answer=UnregisterPush),
    Spec(Error, Sender.BOTH, unsolicited=True),
)

SPECS: Mapping[type[Message], Spec] = {spec.message: spec for spec in CATALOG}

#: What a client may send once the session is open: every request but HELLO.
CLIENT_REQUESTS: frozenset[type[Message]] = frozenset(
    s.message for s in CATALOG if s.is_request and not s.opening
)
#: The success answer of each of those requests.
ANSWERS: Mapping[type[Message], type[Message]] = {
    s.message: s.answer for s in CATALOG if s.answer is not None and not s.opening
}
#: What the relay may send once the session is open: its own types and the echoes.
RELAY_MESSAGES: frozenset[type[Message]] = frozenset(
    {s.message for s in CATALOG if s.sender is not Sender.CLIENT and not s.opening}
    | set(ANSWERS.values())
)
#: What the relay may send with request id 0, unasked.
UNSOLICITED: frozenset[type[Message]] = frozenset(s.message for s in CATALOG if s.unsolicited)


def check_catalog() -> None:
    """Raise AssertionError if the catalogue and the wire's message list disagree."""
    listed = [spec.message for spec in CATALOG]
    assert len(set(listed)) == len(listed), "a message type is in the catalogue twice"
    missing = set(ALL_MESSAGES) - set(listed)
    assert not missing, f"not in the catalogue: {sorted(m.__name__ for m in missing)}"
    for spec in CATALOG:
        if spec.answer is not None:
            answer = SPECS.get(spec.answer)
            assert answer is not None, f"{spec.answer.__name__} answers but is not catalogued"
            assert spec.echoed or answer.sender is not Sender.CLIENT, (
                f"{spec.message.__name__} is answered by a client's message"
            )
        assert not (spec.unsolicited and spec.sender is Sender.CLIENT), (
            f"{spec.message.__name__}: only the relay sends unasked"
        )
