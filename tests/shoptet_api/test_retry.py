"""The one retry policy: one backoff, one Retry-After rule, one sleep the tests patch."""

from __future__ import annotations

import datetime as dt
from unittest import mock

import pytest
from pytest_django.fixtures import Settings

from shoptet_api import retry
from shoptet_api.errors import (
    ShoptetConnectionError,
    ShoptetLocked,
    ShoptetRateLimited,
    ShoptetServerError,
)

# The Redis broker redelivers a task whose countdown outlives its visibility timeout (one hour).
BROKER_VISIBILITY_TIMEOUT = 3600.0


def rate_limited(seconds: float) -> ShoptetRateLimited:
    return ShoptetRateLimited(
        "too many requests",
        status_code=429,
        retry_after=dt.datetime.now(tz=dt.UTC) + dt.timedelta(seconds=seconds),
    )


def test_backoff_grows_by_its_factor_up_to_its_cap() -> None:
    exact = retry.Backoff(first=1.0, factor=3, cap=20.0, jitter=0.0)

    assert [exact.delay(attempt) for attempt in range(1, 6)] == [
        1.0,
        3.0,
        9.0,
        20.0,
        20.0,
    ]


@pytest.mark.parametrize(("draw", "expected"), [(0.0, 8.0), (0.999, 8.0 * 0.5005)])
def test_jitter_keeps_a_delay_between_half_and_all_of_it(
    draw: float, expected: float
) -> None:
    with mock.patch("shoptet_api.retry.random.random", return_value=draw):
        assert retry.Backoff(first=8.0, factor=2, cap=8.0).delay(1) == pytest.approx(
            expected
        )


def test_a_runaway_attempt_count_neither_overflows_nor_passes_the_cap() -> None:
    assert retry.TASK.delay(10_000) <= retry.MAX_COUNTDOWN


def test_attempts_are_counted_from_one() -> None:
    with pytest.raises(ValueError, match="1-based"):
        retry.CLIENT.delay(0)


def test_webhook_retries_wait_30s_2min_8min_32min_then_2h() -> None:
    assert [retry.webhook_delay(n) for n in range(1, 7)] == [
        30.0,
        120.0,
        480.0,
        1920.0,
        7200.0,
        7200.0,
    ]


def test_client_backoff_doubles_from_half_a_second_up_to_8s() -> None:
    with mock.patch("shoptet_api.retry.random.random", return_value=0.0):
        waits = [
            retry.client_wait(ShoptetServerError("x", status_code=503), n)
            for n in range(1, 7)
        ]
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]


def test_client_waits_briefly_and_linearly_on_a_locked_url() -> None:
    error = ShoptetLocked("locked", status_code=423)
    with mock.patch("shoptet_api.retry.random.uniform", return_value=0.0):
        assert [retry.client_wait(error, n) for n in (1, 2, 5, 9)] == [
            0.5,
            1.0,
            2.5,
            2.5,
        ]


def test_client_honours_retry_after_up_to_its_cap(settings: Settings) -> None:
    settings.SHOPTET_RETRY_AFTER_CAP = 30.0
    with mock.patch("shoptet_api.retry.random.uniform", return_value=0.0):
        assert 9.0 <= retry.client_wait(rate_limited(10), 1) <= 10.0
        assert retry.client_wait(rate_limited(900), 1) == 30.0


def test_a_task_countdown_honours_retry_after_but_never_outlives_the_broker() -> None:
    assert 9.0 <= retry.task_countdown(rate_limited(10), 0) <= 10.0
    assert retry.task_countdown(rate_limited(-5), 0) == 1.0
    assert retry.task_countdown(rate_limited(86_400), 0) == retry.MAX_COUNTDOWN
    countdowns = [
        retry.task_countdown(ShoptetConnectionError("down"), n) for n in range(50)
    ]
    assert max(countdowns) <= retry.MAX_COUNTDOWN < BROKER_VISIBILITY_TIMEOUT
    assert countdowns[0] <= 5.0 < countdowns[3]  # it does back off


def test_sleep_is_the_one_place_retry_code_waits() -> None:
    with mock.patch("shoptet_api.retry.time.sleep", autospec=True) as slept:
        retry.sleep(1.5)
    slept.assert_called_once_with(1.5)
