"""ShoptetClient against the emulator over real HTTP, real Redis and the database: envelopes,
token renewal, retries, rate governance, pagination and tenant lifecycle."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from unittest import mock

import pytest
import requests

from addon_project import activity
from eshops.models import Eshop
from oauth import services
from shoptet_api import client as client_module
from shoptet_api import limiter, tokens, transport
from shoptet_api.client import ShoptetClient, endpoint_label
from shoptet_api.errors import (
    AddonNotInstalled,
    AddonSuspended,
    ShoptetAPIError,
    ShoptetConnectionError,
    ShoptetForbidden,
    ShoptetInvalidToken,
    ShoptetNotFound,
    ShoptetOAuthError,
    ShoptetPartialSuccess,
    ShoptetServerError,
)
from shoptet_emulator import ShoptetEmulator

pytestmark = pytest.mark.django_db

GET_ACCESS_TOKEN = "/action/ApiOAuthServer/getAccessToken"
INSTALL_EXCHANGE = "/action/ApiOAuthServer/token"
RENEW_KEY = "/api/webhooks/renew-signature-key"
# Retry-After and Date are whole-second HTTP dates, so the wait they imply can be ~1 s off
# either way (plus the jitter).
RETRY_AFTER_ROUNDING = 1.25
JITTER = 0.25


@pytest.fixture
def installed_eshop(shoptet_settings: ShoptetEmulator) -> Eshop:
    """A tenant installed through the real install flow: the emulator knows its OAuth token."""
    shop = shoptet_settings.add_eshop()
    return services.install_addon(
        code=shoptet_settings.issue_install_code(shop.eshop_id)
    )


@pytest.fixture
def api(installed_eshop: Eshop) -> Iterator[ShoptetClient]:
    with ShoptetClient(installed_eshop) as client:
        yield client


@pytest.fixture
def sleeps() -> Iterator[mock.MagicMock]:
    """Record every retry wait instead of sleeping (patched where the client calls it: other
    modules' sleeps, such as a token wait, are not counted)."""
    with mock.patch("shoptet_api.retry.sleep", autospec=True) as sleep:
        yield sleep


@pytest.fixture
def responses_seen() -> Iterator[list[requests.Response]]:
    """Every response the client received, in order (the transport itself still runs)."""
    seen: list[requests.Response] = []

    def capture(*args: Any, **kwargs: Any) -> requests.Response:
        response = transport.send(*args, **kwargs)
        seen.append(response)
        return response

    with mock.patch.object(client_module, "send", autospec=True, side_effect=capture):
        yield seen


def waits(sleep: mock.MagicMock) -> list[float]:
    return [float(call.args[0]) for call in sleep.call_args_list]


def answered(emulator: ShoptetEmulator, path: str, *, expect: int) -> list[int]:
    """Statuses the emulator sent on `path` (0: dropped), in order.

    The emulator records an answer just after sending it, so give it a moment to catch up
    with `expect` answers; any extra answer is still returned, for the caller to assert on.
    """
    pause = threading.Event()
    deadline = time.monotonic() + 2.0
    while True:
        statuses = [
            status for _, seen, status in list(emulator.stats.requests) if seen == path
        ]
        if len(statuses) >= expect or time.monotonic() > deadline:
            return statuses
        pause.wait(0.01)


def calls_after_install(emulator: ShoptetEmulator) -> list[tuple[str, str, int]]:
    """Every request the emulator saw except the install's code exchange."""
    return [
        call for call in list(emulator.stats.requests) if call[1] != INSTALL_EXCHANGE
    ]


def valid_api_tokens(emulator: ShoptetEmulator, eshop: Eshop) -> set[str]:
    """The e-shop's API tokens the emulator still accepts (read from its state)."""
    return set(emulator.get_eshop(eshop.eshop_id).api_tokens)


def api_requests(emulator: ShoptetEmulator, eshop: Eshop) -> int:
    return int(emulator.stats.api_requests.get(eshop.eshop_id, 0))


def minted(emulator: ShoptetEmulator, eshop: Eshop) -> int:
    return int(emulator.stats.api_tokens_issued.get(eshop.eshop_id, 0))


# --- Envelopes and tokens -------------------------------------------------------------------------


def test_get_returns_the_envelope_data(
    api: ShoptetClient, installed_eshop: Eshop
) -> None:
    data = api.get("/api/eshop")

    assert data["contactInformation"]["eshopId"] == installed_eshop.eshop_id
    assert "errors" not in data
    assert "metadata" not in data


def test_client_reuses_one_api_token_for_several_calls(
    shoptet_settings: ShoptetEmulator, api: ShoptetClient, installed_eshop: Eshop
) -> None:
    for _ in range(3):
        api.get("/api/eshop")
    with ShoptetClient(installed_eshop) as other:
        other.get("/api/eshop")

    assert minted(shoptet_settings, installed_eshop) == 1
    assert shoptet_settings.stats.access_token_requests[installed_eshop.eshop_id] == 1
    assert api_requests(shoptet_settings, installed_eshop) == 4


def test_client_renews_token_once_on_expired_token(
    shoptet_settings: ShoptetEmulator, api: ShoptetClient, installed_eshop: Eshop
) -> None:
    old = tokens.get_api_access_token(installed_eshop)
    shoptet_settings.expire_api_tokens(installed_eshop.eshop_id)

    data = api.get("/api/eshop")

    assert data["contactInformation"]["eshopId"] == installed_eshop.eshop_id
    assert minted(shoptet_settings, installed_eshop) == 2
    assert answered(shoptet_settings, "/api/eshop", expect=2) == [401, 200]
    assert tokens.get_api_access_token(installed_eshop) != old


def test_second_401_raises_invalid_token_without_a_third_request(
    shoptet_settings: ShoptetEmulator,
    api: ShoptetClient,
    installed_eshop: Eshop,
    sleeps: mock.MagicMock,
) -> None:
    shoptet_settings.fail_next(2, status=401, path_prefix="/api/eshop")

    with pytest.raises(ShoptetInvalidToken) as caught:
        api.get("/api/eshop")

    assert caught.value.status_code == 401
    assert caught.value.error_code == "expired-token"
    assert api_requests(shoptet_settings, installed_eshop) == 2
    assert answered(shoptet_settings, "/api/eshop", expect=2) == [401, 401]
    # The first token and exactly one renewal.
    assert minted(shoptet_settings, installed_eshop) == 2
    assert sleeps.call_count == 0


# --- Errors that are never retried ------------------------------------------------------------


def test_forbidden_endpoint_is_never_retried_and_is_recorded(
    shoptet_settings: ShoptetEmulator,
    api: ShoptetClient,
    installed_eshop: Eshop,
    sleeps: mock.MagicMock,
) -> None:
    shoptet_settings.deny_endpoint(installed_eshop.eshop_id, "GET /api/orders")

    with pytest.raises(ShoptetForbidden) as caught:
        api.get("/api/orders")

    assert caught.value.status_code == 403
    assert caught.value.error_code == "invalid-token-no-rights"
    assert answered(shoptet_settings, "/api/orders", expect=1) == [403]
    assert sleeps.call_count == 0
    stored = Eshop.objects.get(pk=installed_eshop.pk)
    assert "GET /api/orders" in stored.missing_rights
    assert stored.status == Eshop.Status.ACTIVE


def test_missing_right_is_recorded_per_endpoint_not_per_id(
    shoptet_settings: ShoptetEmulator, api: ShoptetClient, installed_eshop: Eshop
) -> None:
    shoptet_settings.deny_endpoint(installed_eshop.eshop_id, "GET /api/webhooks/{id}")

    with pytest.raises(ShoptetForbidden):
        api.get("/api/webhooks/42")

    stored = Eshop.objects.get(pk=installed_eshop.pk)
    assert list(stored.missing_rights) == ["GET /api/webhooks/{id}"]


def test_not_found_is_never_retried(
    shoptet_settings: ShoptetEmulator, api: ShoptetClient, sleeps: mock.MagicMock
) -> None:
    with pytest.raises(ShoptetNotFound) as caught:
        api.get("/api/webhooks/999")

    assert caught.value.error_code == "webhook-not-found"
    assert answered(shoptet_settings, "/api/webhooks/999", expect=1) == [404]
    assert sleeps.call_count == 0


def test_partial_success_raises_with_data_and_errors(
    shoptet_settings: ShoptetEmulator,
    api: ShoptetClient,
    sleeps: mock.MagicMock,
    responses_seen: list[requests.Response],
) -> None:
    errors = [
        {
            "errorCode": "stock-not-found",
            "message": 'Stock "7" not found.',
            "instance": "data[1].stockId",
        }
    ]
    shoptet_settings.fail_next(
        1,
        status=200,
        body={
            "data": {"updated": ["A-1"]},
            "errors": errors,
            "metadata": {"requestId": "019c8c34-0000-7000-8000-000000000001"},
        },
        path_prefix="/api/eshop",
    )

    with pytest.raises(ShoptetPartialSuccess) as caught:
        api.get("/api/eshop")

    assert caught.value.data == {"updated": ["A-1"]}
    assert caught.value.errors == errors
    assert caught.value.error_code == "stock-not-found"
    assert caught.value.status_code == 200
    [response] = responses_seen
    assert caught.value.request_id == response.json()["metadata"]["requestId"]
    assert answered(shoptet_settings, "/api/eshop", expect=1) == [200]
    assert sleeps.call_count == 0


# --- Retries ---------------------------------------------------------------------------------


def test_locked_answer_is_retried(
    shoptet_settings: ShoptetEmulator, api: ShoptetClient, sleeps: mock.MagicMock
) -> None:
    shoptet_settings.lock_next(1, path_prefix="/api/eshop")

    api.get("/api/eshop")

    assert answered(shoptet_settings, "/api/eshop", expect=2) == [423, 200]
    [wait] = waits(sleeps)
    # The first 423 waits one short step, not the 2.5 s cap.
    assert 0.5 <= wait <= 0.5 + JITTER


def test_rate_limited_answer_waits_for_retry_after(
    shoptet_settings: ShoptetEmulator, api: ShoptetClient, sleeps: mock.MagicMock
) -> None:
    shoptet_settings.fail_next(1, status=429, path_prefix="/api/eshop", retry_after=3)

    api.get("/api/eshop")

    assert answered(shoptet_settings, "/api/eshop", expect=2) == [429, 200]
    [wait] = waits(sleeps)
    # The 3 s asked for, not the 30 s cap.
    assert 3 - RETRY_AFTER_ROUNDING <= wait <= 3 + RETRY_AFTER_ROUNDING


def test_retry_after_wait_is_capped(
    shoptet_settings: ShoptetEmulator,
    api: ShoptetClient,
    sleeps: mock.MagicMock,
    settings: Any,
) -> None:
    settings.SHOPTET_RETRY_AFTER_CAP = 2.0
    shoptet_settings.fail_next(1, status=429, path_prefix="/api/eshop", retry_after=120)

    api.get("/api/eshop")

    [wait] = waits(sleeps)
    assert 2.0 <= wait <= 2.0 + JITTER


def test_server_error_is_retried_until_success(
    shoptet_settings: ShoptetEmulator, api: ShoptetClient, sleeps: mock.MagicMock
) -> None:
    shoptet_settings.fail_next(2, status=500, path_prefix="/api/eshop")

    data = api.get("/api/eshop")

    assert "contactInformation" in data
    assert answered(shoptet_settings, "/api/eshop", expect=3) == [500, 500, 200]
    assert len(waits(sleeps)) == 2
    assert all(wait > 0 for wait in waits(sleeps))


def test_server_error_gives_up_after_max_attempts(
    shoptet_settings: ShoptetEmulator,
    installed_eshop: Eshop,
    sleeps: mock.MagicMock,
    settings: Any,
) -> None:
    settings.SHOPTET_RETRY_MAX_ATTEMPTS = 3
    shoptet_settings.fail_next(10, status=503, path_prefix="/api/eshop")

    with (
        ShoptetClient(installed_eshop) as api,
        pytest.raises(ShoptetServerError) as caught,
    ):
        api.get("/api/eshop")

    assert caught.value.status_code == 503
    assert caught.value.error_code == "system-maintenance"
    assert api_requests(shoptet_settings, installed_eshop) == 3
    assert answered(shoptet_settings, "/api/eshop", expect=3) == [503, 503, 503]
    assert len(waits(sleeps)) == 2


def test_post_answered_500_is_not_retried(
    shoptet_settings: ShoptetEmulator, api: ShoptetClient, sleeps: mock.MagicMock
) -> None:
    # Only one failure is armed: a retry would have succeeded.
    shoptet_settings.fail_next(1, status=500, path_prefix=RENEW_KEY)

    with pytest.raises(ShoptetServerError):
        api.post(RENEW_KEY)

    assert answered(shoptet_settings, RENEW_KEY, expect=1) == [500]
    assert sleeps.call_count == 0


def test_dropped_connection_on_get_is_retried(
    shoptet_settings: ShoptetEmulator, api: ShoptetClient, sleeps: mock.MagicMock
) -> None:
    shoptet_settings.drop_next(1, path_prefix="/api/eshop")

    data = api.get("/api/eshop")

    assert "contactInformation" in data
    assert answered(shoptet_settings, "/api/eshop", expect=2) == [0, 200]
    assert len(waits(sleeps)) == 1


def test_dropped_connection_on_post_is_not_retried(
    shoptet_settings: ShoptetEmulator, api: ShoptetClient, sleeps: mock.MagicMock
) -> None:
    shoptet_settings.drop_next(1, path_prefix=RENEW_KEY)

    with pytest.raises(ShoptetConnectionError) as caught:
        api.post(RENEW_KEY)

    assert caught.value.request_sent is True
    assert caught.value.status_code is None
    assert answered(shoptet_settings, RENEW_KEY, expect=1) == [0]
    assert sleeps.call_count == 0


def test_max_attempts_of_one_disables_retries(
    shoptet_settings: ShoptetEmulator, api: ShoptetClient, sleeps: mock.MagicMock
) -> None:
    shoptet_settings.fail_next(1, status=500, path_prefix="/api/eshop")

    with pytest.raises(ShoptetServerError):
        api.get("/api/eshop", max_attempts=1)

    assert answered(shoptet_settings, "/api/eshop", expect=1) == [500]
    assert sleeps.call_count == 0


def test_total_time_budget_stops_retries_early(
    shoptet_settings: ShoptetEmulator, api: ShoptetClient, sleeps: mock.MagicMock
) -> None:
    # Four attempts would reach the success after three failures; the first backoff
    # (at least 0.25 s) already overshoots a 0.2 s budget.
    shoptet_settings.fail_next(3, status=500, path_prefix="/api/eshop")

    with pytest.raises(ShoptetServerError):
        api.get("/api/eshop", max_attempts=4, max_time=0.2)

    assert answered(shoptet_settings, "/api/eshop", expect=1) == [500]
    assert sleeps.call_count == 0


def test_a_transient_get_access_token_failure_ends_the_request_after_one_mint(
    shoptet_settings: ShoptetEmulator, api: ShoptetClient, sleeps: mock.MagicMock
) -> None:
    # A 503 is a definite answer: nothing was minted and the cap slot is freed. The request still
    # ends: one request calls getAccessToken at most once (retries belong to the caller).
    shoptet_settings.fail_next(1, status=503, path_prefix=GET_ACCESS_TOKEN)

    with pytest.raises(ShoptetServerError):
        api.get("/api/eshop")
    data = api.get("/api/eshop")

    assert "contactInformation" in data
    assert answered(shoptet_settings, GET_ACCESS_TOKEN, expect=2) == [503, 200]
    assert sleeps.call_count == 0


def test_a_post_is_not_sent_after_a_get_access_token_failure(
    shoptet_settings: ShoptetEmulator, api: ShoptetClient, sleeps: mock.MagicMock
) -> None:
    shoptet_settings.fail_next(1, status=503, path_prefix=GET_ACCESS_TOKEN)

    with pytest.raises(ShoptetServerError):
        api.post(RENEW_KEY)

    assert answered(shoptet_settings, GET_ACCESS_TOKEN, expect=1) == [503]
    assert answered(shoptet_settings, RENEW_KEY, expect=0) == []


def test_get_access_token_refusal_is_not_retried(
    shoptet_settings: ShoptetEmulator,
    api: ShoptetClient,
    installed_eshop: Eshop,
    sleeps: mock.MagicMock,
) -> None:
    shoptet_settings.fail_next(1, status=400, path_prefix=GET_ACCESS_TOKEN)

    with pytest.raises(ShoptetOAuthError) as caught:
        api.get("/api/eshop")

    assert caught.value.error_code == "invalid_request"
    assert answered(shoptet_settings, GET_ACCESS_TOKEN, expect=1) == [400]
    assert sleeps.call_count == 0
    assert Eshop.objects.get(pk=installed_eshop.pk).status == Eshop.Status.ACTIVE


# --- What errors carry ---------------------------------------------------------------------------


def test_errors_carry_request_id_and_status_code(
    shoptet_settings: ShoptetEmulator,
    api: ShoptetClient,
    installed_eshop: Eshop,
    responses_seen: list[requests.Response],
) -> None:
    shoptet_settings.deny_endpoint(installed_eshop.eshop_id, "GET /api/orders")

    with pytest.raises(ShoptetForbidden) as caught:
        api.get("/api/orders")

    [response] = responses_seen
    request_id = response.headers["X-Request-ID"]
    assert response.json()["metadata"]["requestId"] == request_id
    assert uuid.UUID(request_id).version == 7
    assert caught.value.request_id == request_id
    assert caught.value.status_code == 403
    assert caught.value.endpoint == "GET /api/orders"
    assert request_id in str(caught.value)


def test_request_id_falls_back_to_the_header(
    shoptet_settings: ShoptetEmulator,
    api: ShoptetClient,
    responses_seen: list[requests.Response],
) -> None:
    shoptet_settings.fail_next(
        1,
        status=500,
        body={"data": None, "errors": [{"errorCode": "unknown-error", "message": "x"}]},
        path_prefix="/api/eshop",
    )

    with pytest.raises(ShoptetServerError) as caught:
        api.get("/api/eshop", max_attempts=1)

    [response] = responses_seen
    assert "metadata" not in response.json()
    assert caught.value.request_id == response.headers["X-Request-ID"]


def test_error_str_and_repr_never_contain_a_token(
    shoptet_settings: ShoptetEmulator, api: ShoptetClient, installed_eshop: Eshop
) -> None:
    oauth_token = shoptet_settings.oauth_token_for(installed_eshop.eshop_id)
    shoptet_settings.deny_endpoint(installed_eshop.eshop_id, "GET /api/orders")
    with pytest.raises(ShoptetForbidden) as forbidden:
        api.get("/api/orders")
    shoptet_settings.fail_next(2, status=401, path_prefix="/api/eshop")
    with pytest.raises(ShoptetInvalidToken) as invalid:
        api.get("/api/eshop")
    api_tokens = valid_api_tokens(shoptet_settings, installed_eshop)

    assert oauth_token is not None
    assert len(api_tokens) == minted(shoptet_settings, installed_eshop) == 2
    for exc in (forbidden.value, invalid.value):
        for secret in (oauth_token, *api_tokens):
            assert secret not in str(exc)
            assert secret not in repr(exc)


# --- Pagination ------------------------------------------------------------------------------


def test_paginate_yields_every_item_once_across_pages(
    shoptet_settings: ShoptetEmulator, api: ShoptetClient, installed_eshop: Eshop
) -> None:
    shoptet_settings.add_orders(installed_eshop.eshop_id, 120)

    pages = api.paginate("/api/orders")
    orders = list(pages)

    assert len(orders) == 120
    assert len({order["code"] for order in orders}) == 120
    assert pages.pages_read == 3
    assert pages.total_count == 120
    assert pages.total_count_changed is False


def test_paginate_flags_a_total_count_change_mid_walk(
    shoptet_settings: ShoptetEmulator,
    api: ShoptetClient,
    installed_eshop: Eshop,
    caplog: pytest.LogCaptureFixture,
) -> None:
    shoptet_settings.add_orders(installed_eshop.eshop_id, 120)
    pages = api.paginate("/api/orders")
    walk = iter(pages)

    next(walk)
    shoptet_settings.add_orders(installed_eshop.eshop_id, 5)
    with caplog.at_level(logging.WARNING, logger="shoptet_api.client"):
        list(walk)

    assert pages.total_count_changed is True
    assert pages.total_count == 125
    assert "totalCount 120 -> 125" in caplog.text


# --- Rate governance -----------------------------------------------------------------------------


def test_concurrent_clients_stay_within_three_requests_in_flight(
    shoptet_settings: ShoptetEmulator, installed_eshop: Eshop
) -> None:
    # Slow answers make the 36 requests overlap; 12 threads would open 12 connections at once.
    shoptet_settings.set_latency(0.05, "/api/")
    barrier = threading.Barrier(12)

    def work() -> list[int]:
        barrier.wait()
        with ShoptetClient(installed_eshop) as client:  # the loaded object: no ORM here
            return [
                client.get("/api/eshop")["contactInformation"]["eshopId"]
                for _ in range(3)
            ]

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = [future.result() for future in [pool.submit(work) for _ in range(12)]]

    stats = shoptet_settings.stats
    peaks_per_token = [
        peak for key, peak in stats.peak_concurrency.items() if isinstance(key, str)
    ]
    assert results == [[installed_eshop.eshop_id] * 3] * 12
    assert api_requests(shoptet_settings, installed_eshop) == 36
    assert 2 <= stats.peak_concurrency[installed_eshop.eshop_id] <= 3
    assert peaks_per_token
    assert max(peaks_per_token) <= 3
    assert stats.concurrency_rejections[installed_eshop.eshop_id] == 0
    assert answered(shoptet_settings, "/api/eshop", expect=36).count(429) == 0
    assert minted(shoptet_settings, installed_eshop) == 1


def test_bucket_pacing_keeps_sequential_calls_under_the_limit(
    shoptet_settings: ShoptetEmulator,
    api: ShoptetClient,
    installed_eshop: Eshop,
    settings: Any,
) -> None:
    # A 20-drop bucket leaking 10 drops/s: 40 back-to-back calls would overflow it by the 21st.
    shoptet_settings.bucket_capacity = 20
    shoptet_settings.bucket_leak_per_second = 10.0
    settings.SHOPTET_BUCKET_LEAK_PER_SECOND = 10.0

    for _ in range(40):
        api.get("/api/eshop")

    statuses = answered(shoptet_settings, "/api/eshop", expect=40)
    assert statuses == [200] * 40
    assert shoptet_settings.stats.bucket_rejections[installed_eshop.eshop_id] == 0
    assert api_requests(shoptet_settings, installed_eshop) == 40


# --- Tenant status and lifecycle -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (Eshop.Status.SUSPENDED, AddonSuspended),
        (Eshop.Status.UNINSTALLED, AddonNotInstalled),
        (Eshop.Status.TERMINATED, AddonNotInstalled),
    ],
)
def test_inactive_tenant_is_refused_without_a_request(
    shoptet_settings: ShoptetEmulator,
    installed_eshop: Eshop,
    status: str,
    expected: type[ShoptetAPIError],
) -> None:
    installed_eshop.status = status
    installed_eshop.save()

    with ShoptetClient(installed_eshop) as api, pytest.raises(expected):
        api.get("/api/eshop")

    assert shoptet_settings.stats.access_token_requests[installed_eshop.eshop_id] == 0
    assert api_requests(shoptet_settings, installed_eshop) == 0
    assert calls_after_install(shoptet_settings) == []


