"""Plain HTTP on the relay's port: /health, /metrics and the invite mailbox."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time

import pytest

from tests.relay.support import (
    HttpReply,
    RelayLauncher,
    clients,
    http,
    metric,
    pull_all,
    push,
    raw_client,
    run,
    scrape,
)
from zerok import __version__
from zerok.errors import RemoteError
from zerok.relay.server import Relay
from zerok.testing import InProcessRelay, ManualClock, TestGroup
from zerok.wire import BlobId, Error, ErrorCode, Push

ACTIVE = "sync_relay_connections_active"

# -- /health and /metrics -----------------------------------------------------------------


def _health(relay: InProcessRelay) -> dict[str, object]:
    reply = http("GET", relay.http_url + "/health")
    assert reply.status == 200, reply
    assert reply.headers["Content-Type"].startswith("application/json")
    doc = reply.json()
    assert isinstance(doc, dict)
    return doc


async def _uncached(server: Relay) -> None:
    """Counts taken afresh for every request (the relay reuses them for a few seconds)."""
    server.http.counts.ttl = 0


def test_health_reports_the_relay_state(launcher: RelayLauncher) -> None:
    relay = launcher.start()
    relay.call(_uncached)
    health = _health(relay)
    assert set(health) >= {
        "status",
        "version",
        "connections",
        "groups",
        "blobs_buffered",
        "uptime_seconds",
    }
    assert health["status"] == "ok"
    assert health["version"] == __version__
    assert (health["connections"], health["groups"], health["blobs_buffered"]) == (0, 0, 0)
    uptime = health["uptime_seconds"]
    assert isinstance(uptime, int | float) and 0 <= uptime < 60

    async def scenario() -> None:
        async with clients(relay.url) as pool:
            a = await pool.open(TestGroup())
            b = await pool.open(TestGroup())
            for i in range(3):
                await push(a, b"%d" % i)
            await push(b, b"b")
            now = _health(relay)
            assert (now["connections"], now["groups"], now["blobs_buffered"]) == (2, 2, 4)
            assert isinstance(now["uptime_seconds"], int | float)
            assert now["uptime_seconds"] >= uptime

    run(scenario())
    # The clients closed their connections; the relay notices asynchronously.
    deadline = time.monotonic() + 5
    while _health(relay)["connections"] != 0:
        assert time.monotonic() < deadline, "closed connections still counted"
        time.sleep(0.05)
    assert _health(relay)["groups"] == 2


def test_metrics_count_connections_blobs_bytes_errors_and_latency(
    launcher: RelayLauncher,
) -> None:
    relay = launcher.start("--max-blob-size", "1KiB")

    async def scenario() -> None:
        keys = TestGroup()
        async with clients(relay.url) as pool:
            writer = await pool.open(keys)
            reader = await pool.open(keys)
            for i in range(3):
                await push(writer, os.urandom(100 + i))
            assert len(await pull_all(reader)) == 3
            with pytest.raises(RemoteError):  # a failed handshake: UNAUTHORIZED
                impostor = TestGroup()
                impostor.group_id = keys.group_id
                await pool.open(impostor)
            async with raw_client(relay.url) as raw:  # ERROR 2001 answers a request
                await raw.open(keys)
                answer = await raw.request(Push(blob_id=BlobId.random(), ciphertext=bytes(2000)))
                assert isinstance(answer, Error) and answer.code == ErrorCode.BLOB_TOO_LARGE

            # Closed connections leave the count when the relay has noticed: poll for it.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            while metric(m := await asyncio.to_thread(scrape, relay), ACTIVE) != 2:
                assert loop.time() < deadline, m
                await asyncio.sleep(0.05)
            assert metric(m, "sync_relay_connections_total") == 4
            assert metric(m, "sync_relay_blobs_buffered") == 3
            assert metric(m, "sync_relay_blobs_delivered_total") == 3
            assert metric(m, "sync_relay_blobs_received_total") == 3
            assert metric(m, "sync_relay_groups") == 1
            received = metric(m, "sync_relay_bytes_transferred_total", direction="in")
            sent = metric(m, "sync_relay_bytes_transferred_total", direction="out")
            assert received is not None and received > 300 + 2000
            assert sent is not None and sent > 300
            failures = {
                dict(labels).get("reason"): value
                for (name, labels), value in m.items()
                if name == "sync_relay_handshake_failures_total"
            }
            assert sum(failures.values()) == 1, failures
            assert metric(m, "sync_relay_errors_total", code="1002") == 1
            assert metric(m, "sync_relay_errors_total", code="2001") == 1
            assert metric(m, "sync_relay_push_latency_seconds_count") == 3
            latency = metric(m, "sync_relay_push_latency_seconds_sum")
            assert latency is not None and 0 < latency < 10
            assert metric(m, "sync_relay_push_latency_seconds_bucket", le="+Inf") == 3

    run(scenario())
    reply = http("GET", relay.http_url + "/metrics")
    assert reply.headers["Content-Type"].startswith("text/plain")
    assert b"# TYPE sync_relay_connections_total counter" in reply.body


def test_metrics_count_every_error_sent(launcher: RelayLauncher) -> None:
    relay = launcher.start("--max-blob-size", "1KiB", "--max-frame-size", "8KiB")

    async def scenario() -> None:
        keys = TestGroup()
        async with raw_client(relay.url) as raw:
            await raw.open(keys)
            big = Push(blob_id=BlobId.random(), ciphertext=bytes(10_000))
            answer = await raw.request(big)  # over the 8 KiB frame limit
            assert isinstance(answer, Error) and answer.code == ErrorCode.BLOB_TOO_LARGE
        async with raw_client(relay.url) as raw:
            await raw.open(keys)
            await raw.ws.send_str("text")
            [(_, error)] = await raw.frames_until_closed()
            assert isinstance(error, Error) and error.code == ErrorCode.INVALID_MESSAGE
        m = scrape(relay)
        assert metric(m, "sync_relay_errors_total", code="2001") == 1
        assert metric(m, "sync_relay_errors_total", code="1000") == 1

    run(scenario())


# -- the invite mailbox -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def relay(module_launcher: RelayLauncher) -> InProcessRelay:
    """The mailbox tests share one relay; its per-IP invite limit is tested on its own."""
    return module_launcher.start("--invites-per-minute", "1000")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _post(relay: InProcessRelay, lookup: str, payload: bytes) -> HttpReply:
    body = json.dumps({"lookup": lookup, "payload": _b64(payload)}).encode()
    return http("POST", relay.http_url + "/v1/invites", body)


def _lookup() -> str:
    return _b64(os.urandom(9))  # 12 characters of A-Z a-z 0-9 _ -


def _gone(reply: HttpReply, reason: str) -> None:
    """410: the invite existed and cannot be fetched any more, and the relay says why."""
    assert reply.status == 410, reply
    assert reply.json()["reason"] == reason
    assert "payload" not in reply.json()


def test_invite_is_handed_out_once(relay: InProcessRelay) -> None:
    lookup, payload = _lookup(), os.urandom(300)
    before = int(time.time() * 1000)
    created = _post(relay, lookup, payload)
    assert created.status == 201, created
    expires_at = created.json()["expires_at"]
    assert before + 590_000 <= expires_at <= int(time.time() * 1000) + 610_000  # 10 minutes

    taken = http("GET", f"{relay.http_url}/v1/invites/{lookup}")
    assert taken.status == 200, taken
    fetched = taken.json()["payload"]
    assert base64.urlsafe_b64decode(fetched + "=" * (-len(fetched) % 4)) == payload
    _gone(http("GET", f"{relay.http_url}/v1/invites/{lookup}"), "used")
    _gone(http("GET", f"{relay.http_url}/v1/invites/{lookup}"), "used")
    # A used invite cannot be cancelled, nor its lookup key be given another payload.
    assert http("DELETE", f"{relay.http_url}/v1/invites/{lookup}").status == 404
    assert _post(relay, lookup, b"second").status == 409
    _gone(http("GET", f"{relay.http_url}/v1/invites/{lookup}"), "used")


def test_unknown_invite_is_404(relay: InProcessRelay) -> None:
    reply = http("GET", f"{relay.http_url}/v1/invites/{_lookup()}")
    assert reply.status == 404
    assert "error" in reply.json()
    assert http("DELETE", f"{relay.http_url}/v1/invites/{_lookup()}").status == 404


def test_invite_can_be_cancelled(relay: InProcessRelay) -> None:
    lookup = _lookup()
    assert _post(relay, lookup, b"cancel me").status == 201
    assert http("DELETE", f"{relay.http_url}/v1/invites/{lookup}").status == 204
    _gone(http("GET", f"{relay.http_url}/v1/invites/{lookup}"), "cancelled")
    assert http("DELETE", f"{relay.http_url}/v1/invites/{lookup}").status == 404


def test_duplicate_invite_lookup_is_refused(relay: InProcessRelay) -> None:
    lookup = _lookup()
    assert _post(relay, lookup, b"first").status == 201
    assert _post(relay, lookup, b"second").status == 409
    taken = http("GET", f"{relay.http_url}/v1/invites/{lookup}")
    assert base64.urlsafe_b64decode(taken.json()["payload"] + "==") == b"first"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'"just a string"',
        b"{}",
        b'{"lookup": "abcdefgh1234"}',
        b'{"payload": "aGVsbG8"}',
        b'{"lookup": 12345678, "payload": "aGVsbG8"}',
        b'{"lookup": "abcdefgh1234", "payload": 5}',
        b'{"lookup": "short", "payload": "aGVsbG8"}',
        b'{"lookup": "has spaces in it", "payload": "aGVsbG8"}',
        b'{"lookup": "abcdefgh1234", "payload": "a"}',
        b"[" * 4000 + b"]" * 4000,  # within the body limit, deeper than the JSON parser goes
    ],
    ids=[
        "not-json",
        "array",
        "string",
        "empty-object",
        "no-payload",
        "no-lookup",
        "lookup-not-string",
        "payload-not-string",
        "lookup-too-short",
        "lookup-bad-characters",
        "payload-not-base64",
        "nested-too-deep",
    ],
)
def test_malformed_invite_is_400(relay: InProcessRelay, body: bytes) -> None:
    reply = http("POST", relay.http_url + "/v1/invites", body)
    assert reply.status == 400, reply
    assert "error" in reply.json()


def test_malformed_lookup_in_path_is_400(relay: InProcessRelay) -> None:
    assert http("GET", f"{relay.http_url}/v1/invites/short").status == 400
    assert http("GET", f"{relay.http_url}/v1/invites/{'x' * 129}").status == 400


def test_oversized_invite_is_413(relay: InProcessRelay) -> None:
    assert _post(relay, _lookup(), os.urandom(4097)).status == 413  # invite_max_size 4096
    assert _post(relay, _lookup(), os.urandom(4096)).status == 201
    huge = json.dumps({"lookup": _lookup(), "payload": "A" * 100_000}).encode()
    assert http("POST", relay.http_url + "/v1/invites", huge).status == 413


def test_invite_expires(launcher: RelayLauncher) -> None:
    clock = ManualClock()  # the relay's time: expiry needs no waiting
    relay = launcher.start("--invite-ttl", "1", clock=clock)
    kept, last_moment, expired = _lookup(), _lookup(), _lookup()
    assert _post(relay, kept, b"fetched in time").status == 201
    assert _post(relay, last_moment, b"fetched at the last moment").status == 201
    created = _post(relay, expired, b"fetched too late")
    assert created.status == 201
    expires_at = created.json()["expires_at"]
    assert expires_at == clock() + 1000
    assert http("GET", f"{relay.http_url}/v1/invites/{kept}").status == 200
    clock.advance(0.999)  # 1 ms before the expiry time: still valid
    assert http("GET", f"{relay.http_url}/v1/invites/{last_moment}").status == 200
    clock.advance(0.001)  # at the expiry time: expired
    _gone(http("GET", f"{relay.http_url}/v1/invites/{expired}"), "expired")
    _gone(http("GET", f"{relay.http_url}/v1/invites/{expired}"), "expired")
    _gone(http("GET", f"{relay.http_url}/v1/invites/{kept}"), "used")


def test_invite_requests_are_rate_limited_per_ip(launcher: RelayLauncher) -> None:
    relay = launcher.start("--invites-per-minute", "3")
    lookup = _lookup()
    assert _post(relay, lookup, b"one").status == 201
    assert http("GET", f"{relay.http_url}/v1/invites/{lookup}").status == 200
    _gone(http("GET", f"{relay.http_url}/v1/invites/{lookup}"), "used")
    for method in ("POST", "GET", "DELETE"):
        if method == "POST":
            reply = _post(relay, _lookup(), b"four")
        else:
            reply = http(method, f"{relay.http_url}/v1/invites/{lookup}")
        assert reply.status == 429, (method, reply)
        retry_after = int(reply.headers["Retry-After"])
        assert 0 < retry_after <= 20  # one request every 20 s
    # /health is not an invite request.
    assert http("GET", relay.http_url + "/health").status == 200
