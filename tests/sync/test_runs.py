"""The sync_eshop command, stopping tenants, bad data, webhooks and the lease."""

from __future__ import annotations

import datetime as dt
import io
import time
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from eshops.models import Eshop
from shoptet_api.models import WebhookEvent
from shoptet_emulator import ShoptetEmulator
from sync import resources
from sync.download import _lines
from sync.engine import Engine, SyncStopped
from sync.handlers import order_deleted
from sync.lease import Lease
from sync.models import Order, SyncState
from sync.service import run_resource
from sync.tasks import refresh_order
from tests.sync.helpers import live_codes, mirrored_codes, requests_to, run_all

pytestmark = pytest.mark.django_db


def test_command_copies_and_exits_zero(
    shop: Eshop, shoptet_settings: ShoptetEmulator
) -> None:
    shoptet_settings.add_orders(shop.eshop_id, 60)
    out = io.StringIO()

    call_command("sync_eshop", str(shop.eshop_id), "--resource", "orders", stdout=out)

    assert mirrored_codes(shop) == live_codes(shoptet_settings, shop)
    assert f"e-shop {shop.eshop_id} orders: complete" in out.getvalue()


@pytest.mark.parametrize("how", ["paused", "suspended", "uninstalled"])
def test_command_refuses_a_stopped_tenant_without_any_request(
    how: str, shop: Eshop, shoptet_settings: ShoptetEmulator
) -> None:
    if how == "paused":
        Eshop.objects.filter(pk=shop.pk).update(
            processing_paused_at=timezone.now(), processing_paused_by="op"
        )
    else:
        Eshop.objects.filter(pk=shop.pk).update(status=how)
    shoptet_settings.stats.requests.clear()

    with pytest.raises(CommandError, match=f"is {how}|paused"):
        call_command("sync_eshop", str(shop.eshop_id))

    assert shoptet_settings.stats.requests == []


def test_command_refuses_an_unknown_tenant(db: None) -> None:
    with pytest.raises(CommandError, match="not installed"):
        call_command("sync_eshop", "424242")


def test_a_tenant_paused_mid_run_stops_at_the_next_page(
    shop: Eshop, shoptet_settings: ShoptetEmulator
) -> None:
    shoptet_settings.add_orders(shop.eshop_id, 150)
    pages = 0

    def pause_after_first_page(done: int, total: int | None, unit: str) -> None:
        nonlocal pages
        pages += 1
        Eshop.objects.filter(pk=shop.pk).update(
            processing_paused_at=timezone.now(), processing_paused_by="op"
        )

    with pytest.raises(SyncStopped, match="paused"):
        run_resource(shop, "orders", progress=pause_after_first_page)

    assert pages == 1
    assert len(mirrored_codes(shop)) == 50
    state = SyncState.objects.get(eshop=shop, resource="orders")
    assert state.checkpoint["page"] == 2  # kept for the resume
    assert "paused" in state.last_error


def test_bad_items_are_recorded_and_the_run_goes_on(shop: Eshop) -> None:
    from shoptet_api.client import ShoptetClient

    engine = Engine(shop, resources.get("orders"), client=ShoptetClient(shop))
    good = {"code": "A1", "creationTime": "2024-01-31T10:00:00+0100"}
    bad = [
        {"guid": "no-code"},
        {"code": "Y1", "creationTime": "0001-01-01T00:00:00+0100"},
        {"code": "Y9", "changeTime": "9999-12-31T23:59:59-0100"},
        {"code": "P1", "price": {"withVat": "NaN"}},
    ]

    stored = engine.store([bad[0], good, *bad[1:]])

    assert stored == ["A1"]
    assert engine.state.item_errors == 4
    assert [e["key"] for e in engine.state.recent_item_errors] == [
        "?",
        "Y1",
        "Y9",
        "P1",
    ]
    assert Order.objects.filter(eshop=shop).count() == 1


