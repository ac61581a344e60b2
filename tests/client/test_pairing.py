"""Pairing against a real relay: invite URLs, short codes and every way a code goes bad."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import pytest

from tests.client.conftest import Fleet
from tests.relay.support import run
from zerok.client import Invite, InviteError, SyncClient, pairing
from zerok.errors import StateError
from zerok.testing import RelayProcess


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


def test_pair_by_url_needs_no_relay_call(relay: RelayProcess, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            creator = fleet.new("creator")
            other = "ws://127.0.0.1:9/"  # a second relay, never contacted by join()
            await creator.create_group([relay.url, other])
            invite = await creator.create_invite()
            joiner = fleet.new("joiner")
            assert await joiner.join(invite.url) == creator.group_id
            assert joiner.relays == [relay.url, other]
            # The URL did not use the short code's mailbox entry: the code still works.
            late = fleet.new("late")
            assert await late.join(invite.short_code, relay=relay.url) == creator.group_id

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


def test_expired_code_and_url(relay: RelayProcess, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            creator = await creator_with_group(fleet, relay)
            invite = await creator.create_invite(ttl=1)
            assert invite.expires_at <= time.time() + 1
            while time.time() <= invite.expires_at + 0.05:
                await asyncio.sleep(0.05)
            joiner = fleet.new("joiner")
            await expect_invite_error(joiner, invite.short_code, "expired", relay.url)
            await expect_invite_error(joiner, invite.url, "expired")

    run(scenario())


def test_cancelled_code(relay: RelayProcess, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Fleet(tmp_path) as fleet:
            creator = await creator_with_group(fleet, relay)
            invite = await creator.create_invite()
            assert creator.last_invite() == Invite(
                "", invite.short_code, invite.expires_at, relay.url
            )
            assert await creator.cancel_invite(invite) is True
            assert await creator.cancel_invite(invite) is False  # nothing left to cancel
            joiner = fleet.new("joiner")
            await expect_invite_error(joiner, invite.short_code, "cancelled", relay.url)

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
            with pytest.raises(StateError) as caught:
                await joiner.join(invite.short_code, relay=relay.url)
            one_line(caught.value)
            # The code was not spent by the refused join.
            third = fleet.new("third")
            assert await third.join(invite.short_code, relay=relay.url) == creator.group_id

    run(scenario())
