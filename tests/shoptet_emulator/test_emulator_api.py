"""The emulated API: envelope, headers, auth errors, pagination, limits."""

from __future__ import annotations

import http.client
import threading
import time
import uuid
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import pytest
import requests

from shoptet_emulator import ShoptetEmulator


def test_answers_carry_the_envelope_and_request_id(emu_client):
    _, token = emu_client.api_token()

    response = emu_client.api("GET", "/api/eshop", token)

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"data", "errors", "metadata"}
    assert body["errors"] is None
    request_id = body["metadata"]["requestId"]
    assert response.headers["X-Request-ID"] == request_id
    assert uuid.UUID(request_id).version == 7


def test_every_api_answer_reports_the_bucket_filling(emu_client):
    _, token = emu_client.api_token()

    ok = emu_client.api("GET", "/api/eshop", token)
    unauthenticated = emu_client.api("GET", "/api/eshop", None)

    assert ok.headers["X-RateLimit-Bucket-Filling"] == "1/200"
    assert unauthenticated.headers["X-RateLimit-Bucket-Filling"] == "0/200"
    assert unauthenticated.headers["X-Request-ID"]


def test_eshop_info_describes_the_shop_and_its_oauth_server(emu_client):
    eshop_id, token = emu_client.api_token()

    data = emu_client.api("GET", "/api/eshop", token).json()["data"]

    assert data["contactInformation"]["eshopId"] == eshop_id
    # The shop's own host is served by the emulator (snapshot results live there).
    assert data["contactInformation"]["url"] == emu_client.emu.shop_url(eshop_id)
    assert emu_client.emu.shop_url(eshop_id).startswith(emu_client.emu.base_url)
    urls = {item["ident"]: item["url"] for item in data["urls"]}
    assert (
        urls["oauth"]
        == f"{emu_client.emu.base_url}/shop/{eshop_id}/action/OAuthServer/"
    )
    assert urls["oauth"] == emu_client.emu.customer_oauth_url(eshop_id)
    assert data["trial"] is False
    assert "orderStatuses" not in data


def test_eshop_info_adds_requested_sections(emu_client):
    _, token = emu_client.api_token()

    data = emu_client.api(
        "GET", "/api/eshop", token, params={"include": "OrderStatuses, paymentMethods"}
    ).json()["data"]

    assert data["orderStatuses"]["defaultStatus"] == -1
    assert data["paymentMethods"]["retail"]["methods"]
    assert "shippingMethods" not in data


@pytest.mark.parametrize(
    ("token", "code", "message"),
    [
        (
            None,
            "missing-access-token",
            "Missing access token. Please add `Shoptet-Access-Token` header to your request.",
        ),
        ("100001-a-unknown", "invalid-token", "Invalid access token"),
    ],
)
def test_missing_or_unknown_token_is_401(emu_client, token, code, message):
    response = emu_client.api("GET", "/api/eshop", token)

    assert response.status_code == 401
    assert response.json()["errors"] == [
        {"errorCode": code, "message": message, "instance": "unknown"}
    ]
    assert response.json()["data"] is None


def test_expired_token_is_401_expired_token(emu_client):
    eshop_id, token = emu_client.api_token()
    emu_client.emu.expire_api_tokens(eshop_id)

    response = emu_client.api("GET", "/api/orders", token)

    assert response.status_code == 401
    assert response.json()["errors"][0] == {
        "errorCode": "expired-token",
        "message": "Token is expired. Please ask for new one.",
        "instance": "unknown",
    }


def test_suspended_addon_tokens_are_not_approved(emu_client):
    eshop_id, token = emu_client.api_token()
    emu_client.emu.set_addon_state(eshop_id, "suspended")

    response = emu_client.api("GET", "/api/eshop", token)

    assert response.status_code == 401
    assert response.json()["errors"][0]["errorCode"] == "invalid-token"
    assert (
        response.json()["errors"][0]["message"] == "Addon installation is not approved."
    )


def test_uninstalled_addon_tokens_become_invalid(emu_client):
    eshop_id, token = emu_client.api_token()
    emu_client.emu.set_addon_state(eshop_id, "not_installed")

    response = emu_client.api("GET", "/api/eshop", token)

    assert response.status_code == 401
    assert response.json()["errors"][0]["errorCode"] == "invalid-token"


