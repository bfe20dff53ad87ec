from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from celery.signals import task_postrun

from addon_project import activity, redis_keys
from addon_project.redis_client import get_redis

NOW = datetime(2026, 5, 6, 12, 30, tzinfo=UTC)


def _at(monkeypatch: pytest.MonkeyPatch, moment: datetime) -> None:
    monkeypatch.setattr(activity, "_utcnow", lambda: moment)


@pytest.fixture(autouse=True)
def _fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counting happens at NOW unless a test moves the clock (no flaky hour boundaries)."""
    _at(monkeypatch, NOW)


@pytest.fixture
def buffered(monkeypatch: pytest.MonkeyPatch) -> None:
    """count() never flushes by itself during the test (only explicit flush() writes)."""
    monkeypatch.setattr(activity, "FLUSH_INTERVAL", 3600.0)
    activity.flush()


def test_count_is_buffered_until_flush(buffered: None) -> None:
    activity.count("api_calls")
    activity.count("api_calls", 2)
    activity.count("webhooks_received")

    _hours, before = activity.hourly(["api_calls", "webhooks_received"], hours=1)
    assert before == {"api_calls": [0], "webhooks_received": [0]}

    activity.flush()

    hours, after = activity.hourly(["api_calls", "webhooks_received"], hours=1)
    assert after == {"api_calls": [3], "webhooks_received": [1]}
    assert hours == [datetime(2026, 5, 6, 12, tzinfo=UTC)]


def test_flush_writes_hash_with_expiry(buffered: None) -> None:
    activity.count("token_renewals", 4)
    activity.flush()

    key = redis_keys.activity_hour_key(NOW)
    r = get_redis()
    assert r.hget(key, "token_renewals") == b"4"
    assert 0 < r.ttl(key) <= activity.RETENTION_HOURS * 3600
    assert key.endswith(":activity:2026050612")


def test_count_flushes_by_itself_once_the_interval_passed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(activity, "FLUSH_INTERVAL", 0.0)
    activity.flush()

    activity.count("api_429")

    assert activity.hourly(["api_429"], hours=1)[1] == {"api_429": [1]}


def test_hourly_buckets_by_hour_across_a_boundary_with_zeros(
    buffered: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _at(monkeypatch, datetime(2026, 3, 4, 9, 59, 59, tzinfo=UTC))
    activity.count("webhooks_processed", 5)
    _at(monkeypatch, datetime(2026, 3, 4, 10, 0, 0, tzinfo=UTC))
    activity.count("webhooks_processed", 2)
    activity.count("webhooks_failed")
    activity.flush()

    hours, series = activity.hourly(
        ["webhooks_processed", "webhooks_failed", "token_failures"],
        hours=4,
        now=datetime(2026, 3, 4, 10, 30, tzinfo=UTC),
    )

    assert hours == [datetime(2026, 3, 4, h, tzinfo=UTC) for h in (7, 8, 9, 10)]
    assert series == {
        "webhooks_processed": [0, 0, 5, 2],
        "webhooks_failed": [0, 0, 0, 1],
        "token_failures": [0, 0, 0, 0],
    }


def test_hourly_converts_an_aware_now_to_utc(
    buffered: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _at(monkeypatch, datetime(2026, 3, 4, 22, 10, tzinfo=UTC))
    activity.count("api_calls", 7)
    activity.flush()
    prague = timezone(timedelta(hours=1))

    hours, series = activity.hourly(
        ["api_calls"], hours=24, now=datetime(2026, 3, 4, 23, 45, tzinfo=prague)
    )

    assert len(hours) == 24
    assert hours[-1] == datetime(2026, 3, 4, 22, tzinfo=UTC)
    assert hours[0] == datetime(2026, 3, 3, 23, tzinfo=UTC)
    assert series["api_calls"][-1] == 7
    assert sum(series["api_calls"]) == 7


@pytest.mark.parametrize(
    ("event", "n"), [("nope", 1), ("api_calls", -1), ("api_calls", 1.5)]
)
def test_count_rejects_unknown_event_and_bad_amount(event: str, n: Any) -> None:
    with pytest.raises(ValueError, match="activity"):
        activity.count(event, n)


@pytest.mark.parametrize(
    ("events", "kwargs"),
    [
        (["nope"], {}),
        ("api_calls", {}),
        (["api_calls"], {"hours": 0}),
        (["api_calls"], {"hours": activity.RETENTION_HOURS + 1}),
        (["api_calls"], {"now": datetime(2026, 1, 1, 12)}),  # noqa: DTZ001 - naive on purpose
    ],
)
def test_hourly_rejects_bad_arguments(events: Any, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"events|hours|now"):
        activity.hourly(events, **kwargs)


def test_count_does_not_raise_when_redis_is_down_and_keeps_the_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(activity, "FLUSH_INTERVAL", 0.0)
    activity.flush()
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    monkeypatch.setattr(activity, "get_redis", lambda: dead)

    activity.count("token_failures", 3)  # flushes, fails, logs
    activity.count("token_failures")  # within the failure backoff: buffered only
    activity.flush()  # fails again, no exception

    monkeypatch.setattr(activity, "get_redis", get_redis)
    activity.flush()
    assert activity.hourly(["token_failures"], hours=1)[1] == {"token_failures": [4]}


def test_counting_from_many_threads_loses_nothing(buffered: None) -> None:
    def work() -> None:
        for _ in range(500):
            activity.count("api_calls")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    activity.flush()

    assert activity.hourly(["api_calls"], hours=1)[1] == {"api_calls": [4000]}


def test_task_end_flushes_the_buffer(buffered: None) -> None:
    activity.count("webhooks_processed")

    task_postrun.send(sender=None, task_id="t", task=None, args=(), kwargs={})

    assert activity.hourly(["webhooks_processed"], hours=1)[1] == {
        "webhooks_processed": [1]
    }
