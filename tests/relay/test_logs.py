"""The relay's logs, even at DEBUG, never hold payloads, tokens or keys."""

from __future__ import annotations

import base64
import contextlib
import json
import secrets

from tests.relay.support import RelayLauncher, clients, http, pull_all, push, revoke, run
from zerok.crypto import DeviceIdentity
from zerok.testing import TestGroup
from zerok.wire import (
    PushPlatform,
    RegisterPush,
)


def _encodings(secret: bytes) -> set[str]:
    """The ways a secret could show up in a log line."""
    forms = {
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode().rstrip("="),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
        base64.b32encode(secret).decode().rstrip("="),
        base64.b32encode(secret).decode().rstrip("=").lower(),
        repr(secret)[2:-1],
    }
    with contextlib.suppress(UnicodeDecodeError):
        forms.add(secret.decode())
    return forms


def test_debug_logs_hold_no_payload_token_or_key(launcher: RelayLauncher) -> None:
    relay = launcher.start("--log-level", "DEBUG", process=True)  # all the process writes
    keys = TestGroup()
    alice, bob, carol = (DeviceIdentity.generate() for _ in range(3))
    marker = "zkmark" + secrets.token_hex(8)
    blob = f"{marker}-blob-ciphertext".encode()
    token = f"{marker}-push-token"
    invite_payloads = [f"{marker}-invite-{i}".encode() for i in range(2)]

    async def scenario() -> None:
        async with clients(relay.url) as pool:
            a = await pool.open(keys, alice, name="alice")
            b = await pool.open(keys, bob, name="bob")
            c = await pool.open(keys, carol, name="carol")
            assert await c.request(RegisterPush(token=token, platform=PushPlatform.FCM)) == (
                RegisterPush(token=token, platform=PushPlatform.FCM)
            )
            await c.close()  # offline with a token: the next push wakes it
            await push(a, blob)
            assert [x.ciphertext for x in await pull_all(b)] == [blob]
            await revoke(a, keys, bob)

    run(scenario())

    for i, payload in enumerate(invite_payloads):
        lookup = f"{marker[:20]}{i}"
        body = {"lookup": lookup, "payload": base64.urlsafe_b64encode(payload).decode()}
        assert http("POST", relay.http_url + "/v1/invites", json.dumps(body).encode()).status == 201
        method = "GET" if i == 0 else "DELETE"
        assert http(method, f"{relay.http_url}/v1/invites/{lookup}").status in (200, 204)

    assert relay.stop() == 0
    logs = relay.stdout() + relay.stderr()
    # The logs are really at DEBUG and cover what happened.
    assert " DEBUG " in logs
    assert "revoked" in logs
    assert "push (not delivered" in logs

    relay_key = DeviceIdentity.load(relay.key_path)
    secrets_by_name: dict[str, bytes] = {
        "blob": blob,
        "push token": token.encode(),
        **{f"epoch key {n}": key for n, key in keys.keys.items()},
        "recovery secret": keys.recovery.secret,
        **{
            f"signing key {d.device_id.short()}": d.sign_key.private_bytes_raw()
            for d in (alice, bob, carol)
        },
        "relay private key": relay_key.private_bytes(),
        **{f"invite {i}": p for i, p in enumerate(invite_payloads)},
        **{f"device key {d.device_id.short()}": d.private_bytes() for d in (alice, bob, carol)},
    }
    assert marker not in logs
    for name, secret in secrets_by_name.items():
        for form in _encodings(secret):
            assert form not in logs, f"the {name} is in the logs as {form!r}"
