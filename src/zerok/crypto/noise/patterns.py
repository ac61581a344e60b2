"""Noise handshake patterns: the fundamental, one-way and deferred tables of the Noise spec
(rev 34, §7 and §18.1), the ``pskN`` modifiers (§9.4) and the ``hfs`` transformation.

A pattern is written here as in the spec, one message a line, ``->`` from the initiator and
``<-`` from the responder, with pre-messages before a ``...`` line.

``hfs`` follows the KEM form of the Noise HFS extension as implemented by snow:
``e1`` (a KEM public key) is inserted after the first message's ``e`` — or after that
message's first DH token if it has one — and ``ekem1`` (a KEM ciphertext, whose shared secret
is MixKey'ed) right after the first ``ee``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from zerok.errors import HandshakeError

Token = Literal["e", "s", "ee", "es", "se", "ss", "psk", "e1", "ekem1"]
DH_TOKENS = frozenset({"ee", "es", "se", "ss"})

_TABLE = """
N:      <- s | ... | -> e, es
K:      -> s | <- s | ... | -> e, es, ss
X:      <- s | ... | -> e, es, s, ss
NN:     -> e | <- e, ee
NK:     <- s | ... | -> e, es | <- e, ee
NX:     -> e | <- e, ee, s, es
XN:     -> e | <- e, ee | -> s, se
XK:     <- s | ... | -> e, es | <- e, ee | -> s, se
XX:     -> e | <- e, ee, s, es | -> s, se
KN:     -> s | ... | -> e | <- e, ee, se
KK:     -> s | <- s | ... | -> e, es, ss | <- e, ee, se
KX:     -> s | ... | -> e | <- e, ee, se, s, es
IN:     -> e, s | <- e, ee, se
IK:     <- s | ... | -> e, es, s, ss | <- e, ee, se
IX:     -> e, s | <- e, ee, se, s, es
NK1:    <- s | ... | -> e | <- e, ee, es
NX1:    -> e | <- e, ee, s | -> es
X1N:    -> e | <- e, ee | -> s | <- se
X1K:    <- s | ... | -> e, es | <- e, ee | -> s | <- se
XK1:    <- s | ... | -> e | <- e, ee, es | -> s, se
X1K1:   <- s | ... | -> e | <- e, ee, es | -> s | <- se
X1X:    -> e | <- e, ee, s, es | -> s | <- se
XX1:    -> e | <- e, ee, s | -> es, s, se
X1X1:   -> e | <- e, ee, s | -> es, s | <- se
K1N:    -> s | ... | -> e | <- e, ee | -> se
K1K:    -> s | <- s | ... | -> e, es | <- e, ee | -> se
KK1:    -> s | <- s | ... | -> e | <- e, ee, se, es
K1K1:   -> s | <- s | ... | -> e | <- e, ee, es | -> se
K1X:    -> s | ... | -> e | <- e, ee, s, es | -> se
KX1:    -> s | ... | -> e | <- e, ee, se, s | -> es
K1X1:   -> s | ... | -> e | <- e, ee, s | -> se, es
I1N:    -> e, s | <- e, ee | -> se
I1K:    <- s | ... | -> e, es, s | <- e, ee | -> se
IK1:    <- s | ... | -> e, s | <- e, ee, se, es
I1K1:   <- s | ... | -> e, s | <- e, ee, es | -> se
I1X:    -> e, s | <- e, ee, s, es | -> se
IX1:    -> e, s | <- e, ee, se, s | -> es
I1X1:   -> e, s | <- e, ee, s | -> se, es
"""


@dataclass(frozen=True)
class MessagePattern:
    from_initiator: bool
    tokens: tuple[Token, ...]


@dataclass(frozen=True)
class HandshakePattern:
    name: str
    initiator_pre: tuple[Token, ...]
    responder_pre: tuple[Token, ...]
    messages: tuple[MessagePattern, ...]

    @property
    def one_way(self) -> bool:
        return len(self.messages) == 1

    @property
    def uses_psk(self) -> bool:
        return any("psk" in m.tokens for m in self.messages)

    @property
    def uses_kem(self) -> bool:
        return any("e1" in m.tokens for m in self.messages)


def _parse_line(text: str) -> tuple[bool, tuple[Token, ...]]:
    arrow, _, rest = text.strip().partition(" ")
    if arrow not in ("->", "<-"):
        raise ValueError(f"bad pattern line {text!r}")
    tokens = tuple(t.strip() for t in rest.split(",") if t.strip())
    return arrow == "->", tokens  # type: ignore[return-value]


def _parse_table() -> dict[str, HandshakePattern]:
    table: dict[str, HandshakePattern] = {}
    for row in _TABLE.strip().splitlines():
        name, _, body = row.partition(":")
        parts = [p.strip() for p in body.split("|")]
        pre: list[str] = []
        msgs = parts
        if "..." in parts:
            cut = parts.index("...")
            pre, msgs = parts[:cut], parts[cut + 1 :]
        init_pre: tuple[Token, ...] = ()
        resp_pre: tuple[Token, ...] = ()
        for line in pre:
            from_init, toks = _parse_line(line)
            if from_init:
                init_pre = toks
            else:
                resp_pre = toks
        messages = tuple(MessagePattern(*_parse_line(m)) for m in msgs)
        table[name.strip()] = HandshakePattern(name.strip(), init_pre, resp_pre, messages)
    return table


_BASE = _parse_table()
_MODIFIER = re.compile(r"psk\d+|hfs")


def _apply_psk(pattern: HandshakePattern, index: int) -> HandshakePattern:
    msgs = list(pattern.messages)
    if index == 0:
        first = msgs[0]
        msgs[0] = MessagePattern(first.from_initiator, ("psk", *first.tokens))
    else:
        if index > len(msgs):
            raise HandshakeError(f"psk{index} is out of range for {pattern.name}")
        m = msgs[index - 1]
        msgs[index - 1] = MessagePattern(m.from_initiator, (*m.tokens, "psk"))
    return HandshakePattern(pattern.name, pattern.initiator_pre, pattern.responder_pre, tuple(msgs))


def _apply_hfs(pattern: HandshakePattern) -> HandshakePattern:
    if pattern.one_way:
        raise HandshakeError("hfs needs an interactive pattern")
    msgs = [list(m.tokens) for m in pattern.messages]
    for toks in msgs:
        if "e" in toks:
            dh = [i for i, t in enumerate(toks) if t in DH_TOKENS]
            toks.insert((dh[0] if dh else toks.index("e")) + 1, "e1")
            break
    for toks in msgs:
        if "ee" in toks:
            toks.insert(toks.index("ee") + 1, "ekem1")
            break
    return HandshakePattern(
        pattern.name,
        pattern.initiator_pre,
        pattern.responder_pre,
        tuple(
            MessagePattern(m.from_initiator, tuple(t))
            for m, t in zip(pattern.messages, msgs, strict=True)
        ),
    )


def pattern_by_name(name: str) -> HandshakePattern:
    """Resolve a pattern name such as ``XX``, ``NKpsk0``, ``XXhfs`` or ``XXpsk3+hfs``."""
    match = re.fullmatch(r"([NKXI]1?[NKX]?1?)((?:psk\d+|hfs)(?:\+(?:psk\d+|hfs))*)?", name)
    if not match or match.group(1) not in _BASE:
        raise HandshakeError(f"unknown Noise handshake pattern {name!r}")
    pattern = _BASE[match.group(1)]
    for modifier in _MODIFIER.findall(match.group(2) or ""):
        pattern = (
            _apply_hfs(pattern) if modifier == "hfs" else _apply_psk(pattern, int(modifier[3:]))
        )
    return HandshakePattern(name, pattern.initiator_pre, pattern.responder_pre, pattern.messages)
