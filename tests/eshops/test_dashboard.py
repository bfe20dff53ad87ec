"""The operator dashboard: services (Redis, workers, beat), the 24-hour charts, constant cost in
the number of tenants, and a failure feed that forgets what was undone."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pytest
from django.test import Client

from addon_project import activity
from addon_project.celery import app as celery_app
from addon_project.redis_client import get_redis
from addon_project.redis_keys import dashboard_counts_key, heartbeat_key
from eshops import dashboard
from eshops.models import Eshop
from eshops.tasks import HEARTBEAT_STALE_AFTER, beat_heartbeat
from shoptet_api import tokens
from shoptet_api.tokens import health
from tests.page_cost import page_cost

pytestmark = pytest.mark.django_db

URL = "/admin/dashboard/"


@pytest.fixture
def ping() -> Iterator[mock.MagicMock]:
    """The workers' answer to the broadcast ping (no real worker needed to read the page)."""
    with mock.patch.object(
        celery_app.control, "ping", autospec=True, return_value=[]
    ) as fake:
        yield fake


def services(response: Any) -> dict[str, tuple[bool | None, str, str]]:
    return {s.name: (s.ok, s.summary, s.detail) for s in response.context["services"]}


def test_services_panel_shows_redis_workers_and_a_fresh_beat(
    admin_client: Client, ping: mock.MagicMock
) -> None:
    ping.return_value = [
        {"celery@b": {"ok": "pong"}},
        {"celery@a": {"ok": "pong"}},
    ]
    beat_heartbeat.apply()

    response = admin_client.get(URL)

    status = services(response)
    assert status["Redis"][0] is True
    assert status["Worker"] == (True, "2 answered", "celery@a, celery@b")
    assert status["Beat"][0] is True
    assert "stale" not in status["Beat"][1]
    assert status["Beat"][2].endswith(" UTC")
    # The page never waits long for workers.
    ping.assert_called_once_with(timeout=dashboard.WORKER_PING_TIMEOUT)
    assert dashboard.WORKER_PING_TIMEOUT <= 1
    assert b'class="service ok"' in response.content


def test_silent_workers_and_a_stale_or_missing_heartbeat_are_flagged(
    admin_client: Client, ping: mock.MagicMock
) -> None:
    missing = services(admin_client.get(URL))
    get_redis().set(heartbeat_key(), str(time.time() - HEARTBEAT_STALE_AFTER - 60))
    stale = services(admin_client.get(URL))

    assert missing["Worker"][:2] == (
        False,
        f"no worker answered within {dashboard.WORKER_PING_TIMEOUT} s",
    )
    assert missing["Beat"][:2] == (
        False,
        "no heartbeat recorded (beat or worker not running)",
    )
    assert stale["Beat"][0] is False
    assert stale["Beat"][1].endswith("ago — stale")


def test_a_failing_worker_ping_leaves_the_page_up(
    admin_client: Client, ping: mock.MagicMock
) -> None:
    ping.side_effect = OSError("broker went away")

    response = admin_client.get(URL)

    assert response.status_code == 200
    assert services(response)["Worker"][:2] == (None, "ping failed (OSError)")


def test_without_redis_services_and_charts_say_unknown(
    settings: Any, admin_client: Client, ping: mock.MagicMock
) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    get_redis.cache_clear()
    try:
        response = admin_client.get(URL)
    finally:
        get_redis.cache_clear()

    status = services(response)
    assert status["Redis"][0] is False
    assert status["Redis"][1].startswith("Redis unreachable")
    assert status["Worker"][0] is None
    assert status["Beat"][0] is None
    ping.assert_not_called()  # the broker is the same Redis: no point waiting for it
    assert response.context["charts"] is None
    assert b"the activity counters (Redis) are unreachable" in response.content


def test_beat_schedules_the_heartbeat_every_30_seconds(settings: Any) -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["beat-heartbeat"]

    assert entry == {"task": "eshops.beat_heartbeat", "schedule": 30.0}
    assert "eshops.beat_heartbeat" in celery_app.tasks
    before = time.time()
    beat_heartbeat.apply()
    assert float(get_redis().get(heartbeat_key()) or 0) >= before


