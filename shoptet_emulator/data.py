"""Realistic, schema-valid payloads for the emulated API endpoints.

Every shape here follows the official OpenAPI response schema of its endpoint
(``openapi/shoptet-openapi-subset.json``); the schema test calls each endpoint over
HTTP and validates the answer, so a field added to ``required`` upstream shows up as
a failing test after ``extract.py`` is re-run.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from shoptet_emulator.state import EmulatedEshop, shoptet_datetime

# Order timestamps count back from a fixed moment so pages are stable between calls.
_ORDERS_EPOCH = datetime(2025, 1, 1, 9, 0, 0, tzinfo=UTC)
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


def order(shop: EmulatedEshop, index: int) -> dict[str, Any]:
    """The ``index``-th order (0-based) of an e-shop, newest first, as in the list."""
    number = shop.order_count - index  # the newest order has the highest code
    created = _ORDERS_EPOCH + timedelta(minutes=number)
    code = f"{2025000000 + number}"
    total = 100 + (number * 37) % 900
    vat = round(total * 21 / 121, 2)
    return {
        "code": code,
        "guid": str(uuid.uuid5(_NAMESPACE, f"{shop.eshop_id}/{code}")),
        "creationTime": shoptet_datetime(created),
        "changeTime": shoptet_datetime(created),
        "fullName": f"Customer {number}",
        "company": None,
        "email": f"customer{number}@example.com",
        "phone": None,
        "remark": None,
        "customerGuid": None,
        "cashDeskOrder": False,
        "adminUrl": f"{shop.url.rstrip('/')}/admin/objednavky-detail/?id={number}",
        "status": {"name": "Vyřizuje se", "id": -1},
        "source": {"name": "E-shop", "id": -1},
        "shipping": dict(_SHIPPING),
        "paymentMethod": dict(_PAYMENT),
        "price": {
            "vat": f"{vat:.2f}",
            "toPay": f"{total:.2f}",
            "currencyCode": "CZK",
            "withoutVat": f"{total - vat:.2f}",
            "withVat": f"{total:.2f}",
            "exchangeRate": "1.00000000",
        },
        "paid": number % 2 == 0,
    }
