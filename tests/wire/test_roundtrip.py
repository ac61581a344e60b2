"""Property: every message within the documented bounds survives encode → decode_frame."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zerok.wire import (
    ALL_MESSAGES,
    PROTOCOL_VERSION,
    U32_MAX,
    Ack,
    BlobId,
    ChunkBegin,
    ChunkData,
    ChunkGet,
    ChunkHave,
    ChunkInfo,
    ChunkPut,
    ChunkStatus,
    Delete,
    DeviceId,
    DeviceInfo,
    Devices,
    Error,
    GroupId,
    Hello,
    Limits,
    ListDevices,
    Log,
    LogAppend,
    LogAppended,
    LogGet,
    Membership,
    Message,
    MessageType,
    Notify,
    Presence,
    Pull,
    PullResponse,
    Push,
    PushAck,
    PushPlatform,
    RegisterPush,
    StoredBlob,
    UnregisterPush,
    Welcome,
    decode,
    decode_frame,
    encode,
)
from zerok.wire.manifest import MAX_SEALED_CHUNK
from zerok.wire.messages import MAX_CHUNK_PIECE

I64_MAX = 2**63 - 1

# -- field strategies (bounds as documented in zerok.wire.messages) -------------------------

cursors = st.integers(min_value=0, max_value=I64_MAX)
millis = st.integers(min_value=0, max_value=I64_MAX)
counts = st.integers(min_value=0, max_value=I64_MAX)
seconds = st.integers(min_value=0, max_value=U32_MAX)
names = st.text(max_size=64)
texts = st.text(max_size=1024)
ciphertexts = st.binary(max_size=4096)
public_keys = st.binary(min_size=32, max_size=32)
signatures = st.binary(min_size=64, max_size=64)
device_ids = st.binary(min_size=32, max_size=32).map(DeviceId)
group_ids = st.binary(min_size=32, max_size=32).map(GroupId)
blob_ids = st.binary(min_size=16, max_size=16).map(BlobId)
request_ids = st.integers(min_value=0, max_value=U32_MAX)
epochs = st.integers(min_value=0, max_value=U32_MAX)
log_seqs = st.integers(min_value=0, max_value=I64_MAX)
digests = st.binary(min_size=32, max_size=32)
signers = st.one_of(st.just(b""), public_keys)  # empty, or a whole key (Hello checks)
# Entries of the size a log holds; the bound itself is checked in test_codec.py.
log_entries = st.binary(max_size=600)
addresses = st.binary(min_size=32, max_size=32)
chunk_sizes = st.integers(min_value=1, max_value=MAX_SEALED_CHUNK)
chunk_offsets = st.integers(min_value=0, max_value=MAX_SEALED_CHUNK)
# Pieces: small random ones, or zeros of any length up to the bound (cheap to draw, and
# they reach the 512 KiB edge that random bytes of that size would make slow).
pieces = st.one_of(
    st.binary(min_size=1, max_size=4096),
    st.integers(min_value=1, max_value=MAX_CHUNK_PIECE).map(bytes),
)
read_pieces = st.one_of(st.just(b""), pieces)  # CHUNK_DATA may be empty at a chunk's end

limits = st.builds(
    Limits,
    max_blob_size=counts,
    max_group_storage=counts,
    messages_per_minute=counts,
    max_frame_size=counts,
    default_ttl=seconds,
    max_ttl=seconds,
)
stored_blobs = st.builds(
    StoredBlob,
    blob_id=blob_ids,
    cursor=cursors,
    sender=device_ids,
    ciphertext=ciphertexts,
    timestamp=millis,
)
chunk_infos = st.builds(
    ChunkInfo,
    address=addresses,
    size=st.integers(min_value=0, max_value=MAX_SEALED_CHUNK),
    received=chunk_offsets,
    complete=st.booleans(),
)
device_infos = st.builds(
    DeviceInfo,
    device_id=device_ids,
    name=names,
    last_seen=millis,
    pending=counts,
    online=st.booleans(),
    revoked=st.booleans(),
)

# -- one strategy per message type ----------------------------------------------------------

hellos = st.builds(
    Hello,
    group_id=group_ids,
    proof=signatures,
    signer=signers,
    device_name=names,
    last_cursor=cursors,
    client=names,
    entries=st.lists(log_entries, max_size=64),
)
welcomes = st.builds(
    Welcome,
    relay_id=public_keys,
    max_cursor=cursors,
    pending=counts,
    limits=limits,
    log_seq=log_seqs,
    log_hash=digests,
    epoch=epochs,
    server_time=millis,
    provisional=st.booleans(),
)
pushes = st.builds(
    Push,
    blob_id=blob_ids,
    ciphertext=ciphertexts,
    epoch=epochs,
    ttl=seconds,
    repair=st.booleans(),
    chunks=st.lists(addresses, max_size=8),
)
push_acks = st.builds(PushAck, blob_id=blob_ids, cursor=cursors, timestamp=millis)
pulls = st.builds(Pull, after=cursors, limit=st.integers(min_value=1, max_value=1000))
pull_responses = st.builds(
    PullResponse,
    blobs=st.lists(stored_blobs, max_size=4),
    has_more=st.booleans(),
    max_cursor=cursors,
)
presences = st.builds(Presence, online=st.booleans())
notifies = st.builds(
    Notify, blob_id=blob_ids, cursor=cursors, sender=device_ids, timestamp=millis, size=counts
)
acks = st.builds(Ack, cursor=cursors)
deletes = st.builds(Delete, blob_id=blob_ids, force=st.booleans())
log_gets = st.builds(LogGet, start=log_seqs, limit=st.integers(min_value=1, max_value=256))
logs = st.builds(Log, start=log_seqs, entries=st.lists(log_entries, max_size=8), head_seq=log_seqs)
log_appends = st.builds(LogAppend, entries=st.lists(log_entries, min_size=1, max_size=16))
log_appendeds = st.builds(LogAppended, head_seq=log_seqs, head_hash=digests)
memberships = st.builds(Membership, start=log_seqs, entries=st.lists(log_entries, max_size=16))
list_devices = st.builds(ListDevices)
devices = st.builds(Devices, devices=st.lists(device_infos, max_size=6))
register_pushes = st.builds(
    RegisterPush,
    token=st.text(min_size=1, max_size=4096),
    platform=st.sampled_from(PushPlatform),
    app_id=st.text(max_size=256),
)
unregister_pushes = st.builds(UnregisterPush, reason=texts)
# Lists stay short for speed; their bounds (1024 and 16384) are checked in test_codec.py.
chunk_haves = st.builds(ChunkHave, addresses=st.lists(addresses, min_size=1, max_size=16))
chunk_statuses = st.builds(ChunkStatus, chunks=st.lists(chunk_infos, max_size=8))
chunk_begins = st.builds(ChunkBegin, address=addresses, size=chunk_sizes)
chunk_puts = st.builds(ChunkPut, address=addresses, offset=chunk_offsets, data=pieces)
chunk_gets = st.builds(
    ChunkGet,
    address=addresses,
    offset=chunk_offsets,
    length=st.integers(min_value=1, max_value=MAX_CHUNK_PIECE),
)
chunk_datas = st.builds(ChunkData, address=addresses, offset=chunk_offsets, data=read_pieces)
errors = st.builds(
    Error,
    code=st.integers(min_value=0, max_value=65535),
    message=texts,
    retry_after=seconds,
)

STRATEGIES: dict[type[Message], st.SearchStrategy[Message]] = {
    Hello: hellos,
    Welcome: welcomes,
    Push: pushes,
    PushAck: push_acks,
    Pull: pulls,
    PullResponse: pull_responses,
    Presence: presences,
    Notify: notifies,
    Ack: acks,
    Delete: deletes,
    ListDevices: list_devices,
    Devices: devices,
    LogGet: log_gets,
    Log: logs,
    LogAppend: log_appends,
    LogAppended: log_appendeds,
    Membership: memberships,
    RegisterPush: register_pushes,
    UnregisterPush: unregister_pushes,
    ChunkHave: chunk_haves,
    ChunkStatus: chunk_statuses,
    ChunkBegin: chunk_begins,
    ChunkPut: chunk_puts,
    ChunkGet: chunk_gets,
    ChunkData: chunk_datas,
    Error: errors,
}
any_message: st.SearchStrategy[Message] = st.one_of(*STRATEGIES.values())


def test_all_messages_covers_every_message_type_once() -> None:
    types = [cls.TYPE for cls in ALL_MESSAGES]
    assert len(types) == len(set(types)) == len(MessageType) == 26
    assert set(types) == set(MessageType)
    assert len(set(ALL_MESSAGES)) == len(ALL_MESSAGES)
    for cls in ALL_MESSAGES:
        assert issubclass(cls, Message)
        assert isinstance(cls.TYPE, MessageType)


def test_every_message_type_has_a_strategy() -> None:
    assert set(STRATEGIES) == set(ALL_MESSAGES)
    assert {cls.TYPE for cls in STRATEGIES} == set(MessageType)


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=[cls.__name__ for cls in ALL_MESSAGES])
@settings(max_examples=60)  # per type (26 of them); any type together gets the full budget below
@given(data=st.data(), request_id=request_ids)
def test_round_trip(cls: type[Message], data: st.DataObject, request_id: int) -> None:
    message = data.draw(STRATEGIES[cls], label="message")
    assert type(message) is cls
    frame = encode(message, request_id=request_id)
    assert decode_frame(frame) == (request_id, message)
    decoded = decode(frame)
    assert decoded == message
    assert type(decoded) is cls
    # the envelope is [version, type, request_id, body-map]
    envelope = msgspec.msgpack.decode(frame)
    assert isinstance(envelope, list)
    assert envelope[:3] == [PROTOCOL_VERSION, int(cls.TYPE), request_id]
    assert isinstance(envelope[3], dict)
    # encoding is deterministic: re-encoding the decoded message gives the same bytes
    assert encode(decoded, request_id=request_id) == frame


@given(message=any_message, request_id=request_ids)
def test_round_trip_of_any_message(message: Message, request_id: int) -> None:
    assert decode_frame(encode(message, request_id=request_id)) == (request_id, message)
