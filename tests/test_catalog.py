"""Every message type of the catalogue is complete across the layers.

Adding a message type means: its class in zerok/wire/messages.py (listed in ALL_MESSAGES),
its Spec in zerok/protocol/catalog.py, a relay handler if it is a request, its section and
summary row in docs/protocol.md §6, its test vector in §13, and the client API that sends
it. Each test here fails, naming what is missing, when one of these is forgotten.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import zerok
from zerok.errors import LocalProtocolError
from zerok.protocol import client as client_session
from zerok.protocol import relay as relay_session
from zerok.protocol.catalog import (
    ANSWERS,
    CATALOG,
    CLIENT_REQUESTS,
    RELAY_MESSAGES,
    SPECS,
    UNSOLICITED,
    Sender,
    Spec,
    check_catalog,
)
from zerok.relay.service import RelayService
from zerok.wire import ALL_MESSAGES, Error, Hello, Message

DOC = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text("utf-8")
SRC = Path(zerok.__file__).resolve().parent
# Where the client builds the messages it sends: its API and its connection's session.
CLIENT_SOURCES = [*sorted((SRC / "client").glob("*.py")), SRC / "protocol" / "client.py"]


def _name(spec: Spec) -> str:
    return spec.message.TYPE.name


def _display(kind: type[Message]) -> str:
    return kind.TYPE.name


def test_the_catalogue_lists_every_wire_message_once() -> None:
    check_catalog()
    assert set(SPECS) == set(ALL_MESSAGES)


def test_the_sessions_use_the_catalogue() -> None:
    # The sessions import these tables rather than keeping copies of their own.
    relay, client = vars(relay_session), vars(client_session)
    assert relay["CLIENT_REQUESTS"] is CLIENT_REQUESTS
    assert relay["RELAY_MESSAGES"] is RELAY_MESSAGES
    assert relay["UNSOLICITED"] is UNSOLICITED
    assert client["ANSWERS"] is ANSWERS
    assert client["CLIENT_REQUESTS"] is CLIENT_REQUESTS


@pytest.mark.parametrize("spec", [s for s in CATALOG if s.is_request and not s.opening], ids=_name)
def test_every_request_has_a_relay_handler(spec: Spec) -> None:
    assert spec.message in RelayService.handlers, (
        f"the relay has no handler for {_name(spec)}: add a RelayService method "
        f"marked @handles({spec.message.__name__}) in zerok/relay/service.py"
    )


@pytest.mark.parametrize("spec", [s for s in CATALOG if s.is_request], ids=_name)
def test_every_request_has_an_answer_the_relay_may_send(spec: Spec) -> None:
    assert spec.answer is not None
    if spec.opening:
        return
    assert ANSWERS[spec.message] is spec.answer, f"the client expects no answer to {_name(spec)}"
    assert spec.answer in RELAY_MESSAGES, (
        f"{_display(spec.answer)} answers {_name(spec)} but the relay may not send it"
    )


def _built_by_the_client() -> set[str]:
    """Names of the classes the client's code calls (``Push(...)``, ``wire.Push(...)``)."""
    names: set[str] = set()
    for path in CLIENT_SOURCES:
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Name):
                    names.add(func.id)
                elif isinstance(func, ast.Attribute):
                    names.add(func.attr)
    return names


@pytest.mark.parametrize("spec", [s for s in CATALOG if s.is_request and not s.opening], ids=_name)
def test_every_request_is_sent_by_the_client(spec: Spec) -> None:
    assert spec.message.__name__ in _built_by_the_client(), (
        f"no client code sends {_name(spec)}: add the SyncClient method that does "
        "(zerok/client/sync.py) and document it in docs/client.md"
    )


def test_a_relay_without_a_handler_does_not_start(monkeypatch: pytest.MonkeyPatch) -> None:
    handlers = dict(RelayService.handlers)
    kind = next(iter(sorted(CLIENT_REQUESTS, key=lambda m: m.TYPE)))
    del handlers[kind]
    monkeypatch.setattr(RelayService, "handlers", handlers)
    with pytest.raises(LocalProtocolError, match=kind.__name__):
        RelayService(None, None, None, None)  # type: ignore[arg-type]  # fails before use


@pytest.mark.parametrize("spec", CATALOG, ids=_name)
def test_every_message_has_a_doc_section(spec: Spec) -> None:
    kind = spec.message.TYPE
    heading = rf"^### 6\.\d+ {kind.name} \(0x{int(kind):02x}\)$"
    assert re.search(heading, DOC, re.MULTILINE), (
        f"docs/protocol.md has no section '### 6.N {kind.name} (0x{int(kind):02x})'"
    )


@pytest.mark.parametrize("spec", CATALOG, ids=_name)
def test_every_message_has_a_vector(spec: Spec) -> None:
    heading = rf"^### Vector \d+: Frame {_name(spec)}$"
    assert re.search(heading, DOC, re.MULTILINE), (
        f"docs/protocol.md §13 has no '### Vector N: Frame {_name(spec)}'"
    )


def _summary_row(spec: Spec) -> list[str]:
    kind = spec.message.TYPE
    match = re.search(rf"^\| {kind.name} \| `0x{int(kind):02x}` \|(.*)\|$", DOC, re.MULTILINE)
    assert match, f"{kind.name} has no row in the table of docs/protocol.md §6.1"
    return [cell.strip() for cell in match.group(1).split("|")]


@pytest.mark.parametrize("spec", CATALOG, ids=_name)
def test_the_summary_table_says_what_the_catalogue_says(spec: Spec) -> None:
    direction, request_id, answered_by = _summary_row(spec)
    name = _name(spec)
    assert direction == spec.sender.value, f"§6.1: direction of {name}"
    if spec.is_request:
        assert spec.answer is not None
        expected_id = "1" if spec is SPECS[Hello] else "new id"
        if not spec.needs_id:
            expected_id += ", or 0"
        assert request_id == expected_id, f"§6.1: request id of {name}"
        answer = _display(spec.answer) + (" (echo)" if spec.echoed else "")
        assert answered_by.startswith(answer), f"§6.1: {name} is answered by {answer}"
        assert "ERROR" in answered_by, f"§6.1: any request may be answered by ERROR ({name})"
    else:
        assert answered_by == "—", f"§6.1: {name} is not a request"
        answering = [s for s in CATALOG if s.answer is spec.message and not s.echoed]
        for request in answering:
            assert f"{_name(request)}'s" in request_id, f"§6.1: {name} answers {_name(request)}"
        unasked = request_id == "0" or request_id.endswith(", or 0")
        if spec.message is not Error:
            assert unasked == spec.unsolicited, f"§6.1: may {name} come unasked?"


def test_the_response_rules_say_what_the_catalogue_says() -> None:
    rules = DOC.split("**Response rules.**", 1)[1].split("\n\n", 2)[1]
    rows = dict(re.findall(r"^\| ([A-Z_, ]+) \| (.+) \|$", rules, re.MULTILINE))
    for spec in CATALOG:
        if not spec.is_request:
            continue
        assert spec.answer is not None
        if spec.echoed:
            echoed = next(names for names, answer in rows.items() if "echo" in answer)
            assert _name(spec) in echoed.split(", "), f"§6.2: {_name(spec)} is echoed"
        else:
            assert rows.get(_name(spec)) == _display(spec.answer), f"§6.2: {_name(spec)}"


def test_only_the_relay_sends_unasked() -> None:
    assert {s.message for s in CATALOG if s.unsolicited} == UNSOLICITED
    assert all(SPECS[m].sender is not Sender.CLIENT for m in UNSOLICITED)
