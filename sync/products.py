"""Products: keyed by `guid`; the detail's `data` is the product itself."""

from __future__ import annotations

from typing import Any

from sync.models import Product
from sync.resources import Resource, parse_time, register, required, text


def product_fields(item: dict[str, Any]) -> dict[str, Any]:
    """Model fields of one product (detail or snapshot shape)."""
    return {
        "guid": text(required(item, "guid"), max_length=64),
        "name": text(item.get("name"), max_length=500),
        "visibility": text(item.get("visibility"), max_length=32),
        "creation_time": parse_time(item.get("creationTime"), "creationTime"),
        "change_time": parse_time(item.get("changeTime"), "changeTime"),
    }


PRODUCTS = register(
    Resource(
        name="products",
        model=Product,
        key_field="guid",
        api_key="guid",
        list_path="/api/products",
        list_items_key="products",
        detail_path="/api/products/{key}",
        changes_path="/api/products/changes",
        snapshot_path="/api/products/snapshot",
        snapshot_filter="productGuids",
        to_fields=product_fields,
        list_page_size=1000,
    )
)
