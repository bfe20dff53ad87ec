"""Realistic, schema-valid payloads for the emulated API endpoints.

Every shape here follows the official OpenAPI response schema of its endpoint
(``openapi/shoptet-openapi-subset.json``); the schema test calls each endpoint over
HTTP and validates the answer, so a field added to ``required`` upstream shows up as
a failing test after ``extract.py`` is re-run.
"""

from __future__ import annotations

import functools
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from shoptet_emulator.state import EmulatedEshop

_NAMESPACE = uuid.UUID("6f1c7a52-3b1e-4d4e-9a55-2f7f0c1d9e10")

ESHOP_INCLUDES = frozenset(
    {
        "orderadditionalfields",
        "orderstatuses",
        "paymentmethods",
        "shippingmethods",
        "imagecuts",
        "countries",
        "cashdesk",
    }
)

_PAYMENT = {"guid": "1b02cb8e-d7b5-11e0-9a5c-feab5ed617ed", "name": "Cash on delivery"}
_SHIPPING = {"guid": "8fdbd2e4-d7b5-11e0-9a5c-feab5ed617ed", "name": "PPL"}


def shoptet_datetime(moment: datetime | None = None) -> str:
    """Format like Shoptet's ``typeDateTime``: ``2018-05-29T09:02:27+0200``."""
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S%z")


def customer_oauth_url(base_url: str, eshop_id: int) -> str:
    """Where the emulated e-shop's own OAuthServer (admin login) lives.

    Real e-shops serve it at ``https://<eshop-domain>/action/OAuthServer/``; the
    emulator serves every e-shop from one host, so the e-shop id is in the path.
    """
    return f"{base_url}/shop/{eshop_id}/action/OAuthServer/"


def eshop_info(
    shop: EmulatedEshop, *, base_url: str, include: set[str]
) -> dict[str, Any]:
    """``data`` of ``GET /api/eshop`` (with the requested ``include`` sections)."""
    admin = shop.url.rstrip("/") + "/admin"
    data: dict[str, Any] = {
        "contactInformation": {
            "eshopId": shop.eshop_id,
            "eshopName": shop.name,
            "eshopCategory": None,
            "url": shop.url,
            "eshopTitle": shop.name,
            "eshopSubtitle": None,
            "contactPerson": "Emulated Owner",
            "email": shop.contact_email,
            "phone": "+420777123456",
            "mobilePhone": None,
            "skypeAccount": None,
            "contactPhotoUrl": None,
        },
        "billingInformation": {
            "billingName": shop.name,
            "company": {"companyId": "28935675", "taxId": None, "vatId": "CZ28935675"},
            "address": {"streetAddress": "Dvorecka 1", "city": "Praha", "zip": "14700"},
            "country": {"countryCode": "CZ", "countryName": "Czechia"},
            "registration": None,
            "evNumber": None,
            "phone": "+420777123456",
            "email": shop.contact_email,
            "billingEmail": None,
        },
        "settings": {
            "vatPayer": True,
            "cashDeskOnly": False,
            "trackStockClaims": False,
            "maxProductAmount": 9999,
            "maxEmailAmount": 1000,
            "defaultPricelist": {"id": 1, "name": "Hlavní ceník"},
            "eshopLanguage": "cs",
            "timezone": "Europe/Prague",
            "dateFormat": "d.m.Y",
            "timeFormat": "H:i:s",
            "internals": "cs",
            "exchangeRateFlip": False,
            "negativeStockAmount": "allowed",
            "oss": False,
            "stockControlDisabled": False,
            "wholesaleSplitActive": False,
        },
        "currencies": [
            {
                "code": "CZK",
                "title": "Koruna česká",
                "isDefault": True,
                "isDefaultAdmin": True,
                "isDefaultDocuments": True,
                "isVisible": True,
                "exchangeRate": "1.00000000",
                "priority": 1,
                "display": {
                    "text": "Kč",
                    "location": "right",
                    "decimalsSeparator": ",",
                    "thousandsSeparator": " ",
                },
                "priceDecimalPlaces": 0,
                "documentPriceDecimalPlaces": 2,
                "rounding": "math",
                "minimalOrderValue": None,
                "bankAccount": {
                    "accountNumber": "123456789/0100",
                    "iban": None,
                    "bic": None,
                    "ownerName": None,
                },
            }
        ],
        "taxClasses": [
            {
                "title": "Základní",
                "rates": [{"zone": "CZ", "vatRate": "21.00"}],
                "isDefault": True,
            },
            {
                "title": "Snížená",
                "rates": [{"zone": "CZ", "vatRate": "12.00"}],
                "isDefault": False,
            },
        ],
        "activeModules": [
            {"name": "stockManagement", "title": "Skladové hospodářství"}
        ],
        "urls": [
            {"ident": "admin-orders-list", "url": f"{admin}/prehled-objednavek/"},
            {"ident": "admin-customers-list", "url": f"{admin}/zakaznici/"},
            {"ident": "oauth", "url": customer_oauth_url(base_url, shop.eshop_id)},
        ],
        "socialNetworks": {
            "facebookUrl": None,
            "facebookText": None,
            "twitterAccount": None,
            "instagramAccount": None,
        },
        "languages": [
            {
                "code": "cs",
                "currencyCode": "CZK",
                "dateFormat": "d.m.Y",
                "timeFormat": "H:i:s",
                "isVisible": True,
                "isDefault": True,
                "priority": 1,
            }
        ],
        "trial": shop.trial,
    }
    sections = _include_sections()
    for name in include & ESHOP_INCLUDES:
        key, value = sections[name]
        data[key] = value
    return data


