"""The token broker and the limiter under faults: 5xx bursts, clock skew, shrinking TTLs, Redis outages."""

from __future__ import annotations

import datetime as dt
import email.utils
import time
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
import redis
import requests

from addon_project import redis_keys
from addon_project.redis_client import RELEASE_LOCK, get_redis, lua
from eshops.models import Eshop
from shoptet_api import limiter, tokens
from shoptet_api.client import ShoptetClient
from shoptet_api.errors import (
    ShoptetMaxTokensReached,
    ShoptetRateLimited,
    ShoptetServerError,
    error_from_response,
)
from shoptet_api.oauth import exchange_code
from shoptet_api.retry import client_wait
from shoptet_emulator import ShoptetEmulator

pytestmark = pytest.mark.django_db

GET_TOKEN = "/action/ApiOAuthServer/getAccessToken"


def issued_token_fingerprints(eshop: Eshop) -> list[str]:
    """The token fingerprints in the shared issued set (members are `<oauth fp>:<token fp>`)."""
    members = get_redis().zrange(tokens.issued_key(eshop.eshop_id), 0, -1)
    names = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
    return [name.rsplit(":", 1)[1] for name in names]


def minted(emulator: ShoptetEmulator, eshop: Eshop) -> int:
    return emulator.stats.api_tokens_issued.get(eshop.eshop_id, 0)


# --- A definite answer frees the cap slot; one client request mints at most once ----------------