def test_denied_endpoint_is_403_with_a_masked_token(emu_client):
    eshop_id, token = emu_client.api_token()
    emu_client.emu.deny_endpoint(eshop_id, "GET /api/orders")

    denied = emu_client.api("GET", "/api/orders", token)
    allowed = emu_client.api("GET", "/api/eshop", token)

    assert denied.status_code == 403
    error = denied.json()["errors"][0]
    assert error["errorCode"] == "invalid-token-no-rights"
    assert error["instance"] == "access-token"
    assert (
        error["message"]
        == f'Your access token "{token[:3]}..{token[-3:]}" has no defined rights for this resource.'
    )
    assert token not in denied.text
    assert allowed.status_code == 200
    emu_client.emu.allow_endpoint(eshop_id, "get /api/orders")
    assert emu_client.api("GET", "/api/orders", token).status_code == 200


def test_unknown_endpoint_is_404_envelope(emu_client):
    _, token = emu_client.api_token()

    response = emu_client.api("GET", "/api/no-such-thing", token)
    wrong_method = emu_client.api("DELETE", "/api/eshop", token)

    assert response.status_code == 404
    assert response.json()["errors"][0]["errorCode"] == "endpoint-not-found"
    assert wrong_method.status_code == 404


def test_orders_paginate_fifty_per_page_from_page_one(emu_client):
    eshop_id, token = emu_client.api_token()
    emu_client.emu.add_orders(eshop_id, 120)

    pages = [
        emu_client.api("GET", "/api/orders", token, params={"page": page}).json()[
            "data"
        ]
        for page in (1, 2, 3)
    ]

    assert [page["paginator"] for page in pages] == [
        {
            "totalCount": 120,
            "page": 1,
            "pageCount": 3,
            "itemsOnPage": 50,
            "itemsPerPage": 50,
        },
        {
            "totalCount": 120,
            "page": 2,
            "pageCount": 3,
            "itemsOnPage": 50,
            "itemsPerPage": 50,
        },
        {
            "totalCount": 120,
            "page": 3,
            "pageCount": 3,
            "itemsOnPage": 20,
            "itemsPerPage": 50,
        },
    ]
    codes = [order["code"] for page in pages for order in page["orders"]]
    assert len(set(codes)) == 120
    assert codes == sorted(codes, reverse=True)


def test_items_per_page_above_the_maximum_is_capped(emu_client):
    eshop_id, token = emu_client.api_token()
    emu_client.emu.add_orders(eshop_id, 60)

    data = emu_client.api(
        "GET", "/api/orders", token, params={"itemsPerPage": 1000}
    ).json()["data"]

    assert data["paginator"]["itemsPerPage"] == 50
    assert len(data["orders"]) == 50


def test_items_per_page_below_the_maximum_is_honoured(emu_client):
    eshop_id, token = emu_client.api_token()
    emu_client.emu.add_orders(eshop_id, 7)

    data = emu_client.api(
        "GET", "/api/orders", token, params={"itemsPerPage": 3, "page": 3}
    ).json()["data"]

    assert data["paginator"] == {
        "totalCount": 7,
        "page": 3,
        "pageCount": 3,
        "itemsOnPage": 1,
        "itemsPerPage": 3,
    }


def test_page_past_the_end_is_page_not_found(emu_client):
    eshop_id, token = emu_client.api_token()
    emu_client.emu.add_orders(eshop_id, 51)

    response = emu_client.api("GET", "/api/orders", token, params={"page": 3})

    assert response.status_code == 404
    error = response.json()["errors"][0]
    assert error["errorCode"] == "page-not-found"
    assert "max page is 2" in error["message"]


def test_an_empty_shop_has_an_empty_first_page(emu_client):
    _, token = emu_client.api_token()

    data = emu_client.api("GET", "/api/orders", token).json()["data"]

    assert data == {
        "orders": [],
        "paginator": {
            "totalCount": 0,
            "page": 1,
            "pageCount": 0,
            "itemsOnPage": 0,
            "itemsPerPage": 50,
        },
    }


@pytest.mark.parametrize("params", [{"page": "x"}, {"page": 0}, {"itemsPerPage": -1}])
def test_bad_paging_parameters_are_400(emu_client, params):
    _, token = emu_client.api_token()

    response = emu_client.api("GET", "/api/orders", token, params=params)

    assert response.status_code == 400
    assert response.json()["errors"][0]["errorCode"] == "invalid-parameter"


def test_full_bucket_answers_429_with_an_http_date(emu_client):
    eshop_id, token = emu_client.api_token()
    emu_client.emu.bucket_capacity = 5
    emu_client.emu.bucket_leak_per_second = 0.0

    statuses = [
        emu_client.api("GET", "/api/eshop", token).status_code for _ in range(5)
    ]
    refused = emu_client.api("GET", "/api/eshop", token)

    assert statuses == [200] * 5
    assert refused.status_code == 429
    assert refused.headers["X-RateLimit-Bucket-Filling"] == "5/5"
    retry_at = parsedate_to_datetime(refused.headers["Retry-After"])
    assert retry_at.tzinfo is not None
    assert retry_at > datetime.now(UTC)
    assert refused.headers["Retry-After"].endswith(" GMT")
    assert emu_client.emu.stats.bucket_rejections[eshop_id] == 1