def _include_sections() -> dict[str, tuple[str, Any]]:
    def methods(kind: str, method: dict[str, str]) -> dict[str, Any]:
        default = f"default{kind}"
        retail = {
            "methods": [{**method, "order": 1, "visible": True}],
            default: method["guid"],
        }
        return {
            "retail": retail,
            "wholesale": {"methods": [], default: None},
            "wholesaleActive": False,
        }

    return {
        "orderadditionalfields": (
            "orderAdditionalFields",
            [{"index": 1, "label": "Note"}],
        ),
        "orderstatuses": (
            "orderStatuses",
            {
                "statuses": [
                    {"id": -1, "order": 1, "name": "Vyřizuje se", "markAsPaid": False},
                    {"id": -2, "order": 2, "name": "Vyřízena", "markAsPaid": True},
                    {"id": -4, "order": 3, "name": "Stornována", "markAsPaid": False},
                ],
                "defaultStatus": -1,
            },
        ),
        "paymentmethods": ("paymentMethods", methods("Payment", _PAYMENT)),
        "shippingmethods": ("shippingMethods", methods("Shipping", _SHIPPING)),
        "imagecuts": (
            "imageCuts",
            [
                {
                    "name": "detail",
                    "width": 1024,
                    "height": 768,
                    "urlPath": "/user/shop/detail/",
                    "cdnPath": "https://cdn.myshoptet.com/usr/shop/user/shop/detail/",
                }
            ],
        ),
        "countries": (
            "countries",
            [
                {
                    "countryCode": "CZ",
                    "countryName": "Czechia",
                    "companyIdPattern": "^[0-9]{8}$",
                    "companyIdExample": "28935675",
                    "zipCodePattern": "^[0-9]{3} ?[0-9]{2}$",
                }
            ],
        ),
        "cashdesk": ("cashDesk", {"defaultOrderStatusId": -1}),
    }


# -- orders and products for sync (list, detail, snapshot) ------------------------

ORDER_CODE_BASE = 2025000000
PRAGUE = ZoneInfo("Europe/Prague")
# List items carry a subset of the detail's fields (plus ``fullName`` and ``source``).
_ORDER_LIST_FIELDS = (
    "code",
    "guid",
    "creationTime",
    "changeTime",
    "company",
    "fullName",
    "email",
    "phone",
    "remark",
    "customerGuid",
    "cashDeskOrder",
    "adminUrl",
    "status",
    "source",
    "shipping",
    "paymentMethod",
    "price",
    "paid",
)
_PRODUCT_LIST_FIELDS = (
    "guid",
    "name",
    "type",
    "url",
    "visibility",
    "brand",
    "defaultCategory",
    "creationTime",
    "changeTime",
    "supplier",
)
_STATUSES = (
    {"name": "Vyřizuje se", "id": -1},
    {"name": "Vyřízena", "id": -2},
    {"name": "Stornována", "id": -4},
)
_FIRST_NAMES = ("Jana", "Petr", "Eva", "Tomáš", "Lucie", "Martin", "Anna", "Jakub")
_LAST_NAMES = ("Nováková", "Svoboda", "Dvořáková", "Černý", "Procházková", "Kučera")
_CITIES = (("Praha", "110 00"), ("Brno", "602 00"), ("Ostrava", "702 00"))
_PRODUCT_NAMES = ("Hrnek", "Tričko", "Batoh", "Svíčka", "Zápisník", "Čaj", "Mýdlo")