def test_a_50_mb_line_is_skipped_without_being_held() -> None:
    huge = b"x" * (50 * 1024 * 1024)
    chunks = [
        b'{"a": 1}\n',
        huge[: len(huge) // 2],
        huge[len(huge) // 2 :],
        b'\n{"b": 2}\n',
    ]

    lines = list(_lines(iter(chunks), max_line=1024 * 1024))

    assert [(line.number, line.data) for line in lines] == [
        (1, b'{"a": 1}'),
        (2, None),
        (3, b'{"b": 2}'),
    ]


def test_webhook_and_changes_for_the_same_order_fetch_it_once(
    shop: Eshop, shoptet_settings: ShoptetEmulator
) -> None:
    codes = shoptet_settings.add_orders(shop.eshop_id, 5)
    run_all(shop)
    shoptet_settings.edit_order(shop.eshop_id, codes[0], paid=True)
    # Change times have one-second resolution: the webhook's fetch comes a second later.
    time.sleep(1.1)
    shoptet_settings.stats.requests.clear()

    assert refresh_order(shop.eshop_id, codes[0]) == "stored"
    run_all(shop)

    fetched = list(requests_to(shoptet_settings, f"/api/orders/{codes[0]}"))
    assert len(fetched) == 1
    assert Order.objects.get(eshop=shop, code=codes[0]).paid is True


def test_order_delete_webhook_removes_the_order(
    shop: Eshop, shoptet_settings: ShoptetEmulator
) -> None:
    codes = shoptet_settings.add_orders(shop.eshop_id, 2)
    run_all(shop)
    event = WebhookEvent(
        eshop=shop, event="order:delete", event_instance=codes[0], raw_body="{}"
    )

    assert "removed (1)" in order_deleted(event)
    assert mirrored_codes(shop) == {codes[1]}


def test_a_second_run_is_refused_naming_the_holder(
    shop: Eshop, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sync.management.commands import sync_eshop

    monkeypatch.setattr(sync_eshop, "LEASE_WAIT_SECONDS", 0.1)
    with (
        Lease(shop.eshop_id, "orders"),
        pytest.raises(CommandError, match=r"another sync run holds it: .* pid"),
    ):
        call_command("sync_eshop", str(shop.eshop_id), "--resource", "orders")


def test_a_killed_runs_lease_expires(shop: Eshop, settings: Any) -> None:
    settings.SYNC_LEASE_SECONDS = 1.0
    lease = Lease(shop.eshop_id, "orders")
    lease.acquire()
    lease._stop.set()  # the process "dies": nobody renews it any more

    # Acquired once the dead run's lease expired (released at the end: no renewer outlives the test).
    with Lease(shop.eshop_id, "orders", wait=3.0) as rerun:
        assert not rerun.lost.is_set()


def test_retention_purge_deletes_the_mirror(
    shop: Eshop, shoptet_settings: ShoptetEmulator
) -> None:
    shoptet_settings.add_orders(shop.eshop_id, 3)
    run_all(shop)
    Eshop.objects.filter(pk=shop.pk).update(
        status=Eshop.Status.UNINSTALLED,
        uninstalled_at=timezone.now() - dt.timedelta(days=40),
    )

    Eshop.objects.purge_uninstalled(before=timezone.now() - dt.timedelta(days=30))

    assert not Order.objects.exists()
    assert not SyncState.objects.exists()


def test_sync_events_are_registered_with_the_others_when_sync_is_on(
    shop: Eshop, shoptet_settings: ShoptetEmulator, settings: Any
) -> None:
    from shoptet_api.client import ShoptetClient
    from shoptet_api.provisioning import sync_webhooks

    settings.SHOPTET_WEBHOOK_URL = "https://addon.example.com/webhooks/shoptet/"
    settings.SHOPTET_WEBHOOK_EVENTS = ["eshop:projectDomain"]

    with ShoptetClient(shop) as client:
        registered = sync_webhooks(shop, client=client)

    assert set(registered) == {
        "eshop:projectDomain",
        "job:finished",
        "order:create",
        "order:update",
        "order:delete",
    }
