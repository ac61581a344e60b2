"""The recovery key: 32 random bytes, made with a group, shown once as 24 BIP-39 words and a QR
code, that can take control of the group back (it signs and is wrapped for like a device).

Text forms accepted by ``from_text``: the words separated by spaces, dashes or commas, in any
case, optionally numbered ("1. abandon 2. ..."), optionally behind ``zerok-recovery:``; a
word may be cut to its first four letters, which BIP-39 makes unique. ``qr_text`` is
``ZEROK-RECOVERY:WORD-WORD-…`` in capitals, which QR codes store in alphanumeric mode: a
smaller code, easier to scan from paper.
"""

from __future__ import annotations

import difflib
import io
import os
import re
import unicodedata
from functools import cache

import segno
from mnemonic import Mnemonic

from zerok.crypto.member_keys import MemberKeys
from zerok.errors import RecoveryKeyError

SECRET_BYTES = 32
WORD_COUNT = 24
QR_PREFIX = "ZEROK-RECOVERY:"

_SEPARATORS = re.compile(r"[\s,;\-]+")
_NUMBERING = re.compile(r"\d+[.):]?")
_PREFIX_LEN = 4  # BIP-39: the first four letters pick one word


@cache
def _bip39() -> Mnemonic:
    # Reads the word list from disk: once is enough.
    return Mnemonic("english")


LABEL_RECOVERY_SIGN = b"0k-sync/v2/recovery-sign"
LABEL_RECOVERY_WRAP = b"0k-sync/v2/recovery-wrap"


class RecoveryKey(MemberKeys):
    """A group's recovery key. ``secret`` is the whole key; keep it off disk."""

    SIGN_LABEL = LABEL_RECOVERY_SIGN
    WRAP_LABEL = LABEL_RECOVERY_WRAP

    def __init__(self, secret: bytes) -> None:
        if len(secret) != SECRET_BYTES:
            raise RecoveryKeyError(f"a recovery key is {SECRET_BYTES} bytes, got {len(secret)}")
        self.secret = bytes(secret)

    @classmethod
    def generate(cls) -> RecoveryKey:
        return cls(os.urandom(SECRET_BYTES))

    @classmethod
    def from_words(cls, text: str) -> RecoveryKey:
        """The key from its words or its QR text; RecoveryKeyError says what to fix."""
        words = [_known_word(i, token) for i, token in enumerate(_tokens(text), start=1)]
        if len(words) != WORD_COUNT:
            raise RecoveryKeyError(
                f"a recovery key has {WORD_COUNT} words, but {len(words)} were given: "
                "check for a missing or an extra word"
            )
        phrase = " ".join(words)
        if not _bip39().check(phrase):
            raise RecoveryKeyError(
                "these 24 words are not a recovery key (their checksum does not match): "
                "one word is probably wrong, or two are swapped; compare each word with "
                "what you wrote down"
            )
        return cls(bytes(_bip39().to_entropy(phrase)))

    from_text = from_words

    def words(self) -> list[str]:
        return _bip39().to_mnemonic(self.secret).split(" ")

    def qr_text(self) -> str:
        return QR_PREFIX + "-".join(self.words()).upper()

    def qr(self) -> str:
        """The QR text as a QR code drawn with block characters, for a terminal."""
        out = io.StringIO()
        segno.make(self.qr_text(), error="m").terminal(out=out, compact=True, border=2)
        return out.getvalue()

    def member_secret(self) -> bytes:
        return self.secret

    def __repr__(self) -> str:
        return f"RecoveryKey(sign_public={self.sign_public.hex()[:16]}…)"


def _tokens(text: str) -> list[str]:
    # NFKC folds full-width letters and the like that phone keyboards produce.
    body = unicodedata.normalize("NFKC", text).strip().lower()
    if body.startswith(QR_PREFIX.lower()):
        body = body[len(QR_PREFIX) :]
    tokens = [t for t in _SEPARATORS.split(body) if t and not _NUMBERING.fullmatch(t)]
    if not tokens:
        raise RecoveryKeyError(
            f"no recovery words were given: enter the {WORD_COUNT} words of the recovery key"
        )
    return tokens


def _known_word(position: int, token: str) -> str:
    wordlist = _bip39().wordlist
    if token in wordlist:
        return token
    if len(token) == _PREFIX_LEN:
        matches = [word for word in wordlist if word.startswith(token)]
        if len(matches) == 1:
            return matches[0]
    close = difflib.get_close_matches(token, wordlist, n=1, cutoff=0.7)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise RecoveryKeyError(
        f"word {position}, '{token}', is not a recovery word: check its spelling{hint}"
    )