def prague_datetime(epoch: float) -> str:
    """Shoptet's ``typeDateTime`` in the shop's zone: ``2025-03-01T10:00:00+0100``."""
    return _prague_second(int(epoch))


@functools.lru_cache(maxsize=4096)
def _prague_second(second: int) -> str:
    # Cached: a batch of orders shares a few seconds, and snapshots format 100,000s.
    return datetime.fromtimestamp(second, PRAGUE).strftime("%Y-%m-%dT%H:%M:%S%z")


def order_code(number: int) -> str:
    return f"{ORDER_CODE_BASE + number}"


def order_number(code: str) -> int | None:
    """The item number behind an order code, None if it cannot be one of ours."""
    if not code.isdigit() or len(code) > 12:
        return None
    number = int(code) - ORDER_CODE_BASE
    return number if number > 0 else None


def _guid(eshop_id: int, kind: int, number: int) -> str:
    # A UUID-shaped string that encodes the shop and the number, so a detail
    # lookup needs no index of 100,000 guids.
    return f"{eshop_id:08x}-{kind:04x}-4000-8000-{number:012x}"


def product_guid(eshop_id: int, number: int) -> str:
    return _guid(eshop_id, 2, number)


def product_number(eshop_id: int, guid: str) -> int | None:
    prefix = f"{eshop_id:08x}-0002-4000-8000-"
    tail = guid.removeprefix(prefix)
    if tail == guid or len(tail) != 12:
        return None
    try:
        return int(tail, 16) or None
    except ValueError:
        return None


