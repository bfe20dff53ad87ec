"""Every emulated answer, success and error, against Shoptet's official schemas.

API answers are validated against the OpenAPI subset extracted from the official
description (``shoptet_emulator/openapi/``). The OAuth servers are not in the
OpenAPI; their answers are checked against schemas written from the official
install sample and SDK fixtures (reference §1.2, §2).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
import pytest
import requests

from shoptet_emulator import data, schemas

ERROR_CODE = {"type": "string", "minLength": 1}
API_ERROR_ENVELOPE = {
    "type": "object",
    "required": ["data", "errors", "metadata"],
    "properties": {"errors": {"type": "array", "minItems": 1}},
}
OAUTH_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": ERROR_CODE, "error_description": {"type": "string"}},
    "additionalProperties": False,
}
INSTALL_TOKEN = {
    "type": "object",
    "required": [
        "access_token",
        "expires_in",
        "token_type",
        "scope",
        "eshopId",
        "eshopUrl",
        "contactEmail",
    ],
    "properties": {
        "access_token": {"type": "string", "minLength": 200},
        "expires_in": {"type": "null"},
        "token_type": {"const": "Bearer"},
        "scope": {"const": "api"},
        "eshopId": {"type": "integer"},
        "eshopUrl": {"type": "string", "pattern": "^https?://.+/$"},
        "contactEmail": {"type": "string"},
        "trial": {"type": "boolean"},
    },
    "additionalProperties": False,
}
API_TOKEN = {
    "type": "object",
    "required": ["access_token", "expires_in"],
    "properties": {
        "access_token": {
            "type": "string",
            "pattern": "^[0-9]+-a-[a-z0-9]+$",
            "minLength": 38,
            "maxLength": 60,
        },
        "expires_in": {"type": "integer", "minimum": 1},
    },
    "additionalProperties": False,
}
LOGIN_TOKEN = {
    "type": "object",
    "required": ["access_token", "expires_in", "token_type", "scope"],
    "properties": {
        "token_type": {"const": "Bearer"},
        "scope": {"const": "basic_eshop"},
    },
}
BASIC_ESHOP = {
    "type": "object",
    "required": ["success", "data"],
    "properties": {
        "success": {"const": True},
        "data": {
            "type": "object",
            "required": ["user", "project"],
            "properties": {
                "user": {"type": "object", "required": ["email", "name"]},
                "project": {"type": "object", "required": ["id", "url", "name"]},
            },
        },
    },
}


@dataclass
class Shop:
    eshop_id: int
    oauth_token: str
    token: str
    webhook_id: int


@pytest.fixture
def shop(emu_client) -> Shop:
    eshop_id, oauth_token = emu_client.install()
    token = emu_client.mint(oauth_token).json()["access_token"]
    emu_client.emu.add_orders(eshop_id, 75)
    emu_client.emu.add_products(eshop_id, 30)
    hook = emu_client.emu.add_webhook(
        eshop_id, "order:create", "https://addon.example/hook", None
    )
    assert hook is not None
    return Shop(eshop_id, oauth_token, token, hook.id)


Call = Callable[[Any, Shop], requests.Response]


def _api(method: str, path: str, **kwargs: Any) -> Call:
    return lambda emu_client, shop: emu_client.api(
        method, path.format(id=shop.webhook_id), shop.token, **kwargs
    )


def _with(setup: Callable[[Any, Shop], None], call: Call) -> Call:
    def run(emu_client: Any, shop: Shop) -> requests.Response:
        setup(emu_client, shop)
        return call(emu_client, shop)

    return run


def _job_finished(emu_client: Any, shop: Shop) -> None:
    emu_client.emu.add_webhook(
        shop.eshop_id, "job:finished", "https://addon.example/jobs", None
    )


def _started_job(emu_client: Any, shop: Shop) -> str:
    _job_finished(emu_client, shop)
    emu_client.emu.job_outcome = "never"
    return str(emu_client.emu.start_job(shop.eshop_id, "orders", None).job_id)


# A ``from`` inside the 30 days of change history, with a "+" offset.
RECENT = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S+0000")
ALL_INCLUDES = "orderAdditionalFields,orderStatuses,paymentMethods,shippingMethods,imageCuts,countries,cashDesk"

# (id, call, route template, expected status, expected errorCode or None)
API_CASES: list[tuple[str, Call, str, int, str | None]] = [
    ("eshop", _api("GET", "/api/eshop"), "/api/eshop", 200, None),
    (
        "eshop-all-includes",
        _api("GET", "/api/eshop", params={"include": ALL_INCLUDES}),
        "/api/eshop",
        200,
        None,
    ),
    ("orders", _api("GET", "/api/orders"), "/api/orders", 200, None),
    (
        "orders-last-page",
        _api("GET", "/api/orders", params={"page": 2}),
        "/api/orders",
        200,
        None,
    ),
    (
        "orders-bad-page",
        _api("GET", "/api/orders", params={"page": "x"}),
        "/api/orders",
        400,
        "invalid-parameter",
    ),
    (
        "orders-past-end",
        _api("GET", "/api/orders", params={"page": 3}),
        "/api/orders",
        404,
        "page-not-found",
    ),
    ("products", _api("GET", "/api/products"), "/api/products", 200, None),
    (
        "products-bad-page",
        _api("GET", "/api/products", params={"itemsPerPage": "0"}),
        "/api/products",
        400,
        "invalid-parameter",
    ),
    (
        "order-detail",
        _api("GET", f"/api/orders/{data.order_code(75)}"),
        "/api/orders/{code}",
        200,
        None,
    ),
    (
        "order-detail-edited",
        _with(
            lambda emu_client, shop: emu_client.emu.edit_order(
                shop.eshop_id,
                data.order_code(3),
                status={"id": -2, "name": "Vyřízena"},
                paid=None,
                email=None,
            ),
            _api("GET", f"/api/orders/{data.order_code(3)}"),
        ),
        "/api/orders/{code}",
        200,
        None,
    ),
    (
        "order-detail-deleted",
        _with(
            lambda emu_client, shop: emu_client.emu.delete_order(
                shop.eshop_id, data.order_code(3)
            ),
            _api("GET", f"/api/orders/{data.order_code(3)}"),
        ),
        "/api/orders/{code}",
        404,
        "order-not-found",
    ),
    (
        "product-detail",
        lambda emu_client, shop: emu_client.api(
            "GET", f"/api/products/{data.product_guid(shop.eshop_id, 7)}", shop.token
        ),
        "/api/products/{guid}",
        200,
        None,
    ),
    (
        "product-detail-unknown",
        _api("GET", "/api/products/not-a-guid"),
        "/api/products/{guid}",
        404,
        "product-not-found",
    ),
    (
        "order-changes",
        _with(
            lambda emu_client, shop: emu_client.emu.delete_order(
                shop.eshop_id, data.order_code(5)
            ),
            _api(
                "GET",
                "/api/orders/changes",
                params={"from": RECENT},
            ),
        ),
        "/api/orders/changes",
        200,
        None,
    ),
    (
        "order-changes-bad-from",
        _api("GET", "/api/orders/changes", params={"from": "yesterday"}),
        "/api/orders/changes",
        400,
        "invalid-parameter",
    ),
    (
        "order-changes-too-old",
        _api("GET", "/api/orders/changes", params={"from": "2000-01-01T00:00:00+0100"}),
        "/api/orders/changes",
        400,
        "invalid-parameter",
    ),
    (
        "product-changes",
        _api("GET", "/api/products/changes", params={"from": RECENT}),
        "/api/products/changes",
        200,
        None,
    ),
    (
        "order-snapshot",
        _with(_job_finished, _api("GET", "/api/orders/snapshot")),
        "/api/orders/snapshot",
        202,
        None,
    ),
    (
        "order-snapshot-without-job-finished",
        _api("GET", "/api/orders/snapshot"),
        "/api/orders/snapshot",
        403,
        "job-finished-webhook-not-registered",
    ),
    (
        "product-snapshot-too-many-guids",
        _api("GET", "/api/products/snapshot", params={"productGuids": "a," * 51}),
        "/api/products/snapshot",
        400,
        "invalid-parameter",
    ),
    (
        "job-detail",
        lambda emu_client, shop: emu_client.api(
            "GET", f"/api/system/jobs/{_started_job(emu_client, shop)}", shop.token
        ),
        "/api/system/jobs/{jobId}",
        200,
        None,
    ),
    (
        "job-detail-missing",
        _api("GET", "/api/system/jobs/nojob12"),
        "/api/system/jobs/{jobId}",
        404,
        "job-not-found",
    ),
    ("webhooks", _api("GET", "/api/webhooks"), "/api/webhooks", 200, None),
    (
        "webhooks-register",
        _api(
            "POST",
            "/api/webhooks",
            json={"data": [{"event": "order:update", "url": "https://a.example/h"}]},
        ),
        "/api/webhooks",
        201,
        None,
    ),
    (
        "webhooks-duplicate",
        _api(
            "POST",
            "/api/webhooks",
            json={"data": [{"event": "order:create", "url": "https://a.example/h"}]},
        ),
        "/api/webhooks",
        422,
        "webhook-already-exists",
    ),
    (
        "webhooks-exclusive",
        _with(
            lambda emu_client, shop: emu_client.emu.add_webhook(
                shop.eshop_id, "order:update", "https://a.example/u", None
            ),
            _api(
                "POST",
                "/api/webhooks",
                json={
                    "data": [{"event": "order:cancel", "url": "https://a.example/h"}]
                },
            ),
        ),
        "/api/webhooks",
        409,
        "webhook-conflict",
    ),
    (
        "webhooks-bad-body",
        _api("POST", "/api/webhooks", data=b"{oops"),
        "/api/webhooks",
        422,
        "invalid-request-data",
    ),
    (
        "webhook-detail",
        _api("GET", "/api/webhooks/{id}"),
        "/api/webhooks/{id}",
        200,
        None,
    ),
    (
        "webhook-detail-missing",
        _api("GET", "/api/webhooks/999999"),
        "/api/webhooks/{id}",
        404,
        "webhook-not-found",
    ),
    (
        "webhook-update",
        _api(
            "PATCH", "/api/webhooks/{id}", json={"data": {"url": "https://b.example/h"}}
        ),
        "/api/webhooks/{id}",
        200,
        None,
    ),
    (
        "webhook-update-missing",
        _api("PATCH", "/api/webhooks/999999", json={"data": {"sendPayload": "full"}}),
        "/api/webhooks/{id}",
        404,
        "webhook-not-found",
    ),
    (
        "webhook-delete",
        _api("DELETE", "/api/webhooks/{id}"),
        "/api/webhooks/{id}",
        200,
        None,
    ),
    (
        "webhook-delete-missing",
        _api("DELETE", "/api/webhooks/999999"),
        "/api/webhooks/{id}",
        404,
        "webhook-not-found",
    ),
    (
        "renew-signature-key",
        _api("POST", "/api/webhooks/renew-signature-key"),
        "/api/webhooks/renew-signature-key",
        200,
        None,
    ),
    (
        "missing-token",
        lambda emu_client, shop: emu_client.api("GET", "/api/eshop", None),
        "/api/eshop",
        401,
        "missing-access-token",
    ),
    (
        "invalid-token",
        lambda emu_client, shop: emu_client.api("GET", "/api/eshop", "100001-a-x"),
        "/api/eshop",
        401,
        "invalid-token",
    ),
    (
        "expired-token",
        _with(
            lambda emu_client, shop: emu_client.emu.expire_api_tokens(shop.eshop_id),
            _api("GET", "/api/orders"),
        ),
        "/api/orders",
        401,
        "expired-token",
    ),
    (
        "not-approved",
        _with(
            lambda emu_client, shop: emu_client.emu.set_addon_state(
                shop.eshop_id, "suspended"
            ),
            _api("GET", "/api/eshop"),
        ),
        "/api/eshop",
        401,
        "invalid-token",
    ),
    (
        "no-rights",
        _with(
            lambda emu_client, shop: emu_client.emu.deny_endpoint(
                shop.eshop_id, "GET /api/orders"
            ),
            _api("GET", "/api/orders"),
        ),
        "/api/orders",
        403,
        "invalid-token-no-rights",
    ),
    (
        "unknown-endpoint",
        _api("GET", "/api/nothing-here"),
        "/api/nothing-here",
        404,
        "endpoint-not-found",
    ),
    (
        "locked",
        _with(
            lambda emu_client, shop: emu_client.emu.lock_next(1, "/api/"),
            _api(
                "PATCH",
                "/api/webhooks/{id}",
                json={"data": {"url": "https://c.example/"}},
            ),
        ),
        "/api/webhooks/{id}",
        423,
        "url-locked",
    ),
    (
        "rate-limited",
        _with(
            lambda emu_client, shop: setattr(emu_client.emu, "bucket_capacity", 0),
            _api("GET", "/api/eshop"),
        ),
        "/api/eshop",
        429,
        "too-many-requests",
    ),
    (
        "server-error",
        _with(
            lambda emu_client, shop: emu_client.emu.fail_next(1, status=500),
            _api("GET", "/api/orders"),
        ),
        "/api/orders",
        500,
        "unknown-error",
    ),
    (
        "maintenance",
        _with(
            lambda emu_client, shop: emu_client.emu.fail_next(1, status=503),
            _api("GET", "/api/eshop"),
        ),
        "/api/eshop",
        503,
        "system-maintenance",
    ),
    (
        "forbidden-fault",
        _with(
            lambda emu_client, shop: emu_client.emu.fail_next(1, status=403),
            _api("GET", "/api/eshop"),
        ),
        "/api/eshop",
        403,
        "invalid-token-no-rights",
    ),
]


@pytest.mark.parametrize(
    ("call", "template", "status", "error_code"),
    [pytest.param(*case[1:], id=case[0]) for case in API_CASES],
)
def test_api_answer_matches_the_official_schema(
    emu_client, shop, call, template, status, error_code
):
    response = call(emu_client, shop)

    assert response.status_code == status, response.text
    body = response.json()
    method = response.request.method
    assert schemas.validators_for(template, method, status), (
        "no official schema applies"
    )
    schemas.validate_response(body, path=template, method=method, status=status)
    assert body["metadata"]["requestId"] == response.headers["X-Request-ID"]
    assert "X-RateLimit-Bucket-Filling" in response.headers
    if error_code is None:
        assert body["errors"] is None
    else:
        jsonschema.validate(body, API_ERROR_ENVELOPE)
        assert body["errors"][0]["errorCode"] == error_code


def test_the_concurrency_429_matches_the_error_schema(emu_client, shop):
    emu_client.emu.latency = 0.3
    bodies: list[tuple[int, Any]] = []

    def call() -> None:
        with requests.Session() as session:
            response = session.get(
                emu_client.emu.api_url + "/api/eshop",
                headers={"Shoptet-Access-Token": shop.token},
                timeout=5,
            )
            bodies.append((response.status_code, response.json()))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    refused = [body for status, body in bodies if status == 429]
    assert len(refused) == 1
    schemas.validate_response(refused[0], path="/api/eshop", method="GET", status=429)


def test_validation_rejects_an_answer_missing_a_required_field():
    body = {
        "data": {"orders": [], "paginator": {"page": 1}},
        "errors": None,
        "metadata": {"requestId": "x"},
    }

    with pytest.raises(jsonschema.ValidationError):
        schemas.validate_response(body, path="/api/orders", method="GET", status=200)


def test_validation_rejects_an_error_without_instance():
    body = {
        "data": None,
        "errors": [{"errorCode": "x", "message": "y"}],
        "metadata": {"requestId": "x"},
    }

    with pytest.raises(jsonschema.ValidationError):
        schemas.validate_response(body, path="/api/eshop", method="GET", status=401)


def test_every_emulated_route_has_an_official_success_schema(shoptet_emulator):
    for endpoint in shoptet_emulator.endpoints:
        method, _, template = endpoint.partition(" ")
        status = 201 if endpoint == "POST /api/webhooks" else 200
        if template.endswith("/snapshot"):
            status = 202  # asynchronous: a job id
        assert schemas.is_documented(template, method, status), endpoint


def test_the_server_turns_an_off_spec_answer_into_a_loud_500(
    emu_client, shop, monkeypatch
):
    monkeypatch.setattr(data, "eshop_info", lambda *args, **kwargs: {"surprise": True})

    response = emu_client.api("GET", "/api/eshop", shop.token)

    assert response.status_code == 500
    assert response.json()["errors"][0]["errorCode"] == "emulator-schema-violation"


# -- OAuth servers (not in the OpenAPI) ----------------------------------------------

OAUTH_CASES: list[
    tuple[str, Callable[[Any], requests.Response], int, dict[str, Any]]
] = [
    (
        "install-token",
        lambda emu_client: emu_client.exchange(emu_client.emu.issue_install_code()),
        200,
        INSTALL_TOKEN,
    ),
    (
        "install-bad-code",
        lambda emu_client: emu_client.exchange("nope"),
        400,
        OAUTH_ERROR,
    ),
    (
        "install-bad-client",
        lambda emu_client: emu_client.exchange("x", client_secret="no"),
        401,
        OAUTH_ERROR,
    ),
    (
        "install-bad-grant",
        lambda emu_client: emu_client.exchange("x", grant_type="password"),
        400,
        OAUTH_ERROR,
    ),
    (
        "install-bad-scope",
        lambda emu_client: emu_client.exchange("x", scope="everything"),
        400,
        OAUTH_ERROR,
    ),
    (
        "access-token",
        lambda emu_client: emu_client.mint(emu_client.install()[1]),
        200,
        API_TOKEN,
    ),
    (
        "access-token-unauthorized",
        lambda emu_client: emu_client.mint("nope"),
        401,
        OAUTH_ERROR,
    ),
]


@pytest.mark.parametrize(
    ("call", "status", "schema"),
    [pytest.param(*case[1:], id=case[0]) for case in OAUTH_CASES],
)
def test_oauth_answer_matches_the_documented_shape(emu_client, call, status, schema):
    response = call(emu_client)

    assert response.status_code == status
    jsonschema.validate(response.json(), schema)


def test_oauth_refusals_of_get_access_token_match_the_documented_shape(emu_client):
    eshop_id, oauth_token = emu_client.install()
    emu_client.emu.max_valid_tokens = 0
    capped = emu_client.mint(oauth_token)
    emu_client.emu.set_addon_state(eshop_id, "suspended")
    suspended = emu_client.mint(oauth_token)
    emu_client.emu.set_addon_state(eshop_id, "not_installed")
    uninstalled = emu_client.mint(oauth_token)

    for response, error in (
        (capped, "maximum_tokens_reached"),
        (suspended, "addon_suspended"),
        (uninstalled, "addon_not_installed"),
    ):
        jsonschema.validate(response.json(), OAUTH_ERROR)
        assert response.json()["error"] == error


def test_admin_login_answers_match_the_documented_shape(emu_client):
    eshop_id, _ = emu_client.install()
    base = emu_client.emu.customer_oauth_url(eshop_id)
    code = emu_client.emu.issue_login_code(eshop_id)

    token = emu_client.http.post(
        base + "token",
        json=emu_client.token_fields(code, scope="basic_eshop"),
        timeout=5,
    )
    identity = emu_client.http.get(
        base + "resource",
        params={"method": "getBasicEshop"},
        headers={"Authorization": f"Bearer {token.json()['access_token']}"},
        timeout=5,
    )

    jsonschema.validate(token.json(), LOGIN_TOKEN)
    jsonschema.validate(identity.json(), BASIC_ESHOP)
