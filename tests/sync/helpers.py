"""Helpers for the sync tests (imported as tests.sync.helpers)."""

from __future__ import annotations

from typing import Any

from eshops.models import Eshop
from shoptet_emulator import ShoptetEmulator
from sync import resources
from sync.engine import Budget, Engine, Outcome
from sync.models import Order, Product
from sync.service import run_resource


def run_all(eshop: Eshop, resource: str = "orders", **kwargs: Any) -> Outcome:
    """Run to completion (slices of one page if `pages` is given)."""
    pages = kwargs.pop("pages", None)
    while True:
        budget = Budget(pages=pages) if pages else None
        outcome, _ = run_resource(eshop, resource, budget=budget, **kwargs)
        kwargs.pop("full", None)
        if outcome is Outcome.DONE:
            return outcome


def run_pages(eshop: Eshop, resource: str, pages: int, **kwargs: Any) -> Outcome:
    """Run one slice of `pages` pages."""
    outcome, _ = run_resource(eshop, resource, budget=Budget(pages=pages), **kwargs)
    return outcome


def mirrored_codes(eshop: Eshop) -> set[str]:
    return set(Order.objects.filter(eshop=eshop).values_list("code", flat=True))


def mirrored_guids(eshop: Eshop) -> set[str]:
    return set(Product.objects.filter(eshop=eshop).values_list("guid", flat=True))


def live_codes(emulator: ShoptetEmulator, eshop: Eshop) -> set[str]:
    """What Shoptet has: every live order code, read from the emulator's list endpoint state."""
    shop = emulator.get_eshop(eshop.eshop_id)
    from shoptet_emulator import data

    return {
        data.order_code(shop.orders.newest(offset))
        for offset in range(shop.orders.live_count)
    }


def requests_to(emulator: ShoptetEmulator, prefix: str) -> list[tuple[str, str, int]]:
    return [r for r in emulator.stats.requests if r[1].startswith(prefix)]


__all__ = [
    "Engine",
    "Outcome",
    "mirrored_codes",
    "mirrored_guids",
    "requests_to",
    "resources",
    "run_all",
    "run_pages",
]
