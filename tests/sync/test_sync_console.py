"""Sync in the operators' console: the SyncState list, the audited "Resync now", the tenant page's
sync section and the dashboard's sync-health panel (constant cost in the number of tenants)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from unittest import mock

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from addon_project.celery import app as celery_app
from eshops.models import Eshop, OperatorAction
from sync import tasks
from sync.admin import LAG_ALERT_MINUTES, format_lag
from sync.models import SyncState
from tests.eshops.test_dashboard import cost_of_dashboard

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/sync/syncstate/"
DASHBOARD = "/admin/dashboard/"


@pytest.fixture
def queued() -> Iterator[mock.MagicMock]:
    """What "Resync now" hands to the broker (the broker itself is not under test here)."""
    with mock.patch.object(tasks.run_slice, "delay", autospec=True) as fake:
        yield fake


@pytest.fixture
def ping() -> Iterator[mock.MagicMock]:
    with mock.patch.object(
        celery_app.control, "ping", autospec=True, return_value=[]
    ) as fake:
        yield fake


def state(eshop: Eshop, resource: str = "orders", **fields: object) -> SyncState:
    return SyncState.objects.create(eshop=eshop, resource=resource, **fields)


def test_list_shows_phase_progress_counts_lag_and_a_short_error_in_utc(
    admin_client: Client, eshop_factory: Callable[..., Eshop]
) -> None:
    eshop = eshop_factory(name="Listed shop")
    now = timezone.now()
    state(
        eshop,
        phase=SyncState.Phase.LISTING,
        items_done=150,
        items_total=600,
        items_stored=1234,
        items_deleted=5,
        item_errors=2,
        last_success_at=dt.datetime(2026, 11, 30, 4, 15, 9, tzinfo=dt.UTC),
        changes_from=now - dt.timedelta(minutes=30),
        last_error="ShoptetServerError: " + "x" * 300,
        last_error_at=now,
        running_since=dt.datetime(2026, 12, 1, 3, 0, 0, tzinfo=dt.UTC),
    )

    response = admin_client.get(CHANGELIST)

    page = response.content.decode()
    assert response.status_code == 200
    assert "Listed shop" in page
    assert "full copy (list)" in page
    assert "150 / 600 (25 %)" in page
    assert "1234 / 5 / 2" in page
    assert "2026-11-30 04:15:09 UTC" in page
    assert "2026-12-01 03:00:00 UTC" in page
    assert ">30 min<" in page
    assert "ShoptetServerError: xxx" in page
    assert (
        "x" * 100 + "<" not in page
    )  # shortened in the cell (the full text is its title)


def test_list_filters_by_phase_resource_and_health(
    admin_client: Client, eshop_factory: Callable[..., Eshop]
) -> None:
    now = timezone.now()
    failing = state(eshop_factory(name="Failing shop"), last_error="boom")
    lagging = state(
        eshop_factory(name="Lagging shop"),
        resource="products",
        changes_from=now - dt.timedelta(minutes=LAG_ALERT_MINUTES + 5),
    )
    running = state(
        eshop_factory(name="Running shop"),
        phase=SyncState.Phase.SNAPSHOT,
        running_since=now,
        changes_from=now,
    )

    def listed(query: dict[str, str]) -> set[int]:
        response = admin_client.get(CHANGELIST, query)
        assert response.status_code == 200
        return {s.pk for s in response.context["cl"].result_list}

    assert listed({"health": "failing"}) == {failing.pk}
    assert listed({"health": "lagging"}) == {lagging.pk}
    assert listed({"health": "running"}) == {running.pk}
    assert listed({"phase__exact": "snapshot"}) == {running.pk}
    assert listed({"resource": "products"}) == {lagging.pk}


def test_states_are_read_only(
    admin_client: Client, eshop_factory: Callable[..., Eshop]
) -> None:
    synced = state(eshop_factory())

    page = admin_client.get(f"{CHANGELIST}{synced.pk}/change/")

    assert page.status_code == 200
    assert b'name="_save"' not in page.content
    assert admin_client.get(f"{CHANGELIST}add/").status_code == 403
    assert admin_client.get(f"{CHANGELIST}{synced.pk}/delete/").status_code == 403


def test_resync_now_requests_a_full_copy_queues_it_and_is_audited(
    admin_client: Client,
    eshop_factory: Callable[..., Eshop],
    queued: mock.MagicMock,
) -> None:
    eshop = eshop_factory()
    paused = eshop_factory(processing_paused_at=timezone.now())
    orders = state(eshop, phase=SyncState.Phase.CHANGES)
    skipped = state(paused)

    response = admin_client.post(
        CHANGELIST,
        {"action": "resync_now", "_selected_action": [orders.pk, skipped.pk]},
        follow=True,
    )

    assert response.status_code == 200
    orders.refresh_from_db()
    skipped.refresh_from_db()
    assert orders.full_requested is True
    assert skipped.full_requested is False
    queued.assert_called_once_with(eshop.eshop_id, "orders")
    audit = {
        (a.eshop_id, a.operator, a.action, a.detail)
        for a in OperatorAction.objects.all()
    }
    assert audit == {
        (eshop.eshop_id, "admin", "resync_now", "orders: full copy queued"),
        (
            paused.eshop_id,
            "admin",
            "resync_now",
            "orders: skipped: the e-shop cannot call the API (active, paused)",
        ),
    }


def test_resync_now_with_the_broker_down_still_requests_the_copy_and_says_so(
    admin_client: Client,
    eshop_factory: Callable[..., Eshop],
    queued: mock.MagicMock,
) -> None:
    queued.side_effect = BrokerError("connection refused")
    orders = state(eshop_factory())

    admin_client.post(
        CHANGELIST, {"action": "resync_now", "_selected_action": [orders.pk]}
    )

    orders.refresh_from_db()
    assert orders.full_requested is True
    action = OperatorAction.objects.get()
    assert action.detail.startswith("orders: full copy requested, not queued")


def test_resync_now_needs_the_change_permission(
    client: Client, eshop_factory: Callable[..., Eshop], queued: mock.MagicMock
) -> None:
    orders = state(eshop_factory())
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_syncstate"))
    client.force_login(viewer)

    listing = client.get(CHANGELIST)
    client.post(CHANGELIST, {"action": "resync_now", "_selected_action": [orders.pk]})

    assert listing.status_code == 200
    assert b"resync_now" not in listing.content
    orders.refresh_from_db()
    assert orders.full_requested is False
    queued.assert_not_called()
    assert not OperatorAction.objects.exists()


def test_tenant_page_shows_its_sync_states_and_links_to_them(
    admin_client: Client, eshop_factory: Callable[..., Eshop]
) -> None:
    eshop = eshop_factory()
    other = eshop_factory()
    state(
        eshop,
        items_stored=4321,
        last_success_at=dt.datetime(2026, 11, 30, 4, 15, 9, tzinfo=dt.UTC),
        changes_from=timezone.now() - dt.timedelta(hours=3),
    )
    state(other, items_stored=999999)

    page = admin_client.get(f"/admin/eshops/eshop/{eshop.pk}/change/")
    unsynced = admin_client.get(f"/admin/eshops/eshop/{other.pk}/change/")
    linked = admin_client.get(CHANGELIST, {"eshop__id__exact": str(eshop.pk)})

    html = page.content.decode()
    assert "4321" in html
    assert "999999" not in html
    assert "2026-11-30 04:15:09 UTC" in html
    assert "3 h 00 min" in html
    assert f"{CHANGELIST}?eshop__id__exact={eshop.pk}" in html
    assert b"999999" in unsynced.content
    assert [s.eshop_id for s in linked.context["cl"].result_list] == [eshop.pk]


def test_console_header_links_to_the_sync_list(admin_client: Client) -> None:
    page = admin_client.get("/admin/eshops/eshop/").content.decode()

    assert f'<a href="{CHANGELIST}">Sync</a>' in page


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, "-"),
        (-3, "0 s"),
        (59, "59 s"),
        (600, "10 min"),
        (3 * 3600 + 300, "3 h 05 min"),
        (3 * 86400 + 7200, "3 d 2 h"),
    ],
)
def test_lag_reads_in_units_an_operator_scans(
    seconds: float | None, shown: str
) -> None:
    assert format_lag(seconds) == shown


def test_dashboard_sums_up_sync_health_per_tenant(
    admin_client: Client, eshop_factory: Callable[..., Eshop], ping: mock.MagicMock
) -> None:
    now = timezone.now()
    healthy = eshop_factory()
    state(healthy, changes_from=now)
    state(healthy, "products", changes_from=now, running_since=now)
    broken = eshop_factory()
    state(broken, last_error="ShoptetServerError: 503", changes_from=now)
    state(broken, "products", phase=SyncState.Phase.FAILED)
    behind = eshop_factory()
    state(behind, changes_from=now - dt.timedelta(minutes=LAG_ALERT_MINUTES + 1))
    suspended = eshop_factory(status=Eshop.Status.SUSPENDED)
    state(suspended, last_error="stopped", running_since=now)

    response = admin_client.get(DASHBOARD)

    health = response.context["sync_health"]
    assert (health.syncing, health.failing, health.lagging, health.running) == (
        3,
        1,
        1,
        1,
    )
    page = response.content.decode()
    assert f"Lagging more than {LAG_ALERT_MINUTES} min" in page
    assert f'href="{CHANGELIST}?health=failing"' in page


def test_sync_health_costs_the_same_for_many_tenants(
    admin_client: Client, eshop_factory: Callable[..., Eshop], ping: mock.MagicMock
) -> None:
    def tenants(n: int) -> None:
        now = timezone.now()
        for i in range(n):
            eshop = eshop_factory()
            state(eshop, last_error="boom" if i % 2 else "", changes_from=now)
            state(eshop, "products", running_since=now)

    tenants(2)
    few = cost_of_dashboard(admin_client)
    tenants(30)
    many = cost_of_dashboard(admin_client)

    assert many == few, (few, many)
    assert admin_client.get(DASHBOARD).context["sync_health"].syncing == 32
