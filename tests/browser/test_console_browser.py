"""The operator console in a real browser: log in, then look at the dashboard, the tenant list at
1366 px and a tenant page the way an operator does. Screenshots land in test-artifacts/."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from addon_project import redis_keys
from addon_project.redis_client import get_redis
from eshops.models import Eshop
from eshops.tasks import beat_heartbeat
from shoptet_api import tokens
from shoptet_api.models import WebhookEvent
from sync.models import SyncState

if TYPE_CHECKING:
    from playwright.sync_api import Page, Response

pytestmark = pytest.mark.django_db(transaction=True)

WIDTH = 1366
PASSWORD = "a-long-operator-password-1"
HEALTH_COLUMNS = ["token_expires_in", "token_failures", "missing_rights_summary"]


def tenants(
    install: Callable[..., Eshop], eshop_factory: Callable[..., Eshop]
) -> Eshop:
    """A console with something to show; returns the installed tenant (it has a live token)."""
    now = timezone.now()
    eshop = install(name="Zahradní potřeby Novák s.r.o.")
    Eshop.objects.filter(pk=eshop.pk).update(
        webhooks={
            "eshop:projectDomain": 11,
            "addon:uninstall": 12,
            "addon:suspend": 13,
        },
        contact_email="novak@example.com",
    )
    for n, status in enumerate(["processed", "processed", "failed", "dead"]):
        WebhookEvent.objects.create(
            eshop=eshop,
            event="eshop:projectDomain",
            event_instance=f"{eshop.eshop_id}-{n}",
            event_created=now - dt.timedelta(minutes=5 * n),
            raw_body="{}",
            verified_by="signature",
            dedup_key=f"browser-{eshop.eshop_id}-{n}",
            status=status,
            attempts=1 if status == "processed" else 5,
            last_error="" if status == "processed" else "ShoptetServerError: HTTP 500",
        )
    eshop_factory(
        name="Paused shop with a rather long name for the list",
        url="https://a-very-long-domain-name-for-a-shop.myshoptet.com/",
        processing_paused_at=now,
        processing_paused_by="operator",
    )
    refused = eshop_factory(
        name="Shop with refused endpoints",
        missing_rights={
            "GET /api/orders": now.isoformat(),
            "GET /api/products": now.isoformat(),
            "GET /api/customers": now.isoformat(),
            "GET /api/stocks": now.isoformat(),
        },
    )
    get_redis().hset(
        tokens.health_key(refused.eshop_id),
        mapping={
            "failures": 3,
            "last_error": "ShoptetServerError: 503 Service Unavailable",
            "last_error_at": now.timestamp(),
        },
    )
    suspended = eshop_factory(name="Suspended shop")
    suspended.transition(
        Eshop.Status.SUSPENDED, reason="addon:suspend", source="webhook"
    )
    # 24 hours of activity, as the web and worker processes would have counted it.
    pipe = get_redis().pipeline(transaction=False)
    for back in range(24):
        key = redis_keys.activity_hour_key(now - dt.timedelta(hours=back))
        received = 20 + (back * 7) % 15
        pipe.hset(
            key,
            mapping={
                "webhooks_received": received,
                "webhooks_processed": received - back % 3,
                "webhooks_failed": back % 3,
                "api_calls": 300 + (back * 37) % 200,
                "api_429": 4 if back in (5, 6) else 0,
                "token_renewals": 2 + back % 2,
                "token_failures": 1 if back == 9 else 0,
            },
        )
    pipe.execute()
    beat_heartbeat.apply()
    # Sync states in every condition the console tells apart.
    SyncState.objects.create(
        eshop=eshop,
        resource="orders",
        phase=SyncState.Phase.CHANGES,
        items_stored=48_213,
        items_deleted=12,
        last_success_at=now - dt.timedelta(minutes=4),
        changes_from=now - dt.timedelta(minutes=9),
    )
    SyncState.objects.create(
        eshop=eshop,
        resource="products",
        phase=SyncState.Phase.SNAPSHOT,
        items_done=12_400,
        items_total=31_000,
        items_stored=12_400,
        running_since=now - dt.timedelta(minutes=2),
    )
    SyncState.objects.create(
        eshop=refused,
        resource="orders",
        phase=SyncState.Phase.FAILED,
        items_stored=310,
        item_errors=3,
        last_success_at=now - dt.timedelta(days=2),
        changes_from=now - dt.timedelta(days=2, hours=1),
        last_error="ShoptetForbidden: 403 Forbidden: the addon may not read GET /api/orders/changes "
        "for this e-shop (approve the endpoint in the Shoptet administration)",
        last_error_at=now - dt.timedelta(minutes=20),
    )
    return eshop


def log_in(page: Page, live_server: Any, next_url: str) -> None:
    User.objects.create_superuser("operator", "op@example.com", PASSWORD)
    page.goto(f"{live_server.url}/admin/login/?next={next_url}")
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}{next_url}")


def test_operator_sees_dashboard_tenant_list_and_tenant_page(
    live_server: Any,
    page: Page,
    install: Callable[..., Eshop],
    eshop_factory: Callable[..., Eshop],
    screenshot: Callable[[Page, str], Path],
) -> None:
    eshop = tenants(install, eshop_factory)
    failed: list[str] = []

    def remember_failure(response: Response) -> None:
        if response.status >= 400:
            failed.append(f"{response.status} {response.url}")

    page.on("response", remember_failure)
    page.set_viewport_size({"width": WIDTH, "height": 900})

    # Dashboard: a grid of panels with the services and three charts.
    log_in(page, live_server, "/admin/dashboard/")
    assert (
        page.locator("#site-name").inner_text() == "Shoptet addon platform — operators"
    )
    assert page.locator("svg.hourly-chart").count() == 3
    assert page.locator("#services li.service").count() == 3
    assert page.locator("#services li.service.ok").count() >= 2  # Redis and beat
    panels = page.locator(".dashboard-grid > .module")
    tops = {round(panels.nth(i).bounding_box()["y"]) for i in range(3)}  # type: ignore[index]
    screenshot(page, "console-dashboard-1366.png")
    assert len(tops) == 1, "the first three panels share a row"
    assert _no_horizontal_scroll(page)

    # Tenant list: the health columns fit in 1366 px, no sideways scrolling.
    page.goto(f"{live_server.url}/admin/eshops/eshop/")
    results = page.locator("#changelist .results")
    visible = results.bounding_box()
    assert visible is not None
    for column in HEALTH_COLUMNS:
        box = page.locator(f"th.column-{column}").bounding_box()
        assert box is not None, column
        # Inside the list's own box (which scrolls sideways when too narrow) and the window.
        assert box["x"] + box["width"] <= min(visible["x"] + visible["width"], WIDTH), (
            column
        )
    assert results.evaluate("el => el.scrollWidth <= el.clientWidth")
    assert _no_horizontal_scroll(page)
    assert page.get_by_text("Active · paused").count() == 1
    screenshot(page, "console-tenants-1366.png")

    # Sync states: every column fits in 1366 px; the header links here.
    page.click("#console-nav >> text=Sync")
    page.wait_for_url(f"{live_server.url}/admin/sync/syncstate/")
    results = page.locator("#changelist .results")
    screenshot(page, "console-sync-states-1366.png")
    assert page.locator("#result_list tbody tr").count() == 3
    assert results.evaluate("el => el.scrollWidth <= el.clientWidth")
    assert _no_horizontal_scroll(page)
    assert page.get_by_text("12400 / 31000 (40 %)").count() == 1
    assert page.locator("#result_list td.field-last_error_short").first.inner_text()
    screenshot(page, "console-sync-states-1366.png")

    # Tenant page: read-only, action buttons, webhook tables.
    page.goto(f"{live_server.url}/admin/eshops/eshop/{eshop.pk}/change/")
    assert page.locator("input[name=_save], input[name=_continue]").count() == 0
    assert page.locator("button[name=tenant_action]").count() == 3
    assert (
        page.locator(".field-webhooks_table table.console-table tbody tr").count() == 3
    )
    assert page.locator(".field-recent_webhook_events table tbody tr").count() == 4
    assert page.locator(".field-sync_states_table table tbody tr").count() == 2
    assert _no_horizontal_scroll(page)
    screenshot(page, "console-tenant-page-1366.png")

    # A button does what it says, through the audited action.
    page.click("button[value=pause_processing]")
    page.wait_for_url(f"{live_server.url}/admin/eshops/eshop/{eshop.pk}/change/")
    assert page.locator(".messagelist").inner_text().endswith("paused")
    assert page.locator("button[value=resume_processing]").count() == 1
    page.goto(f"{live_server.url}/favicon.ico")

    assert failed == []


def _no_horizontal_scroll(page: Page) -> bool:
    return bool(
        page.evaluate(
            "() => document.documentElement.scrollWidth <= document.documentElement.clientWidth"
        )
    )
