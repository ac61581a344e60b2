"""Pairing against a real relay: invite URLs, short codes and every way a code goes bad.

An invite is a ticket in the group's log: the URL and the short code carry the same one,
so either enrolls one device, once."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import msgspec
import pytest

from tests.client.conftest import RELAY_ARGS, Fleet
from tests.relay.support import RelayLauncher, run
from zerok.client import Invite, InviteError, SyncClient, pairing
from zerok.errors import StateError
from zerok.testing import ManualClock, RelayProcess


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text, "an empty error message"
    assert "\n" not in text, f"not one line: {text!r}"
    return text


async def expect_invite_error(
    joiner: SyncClient, code_or_url: str, reason: str, relay: str | None = None
) -> InviteError:
    with pytest.raises(InviteError) as caught:
        await joiner.join(code_or_url, relay=relay)
    assert caught.value.reason == reason, one_line(caught.value)
    one_line(caught.value)
    assert joiner.group_id is None, "a failed join left the device in a group"
    return caught.value


def mutate(code: str, position: int) -> str:
    """``code`` with the character at ``position`` (of its 16) replaced by another one."""
    chars = list(code.replace("-", ""))
    chars[position] = next(c for c in pairing.ALPHABET if c != chars[position])
    text = "".join(chars)
    return "-".join(text[i : i + 4] for i in range(0, 16, 4))


def with_checksum(first15: str) -> str:
    values = [pairing.ALPHABET.index(c) for c in first15]
    text = first15 + pairing.ALPHABET[pairing._luhn_check(values)]
    return "-".join(text[i : i + 4] for i in range(0, 16, 4))


async def creator_with_group(fleet: Fleet, relay: RelayProcess) -> SyncClient:
    creator = fleet.new("creator")
    await creator.create_group([relay.url])
    return creator


def test_pair_by_short_code(relay: RelayProcess, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            creator = await creator_with_group(fleet, relay)
            invite = await creator.create_invite()
            assert isinstance(invite, Invite)
            assert invite.relay == relay.url
            assert invite.url.startswith("zerok://sync?invite=")
            assert time.time() + 590 < invite.expires_at <= time.time() + 600
            assert len(invite.short_code) == 19 and invite.short_code.count("-") == 3
            joiner = fleet.new("joiner")
            group_id = await joiner.join(invite.short_code, relay=relay.url)
            assert group_id == joiner.group_id == creator.group_id
            assert joiner.relays == creator.relays == [relay.url]

    run(scenario())


def test_pair_by_url_uses_no_mailbox_and_spends_the_ticket(
    relay: RelayProcess, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            creator = fleet.new("creator")
            other = "ws://127.0.0.1:9/"  # a second relay of the group, never reached
            await creator.create_group([relay.url, other])
            invite = await creator.create_invite()
            joiner = fleet.new("joiner")
            assert await joiner.join(invite.url) == creator.group_id
            assert joiner.relays == [relay.url, other]
            # The short code carries the same ticket, which is used now: the relay says so.
            late = fleet.new("late")
            await expect_invite_error(late, invite.short_code, "used", relay.url)
            await expect_invite_error(late, invite.url, "used")

    run(scenario())


def test_join_takes_the_relay_from_sync_relay_url(
    relay: RelayProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SYNC_RELAY_URL", relay.url)

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            creator = await creator_with_group(fleet, relay)
            invite = await creator.create_invite()
            joiner = fleet.new("joiner")
            assert await joiner.join(invite.short_code) == creator.group_id
            assert joiner.relays == [relay.url]

    run(scenario())


def test_short_code_without_any_relay_is_an_invite_error(
    relay: RelayProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SYNC_RELAY_URL", raising=False)

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            creator = await creator_with_group(fleet, relay)
            invite = await creator.create_invite()
            joiner = fleet.new("joiner")
            error = await expect_invite_error(joiner, invite.short_code, "invalid")
            assert "SYNC_RELAY_URL" in str(error)
            # Nothing was fetched: the code still works with the relay given.
            assert await joiner.join(invite.short_code, relay=relay.url) == creator.group_id

    run(scenario())


def test_mistyped_codes(relay: RelayProcess, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            creator = await creator_with_group(fleet, relay)
            invite = await creator.create_invite()
            joiner = fleet.new("joiner")
            code = invite.short_code
            for position in range(16):  # the check character catches any single change
                await expect_invite_error(joiner, mutate(code, position), "mistyped", relay.url)
            await expect_invite_error(joiner, code[:-1], "mistyped", relay.url)
            await expect_invite_error(joiner, code + "7", "mistyped", relay.url)
            await expect_invite_error(joiner, "", "mistyped", relay.url)
            outside = "U" + code[1:]  # U is not in the Crockford alphabet
            error = await expect_invite_error(joiner, outside, "mistyped", relay.url)
            assert "U" in str(error)
            await expect_invite_error(joiner, "*" + code[1:], "mistyped", relay.url)
            # None of these reached the relay: the real code is still waiting.
            assert await joiner.join(code.lower(), relay=relay.url) == creator.group_id

    run(scenario())


def test_used_code(relay: RelayProcess, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            creator = await creator_with_group(fleet, relay)
            invite = await creator.create_invite()
            first = fleet.new("first")
            assert await first.join(invite.short_code, relay=relay.url) == creator.group_id
            second = fleet.new("second")
            await expect_invite_error(second, invite.short_code, "used", relay.url)

    run(scenario())


def test_expired_code_and_url(launcher: RelayLauncher, tmp_path: Path) -> None:
    clock = ManualClock()
    relay = launcher.start(*RELAY_ARGS, clock=clock)

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            creator = fleet.new("creator", clock=clock)
            await creator.create_group([relay.url])
            invite = await creator.create_invite(ttl=60)
            assert invite.expires_at == clock() / 1000 + 60
            clock.advance(61)
            joiner = fleet.new("joiner", clock=clock)
            await expect_invite_error(joiner, invite.short_code, "expired", relay.url)
            await expect_invite_error(joiner, invite.url, "expired")

    run(scenario())


def test_an_expired_ticket_is_refused_by_the_relay(launcher: RelayLauncher, tmp_path: Path) -> None:
    """The joiner's clock is behind: the relay's clock decides."""
    clock = ManualClock()
    relay = launcher.start(*RELAY_ARGS, clock=clock)

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            creator = fleet.new("creator", clock=clock)
            await creator.create_group([relay.url])
            invite = await creator.create_invite(ttl=60)
            clock.advance(61)
            joiner = fleet.new("joiner", clock=lambda: clock() - 120_000)
            await expect_invite_error(joiner, invite.url, "expired")

    run(scenario())


def test_cancelled_code(relay: RelayProcess, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            creator = await creator_with_group(fleet, relay)
            invite = await creator.create_invite()
            assert creator.last_invite() == Invite(
                "", invite.short_code, invite.expires_at, relay.url, invite.ticket
            )
            assert await creator.cancel_invite(invite) is True
            assert await creator.cancel_invite(invite) is False  # nothing left to cancel
            joiner = fleet.new("joiner")
            await expect_invite_error(joiner, invite.short_code, "cancelled", relay.url)


def test_a_cancelled_url_invite_is_refused(relay: RelayProcess, tmp_path: Path) -> None:
    """The URL never went through the mailbox: the Cancel entry in the log stops it."""

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            creator = await creator_with_group(fleet, relay)
            invite = await creator.create_invite()
            assert await creator.cancel_invite(creator.last_invite() or invite) is True
            joiner = fleet.new("joiner")
            await expect_invite_error(joiner, invite.url, "cancelled")

    run(scenario())


def test_unknown_code(relay: RelayProcess, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            joiner = fleet.new("joiner")
            code = pairing.new_short_code()  # valid checksum, never stored at the relay
            await expect_invite_error(joiner, code, "unknown", relay.url)

    run(scenario())


def test_wrong_second_half(relay: RelayProcess, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            creator = await creator_with_group(fleet, relay)
            invite = await creator.create_invite()
            real = invite.short_code.replace("-", "")
            while True:
                tail = "".join(secrets.choice(pairing.ALPHABET) for _ in range(7))
                if tail != real[8:15]:
                    break
            forged = with_checksum(real[:8] + tail)
            assert pairing.code_lookup(forged) == pairing.code_lookup(invite.short_code)
            assert forged.replace("-", "") != real
            joiner = fleet.new("joiner")
            await expect_invite_error(joiner, forged, "wrong", relay.url)

    run(scenario())


def test_mangled_urls(relay: RelayProcess, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            creator = await creator_with_group(fleet, relay)
            url = (await creator.create_invite()).url
            joiner = fleet.new("joiner")
            mangled = [
                url[:-12],  # cut short
                url.replace("invite=", "invitation="),
                url.replace("zerok://", "https://"),
                "zerok://sync?invite=" + "A" * 40,
                url[: len(pairing.URL_PREFIX)] + "%%%",
            ]
            for bad in mangled:
                with pytest.raises(InviteError) as caught:
                    await joiner.join(bad)
                one_line(caught.value)
                assert caught.value.reason in {"invalid", "mistyped"}, caught.value.reason
                assert joiner.group_id is None
            assert await joiner.join(url) == creator.group_id

    run(scenario())


def test_join_when_already_in_a_group(relay: RelayProcess, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            creator = await creator_with_group(fleet, relay)
            invite = await creator.create_invite()
            with pytest.raises(StateError):
                await creator.join(invite.url)
            with pytest.raises(StateError):
                await creator.create_group([relay.url])
            joiner = fleet.new("joiner")
            await joiner.join(invite.url)
            second = await creator.create_invite()
            with pytest.raises(StateError) as caught:
                await joiner.join(second.short_code, relay=relay.url)
            one_line(caught.value)
            # The code was not spent by the refused join.
            third = fleet.new("third")
            assert await third.join(second.short_code, relay=relay.url) == creator.group_id

    run(scenario())


def test_two_invites_used_at_once_both_enroll(relay: RelayProcess, tmp_path: Path) -> None:
    """Both enrollments follow the same head: the relay takes one, the other device reads
    the log again (LOG_OUTDATED), builds on the new head and gets in too."""

    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            creator = await creator_with_group(fleet, relay)
            first, second = await creator.create_invite(), await creator.create_invite()
            b, c = fleet.new("b"), fleet.new("c")
            joined = await asyncio.gather(b.join(first.url), c.join(second.url))
            assert list(joined) == [creator.group_id] * 2
            devices = {d.device_id: d for d in await creator.list_devices()}
            assert {b.device_id, c.device_id} <= set(devices)
            assert devices[b.device_id].active and devices[c.device_id].active
            assert b.log_head != c.log_head  # the second one knows the first's enrollment
            assert creator.log_head in {b.log_head, c.log_head}

    run(scenario())


def test_one_ticket_used_twice_at_once_enrolls_one_device(
    relay: RelayProcess, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            creator = await creator_with_group(fleet, relay)
            invite = await creator.create_invite()
            b, c = fleet.new("b"), fleet.new("c")
            results = await asyncio.gather(
                b.join(invite.url), c.join(invite.url), return_exceptions=True
            )
            errors = [r for r in results if isinstance(r, BaseException)]
            assert results.count(creator.group_id) == 1, results
            assert len(errors) == 1 and isinstance(errors[0], InviteError)
            assert errors[0].reason == "used", errors[0]
            active = [d for d in await creator.list_devices() if d.active]
            assert len(active) == 2

    run(scenario())


# -- the invite payload, without a relay ------------------------------------------------------


def payload(**changes: object) -> pairing.InvitePayload:
    fields: dict[str, object] = {
        "v": pairing.INVITE_VERSION,
        "relays": ["ws://relay.example/"],
        "group": bytes(range(32)),
        "ticket": bytes(32),
        "epoch": 3,
        "key": bytes([7]) * 32,
        "expires_at": 2_000_000_000_000,
        "inviter": bytes([9]) * 32,
    }
    fields.update(changes)
    return pairing.InvitePayload(**fields)  # type: ignore[arg-type]


def test_an_invite_url_carries_the_payload() -> None:
    url = pairing.invite_url(payload())
    assert url.startswith(pairing.URL_PREFIX) and "=" not in url[len(pairing.URL_PREFIX) :]
    assert pairing.parse_url(url, now_ms=0) == payload()


def test_an_invite_of_protocol_1_is_refused_with_what_to_do() -> None:
    old = msgspec.msgpack.encode({"v": 1, "relays": ["ws://r/"], "root_key": bytes(32)})
    with pytest.raises(InviteError, match=r"zerok 0\.1 \(protocol 1\).*ask for an invite") as e:
        pairing.decode_payload(old, now_ms=0)
    assert e.value.reason == "invalid"


@pytest.mark.parametrize(
    "bad",
    [
        {"relays": []},
        {"group": bytes(31)},
        {"key": b""},
        {"epoch": -1},
    ],
    ids=["no-relay", "short-group", "no-key", "negative-epoch"],
)
def test_a_damaged_invite_is_invalid(bad: dict[str, object]) -> None:
    fields = msgspec.to_builtins(payload(), builtin_types=(bytes,))
    assert pairing.decode_payload(msgspec.msgpack.encode(fields), now_ms=0) == payload()
    raw = msgspec.msgpack.encode(fields | bad)
    with pytest.raises(InviteError) as caught:
        pairing.decode_payload(raw, now_ms=0)
    assert caught.value.reason == "invalid", one_line(caught.value)


def test_an_invite_past_its_expiry_is_expired() -> None:
    data = pairing.encode_payload(payload(expires_at=1000))
    with pytest.raises(InviteError) as caught:
        pairing.decode_payload(data, now_ms=1000)
    assert caught.value.reason == "expired"