@pytest.mark.parametrize(
    "path", ["https://evil.example/x", "/action/x", "api/eshop", "//evil.example/api/"]
)
def test_path_outside_the_api_is_refused_without_a_request(
    shoptet_settings: ShoptetEmulator,
    api: ShoptetClient,
    installed_eshop: Eshop,
    path: str,
) -> None:
    with pytest.raises(ValueError, match="must start with /api/"):
        api.get(path)

    assert shoptet_settings.stats.access_token_requests[installed_eshop.eshop_id] == 0
    assert calls_after_install(shoptet_settings) == []


@pytest.mark.parametrize(
    ("addon_state", "expected", "status", "answer"),
    [
        ("suspended", AddonSuspended, Eshop.Status.SUSPENDED, 403),
        ("not_installed", AddonNotInstalled, Eshop.Status.UNINSTALLED, 404),
    ],
)
def test_oauth_server_lifecycle_answer_stops_calls_and_updates_the_tenant(
    shoptet_settings: ShoptetEmulator,
    api: ShoptetClient,
    installed_eshop: Eshop,
    sleeps: mock.MagicMock,
    addon_state: Any,
    expected: type[ShoptetAPIError],
    status: str,
    answer: int,
) -> None:
    shoptet_settings.set_addon_state(installed_eshop.eshop_id, addon_state)

    with pytest.raises(expected):
        api.get("/api/eshop")
    # The client now knows the tenant is inactive: a second call asks nobody.
    with pytest.raises(expected):
        api.get("/api/eshop")

    assert answered(shoptet_settings, GET_ACCESS_TOKEN, expect=1) == [answer]
    assert api_requests(shoptet_settings, installed_eshop) == 0
    assert Eshop.objects.get(pk=installed_eshop.pk).status == status
    assert sleeps.call_count == 0