def test_a_burst_of_5xx_from_getaccesstoken_does_not_lock_the_shop_out(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    shoptet_settings.fail_next(tokens.token_cap(), status=503, path_prefix=GET_TOKEN)

    for _ in range(tokens.token_cap()):
        with pytest.raises(ShoptetServerError):
            tokens.get_api_access_token(eshop)

    # Shoptet recovered: the 503s minted nothing, so no slot may still be held for them.
    assert tokens.get_api_access_token(eshop)
    assert get_redis().zcard(tokens.issued_key(eshop.eshop_id)) == 1


def test_one_client_request_mints_at_most_once(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    shoptet_settings.fail_next(10, status=503, path_prefix=GET_TOKEN)
    with ShoptetClient(eshop) as client, pytest.raises(ShoptetServerError):
        client.get("/api/eshop", max_attempts=4)
    time.sleep(0.2)  # the emulator records an answer just after sending it

    asked = [
        seen
        for _, seen, _ in list(shoptet_settings.stats.requests)
        if seen == GET_TOKEN
    ]
    assert asked == [GET_TOKEN]


def test_a_lost_getaccesstoken_answer_keeps_its_slot(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    # The connection drops after the request went out: Shoptet may have minted a token.
    shoptet_settings.drop_next(1, path_prefix=GET_TOKEN)

    with pytest.raises(Exception):  # noqa: B017, PT011 - the transport error class is not the point
        tokens.get_api_access_token(eshop)

    assert get_redis().zcard(tokens.issued_key(eshop.eshop_id)) == 1


# --- TTLs only grow --------------------------------------------------------------------------------


def test_a_short_lease_does_not_shrink_the_in_flight_sets_lifetime(
    eshop: Eshop,
) -> None:
    r = get_redis()
    deadline = time.monotonic() + 5
    with (
        limiter.request_slot(eshop.eshop_id, deadline=deadline, lease_seconds=60),
        limiter.request_slot(eshop.eshop_id, deadline=deadline, lease_seconds=1),
    ):
        ttl = r.pttl(redis_keys.leases_key(eshop.eshop_id))

    # The long request's lease must outlive the short one's: the set lives ≥ 60 s.
    assert ttl > 60_000


def test_a_short_token_reservation_does_not_shrink_the_issued_sets_lifetime(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    r = get_redis()
    tokens.get_api_access_token(eshop)  # stores a 1800 s token
    long_ttl = r.pttl(tokens.issued_key(eshop.eshop_id))
    shoptet_settings.token_lifetime = 5
    tokens.renew_if_expiring(eshop, within=10_000)  # a 5 s token

    assert long_ttl > 1_700_000
    assert r.pttl(tokens.issued_key(eshop.eshop_id)) >= long_ttl - 5_000


# --- "Now" is Redis's, not the caller's ------------------------------------------------------------


def test_a_host_whose_clock_runs_ahead_does_not_evict_live_leases(
    eshop: Eshop, settings: Any
) -> None:
    settings.SHOPTET_MAX_IN_FLIGHT = 2
    deadline = time.monotonic() + 0.3
    with (
        limiter.request_slot(eshop.eshop_id, deadline=deadline, lease_seconds=30),
        limiter.request_slot(eshop.eshop_id, deadline=deadline, lease_seconds=30),
    ):
        ahead = time.time() + 3600
        with (
            mock.patch("shoptet_api.limiter.time.time", return_value=ahead),
            pytest.raises(Exception, match="no free request slot"),
            limiter.request_slot(
                eshop.eshop_id, deadline=time.monotonic() + 0.3, lease_seconds=30
            ),
        ):
            pass


def test_a_host_whose_clock_runs_ahead_does_not_evict_live_tokens_from_the_cap(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop], settings: Any
) -> None:
    settings.SHOPTET_TOKEN_CAP = 2
    eshop = install()
    tokens.get_api_access_token(eshop)
    tokens.renew_if_expiring(eshop, within=10_000)
    assert get_redis().zcard(tokens.issued_key(eshop.eshop_id)) == 2
    tokens.clear_process_cache()

    # Two valid tokens exist; a host an hour ahead must still see the cap as full (it may think
    # the stored token expired, but it must not mint a third).
    with (
        mock.patch(
            "shoptet_api.tokens.renewal.time.time", return_value=time.time() + 3600
        ),
        pytest.raises(ShoptetMaxTokensReached),
    ):
        tokens.renew_if_expiring(eshop, within=10**9)

    assert minted(shoptet_settings, eshop) == 2


def test_retry_after_is_measured_against_the_answers_date_not_our_clock() -> None:
    # The server's clock is an hour behind ours; it asks for 20 s.
    server_now = dt.datetime.now(tz=dt.UTC) - dt.timedelta(hours=1)
    response = requests.Response()
    response.status_code = 429
    response.headers["Date"] = email.utils.format_datetime(server_now, usegmt=True)
    response.headers["Retry-After"] = email.utils.format_datetime(
        server_now + dt.timedelta(seconds=20), usegmt=True
    )
    response._content = b'{"data": null, "errors": [{"errorCode": "too-many-requests", "message": "x"}]}'

    error = error_from_response(response, endpoint="GET /api/eshop")

    assert isinstance(error, ShoptetRateLimited)
    assert 19.0 <= client_wait(error, attempt=1) <= 20.0 + 0.25


# --- Redis outages ---------------------------------------------------------------------------------


def test_a_lock_release_error_does_not_mask_the_real_failure(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop], settings: Any
) -> None:
    settings.SHOPTET_TOKEN_CAP = 1
    eshop = install()
    tokens.get_api_access_token(eshop)
    tokens.clear_process_cache()
    get_redis().delete(
        tokens.token_key(eshop.eshop_id)
    )  # the only slot is taken, no token stored
    real_lua = lua

    def failing_release(source: str) -> Any:
        script = real_lua(source)
        if source != RELEASE_LOCK:
            return script

        def release(**kwargs: Any) -> Any:
            raise redis.ConnectionError("Redis went away")

        return release

    with (
        mock.patch("shoptet_api.tokens.renewal.lua", failing_release),
        pytest.raises(ShoptetMaxTokensReached),
    ):
        tokens.get_api_access_token(eshop)

    # No fallback mint happened behind the cap's back.
    assert minted(shoptet_settings, eshop) == 1


def test_tokens_minted_while_redis_was_down_count_against_the_cap_once_it_is_back(
    shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    with (
        mock.patch("shoptet_api.tokens.renewal.get_redis", return_value=dead),
        mock.patch("shoptet_api.tokens.store.get_redis", return_value=dead),
    ):
        fallback = tokens.get_api_access_token(eshop)
    assert minted(shoptet_settings, eshop) == 1

    # Redis is back: the next contact (here the activity note of a call served from memory)
    # records the fallback token in the shared cap count.
    assert tokens.get_api_access_token(eshop) == fallback

    assert issued_token_fingerprints(eshop) == [tokens.fingerprint_of(fallback)]


def test_forgetting_an_old_installs_tokens_keeps_a_token_of_the_new_install(
    shoptet_settings: ShoptetEmulator, install: Callable[..., Eshop]
) -> None:
    eshop = install()
    old = tokens.get_api_access_token(eshop)
    # Reinstall: a new OAuth token. A request of the new install mints before the late forget runs.
    grant = exchange_code(code=shoptet_settings.issue_install_code(eshop.eshop_id))
    eshop.oauth_access_token = grant.access_token
    eshop.save()
    tokens.clear_process_cache()
    get_redis().delete(tokens.token_key(eshop.eshop_id))
    new = tokens.get_api_access_token(eshop)
    assert new != old

    tokens.forget_tokens(
        eshop.eshop_id, keep_oauth_fp=tokens.oauth_fingerprint(grant.access_token)
    )

    assert issued_token_fingerprints(eshop) == [tokens.fingerprint_of(new)]
    tokens.clear_process_cache()
    assert tokens.get_api_access_token(eshop) == new
    assert minted(shoptet_settings, eshop) == 2


def test_forgetting_everything_after_an_uninstall(
    shoptet_settings: ShoptetEmulator, install: Callable[..., Eshop]
) -> None:
    eshop = install()
    tokens.get_api_access_token(eshop)

    tokens.forget_tokens(eshop.eshop_id)

    r = get_redis()
    assert not r.exists(
        tokens.token_key(eshop.eshop_id), tokens.issued_key(eshop.eshop_id)
    )
