"""A synced resource, declared once: endpoints, key, mapping. The engine (sync/engine.py) does the rest.

Adding a resource is one short module that builds a `Resource` and calls `register()`; see
sync/orders.py and the README's "Background sync" section.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import models

# Dates outside this range are bad data (Shoptet once sent year 1 and 9999 in test shops): the
# item is recorded as an error rather than stored with a nonsense time.
EARLIEST_YEAR = 1990
LATEST_YEAR = 2100


class ItemError(ValueError):
    """One item from Shoptet cannot be stored (missing field, impossible value)."""


@dataclass(frozen=True)
class Resource:
    """How to mirror one kind of Shoptet entity into one model."""

    name: str  # "orders": the --resource value and SyncState.resource
    model: type[models.Model]
    key_field: str  # the model's unique key (with eshop): "code", "guid"
    api_key: str  # the same key in Shoptet's JSON
    list_path: str  # paginated list ("/api/orders")
    list_items_key: str  # where the list's items are ("orders")
    detail_path: str  # "/api/orders/{key}"
    changes_path: str  # "/api/orders/changes"
    # Turn a detail/snapshot item into model field values (raise ItemError on bad data).
    to_fields: Callable[[dict[str, Any]], dict[str, Any]]
    # `data` of the detail endpoint → the item (orders wrap it in {"order": …}).
    unwrap_detail: Callable[[Any], Any] = lambda data: data
    snapshot_path: str | None = (
        None  # asynchronous full export (gzip JSONL), if Shoptet has one
    )
    # The snapshot's filter by keys ("orderCodes"): incremental fetches of many changed items.
    snapshot_filter: str | None = None
    list_page_size: int = 50
    changes_page_size: int = 1000
    detail_params: dict[str, str] = field(default_factory=dict)

    @property
    def update_fields(self) -> list[str]:
        return [
            f.name
            for f in self.model._meta.concrete_fields
            if f.name not in {"id", "eshop", self.key_field}
        ]


REGISTRY: dict[str, Resource] = {}


def register(resource: Resource) -> Resource:
    if resource.name in REGISTRY:
        raise ValueError(f"resource {resource.name!r} is already registered")
    REGISTRY[resource.name] = resource
    return resource


def get(name: str) -> Resource:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown resource {name!r} (known: {', '.join(sorted(REGISTRY))})"
        ) from None


# --- Field helpers for mappings ----------------------------------------------------------------


def required(item: dict[str, Any], key: str) -> Any:
    value = item.get(key)
    if value is None or value == "":
        raise ItemError(f"missing {key}")
    return value


def text(value: Any, *, max_length: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str | int):
        raise ItemError(f"expected text, got {type(value).__name__}")
    return str(value)[:max_length]


def parse_time(value: Any, name: str) -> dt.datetime | None:
    """Shoptet's `2024-01-31T10:00:00+0100` as an aware datetime; None stays None."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ItemError(f"{name} is not a string")
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ItemError(f"{name} is not a date-time: {value[:40]!r}") from None
    if moment.tzinfo is None:
        raise ItemError(f"{name} has no UTC offset: {value[:40]!r}")
    if not EARLIEST_YEAR <= moment.year <= LATEST_YEAR:
        raise ItemError(f"{name} is out of range: {value[:40]!r}")
    return moment.astimezone(dt.UTC)


def parse_decimal(value: Any, name: str) -> Decimal | None:
    if value is None:
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise ItemError(f"{name} is not a number: {str(value)[:40]!r}") from None
    if not number.is_finite() or abs(number) >= Decimal(10) ** 15:
        raise ItemError(f"{name} is out of range: {str(value)[:40]!r}")
    return number


def parse_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ItemError(f"{name} is not an integer")
    if abs(value) >= 2**31:
        raise ItemError(f"{name} is out of range")
    return value


# The two reference resources register themselves on import.
from sync import orders, products  # noqa: E402, F401
