"""The sync engine against the emulator over loopback: full copies, resume, drift, /changes."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.utils import timezone

from eshops.models import Eshop
from shoptet_emulator import ShoptetEmulator
from sync.engine import Outcome
from sync.models import Order, SyncState
from tests.sync.helpers import (
    live_codes,
    mirrored_codes,
    requests_to,
    run_all,
    run_pages,
)

pytestmark = pytest.mark.django_db


def test_first_run_copies_every_order(
    shop: Eshop, shoptet_settings: ShoptetEmulator
) -> None:
    shoptet_settings.add_orders(shop.eshop_id, 120)

    run_all(shop)

    assert mirrored_codes(shop) == live_codes(shoptet_settings, shop)
    assert len(mirrored_codes(shop)) == 120
    state = SyncState.objects.get(eshop=shop, resource="orders")
    assert state.phase == SyncState.Phase.IDLE
    assert state.changes_from is not None
    assert state.last_success_at is not None
    order = Order.objects.filter(eshop=shop).first()
    assert order is not None
    assert order.data["code"] == order.code
    assert order.creation_time is not None
    assert order.price_with_vat is not None


def test_crash_between_pages_resumes_without_duplicates_or_gaps(
    shop: Eshop, shoptet_settings: ShoptetEmulator
) -> None:
    shoptet_settings.add_orders(shop.eshop_id, 130)  # 3 pages of 50

    assert run_pages(shop, "orders", 1) is Outcome.MORE
    # The worker dies here (the lease is released by the context manager; a killed one expires).
    after_first = len(mirrored_codes(shop))
    state = SyncState.objects.get(eshop=shop, resource="orders")
    assert state.checkpoint["page"] == 2
    shoptet_settings.stats.requests.clear()

    run_all(shop)

    assert after_first == 50
    assert mirrored_codes(shop) == live_codes(shoptet_settings, shop)
    assert Order.objects.filter(eshop=shop).count() == 130
    # Resumed at page 2: page 1 was not listed again.
    pages = [
        r for r in requests_to(shoptet_settings, "/api/orders") if r[1] == "/api/orders"
    ]
    assert len(pages) == 2


def test_total_count_drift_while_paging_walks_again(
    shop: Eshop, shoptet_settings: ShoptetEmulator
) -> None:
    codes = shoptet_settings.add_orders(shop.eshop_id, 120)
    run_pages(shop, "orders", 1)
    # Orders vanish from the newest page: everything after it shifts one page back.
    for code in codes[-5:]:
        shoptet_settings.delete_order(shop.eshop_id, code)

    run_all(shop)

    assert mirrored_codes(shop) == live_codes(shoptet_settings, shop)
    assert len(mirrored_codes(shop)) == 115


def test_incremental_applies_edits_and_deletes(
    shop: Eshop, shoptet_settings: ShoptetEmulator
) -> None:
    codes = shoptet_settings.add_orders(shop.eshop_id, 30)
    run_all(shop)
    shoptet_settings.edit_order(shop.eshop_id, codes[0], paid=True)
    shoptet_settings.delete_order(shop.eshop_id, codes[1])
    new = shoptet_settings.add_orders(shop.eshop_id, 2)
    shoptet_settings.stats.requests.clear()

    run_all(shop)

    state = SyncState.objects.get(eshop=shop, resource="orders")
    assert state.mode == SyncState.Mode.INCREMENTAL
    assert mirrored_codes(shop) == live_codes(shoptet_settings, shop)
    assert codes[1] not in mirrored_codes(shop)
    assert set(new) <= mirrored_codes(shop)
    assert Order.objects.get(eshop=shop, code=codes[0]).paid is True
    changes = requests_to(shoptet_settings, "/api/orders/changes")
    assert changes
    assert all(status == 200 for _, _, status in changes)
    # What changed was fetched; the deleted order was not asked for. (Orders created in the same
    # second as the first copy are fetched again: equal one-second times prove nothing.)
    details = {
        path.rsplit("/", 1)[1]
        for _, path, _ in requests_to(shoptet_settings, "/api/orders/")
        if path != "/api/orders/changes"
    }
    assert {codes[0], *new} <= details
    assert codes[1] not in details


def test_changes_from_keeps_its_plus_sign(
    shop: Eshop, shoptet_settings: ShoptetEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    shoptet_settings.add_orders(shop.eshop_id, 3)
    run_all(shop)
    seen: list[Any] = []
    import sync.engine as engine_module

    real = engine_module._iso

    def spy(moment: dt.datetime) -> str:
        text = real(moment)
        seen.append(text)
        return text

    monkeypatch.setattr(engine_module, "_iso", spy)
    code = shoptet_settings.add_orders(shop.eshop_id, 1)[0]

    run_all(shop)

    assert any("+00:00" in text for text in seen)
    assert code in mirrored_codes(
        shop
    )  # a "+" read as a space would be a 400 from Shoptet


def test_checkpoint_older_than_30_days_copies_in_full(
    shop: Eshop, shoptet_settings: ShoptetEmulator
) -> None:
    shoptet_settings.add_orders(shop.eshop_id, 10)
    run_all(shop)
    SyncState.objects.filter(eshop=shop).update(
        changes_from=timezone.now() - dt.timedelta(days=31)
    )
    before = SyncState.objects.get(eshop=shop, resource="orders").last_full_at
    shoptet_settings.stats.requests.clear()

    run_all(shop)

    state = SyncState.objects.get(eshop=shop, resource="orders")
    assert before is not None
    assert state.last_full_at is not None
    assert state.last_full_at > before
    # The list was walked first; /changes only caught up from the copy's own start.
    first = requests_to(shoptet_settings, "/api/orders")[0]
    assert first[1] == "/api/orders"
    assert state.changes_from is not None
    assert state.changes_from > timezone.now() - dt.timedelta(minutes=5)
    assert mirrored_codes(shop) == live_codes(shoptet_settings, shop)


def test_full_copy_removes_orders_shoptet_no_longer_has(
    shop: Eshop, shoptet_settings: ShoptetEmulator
) -> None:
    shoptet_settings.add_orders(shop.eshop_id, 5)
    run_all(shop)
    Order.objects.create(
        eshop=shop,
        code="ghost",
        data={"code": "ghost"},
        synced_at=timezone.now() - dt.timedelta(days=1),
    )

    run_all(shop, full=True)

    assert "ghost" not in mirrored_codes(shop)
    assert mirrored_codes(shop) == live_codes(shoptet_settings, shop)


def test_mirrored_rows_are_isolated_per_tenant(
    install: Any, shoptet_settings: ShoptetEmulator
) -> None:
    one, two = install(), install()
    shoptet_settings.add_orders(one.eshop_id, 4)
    shoptet_settings.add_orders(two.eshop_id, 6)

    run_all(one)
    run_all(two)

    assert len(mirrored_codes(one)) == 4
    assert len(mirrored_codes(two)) == 6
    # Order codes may coincide across shops; each row belongs to its own tenant.
    assert mirrored_codes(one) == live_codes(shoptet_settings, one)
    assert mirrored_codes(two) == live_codes(shoptet_settings, two)
    two.delete()
    assert len(mirrored_codes(one)) == 4
    assert not Order.objects.filter(eshop_id=two.pk).exists()


def test_products_copy_and_follow_changes(
    shop: Eshop, shoptet_settings: ShoptetEmulator
) -> None:
    from sync.models import Product

    guids = shoptet_settings.add_products(shop.eshop_id, 25)
    run_all(shop, "products")
    assert set(
        Product.objects.filter(eshop=shop).values_list("guid", flat=True)
    ) == set(guids)

    shoptet_settings.edit_product(shop.eshop_id, guids[0], name="Renamed")
    shoptet_settings.delete_product(shop.eshop_id, guids[1])
    run_all(shop, "products")

    assert Product.objects.get(eshop=shop, guid=guids[0]).name == "Renamed"
    assert not Product.objects.filter(eshop=shop, guid=guids[1]).exists()
