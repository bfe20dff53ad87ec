"""Orders: keyed by `code`; the detail wraps the order in {"order": …}; snapshots filter by code."""

from __future__ import annotations

from typing import Any

from sync.models import Order
from sync.resources import (
    ItemError,
    Resource,
    parse_decimal,
    parse_int,
    parse_time,
    register,
    required,
    text,
)


def order_fields(item: dict[str, Any]) -> dict[str, Any]:
    """Model fields of one order (detail or snapshot shape)."""
    status = item.get("status")
    price = item.get("price")
    if status is not None and not isinstance(status, dict):
        raise ItemError("status is not an object")
    if price is not None and not isinstance(price, dict):
        raise ItemError("price is not an object")
    paid = item.get("paid")
    if paid is not None and not isinstance(paid, bool):
        raise ItemError("paid is not a boolean")
    return {
        "code": text(required(item, "code"), max_length=64),
        "guid": text(item.get("guid"), max_length=64) or None,
        "status_id": parse_int((status or {}).get("id"), "status.id"),
        "creation_time": parse_time(item.get("creationTime"), "creationTime"),
        "change_time": parse_time(item.get("changeTime"), "changeTime"),
        "price_with_vat": parse_decimal((price or {}).get("withVat"), "price.withVat"),
        "currency_code": text((price or {}).get("currencyCode"), max_length=8),
        "paid": paid,
    }


def _unwrap(data: Any) -> Any:
    return data.get("order") if isinstance(data, dict) else None


ORDERS = register(
    Resource(
        name="orders",
        model=Order,
        key_field="code",
        api_key="code",
        list_path="/api/orders",
        list_items_key="orders",
        detail_path="/api/orders/{key}",
        changes_path="/api/orders/changes",
        snapshot_path="/api/orders/snapshot",
        snapshot_filter="orderCodes",
        to_fields=order_fields,
        unwrap_detail=_unwrap,
        list_page_size=50,
    )
)
