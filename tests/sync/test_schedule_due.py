"""Beat's schedule_due selects due runs in SQL: exactly the tenants and resources whose interval
elapsed (or whose run died, or who asked for a full copy), most overdue first, a bounded number per
tick, in the same few queries whatever the number of tenants."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from eshops.models import Eshop, EshopSettings
from sync import tasks
from sync.models import SyncState
from sync.tasks import STALE_RUN_SECONDS, schedule_due

pytestmark = pytest.mark.django_db


@pytest.fixture
def queued() -> Iterator[list[tuple[int, str]]]:
    """(eshop_id, resource) of every slice schedule_due queues, in order (nothing is sent)."""
    calls: list[tuple[int, str]] = []
    with mock.patch.object(
        tasks.run_slice,
        "delay",
        autospec=True,
        side_effect=lambda eshop_id, resource: calls.append((eshop_id, resource)),
    ):
        yield calls


def syncing(
    eshop_factory: Callable[..., Eshop],
    *,
    orders: bool = True,
    products: bool = False,
    interval: int = 60,
    **fields: Any,
) -> Eshop:
    shop = eshop_factory(**fields)
    EshopSettings.objects.create(
        eshop=shop,
        sync_orders=orders,
        sync_products=products,
        sync_interval_minutes=interval,
    )
    return shop


def synced(
    shop: Eshop,
    *,
    ago: dt.timedelta | None,
    resource: str = "orders",
    updated_ago: dt.timedelta = dt.timedelta(0),
    **fields: Any,
) -> SyncState:
    """A state whose last success was `ago` (None: never), last updated `updated_ago`."""
    now = timezone.now()
    state = SyncState.objects.create(
        eshop=shop,
        resource=resource,
        last_success_at=None if ago is None else now - ago,
        **fields,
    )
    SyncState.objects.filter(pk=state.pk).update(updated_at=now - updated_ago)
    return state


def minutes(n: int) -> dt.timedelta:
    return dt.timedelta(minutes=n)


def test_schedule_due_queues_exactly_the_due_runs(
    eshop_factory: Callable[..., Eshop], queued: list[tuple[int, str]]
) -> None:
    now = timezone.now()
    new = syncing(eshop_factory)
    products_only = syncing(eshop_factory, orders=False, products=True)
    both = syncing(eshop_factory, products=True)
    overdue = syncing(eshop_factory)
    synced(overdue, ago=minutes(61))
    recent = syncing(eshop_factory)
    synced(recent, ago=minutes(10))
    short = syncing(eshop_factory, interval=5)
    synced(short, ago=minutes(6))
    daily = syncing(eshop_factory, interval=1440)
    synced(daily, ago=minutes(120))
    full = syncing(eshop_factory)
    synced(full, ago=minutes(10), full_requested=True)
    running = syncing(eshop_factory)
    synced(running, ago=minutes(300), running_since=now)
    died = syncing(eshop_factory)
    synced(
        died,
        ago=minutes(10),
        full_requested=True,
        running_since=now - minutes(30),
        updated_ago=dt.timedelta(seconds=STALE_RUN_SECONDS + 60),
    )
    failed_first = syncing(eshop_factory)
    synced(failed_first, ago=None, last_error="ShoptetServerError: 503")
    suspended = syncing(eshop_factory, status=Eshop.Status.SUSPENDED)
    paused = syncing(eshop_factory, processing_paused_at=now)
    switched_off = syncing(eshop_factory, orders=False)
    synced(switched_off, ago=minutes(300))
    no_settings = eshop_factory()
    synced(no_settings, ago=minutes(300))

    before = timezone.now()
    count = schedule_due()

    assert sorted(queued) == sorted(
        [
            (new.eshop_id, "orders"),
            (products_only.eshop_id, "products"),
            (both.eshop_id, "orders"),
            (both.eshop_id, "products"),
            (overdue.eshop_id, "orders"),
            (short.eshop_id, "orders"),
            (full.eshop_id, "orders"),
            (died.eshop_id, "orders"),
            (failed_first.eshop_id, "orders"),
        ]
    )
    assert count == len(queued)
    marked = set(
        SyncState.objects.filter(running_since__gte=before).values_list(
            "eshop__eshop_id", "resource"
        )
    )
    assert marked == set(queued)
    untouched = (suspended, paused)
    assert not SyncState.objects.filter(eshop__in=untouched).exists()
    # Every queued run now counts as running: the next tick queues nothing.
    queued.clear()
    assert schedule_due() == 0
    assert queued == []


def test_schedule_due_queues_the_most_overdue_first_and_the_rest_next_tick(
    eshop_factory: Callable[..., Eshop], queued: list[tuple[int, str]]
) -> None:
    an_hour_late = syncing(eshop_factory)
    synced(an_hour_late, ago=minutes(70))
    three_hours_late = syncing(eshop_factory)
    synced(three_hours_late, ago=minutes(240))
    never = syncing(eshop_factory)
    two_hours_late = syncing(eshop_factory)
    synced(two_hours_late, ago=minutes(180))

    with mock.patch.object(tasks, "SCHEDULE_LIMIT", 2):
        first = schedule_due()
        second = schedule_due()
        third = schedule_due()

    assert (first, second, third) == (2, 2, 0)
    assert [eshop_id for eshop_id, _ in queued] == [
        never.eshop_id,
        three_hours_late.eshop_id,
        two_hours_late.eshop_id,
        an_hour_late.eshop_id,
    ]


def test_schedule_due_costs_the_same_queries_for_more_tenants(
    eshop_factory: Callable[..., Eshop], queued: list[tuple[int, str]]
) -> None:
    def add(n: int) -> None:
        for i in range(n):
            shop = syncing(eshop_factory, products=True)
            synced(shop, ago=minutes(61 if i % 2 else 5))  # half of them due
            synced(shop, ago=None, resource="products")

    add(3)
    with CaptureQueriesContext(connection) as few:
        schedule_due()
    SyncState.objects.update(running_since=None)
    add(9)
    with CaptureQueriesContext(connection) as many:
        schedule_due()

    assert len(many) == len(few)
    # Each SELECT asks for due runs only; no tenant id list is sent back to the database.
    assert all(" IN (" not in q["sql"] for q in many if q["sql"].startswith("SELECT"))
    assert len(queued) == (1 + 3) + (5 + 12)
