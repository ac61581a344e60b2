"""Noise transport phase: frames of any size over Noise messages of at most 65535 bytes.

Each Noise transport message carries one fragment: a flag byte (0x00 = last fragment of the
frame, 0x01 = more follow) and up to 65518 bytes of the frame. Each direction rekeys its
cipher (Noise §11.3) after every ``rekey_interval`` messages, so both peers stay in step
without signalling.
"""

from __future__ import annotations

from zerok.crypto.noise.handshake import HandshakeResult
from zerok.crypto.noise.symmetric import MAX_MESSAGE, TAGLEN, CipherState
from zerok.errors import FrameTooLargeError, OversizedFrameError, RemoteProtocolError

FRAGMENT_LAST = 0x00
FRAGMENT_MORE = 0x01
MAX_FRAGMENT_PAYLOAD = MAX_MESSAGE - TAGLEN - 1  # 65518


def sealed_size(frame_length: int) -> int:
    """The bytes ``encrypt_frame`` makes of a frame this long: each fragment adds a flag
    byte and a tag."""
    fragments = max(1, -(-frame_length // MAX_FRAGMENT_PAYLOAD))
    return frame_length + fragments * (TAGLEN + 1)


REKEY_INTERVAL = 2**16
MAX_SEND_FRAME = 16 * 1024 * 1024 + 64 * 1024  # the wire's largest blob plus its envelope


class NoiseTransport:
    """Encrypts frames into Noise messages and reassembles received ones.

    ``max_frame`` bounds what is received (and buffered); what is sent is bounded by the
    wire's own cap, MAX_SEND_FRAME: the sender checks the peer's limit itself.
    """

    def __init__(
        self,
        result: HandshakeResult,
        *,
        max_frame: int = 16 * 1024 * 1024 + 4096,
        rekey_interval: int = REKEY_INTERVAL,
    ) -> None:
        if rekey_interval < 1:
            raise ValueError("rekey_interval must be positive")
        self._send: CipherState = result.send
        self._receive: CipherState = result.receive
        self.handshake_hash = result.handshake_hash
        self.remote_static = result.remote_static
        self.max_frame = max_frame
        self.rekey_interval = rekey_interval
        self._parts: list[bytes] = []
        self._pending = 0
        self._discarding = False

    def encrypt_frame(self, frame: bytes) -> list[bytes]:
        """Split a frame into fragments and encrypt each into one Noise message.

        Raises FrameTooLargeError, before encrypting anything, above MAX_SEND_FRAME.
        """
        if len(frame) > MAX_SEND_FRAME:
            raise FrameTooLargeError(f"frame of {len(frame)} bytes exceeds {MAX_SEND_FRAME}")
        view = memoryview(frame)
        out: list[bytes] = []
        pos = 0
        while True:
            chunk = view[pos : pos + MAX_FRAGMENT_PAYLOAD]
            pos += len(chunk)
            flag = FRAGMENT_LAST if pos >= len(frame) else FRAGMENT_MORE
            out.append(self._send.encrypt_with_ad(b"", bytes((flag,)) + chunk))
            self._after_use(self._send)
            if flag == FRAGMENT_LAST:
                return out

    def decrypt_message(self, message: bytes) -> bytes | None:
        """Decrypt one Noise message; return the frame it completes, or None if more follow.

        Raises DecryptionError when the message fails authentication (the session is then
        unusable), RemoteProtocolError for a malformed fragment and OversizedFrameError once a frame
        grows past ``max_frame`` (its remaining fragments are then skipped, the session
        stays usable).
        """
        if len(message) > MAX_MESSAGE:
            raise RemoteProtocolError(
                f"Noise message of {len(message)} bytes exceeds {MAX_MESSAGE}"
            )
        plain = self._receive.decrypt_with_ad(b"", message)
        self._after_use(self._receive)
        if not plain or plain[0] not in (FRAGMENT_LAST, FRAGMENT_MORE):
            raise RemoteProtocolError("malformed fragment header")
        last = plain[0] == FRAGMENT_LAST
        if self._discarding:
            self._discarding = not last
            return None
        self._parts.append(plain[1:])
        self._pending += len(plain) - 1
        if self._pending > self.max_frame:
            head = (self._parts[0] if self._parts else b"")[:16]
            self._parts.clear()
            self._pending = 0
            self._discarding = not last
            raise OversizedFrameError(f"frame exceeds the {self.max_frame}-byte limit", head=head)
        if not last:
            return None
        frame = b"".join(self._parts)
        self._parts.clear()
        self._pending = 0
        return frame

    def _after_use(self, cipher: CipherState) -> None:
        if cipher.n % self.rekey_interval == 0:
            cipher.rekey()