def test_bucket_leaks_and_charges_one_drop_plus_one_per_fifty_items(emu_client):
    eshop_id, token = emu_client.api_token()
    emu_client.emu.bucket_leak_per_second = 0.0
    emu_client.emu.add_orders(eshop_id, 120)

    emu_client.api("GET", "/api/orders", token)  # 50 orders: 1 + 1
    emu_client.api("GET", "/api/orders", token, params={"page": 3})  # 20: 1 + 0
    filling = emu_client.api("GET", "/api/eshop", token).headers[
        "X-RateLimit-Bucket-Filling"
    ]

    assert filling == "4/200"
    assert emu_client.emu.stats.drops[eshop_id] == 4
    emu_client.emu.bucket_leak_per_second = 100.0
    time.sleep(0.1)
    assert (
        emu_client.api("GET", "/api/eshop", token).headers["X-RateLimit-Bucket-Filling"]
        == "1/200"
    )


def _concurrently(count: int, call) -> list[int]:
    statuses: list[int] = []
    barrier = threading.Barrier(count)

    def run() -> None:
        barrier.wait()
        statuses.append(call())

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def test_a_fourth_concurrent_request_on_one_token_is_429(emu_client, shoptet_emulator):
    eshop_id, token = emu_client.api_token()
    shoptet_emulator.gather_api_requests(4)

    def call() -> int:
        with requests.Session() as session:
            response = session.get(
                shoptet_emulator.api_url + "/api/eshop",
                headers={"Shoptet-Access-Token": token},
                timeout=5,
            )
            if response.status_code == 429:
                assert parsedate_to_datetime(
                    response.headers["Retry-After"]
                ) > datetime.now(UTC)
            return response.status_code

    statuses = _concurrently(4, call)

    assert sorted(statuses) == [200, 200, 200, 429]
    assert shoptet_emulator.stats.peak_concurrency[token] == 4
    assert shoptet_emulator.stats.peak_concurrency[eshop_id] == 4
    assert shoptet_emulator.stats.concurrency_rejections[eshop_id] == 1


def test_three_concurrent_requests_on_one_token_are_fine(emu_client, shoptet_emulator):
    _, token = emu_client.api_token()
    shoptet_emulator.gather_api_requests(3)

    def call() -> int:
        with requests.Session() as session:
            return session.get(
                shoptet_emulator.api_url + "/api/eshop",
                headers={"Shoptet-Access-Token": token},
                timeout=5,
            ).status_code

    assert _concurrently(3, call) == [200] * 3
    assert shoptet_emulator.stats.peak_concurrency[token] == 3


def test_latency_does_not_serialise_concurrent_clients(shoptet_emulator):
    shoptet_emulator.latency = 0.25

    def call() -> int:
        with requests.Session() as session:
            return session.get(
                shoptet_emulator.api_url + "/api/eshop", timeout=5
            ).status_code

    started = time.monotonic()
    statuses = _concurrently(16, call)
    elapsed = time.monotonic() - started

    assert statuses == [401] * 16
    assert 0.25 <= elapsed < 2.0  # 16 x 0.25 s = 4 s if they were served one by one


def test_hundreds_of_concurrent_connections_are_served(shoptet_emulator):
    shoptet_emulator.latency = 0.05

    def call() -> int:
        connection = http.client.HTTPConnection(
            "127.0.0.1", shoptet_emulator.port, timeout=20
        )
        try:
            connection.request("GET", "/api/eshop")
            return connection.getresponse().status
        finally:
            connection.close()

    statuses = _concurrently(300, call)

    assert statuses == [401] * 300


def test_keep_alive_serves_several_requests_on_one_connection(emu_client):
    _, token = emu_client.api_token()
    connection = http.client.HTTPConnection("127.0.0.1", emu_client.emu.port, timeout=5)
    try:
        for _ in range(3):
            connection.request(
                "GET", "/api/eshop", headers={"Shoptet-Access-Token": token}
            )
            response = connection.getresponse()
            response.read()
            assert response.status == 200
            assert not response.will_close
    finally:
        connection.close()


def test_stop_closes_the_port_and_idle_connections():
    emulator = ShoptetEmulator().start()
    session = requests.Session()
    assert session.get(emulator.api_url + "/api/eshop", timeout=5).status_code == 401

    emulator.stop()

    with pytest.raises(requests.ConnectionError):
        session.get(emulator.api_url + "/api/eshop", timeout=5)
    session.close()