def test_a_refused_oauth_token_is_not_retried_and_wipes_nothing(
    shoptet_settings: ShoptetEmulator,
    api: ShoptetClient,
    installed_eshop: Eshop,
    sleeps: mock.MagicMock,
) -> None:
    oauth_token = shoptet_settings.oauth_token_for(installed_eshop.eshop_id)
    assert oauth_token is not None
    shoptet_settings.revoke_oauth_token(installed_eshop.eshop_id)

    with pytest.raises(ShoptetOAuthError) as caught:
        api.get("/api/eshop")

    assert type(caught.value) is ShoptetOAuthError
    assert caught.value.status_code == 401
    assert answered(shoptet_settings, GET_ACCESS_TOKEN, expect=1) == [401]
    # One 401 may be our own misconfiguration: the tenant and its token stay.
    stored = Eshop.objects.get(pk=installed_eshop.pk)
    assert stored.status == Eshop.Status.ACTIVE
    assert stored.oauth_access_token == oauth_token
    assert oauth_token not in str(caught.value)
    assert oauth_token not in repr(caught.value)
    assert sleeps.call_count == 0


def test_suspension_seen_by_the_api_marks_the_tenant_suspended_without_renewal(
    shoptet_settings: ShoptetEmulator,
    api: ShoptetClient,
    installed_eshop: Eshop,
    sleeps: mock.MagicMock,
) -> None:
    api.get("/api/eshop")  # a cached, still valid token
    shoptet_settings.set_addon_state(installed_eshop.eshop_id, "suspended")

    with pytest.raises(AddonSuspended) as caught:
        api.get("/api/eshop")

    assert caught.value.error_code == "invalid-token"
    assert answered(shoptet_settings, "/api/eshop", expect=2) == [200, 401]
    assert minted(shoptet_settings, installed_eshop) == 1
    assert Eshop.objects.get(pk=installed_eshop.pk).status == Eshop.Status.SUSPENDED
    assert sleeps.call_count == 0


