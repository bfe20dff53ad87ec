"""Orders and products for sync: seeding, paging, details, /changes, knobs, order:* webhooks."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
import requests

from shoptet_emulator import data


def _from(moment: datetime) -> str:
    """A ``from`` value with its "+" percent-encoded, as the spec asks."""
    return quote(moment.strftime("%Y-%m-%dT%H:%M:%S%z"), safe="")


def _changes(
    emu_client: Any, token: str, resource: str, since: datetime, **params: Any
) -> requests.Response:
    query = "&".join(f"{key}={value}" for key, value in params.items())
    path = f"/api/{resource}/changes?from={_from(since)}" + (
        f"&{query}" if query else ""
    )
    response: requests.Response = emu_client.api("GET", path, token)
    return response


def test_add_orders_returns_codes_and_100k_orders_seed_at_once(emu_client):
    eshop_id, token = emu_client.api_token()

    codes = emu_client.emu.add_orders(eshop_id, 100_000)
    more = emu_client.emu.add_orders(eshop_id, 2)

    assert len(codes) == 100_000
    assert codes[0] == data.order_code(1)
    assert more == [data.order_code(100_001), data.order_code(100_002)]
    body = emu_client.api("GET", "/api/orders", token).json()["data"]
    assert body["paginator"]["totalCount"] == 100_002
    assert body["orders"][0]["code"] == more[-1]
    last = emu_client.api("GET", "/api/orders", token, params={"page": 2001}).json()[
        "data"
    ]
    assert [order["code"] for order in last["orders"]] == [codes[1], codes[0]]


def test_add_products_returns_guids_that_resolve_to_their_detail(emu_client):
    eshop_id, token = emu_client.api_token()

    guids = emu_client.emu.add_products(eshop_id, 3)
    response = emu_client.api("GET", f"/api/products/{guids[1]}", token)

    assert len(set(guids)) == 3
    assert response.status_code == 200
    assert response.json()["data"]["guid"] == guids[1]


def test_products_page_twenty_by_default_up_to_a_thousand(emu_client):
    eshop_id, token = emu_client.api_token()
    emu_client.emu.add_products(eshop_id, 1200)

    default = emu_client.api("GET", "/api/products", token).json()["data"]
    capped = emu_client.api(
        "GET", "/api/products", token, params={"itemsPerPage": 5000}
    ).json()["data"]

    assert default["paginator"] == {
        "totalCount": 1200,
        "page": 1,
        "pageCount": 60,
        "itemsOnPage": 20,
        "itemsPerPage": 20,
    }
    assert capped["paginator"]["itemsPerPage"] == 1000
    assert len(capped["products"]) == 1000


def test_a_deleted_order_leaves_the_list_and_its_detail_is_404(emu_client):
    eshop_id, token = emu_client.api_token()
    codes = emu_client.emu.add_orders(eshop_id, 60)

    emu_client.emu.delete_order(eshop_id, codes[30])
    pages = [
        emu_client.api("GET", "/api/orders", token, params={"page": page}).json()[
            "data"
        ]
        for page in (1, 2)
    ]
    detail = emu_client.api("GET", f"/api/orders/{codes[30]}", token)

    listed = [order["code"] for page in pages for order in page["orders"]]
    assert pages[0]["paginator"]["totalCount"] == 59
    assert listed == sorted(set(codes) - {codes[30]}, reverse=True)
    assert detail.status_code == 404
    assert detail.json()["errors"][0]["errorCode"] == "order-not-found"


def test_unknown_order_and_product_are_404_in_the_envelope(emu_client):
    eshop_id, token = emu_client.api_token()
    emu_client.emu.add_orders(eshop_id, 2)

    order = emu_client.api("GET", f"/api/orders/{data.order_code(3)}", token)
    product = emu_client.api(
        "GET", f"/api/products/{data.product_guid(eshop_id, 1)}", token
    )

    assert order.status_code == 404
    assert product.status_code == 404
    assert product.json()["errors"][0]["errorCode"] == "product-not-found"


def test_an_edit_shows_in_detail_list_and_change_time(emu_client):
    eshop_id, token = emu_client.api_token()
    codes = emu_client.emu.add_orders(eshop_id, 3, history_days=2)
    before = emu_client.api("GET", f"/api/orders/{codes[0]}", token).json()["data"][
        "order"
    ]

    changed_at = emu_client.emu.edit_order(
        eshop_id, codes[0], status={"id": -2, "name": "Vyřízena"}, paid=True
    )
    after = emu_client.api("GET", f"/api/orders/{codes[0]}", token).json()["data"][
        "order"
    ]
    listed = emu_client.api("GET", "/api/orders", token).json()["data"]["orders"]

    assert after["status"] == {"id": -2, "name": "Vyřízena"}
    assert after["paid"] is True
    assert after["changeTime"] == changed_at != before["changeTime"]
    assert after["creationTime"] == before["creationTime"]
    assert [o["status"]["id"] for o in listed if o["code"] == codes[0]] == [-2]


def test_knobs_refuse_unknown_items_and_fields(emu_client):
    eshop_id, _ = emu_client.api_token()
    codes = emu_client.emu.add_orders(eshop_id, 1)
    guids = emu_client.emu.add_products(eshop_id, 1)
    emu_client.emu.delete_order(eshop_id, codes[0])

    with pytest.raises(KeyError):
        emu_client.emu.edit_order(eshop_id, codes[0], paid=True)
    with pytest.raises(KeyError):
        emu_client.emu.delete_order(eshop_id, "nope")
    with pytest.raises(ValueError, match="colour"):
        emu_client.emu.edit_product(eshop_id, guids[0], colour="red")
    with pytest.raises(ValueError, match="count"):
        emu_client.emu.add_products(eshop_id, -1)


def test_changes_list_each_order_once_with_its_latest_change_oldest_first(emu_client):
    eshop_id, token = emu_client.api_token()
    codes = emu_client.emu.add_orders(eshop_id, 5, history_days=40)
    start = datetime.now(UTC) - timedelta(days=1)

    emu_client.emu.edit_order(eshop_id, codes[1], paid=True)
    emu_client.emu.edit_order(eshop_id, codes[2], paid=True)
    emu_client.emu.delete_order(eshop_id, codes[1])
    body = _changes(emu_client, token, "orders", start).json()["data"]

    # Orders 4 and 5 were created within the last day (the batch spans 40 days).
    assert [(c["code"], c["changeType"]) for c in body["changes"]] == [
        (codes[4], "edit"),
        (codes[2], "edit"),
        (codes[1], "delete"),
    ]
    times = [c["changeTime"] for c in body["changes"]]
    assert times == sorted(times)
    assert all(len(t) == 24 and t[19] == "+" for t in times)
    assert body["paginator"]["totalCount"] == 3


def test_changes_filter_by_type_and_page(emu_client):
    eshop_id, token = emu_client.api_token()
    codes = emu_client.emu.add_orders(eshop_id, 30)
    for code in codes[:4]:
        emu_client.emu.delete_order(eshop_id, code)
    since = datetime.now(UTC) - timedelta(hours=1)

    deletes = _changes(emu_client, token, "orders", since, changeType="delete")
    page_two = _changes(emu_client, token, "orders", since, itemsPerPage=20, page=2)

    assert [c["code"] for c in deletes.json()["data"]["changes"]] == codes[:4]
    assert page_two.json()["data"]["paginator"] == {
        "totalCount": 30,
        "page": 2,
        "pageCount": 2,
        "itemsOnPage": 10,
        "itemsPerPage": 20,
    }


def test_changes_from_the_future_is_empty_and_from_includes_its_second(emu_client):
    eshop_id, token = emu_client.api_token()
    guids = emu_client.emu.add_products(eshop_id, 2)
    changed = emu_client.emu.edit_product(eshop_id, guids[0], name="Nový název")
    changed_at = datetime.strptime(changed, "%Y-%m-%dT%H:%M:%S%z")

    future = _changes(emu_client, token, "products", changed_at + timedelta(seconds=2))
    same_second = _changes(emu_client, token, "products", changed_at)

    assert future.json()["data"]["changes"] == []
    assert guids[0] in [c["guid"] for c in same_second.json()["data"]["changes"]]


def test_changes_refuse_an_unencoded_plus_and_history_older_than_30_days(emu_client):
    _, token = emu_client.api_token()

    raw_plus = emu_client.api(
        "GET", "/api/orders/changes?from=2026-11-30T10:00:00+0100", token
    )
    too_old = _changes(
        emu_client, token, "orders", datetime.now(UTC) - timedelta(days=31)
    )
    missing = emu_client.api("GET", "/api/orders/changes", token)

    assert raw_plus.status_code == 400
    assert "%2B" in raw_plus.json()["errors"][0]["message"]
    assert too_old.status_code == 400
    assert "30 days" in too_old.json()["errors"][0]["message"]
    assert missing.status_code == 400
    assert missing.json()["errors"][0]["errorCode"] == "missing-parameter"


def test_a_negative_count_removes_the_newest_orders(emu_client):
    eshop_id, _ = emu_client.api_token()
    codes = emu_client.emu.add_orders(eshop_id, 10)

    removed = emu_client.emu.add_orders(eshop_id, -3)

    assert removed == codes[:-4:-1]
    assert emu_client.emu.get_eshop(eshop_id).order_count == 7


def test_order_knobs_deliver_signed_order_webhooks(emu_client, hook_receiver):
    url, received = hook_receiver
    eshop_id, _ = emu_client.api_token()
    key = emu_client.emu.renew_signature_key(eshop_id)
    for event in ("order:create", "order:update", "order:delete"):
        emu_client.emu.add_webhook(eshop_id, event, url + "/hook", None)

    codes = emu_client.emu.add_orders(eshop_id, 2, notify=True)
    emu_client.emu.edit_order(eshop_id, codes[0], paid=True)
    emu_client.emu.delete_order(eshop_id, codes[1])

    events = [json.loads(body) for _, _, body in received]
    assert [(e["event"], e["eventInstance"]) for e in events] == [
        ("order:create", codes[0]),
        ("order:create", codes[1]),
        ("order:update", codes[0]),
        ("order:delete", codes[1]),
    ]
    for _, headers, body in received:
        expected = hmac.new(key.encode(), body, hashlib.sha1).hexdigest()
        assert headers["Shoptet-Webhook-Signature"] == expected
    assert [entry[3] for entry in emu_client.emu.stats.webhook_log] == [200] * 4


def test_automatic_deliveries_can_be_turned_off(emu_client, hook_receiver):
    url, received = hook_receiver
    eshop_id, _ = emu_client.api_token()
    emu_client.emu.add_webhook(eshop_id, "order:update", url + "/hook", None)
    codes = emu_client.emu.add_orders(eshop_id, 1)

    emu_client.emu.auto_webhooks = False
    emu_client.emu.edit_order(eshop_id, codes[0], paid=True)

    assert received == []


def test_counters_count_requests_per_endpoint_and_drops(emu_client):
    eshop_id, token = emu_client.api_token()
    emu_client.emu.bucket_leak_per_second = 0.0
    codes = emu_client.emu.add_orders(eshop_id, 60)

    emu_client.api("GET", "/api/orders", token)
    emu_client.api("GET", f"/api/orders/{codes[0]}", token)
    emu_client.api("GET", f"/api/orders/{codes[1]}", token)
    stats = emu_client.emu.stats_snapshot()

    assert stats["endpointRequests"] == {
        f"{eshop_id} GET /api/orders": 1,
        f"{eshop_id} GET /api/orders/{{code}}": 2,
    }
    assert stats["drops"] == {str(eshop_id): 4}


def test_the_stats_count_every_429_per_shop(emu_client):
    eshop_id, token = emu_client.api_token()
    emu_client.emu.bucket_capacity = 1
    emu_client.emu.bucket_leak_per_second = 0.0

    statuses = [
        emu_client.api("GET", "/api/eshop", token).status_code for _ in range(3)
    ]

    assert statuses == [200, 429, 429]
    assert emu_client.emu.stats_snapshot()["tooManyRequests"] == {str(eshop_id): 2}


def test_a_creation_shows_as_edit_unless_the_knob_says_add(emu_client):
    eshop_id, token = emu_client.api_token()
    codes = emu_client.emu.add_orders(eshop_id, 2)
    emu_client.emu.edit_order(eshop_id, codes[1], paid=True)
    since = datetime.now(UTC) - timedelta(hours=1)

    documented = _changes(emu_client, token, "orders", since).json()["data"]
    emu_client.emu.creation_change_type = "add"
    as_add = _changes(emu_client, token, "orders", since).json()["data"]
    edits = _changes(emu_client, token, "orders", since, changeType="edit")

    assert [c["changeType"] for c in documented["changes"]] == ["edit", "edit"]
    assert [(c["code"], c["changeType"]) for c in as_add["changes"]] == [
        (codes[0], "add"),
        (codes[1], "edit"),
    ]
    assert len(edits.json()["data"]["changes"]) == 2


def test_product_changes_page_a_thousand_by_default(emu_client):
    eshop_id, token = emu_client.api_token()
    emu_client.emu.add_products(eshop_id, 1001)
    since = datetime.now(UTC) - timedelta(hours=1)

    products = _changes(emu_client, token, "products", since).json()["data"]

    assert products["paginator"]["itemsPerPage"] == 1000
    assert products["paginator"]["pageCount"] == 2
    assert len(products["changes"]) == 1000
