"""The token broker's edges, each pinned by a test that fails when the edge moves by one: the cap
counts exactly `SHOPTET_TOKEN_CAP` tokens, the renewal margin renews before expiry (never after),
a lost getAccessToken answer keeps its reservation, and the renewal lock is always released."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest

from addon_project.encryption import Secret
from addon_project.redis_client import get_redis
from eshops.models import Eshop
from shoptet_api import tokens
from shoptet_api.errors import (
    ShoptetConnectionError,
    ShoptetMaxTokensReached,
    ShoptetServerError,
    ShoptetTimeoutError,
)
from shoptet_emulator import ShoptetEmulator

pytestmark = pytest.mark.django_db

GET_TOKEN = "/action/ApiOAuthServer/getAccessToken"
# SHOPTET_TOKEN_RENEW_MARGIN in these tests; a 1800 s token's fraction (4 %) is larger, so it applies.
MARGIN = 60.0


@pytest.fixture(autouse=True)
def _known_margin(settings: Any) -> None:
    settings.SHOPTET_TOKEN_RENEW_MARGIN = MARGIN
    settings.SHOPTET_TOKEN_RENEW_MARGIN_FRACTION = 0.04
    settings.SHOPTET_TOKEN_RENEW_JITTER = 0.0


def minted(emulator: ShoptetEmulator, eshop: Eshop) -> int:
    return int(emulator.stats.api_tokens_issued.get(eshop.eshop_id, 0))


def issued_members(eshop: Eshop) -> list[str]:
    members = get_redis().zrange(tokens.issued_key(eshop.eshop_id), 0, -1)
    return [m.decode() if isinstance(m, bytes) else str(m) for m in members]


def expire_stored_token_in(eshop: Eshop, seconds: float) -> None:
    """Make the shared token look `seconds` from expiry (Shoptet still accepts it), and make this
    process a fresh one that must read Redis."""
    get_redis().hset(tokens.token_key(eshop.eshop_id), "exp", time.time() + seconds)
    tokens.clear_process_cache()


# --- The cap: exactly SHOPTET_TOKEN_CAP valid tokens, not one more -------------------------------


def test_the_cap_admits_exactly_cap_tokens_and_keeps_the_current_one_after(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop], settings: Any
) -> None:
    settings.SHOPTET_TOKEN_CAP = 2
    eshop = install()
    first = tokens.get_api_access_token(eshop)

    # The second token fills the cap; a third forced renewal must find the cap full.
    assert tokens.renew_if_expiring(eshop, within=10**9) is True
    second = tokens.get_api_access_token(eshop)
    assert tokens.renew_if_expiring(eshop, within=10**9) is False

    assert second != first
    assert tokens.get_api_access_token(eshop) == second
    assert minted(shoptet_settings, eshop) == 2
    assert len(issued_members(eshop)) == 2


def test_a_full_cap_without_a_usable_token_refuses_with_the_time_to_the_next_slot(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop], settings: Any
) -> None:
    settings.SHOPTET_TOKEN_CAP = 1
    eshop = install()
    tokens.get_api_access_token(eshop)
    get_redis().delete(
        tokens.token_key(eshop.eshop_id)
    )  # the one slot is taken, no token known
    tokens.clear_process_cache()

    with pytest.raises(ShoptetMaxTokensReached) as caught:
        tokens.get_api_access_token(eshop)

    assert minted(shoptet_settings, eshop) == 1
    assert (
        caught.value.retry_after is not None
    )  # the 1800 s token frees its slot in ~30 min


# --- The renewal margin: renewed ahead of expiry, reused outside the margin ----------------------


def test_renew_margin_is_the_smaller_of_the_setting_and_the_lifetimes_fraction() -> (
    None
):
    assert tokens.renew_margin(1800) == MARGIN
    assert tokens.renew_margin(100) == pytest.approx(4.0)
    assert tokens.renew_margin(1800) > 0


@pytest.mark.parametrize(
    ("seconds_left", "usable", "valid"),
    [
        (MARGIN + 1, True, True),  # outside the margin: keep using it
        (
            MARGIN - 1,
            False,
            True,
        ),  # inside the margin: still accepted, but renew it now
        (0.5, False, False),  # in its last second: not even for the request in flight
        (-5, False, False),  # expired
    ],
)
def test_a_cached_token_is_usable_only_outside_the_margin(
    seconds_left: float, usable: bool, valid: bool
) -> None:
    now = time.time()
    token = tokens.CachedToken(
        token=Secret("t"), expires_at=now + seconds_left, lifetime=1800.0
    )

    assert token.usable(now) is usable
    assert token.valid(now) is valid


def test_a_token_inside_the_margin_is_renewed_before_it_expires(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    old = tokens.get_api_access_token(eshop)
    expire_stored_token_in(eshop, MARGIN - 10)

    new = tokens.get_api_access_token(eshop)

    assert new != old
    assert minted(shoptet_settings, eshop) == 2


def test_a_token_outside_the_margin_is_reused(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    old = tokens.get_api_access_token(eshop)
    expire_stored_token_in(eshop, MARGIN + 10)

    assert tokens.get_api_access_token(eshop) == old
    assert minted(shoptet_settings, eshop) == 1


def test_renewal_is_due_just_before_the_margin(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    tokens.get_api_access_token(eshop)
    expire_stored_token_in(eshop, 600)
    now = time.time()

    [(due_id, due_in)] = tokens.renewal_due([eshop.eshop_id], now=now, horizon=600)
    # Without jitter: at expiry minus the margin (540 s), not at expiry plus it (660 s, past the horizon).
    assert due_id == eshop.eshop_id
    assert 600 - MARGIN - 1 <= due_in <= 600 - MARGIN
    assert tokens.renewal_due([eshop.eshop_id], now=now, horizon=600 - MARGIN - 5) == []


def test_a_token_already_inside_the_margin_is_due_at_once(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    tokens.get_api_access_token(eshop)
    expire_stored_token_in(eshop, MARGIN - 10)

    assert tokens.renewal_due([eshop.eshop_id], now=time.time(), horizon=1) == [
        (eshop.eshop_id, 0.0)
    ]


def test_renew_ahead_renews_a_token_inside_the_margin(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    old = tokens.get_api_access_token(eshop)
    expire_stored_token_in(eshop, MARGIN - 10)

    assert tokens.renew_ahead(eshop) is True

    assert tokens.get_api_access_token(eshop) != old
    assert minted(shoptet_settings, eshop) == 2


def test_renew_ahead_leaves_a_token_well_outside_the_margin(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    old = tokens.get_api_access_token(eshop)
    # renew_ahead looks margin + jitter (0 here) + 5 s ahead: 65 s.
    expire_stored_token_in(eshop, MARGIN + 30)

    assert tokens.renew_ahead(eshop) is False

    assert tokens.get_api_access_token(eshop) == old
    assert minted(shoptet_settings, eshop) == 1


# --- A lost getAccessToken answer keeps its reservation for a token's lifetime -------------------


def test_a_lost_answer_keeps_its_reservation_for_a_whole_lifetime_and_blocks_a_mint_past_the_cap(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop], settings: Any
) -> None:
    settings.SHOPTET_TOKEN_CAP = 1
    eshop = install()
    shoptet_settings.drop_next(1, path_prefix=GET_TOKEN)

    with pytest.raises(ShoptetConnectionError) as caught:
        tokens.get_api_access_token(eshop)
    assert caught.value.request_sent is True

    # Shoptet may have minted a token we never saw: its reservation stays for a lifetime...
    entries: list[Any] = get_redis().zrange(
        tokens.issued_key(eshop.eshop_id), 0, -1, withscores=True
    )
    [(member, expires_at)] = entries
    assert b":pending:" in member
    # (from when Shoptet may have minted it: as late as the call's timeouts after the reservation)
    assert expires_at - time.time() > (
        settings.SHOPTET_TOKEN_DEFAULT_LIFETIME
        + settings.SHOPTET_CONNECT_TIMEOUT
        + settings.SHOPTET_TOKEN_READ_TIMEOUT
    )
    # ...so with a cap of one, the next request may not mint a second token.
    with pytest.raises(ShoptetMaxTokensReached):
        tokens.get_api_access_token(eshop)
    # (The emulator drops the request before minting; the broker cannot know that.)
    assert minted(shoptet_settings, eshop) == 0


# --- The renewal lock is released, whatever the renewal's outcome --------------------------------


def renew_lock_held(eshop: Eshop) -> bool:
    return bool(get_redis().exists(tokens.renew_lock_key(eshop.eshop_id)))


def test_the_renewal_lock_is_released_after_a_renewal(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()

    tokens.get_api_access_token(eshop)

    assert minted(shoptet_settings, eshop) == 1
    assert not renew_lock_held(eshop)


def test_the_renewal_lock_is_released_after_a_refused_renewal(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    shoptet_settings.fail_next(1, status=503, path_prefix=GET_TOKEN)

    with pytest.raises(ShoptetServerError):
        tokens.get_api_access_token(eshop)

    assert not renew_lock_held(eshop)


def test_the_renewal_lock_is_released_after_a_lost_answer(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    shoptet_settings.drop_next(1, path_prefix=GET_TOKEN)

    with pytest.raises(ShoptetConnectionError):
        tokens.get_api_access_token(eshop)

    assert not renew_lock_held(eshop)


def test_the_renewal_lock_is_released_when_the_cap_refuses(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop], settings: Any
) -> None:
    settings.SHOPTET_TOKEN_CAP = 1
    eshop = install()
    tokens.get_api_access_token(eshop)
    get_redis().delete(tokens.token_key(eshop.eshop_id))
    tokens.clear_process_cache()

    with pytest.raises(ShoptetMaxTokensReached):
        tokens.get_api_access_token(eshop)

    assert not renew_lock_held(eshop)


def test_the_renewal_lock_is_released_after_a_forced_renewal(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    tokens.get_api_access_token(eshop)

    assert tokens.renew_if_expiring(eshop, within=10**9) is True

    assert not renew_lock_held(eshop)


# --- Waits go through the one patchable sleep ----------------------------------------------------


def test_waiting_for_another_renewer_sleeps_through_the_patchable_sleep(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop], settings: Any
) -> None:
    settings.SHOPTET_TOKEN_WAIT_TIMEOUT = 0.3
    eshop = install()
    # Another process holds the lock and never stores a token.
    get_redis().set(tokens.renew_lock_key(eshop.eshop_id), "someone-else", px=60_000)

    with (
        mock.patch("shoptet_api.tokens.renewal.sleep", autospec=True) as slept,
        pytest.raises(ShoptetTimeoutError),
    ):
        tokens.get_api_access_token(eshop)

    waits = [float(call.args[0]) for call in slept.call_args_list]
    assert waits
    assert all(
        0 < wait <= 0.2 for wait in waits
    )  # 10 ms growing to 100 ms, plus jitter
    assert minted(shoptet_settings, eshop) == 0


# --- Health: written by failures only, gone with the next renewal -----------------------------------


def test_a_healthy_tenant_holds_no_health_key_and_its_renewal_time_lives_with_the_token(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    before = time.time()

    tokens.get_api_access_token(eshop)

    assert not get_redis().exists(tokens.health_key(eshop.eshop_id))
    health = tokens.token_health(eshop.eshop_id)
    assert before <= health["renewed_at"] <= time.time()
    assert health["failures"] == 0


def test_failures_expire_and_the_next_renewal_clears_them(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    shoptet_settings.fail_next(2, status=503, path_prefix=GET_TOKEN)
    for _ in range(2):
        with pytest.raises(ShoptetServerError):
            tokens.get_api_access_token(eshop)

    r = get_redis()
    health = tokens.token_health(eshop.eshop_id)
    assert (health["failures"], health["renewed_at"]) == (2, None)
    assert "ShoptetServerError" in health["last_error"]
    # The record expires: an idle tenant's goes too.
    assert r.ttl(tokens.health_key(eshop.eshop_id)) > 0

    tokens.get_api_access_token(eshop)

    assert not r.exists(tokens.health_key(eshop.eshop_id))
    assert tokens.token_health(eshop.eshop_id)["failures"] == 0