def order_detail(
    shop: EmulatedEshop,
    number: int,
    *,
    created: float,
    changed: float,
    overlay: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The order as ``GET /api/orders/{code}`` (and each snapshot line) shows it."""
    first = _FIRST_NAMES[number % len(_FIRST_NAMES)]
    last = _LAST_NAMES[number % len(_LAST_NAMES)]
    city, zip_code = _CITIES[number % len(_CITIES)]
    name = f"{first} {last}"
    address = {
        "company": None,
        "fullName": name,
        "street": "Vinohradská",
        "houseNumber": str(1 + number % 180),
        "city": city,
        "district": None,
        "additional": None,
        "zip": zip_code,
        "countryCode": "CZ",
        "regionName": None,
        "regionShortcut": None,
    }
    amount = 1 + number % 3
    unit_price = 100 + (number * 37) % 900
    total = unit_price * amount + 89
    vat = round(total * 21 / 121, 2)
    product = 1 + number % 500
    detail: dict[str, Any] = {
        "code": order_code(number),
        "guid": _guid(shop.eshop_id, 1, number),
        "externalCode": None,
        "creationTime": prague_datetime(created),
        "changeTime": prague_datetime(changed),
        "email": f"customer{number}@example.com",
        "phone": "+420777" + f"{number % 1000000:06d}",
        "birthDate": None,
        "clientIPAddress": f"10.{number % 250}.{(number // 250) % 250}.1",
        "customerGuid": None,
        "cashDeskOrder": False,
        "stockId": 1,
        "addressesEqual": True,
        "vatPayer": True,
        "vatMode": "Normal",
        "billingMethod": {"id": 1, "name": "Hotově"},
        "paymentMethod": dict(_PAYMENT),
        "shipping": dict(_SHIPPING),
        "adminUrl": f"{shop.url.rstrip('/')}/admin/objednavky-detail/?id={number}",
        "status": dict(_STATUSES[(number % 7) // 3]),
        "source": {"name": "E-shop", "id": -1},
        "price": {
            "vat": f"{vat:.2f}",
            "toPay": f"{total:.2f}",
            "currencyCode": "CZK",
            "withoutVat": f"{total - vat:.2f}",
            "withVat": f"{total:.2f}",
            "exchangeRate": "1.00000000",
        },
        "paid": number % 2 == 0,
        "billingAddress": {**address, "companyId": None, "taxId": None, "vatId": None},
        "deliveryAddress": dict(address),
        "language": "cs",
        "referer": None,
        "items": [
            _order_item(shop.eshop_id, product, amount, unit_price, number * 10 + 1),
            _shipping_item(number * 10 + 2),
        ],
    }
    if overlay:
        detail.update(overlay)
    return detail


def _price(with_vat: float, amount: int = 1) -> dict[str, Any]:
    vat = round(with_vat * 21 / 121, 2)
    return {
        "withVat": f"{with_vat * amount:.2f}",
        "withoutVat": f"{(with_vat - vat) * amount:.2f}",
        "vat": f"{vat * amount:.2f}",
        "vatRate": "21.00",
    }


def _order_item(
    eshop_id: int, product: int, amount: int, unit_price: int, item_id: int
) -> dict[str, Any]:
    return {
        "productGuid": product_guid(eshop_id, product),
        "code": f"P{product:05d}",
        "ean": None,
        "itemType": "product",
        "productType": "product",
        "name": f"{_PRODUCT_NAMES[product % len(_PRODUCT_NAMES)]} {product}",
        "variantName": None,
        "brand": None,
        "remark": None,
        "weight": "0.500",
        "additionalField": None,
        "amount": f"{amount}.000",
        "amountUnit": "ks",
        "priceRatio": "1.0000",
        "status": {"id": -1, "name": "Vyřizuje se"},
        "itemPrice": _price(unit_price, amount),
        "unitPrice": _price(unit_price),
        "purchasePrice": None,
        "recyclingFee": None,
        "itemId": item_id,
        "warrantyDescription": None,
        "amountCompleted": "0.000",
    }


def _shipping_item(item_id: int) -> dict[str, Any]:
    item = _order_item(0, 0, 1, 89, item_id)
    item.update(
        productGuid=None,
        code=None,
        itemType="shipping",
        productType=None,
        name=_SHIPPING["name"],
        weight="0.000",
        amountUnit=None,
    )
    return item


def order_list_item(detail: dict[str, Any]) -> dict[str, Any]:
    """The ``GET /api/orders`` row of an order, from its detail."""
    row = {**detail, "fullName": detail["billingAddress"]["fullName"]}
    row.setdefault("company", detail["billingAddress"]["company"])
    row.setdefault("remark", None)
    return {name: row[name] for name in _ORDER_LIST_FIELDS}


ORDER_EDITABLE = frozenset(_ORDER_LIST_FIELDS) - {"code", "guid", "creationTime"}


def product_detail(
    shop: EmulatedEshop,
    number: int,
    *,
    created: float,
    changed: float,
    overlay: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The product as ``GET /api/products/{guid}`` (and each snapshot line) shows it."""
    name = f"{_PRODUCT_NAMES[number % len(_PRODUCT_NAMES)]} {number}"
    price = 50 + (number * 53) % 2000
    detail: dict[str, Any] = {
        "guid": product_guid(shop.eshop_id, number),
        "type": "product",
        "name": name,
        "indexName": f"produkt-{number}",
        "brand": None,
        "supplier": None,
        "visibility": "visible" if number % 10 else "hidden",
        "creationTime": prague_datetime(created),
        "changeTime": prague_datetime(changed),
        "shortDescription": f"{name}, krátký popis.",
        "description": f"<p>{name}: podrobný popis.</p>",
        "metaDescription": None,
        "url": f"{shop.url.rstrip('/')}/produkt-{number}/",
        "internalNote": None,
        "hsCode": None,
        "defaultCategory": {
            "guid": _guid(shop.eshop_id, 3, 1 + number % 12),
            "name": f"Kategorie {1 + number % 12}",
            "visible": True,
        },
        "isVariant": False,
        "variants": [
            {
                "code": f"P{number:05d}",
                "ean": None,
                "stock": f"{number % 40}.000",
                "unit": "ks",
                "weight": "0.500",
                "width": "10.0",
                "height": "5.0",
                "depth": "2.0",
                "visible": True,
                "price": f"{price:.2f}",
                "commonPrice": None,
                "includingVat": True,
                "vatRate": "21.00",
                "currencyCode": "CZK",
                "minStockSupply": None,
                "actionPrice": None,
                "manufacturerCode": None,
                "pluCode": None,
                "isbn": None,
                "serialNo": None,
                "mpn": None,
                "negativeStockAllowed": "no-global",
                "amountDecimalPlaces": 0,
            }
        ],
    }
    if overlay:
        detail.update(overlay)
    return detail


def product_list_item(detail: dict[str, Any]) -> dict[str, Any]:
    """The ``GET /api/products`` row of a product, from its detail."""
    return {name: detail.get(name) for name in _PRODUCT_LIST_FIELDS}


PRODUCT_EDITABLE = frozenset(_PRODUCT_LIST_FIELDS) - {"guid", "creationTime"} | {
    "shortDescription",
    "description",
    "internalNote",
}
