"""RelaySession.send with ``room``: a relay's budget for a slow reader is kept before
anything is queued, to the byte."""

from __future__ import annotations

import os

from tests.protocol.conftest import Pair
from zerok.crypto.identity import DeviceIdentity
from zerok.crypto.noise.transport import MAX_FRAGMENT_PAYLOAD, sealed_size
from zerok.wire import BlobId, Notify, PullResponse, StoredBlob, encode


def _page(size: int) -> PullResponse:
    blob = StoredBlob(
        blob_id=BlobId.random(),
        cursor=1,
        sender=DeviceIdentity.generate().device_id,
        ciphertext=os.urandom(size),
        timestamp=1,
    )
    return PullResponse(blobs=[blob], has_more=False, max_cursor=1)


def test_sealed_size_counts_a_flag_and_a_tag_per_fragment() -> None:
    assert sealed_size(0) == 17
    assert sealed_size(MAX_FRAGMENT_PAYLOAD) == MAX_FRAGMENT_PAYLOAD + 17
    assert sealed_size(MAX_FRAGMENT_PAYLOAD + 1) == MAX_FRAGMENT_PAYLOAD + 1 + 34


def test_a_message_larger_than_the_room_is_not_queued(pair: Pair) -> None:
    page = _page(200_000)
    size = sealed_size(len(encode(page, request_id=7)))
    assert pair.relay.bytes_to_send == 0
    assert pair.relay.send(page, 7, room=size - 1) is False
    assert pair.relay.bytes_to_send == 0 and pair.relay.data_to_send() == []
    assert pair.relay.send(page, 7, room=size) is True
    assert pair.relay.bytes_to_send == size
    assert sum(map(len, pair.relay.data_to_send())) == size
    assert pair.relay.bytes_to_send == 0


def test_without_room_everything_is_queued(pair: Pair) -> None:
    notify = Notify(
        blob_id=BlobId.random(),
        cursor=1,
        sender=DeviceIdentity.generate().device_id,
        timestamp=1,
        size=1,
    )
    assert pair.relay.send(notify) is True
    assert pair.relay.bytes_to_send == sealed_size(len(encode(notify)))
