"""Operator pages and the settings page cost the same SQL queries and Redis round trips whatever
the number of tenants; the dashboard finds failing tenants without asking every tenant."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from unittest import mock

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from addon_project.celery import app as celery_app
from addon_project.redis_client import get_redis
from addon_project.redis_keys import health_key, token_failing_key, token_key
from eshops.admin import TenantPaginator
from eshops.models import Eshop, EshopSettings
from eshops.settings_session import SettingsSession
from shoptet_api.models import WebhookEvent
from shoptet_api.tokens import health
from sync.models import SyncState
from tests.page_cost import page_cost

CHANGELIST = "/admin/eshops/eshop/"


@pytest.fixture(autouse=True)
def ping() -> Iterator[None]:
    """No worker needed for the dashboard's ping."""
    with mock.patch.object(celery_app.control, "ping", autospec=True, return_value=[]):
        yield


def add_tenants(eshop_factory: Callable[..., Eshop], n: int) -> list[Eshop]:
    """`n` active tenants with a token, a failing renewal, missing rights, a sync state and a
    webhook event each: every per-row thing a page could look up one by one."""
    made = []
    r = get_redis()
    for _ in range(n):
        eshop = eshop_factory(
            missing_rights={"GET /api/orders": "2026-11-30T04:15:09+00:00"}
        )
        r.hset(token_key(eshop.eshop_id), mapping={"exp": time.time() + 1800})
        health.note_failure(r, eshop.eshop_id, RuntimeError("500"))
        EshopSettings.objects.create(eshop=eshop)
        SyncState.objects.create(
            eshop=eshop, resource="orders", last_success_at=timezone.now()
        )
        WebhookEvent.objects.create(
            eshop=eshop,
            event="order:create",
            event_instance="O1",
            event_created=timezone.now(),
            dedup_key=f"d{eshop.eshop_id}",
            raw_body="{}",
            verified_by="signature",
        )
        made.append(eshop)
    return made


def settings_page_url(eshop: Eshop) -> str:
    token = SettingsSession(
        eshop_id=eshop.eshop_id, user_email="a@b.c", user_name="A", language="cs"
    ).sign()
    return f"{reverse('eshops:settings_page')}?s={token}"


PAGES: dict[str, Callable[[Eshop], str]] = {
    "tenant list": lambda _: CHANGELIST,
    "tenant list, missing rights": lambda _: f"{CHANGELIST}?missing_rights=yes",
    "tenant list, setup not done": lambda _: f"{CHANGELIST}?setup_completed=no",
    "tenant list, search id": lambda eshop: f"{CHANGELIST}?q={eshop.eshop_id}",
    "tenant list, search text": lambda _: f"{CHANGELIST}?q=owner%40shop-",
    "tenant page": lambda eshop: f"{CHANGELIST}{eshop.pk}/change/",
    "dashboard": lambda _: "/admin/dashboard/",
    "sync states": lambda _: reverse("admin:sync_syncstate_changelist"),
    "settings page": settings_page_url,
}


@pytest.mark.parametrize("page", PAGES)
def test_page_cost_does_not_grow_with_tenants_or_rows_per_page(
    page: str, admin_client: Client, eshop_factory: Callable[..., Eshop]
) -> None:
    first = add_tenants(eshop_factory, 3)[0]
    admin_client.get(PAGES[page](first))  # first-visit costs (content types, sessions)
    few = page_cost(admin_client, PAGES[page](first))
    add_tenants(eshop_factory, 9)
    many = page_cost(admin_client, PAGES[page](first))

    assert many == few, (page, few, many)


def test_tenant_list_reads_a_pages_token_health_in_one_round_trip(
    admin_client: Client, eshop_factory: Callable[..., Eshop]
) -> None:
    shops = add_tenants(eshop_factory, 5)
    get_redis().hset(health_key(shops[0].eshop_id), "failures", 7)

    _, round_trips = page_cost(admin_client, CHANGELIST)
    page = admin_client.get(CHANGELIST).content.decode()

    assert round_trips == 1
    assert page.count('<td class="field-token_expires_in">30 min') == 5
    assert '<td class="field-token_failures">7</td>' in page


def test_dashboard_lists_only_tenants_failing_now_and_forgets_recovered_ones(
    admin_client: Client, eshop_factory: Callable[..., Eshop]
) -> None:
    failing, recovered = add_tenants(eshop_factory, 2)
    r = get_redis()
    # A renewal succeeded since: the broker resets the count (shoptet_api/tokens/store.py).
    r.hset(health_key(recovered.eshop_id), "failures", 0)

    trouble = admin_client.get("/admin/dashboard/").context["token_trouble"]

    assert [(t.eshop_id, t.failures) for t in trouble] == [(failing.eshop_id, 1)]
    assert r.zrange(token_failing_key(), 0, -1) == [str(failing.eshop_id).encode()]


def test_a_failure_record_expires_and_the_failing_set_too(
    eshop_factory: Callable[..., Eshop],
) -> None:
    [eshop] = add_tenants(eshop_factory, 1)
    r = get_redis()

    assert 0 < r.ttl(health_key(eshop.eshop_id)) <= health.FAILURE_TTL_SECONDS
    assert 0 < r.ttl(token_failing_key()) <= health.FAILURE_TTL_SECONDS


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the estimate is PostgreSQL's statistics"
)
def test_unfiltered_tenant_list_counts_from_statistics_past_the_threshold(
    admin_client: Client, eshop_factory: Callable[..., Eshop]
) -> None:
    for _ in range(4):
        eshop_factory()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE eshops_eshop")

    with (
        mock.patch.object(TenantPaginator, "ESTIMATE_FROM", 1),
        CaptureQueriesContext(connection) as unfiltered,
    ):
        response = admin_client.get(CHANGELIST)
    with CaptureQueriesContext(connection) as filtered:
        admin_client.get(f"{CHANGELIST}?status__exact=active")

    assert response.context["cl"].result_count == 4
    assert not any("COUNT(" in query["sql"] for query in unfiltered.captured_queries)
    # A filtered list is counted exactly, once (no second count of all tenants).
    assert sum("COUNT(" in query["sql"] for query in filtered.captured_queries) == 1