def test_charts_show_the_last_24_hours_of_activity(
    admin_client: Client, ping: mock.MagicMock
) -> None:
    for event, n in [
        ("webhooks_received", 5),
        ("webhooks_processed", 4),
        ("webhooks_failed", 1),
        ("api_calls", 70),
        ("api_429", 2),
        ("token_renewals", 3),
    ]:
        activity.count(event, n)
    activity.flush()

    response = admin_client.get(URL)

    charts = response.context["charts"]
    assert [c.title for c in charts] == [
        "Webhooks per hour",
        "Shoptet API calls per hour",
        "API token renewals per hour",
    ]
    page = response.content.decode()
    assert page.count('<svg class="hourly-chart"') == 3
    for legend in (
        "received (5)",
        "processed (4)",
        "failed (1)",
        "API calls (70)",
        "429 answers (2)",
        "renewals (3)",
        "failures (0)",
    ):
        assert legend in page, legend


def make_tenants(eshop_factory: Callable[..., Eshop], n: int) -> None:
    pipe = get_redis().pipeline(transaction=False)
    for i in range(n):
        eshop = eshop_factory(
            missing_rights={"GET /api/orders": "2026-11-30T04:15:09+00:00"}
        )
        # A failed renewal as the broker records it, then as many in a row as the test wants.
        health.note_failure(get_redis(), eshop.eshop_id, RuntimeError("500"))
        pipe.hset(tokens.health_key(eshop.eshop_id), "failures", i + 1)
        eshop.transition(Eshop.Status.SUSPENDED, reason="t", source="webhook")
        eshop.transition(Eshop.Status.ACTIVE, reason="t", source="webhook")
    pipe.execute()


def forget_counts() -> None:
    """As if the cached counts had expired: the next page makes them afresh."""
    get_redis().delete(dashboard_counts_key())


def cost_of_dashboard(client: Client) -> tuple[int, int]:
    """(SQL queries, Redis round trips) of one dashboard page that makes its counts afresh."""
    forget_counts()
    return page_cost(client, URL)


def test_dashboard_cost_does_not_grow_with_the_number_of_tenants(
    admin_client: Client, eshop_factory: Callable[..., Eshop], ping: mock.MagicMock
) -> None:
    make_tenants(eshop_factory, 3)
    few = cost_of_dashboard(admin_client)
    make_tenants(eshop_factory, 40)
    many = cost_of_dashboard(admin_client)

    assert many == few, (few, many)
    assert few[1] > 0
    assert len(admin_client.get(URL).context["token_trouble"]) == dashboard.LIST_LIMIT


def test_recent_failures_skip_a_suspend_that_a_later_approve_reversed(
    admin_client: Client, eshop_factory: Callable[..., Eshop], ping: mock.MagicMock
) -> None:
    approved = eshop_factory()
    approved.transition(
        Eshop.Status.SUSPENDED, reason="addon:suspend", source="webhook"
    )
    approved.transition(Eshop.Status.ACTIVE, reason="addon:approve", source="webhook")
    suspended = eshop_factory()
    suspended.transition(
        Eshop.Status.SUSPENDED, reason="addon:suspend", source="webhook"
    )

    response = admin_client.get(URL)

    kinds = [(item.kind, item.eshop_id) for item in response.context["recent_failures"]]
    assert ("status suspended", suspended.eshop_id) in kinds
    assert all(eshop_id != approved.eshop_id for _, eshop_id in kinds)


def test_counts_are_made_once_per_30_seconds_and_say_when(
    admin_client: Client, eshop_factory: Callable[..., Eshop], ping: mock.MagicMock
) -> None:
    make_tenants(eshop_factory, 3)
    made_queries, made_round_trips = page_cost(admin_client, URL)
    eshop_factory(status=Eshop.Status.SUSPENDED)

    reused_queries, reused_round_trips = page_cost(admin_client, URL)
    reused = admin_client.get(URL)
    forget_counts()  # the 30 seconds are over
    fresh = admin_client.get(URL)

    def by_status(response: Any) -> dict[str, int]:
        return {v: n for v, _, n in response.context["tenants_by_status"]}

    # Six aggregate queries fewer; one GET instead of a GET and a SET.
    assert (made_queries - reused_queries, made_round_trips - reused_round_trips) == (
        6,
        1,
    )
    assert by_status(reused)["suspended"] == 0
    assert by_status(fresh)["suspended"] == 1
    assert 0 < get_redis().ttl(dashboard_counts_key()) <= dashboard.COUNTS_TTL_SECONDS
    as_of = reused.context["counts_as_of"]
    assert re.fullmatch(r"\d\d:\d\d:\d\d UTC", as_of)
    assert reused.content.decode().count(f"as of {as_of}") == 3