def test_uninstall_seen_by_the_api_renews_once_then_marks_the_tenant_uninstalled(
    shoptet_settings: ShoptetEmulator,
    api: ShoptetClient,
    installed_eshop: Eshop,
    sleeps: mock.MagicMock,
) -> None:
    api.get("/api/eshop")
    # Uninstalling revokes the API tokens: the API says invalid-token, getAccessToken says why.
    shoptet_settings.set_addon_state(installed_eshop.eshop_id, "not_installed")

    with pytest.raises(AddonNotInstalled):
        api.get("/api/eshop")

    assert answered(shoptet_settings, "/api/eshop", expect=2) == [200, 401]
    assert answered(shoptet_settings, GET_ACCESS_TOKEN, expect=2) == [200, 404]
    assert Eshop.objects.get(pk=installed_eshop.pk).status == Eshop.Status.UNINSTALLED
    assert sleeps.call_count == 0


# --- Secrets ---------------------------------------------------------------------------------


def test_no_token_appears_in_logs(
    shoptet_settings: ShoptetEmulator,
    api: ShoptetClient,
    installed_eshop: Eshop,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    oauth_token = shoptet_settings.oauth_token_for(installed_eshop.eshop_id)

    api.get("/api/eshop")  # success
    api_tokens = valid_api_tokens(shoptet_settings, installed_eshop)
    shoptet_settings.expire_api_tokens(installed_eshop.eshop_id)
    api.get("/api/eshop")  # 401, renew, success
    api_tokens |= valid_api_tokens(shoptet_settings, installed_eshop)
    shoptet_settings.deny_endpoint(installed_eshop.eshop_id, "GET /api/orders")
    with pytest.raises(ShoptetForbidden):
        api.get("/api/orders")  # 403

    assert oauth_token is not None
    assert len(api_tokens) == minted(shoptet_settings, installed_eshop) == 2
    # The log really covers all three paths...
    assert "renewing token and retrying once" in caplog.text
    assert "no rights (invalid-token-no-rights)" in caplog.text
    assert "GET /api/eshop -> 200" in caplog.text
    # ...and shows none of the secrets.
    for secret in (oauth_token, installed_eshop.oauth_access_token, *api_tokens):
        assert secret
        assert secret not in caplog.text


# --- Labels ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "label"),
    [
        ("GET", "/api/eshop", "GET /api/eshop"),
        ("GET", "/api/orders/2025000123", "GET /api/orders/{id}"),
        ("PATCH", "/api/stocks/1/movements", "PATCH /api/stocks/{id}/movements"),
        ("GET", "/api/orders?page=2&itemsPerPage=50", "GET /api/orders"),
        (
            "GET",
            "/api/products/8a3e0f7c-5b1d-11ef-9c2a-0242ac120002/images/shop",
            "GET /api/products/{id}/images/shop",
        ),
    ],
)
def test_endpoint_label_collapses_ids_and_drops_the_query(
    method: str, path: str, label: str
) -> None:
    assert endpoint_label(method, path) == label


