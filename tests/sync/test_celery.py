"""The sync in Celery with a real worker: beat's schedule_due queues run_slice slices for every
tenant that wants it; slices re-queue at the back; a paused tenant stops at its next slice."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from django.utils import timezone

from eshops.models import Eshop, EshopSettings
from shoptet_emulator import ShoptetEmulator
from sync.models import SyncState
from sync.tasks import schedule_due
from tests.sync.helpers import live_codes, mirrored_codes, requests_to

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("real_worker"),
]


def wait_until(check: Callable[[], bool], what: str, bound: float = 60.0) -> None:
    """Poll the database until `check()` holds (a generous bound, not a measured time)."""
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def tenant(
    install: Callable[..., Eshop],
    emulator: ShoptetEmulator,
    orders: int,
    *,
    sync_orders: bool = True,
) -> Eshop:
    shop = install()
    emulator.add_orders(shop.eshop_id, orders)
    EshopSettings.objects.update_or_create(
        eshop=shop, defaults={"sync_orders": sync_orders, "sync_products": False}
    )
    return shop


def done(shop: Eshop) -> bool:
    return SyncState.objects.filter(
        eshop=shop, resource="orders", last_success_at__isnull=False
    ).exists()


def test_schedule_due_runs_slices_to_completion_for_enabled_tenants_only(
    install: Callable[..., Eshop], shoptet_settings: ShoptetEmulator, settings: Any
) -> None:
    settings.SYNC_SLICE_PAGES = 1
    one = tenant(install, shoptet_settings, 70)
    two = tenant(install, shoptet_settings, 30)
    off = tenant(install, shoptet_settings, 10, sync_orders=False)

    assert schedule_due() == 2
    wait_until(lambda: done(one) and done(two), "both enabled tenants to finish")

    assert mirrored_codes(one) == live_codes(shoptet_settings, one)
    assert mirrored_codes(two) == live_codes(shoptet_settings, two)
    assert not SyncState.objects.filter(eshop=off).exists()
    assert not mirrored_codes(off)
    for shop in (one, two):
        state = SyncState.objects.get(eshop=shop, resource="orders")
        assert state.phase == SyncState.Phase.IDLE
        assert state.running_since is None
    # Synced within the interval: the next beat tick queues nothing.
    assert schedule_due() == 0


def test_a_big_shop_does_not_starve_a_small_one(
    install: Callable[..., Eshop], shoptet_settings: ShoptetEmulator, settings: Any
) -> None:
    settings.SYNC_SLICE_PAGES = 1
    big = tenant(
        install, shoptet_settings, 150
    )  # 3 list pages: 3 slices + the catch-up
    small = tenant(install, shoptet_settings, 10)  # queued after the big one

    assert schedule_due() == 2
    wait_until(lambda: done(big) and done(small), "both tenants to finish")

    big_state = SyncState.objects.get(eshop=big, resource="orders")
    small_state = SyncState.objects.get(eshop=small, resource="orders")
    assert small_state.last_success_at is not None
    assert big_state.last_success_at is not None
    # The big shop's slices went to the back of the queue behind the small one's.
    assert small_state.last_success_at < big_state.last_success_at
    assert mirrored_codes(big) == live_codes(shoptet_settings, big)
    assert mirrored_codes(small) == live_codes(shoptet_settings, small)


def test_a_tenant_paused_mid_run_stops_at_its_next_slice_and_resumes_later(
    install: Callable[..., Eshop], shoptet_settings: ShoptetEmulator, settings: Any
) -> None:
    settings.SYNC_SLICE_PAGES = 1
    shop = tenant(install, shoptet_settings, 150)
    # Each order detail waits a little (a page takes about a second), so the pause lands
    # while pages remain.
    shoptet_settings.set_latency(0.02, "/api/orders/")

    assert schedule_due() == 1
    wait_until(
        lambda: SyncState.objects.filter(eshop=shop, items_done__gte=50).exists(),
        "the first page to be stored",
    )
    Eshop.objects.filter(pk=shop.pk).update(
        processing_paused_at=timezone.now(), processing_paused_by="op"
    )
    wait_until(
        lambda: SyncState.objects.filter(eshop=shop, running_since=None).exists(),
        "the run to stop",
    )
    stopped = SyncState.objects.get(eshop=shop, resource="orders")
    listed = [
        r for r in requests_to(shoptet_settings, "/api/orders") if r[1] == "/api/orders"
    ]

    assert stopped.last_success_at is None
    assert stopped.phase == SyncState.Phase.LISTING
    assert 2 <= stopped.checkpoint["page"] <= 3  # kept for the resume
    assert len(listed) < 3
    assert len(mirrored_codes(shop)) < 150

    # Resumed by the operator: the next beat tick picks it up from its checkpoint.
    shoptet_settings.set_latency(0, "/api/orders/")
    Eshop.objects.filter(pk=shop.pk).update(
        processing_paused_at=None, processing_paused_by=""
    )
    assert schedule_due() == 1
    wait_until(lambda: done(shop), "the resumed run to finish")

    assert mirrored_codes(shop) == live_codes(shoptet_settings, shop)
    listed = [
        r for r in requests_to(shoptet_settings, "/api/orders") if r[1] == "/api/orders"
    ]
    assert len(listed) == 3  # no page listed twice