def test_paginate_ends_cleanly_and_flags_a_list_that_shrank_mid_walk(
    shoptet_settings: ShoptetEmulator, api: ShoptetClient, installed_eshop: Eshop
) -> None:
    shoptet_settings.add_orders(installed_eshop.eshop_id, 120)
    pages = api.paginate("/api/orders")
    walk = iter(pages)
    seen = [next(walk) for _ in range(100)]  # pages 1 and 2 read

    shoptet_settings.add_orders(
        installed_eshop.eshop_id, -30
    )  # 90 left: page 3 is gone
    seen.extend(walk)

    assert len(seen) == 100
    assert pages.total_count_changed is True


def test_paginate_can_walk_the_same_list_twice(
    shoptet_settings: ShoptetEmulator, api: ShoptetClient, installed_eshop: Eshop
) -> None:
    shoptet_settings.add_orders(installed_eshop.eshop_id, 60)
    pages = api.paginate("/api/orders")

    first, second = list(pages), list(pages)

    assert len(first) == len(second) == 60
    assert pages.pages_read == 2


def test_a_long_lived_client_notices_a_suspension_made_elsewhere(
    shoptet_settings: ShoptetEmulator,
    installed_eshop: Eshop,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = ShoptetClient(installed_eshop)
    client.get("/api/eshop")
    Eshop.objects.filter(pk=installed_eshop.pk).update(status=Eshop.Status.SUSPENDED)
    monkeypatch.setattr("shoptet_api.client.STATE_RECHECK_SECONDS", 0.0)

    with pytest.raises(AddonSuspended):
        client.get("/api/eshop")

    assert shoptet_settings.stats.api_requests[installed_eshop.eshop_id] == 1


def test_api_calls_following_each_other_cost_no_redis_round_trip(
    api: ShoptetClient, round_trips: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    api.get("/api/eshop")  # mints the token, takes a lease, notes the activity
    # Activity notes and counter flushes are periodic, not per call: keep them out of the count;
    # hold the idle lease as if each call followed the last within the limiter's RELEASE_DELAY.
    monkeypatch.setattr(tokens.store, "ACTIVITY_NOTE_INTERVAL", 1e9)
    monkeypatch.setattr(activity, "_next_flush", float("inf"))
    monkeypatch.setattr(limiter._idle_leases, "flush", lambda: None)
    round_trips.clear()

    for _ in range(10):
        api.get("/api/eshop")

    # Each call took over the in-flight lease the previous one left idle.
    assert round_trips == []


def test_an_api_call_after_a_pause_costs_one_redis_round_trip(
    api: ShoptetClient, round_trips: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    api.get("/api/eshop")
    monkeypatch.setattr(tokens.store, "ACTIVITY_NOTE_INTERVAL", 1e9)
    monkeypatch.setattr(activity, "_next_flush", float("inf"))
    calls = []
    for _ in range(3):
        limiter.flush_returned_leases()  # the idle lease went back, as after RELEASE_DELAY
        round_trips.clear()
        api.get("/api/eshop")
        calls.append(round_trips[:])

    assert calls == [["EVALSHA"]] * 3
