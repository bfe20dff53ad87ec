"""error_from_response: every mapping row, driven by recorded Shoptet answers in tests/fixtures/shoptet/."""

from __future__ import annotations

import datetime as dt
import http
import json
from pathlib import Path
from typing import Any

import pytest
import requests

from shoptet_api.errors import (
    RAW_BODY_LIMIT,
    AddonNotInstalled,
    AddonSuspended,
    ShoptetAPIError,
    ShoptetBadRequest,
    ShoptetForbidden,
    ShoptetInvalidToken,
    ShoptetLocked,
    ShoptetMaxTokensReached,
    ShoptetNotFound,
    ShoptetOAuthError,
    ShoptetRateLimited,
    ShoptetServerError,
    error_from_response,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "shoptet"


def make_response(
    status: int,
    *,
    body: Any = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    """A `requests.Response` as the transport would hand it over (JSON `body`, or `raw` bytes)."""
    response = requests.Response()
    response.status_code = status
    try:
        response.reason = http.HTTPStatus(status).phrase
    except ValueError:
        response.reason = ""
    response.headers.update(headers or {})
    response._content = raw if raw is not None else json.dumps(body).encode()
    response.encoding = "utf-8"
    response.url = "http://127.0.0.1/recorded"
    return response


def load_fixture(name: str) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text("utf-8"))
    return spec


def recorded(name: str) -> requests.Response:
    spec = load_fixture(name)
    return make_response(spec["status"], body=spec["body"], headers=spec["headers"])


def api_request_id(number: int) -> str:
    return f"019c8c34-{number:04x}-7a21-9b3e-2d4c6a8e0f11"


# fixture, class (exact), status, error_code, retryable, request_id
ROWS = [
    (
        "expired-token",
        ShoptetInvalidToken,
        401,
        "expired-token",
        False,
        api_request_id(1),
    ),
    (
        "invalid-token",
        ShoptetInvalidToken,
        401,
        "invalid-token",
        False,
        api_request_id(2),
    ),
    (
        "addon-not-approved",
        AddonSuspended,
        401,
        "invalid-token",
        False,
        api_request_id(3),
    ),
    (
        "invalid-token-no-rights",
        ShoptetForbidden,
        403,
        "invalid-token-no-rights",
        False,
        api_request_id(4),
    ),
    (
        "missing-module",
        ShoptetForbidden,
        403,
        "missing-module",
        False,
        api_request_id(5),
    ),
    ("not-found", ShoptetNotFound, 404, "order-not-found", False, api_request_id(6)),
    (
        "invalid-parameter",
        ShoptetBadRequest,
        400,
        "invalid-parameter",
        False,
        api_request_id(7),
    ),
    ("conflict", ShoptetBadRequest, 409, "webhook-conflict", False, api_request_id(8)),
    (
        "payload-too-large",
        ShoptetBadRequest,
        413,
        "payload-too-large",
        False,
        api_request_id(9),
    ),
    (
        "invalid-request-data",
        ShoptetBadRequest,
        422,
        "invalid-request-data",
        False,
        api_request_id(10),
    ),
    ("locked", ShoptetLocked, 423, "url-locked", True, api_request_id(11)),
    (
        "rate-limited",
        ShoptetRateLimited,
        429,
        "too-many-requests",
        True,
        api_request_id(12),
    ),
    (
        "server-error",
        ShoptetServerError,
        500,
        "unknown-error",
        True,
        api_request_id(13),
    ),
    (
        "maintenance",
        ShoptetServerError,
        503,
        "system-maintenance",
        True,
        api_request_id(14),
    ),
    (
        "oauth-maximum-tokens",
        ShoptetMaxTokensReached,
        429,
        "maximum_tokens_reached",
        True,
        None,
    ),
    ("oauth-addon-suspended", AddonSuspended, 403, "addon_suspended", False, None),
    (
        "oauth-addon-not-installed",
        AddonNotInstalled,
        404,
        "addon_not_installed",
        False,
        None,
    ),
    ("oauth-unauthorized", ShoptetOAuthError, 401, "Unauthorized", False, None),
    ("oauth-invalid-grant", ShoptetOAuthError, 400, "invalid_grant", False, None),
    ("oauth-server-error", ShoptetServerError, 500, "server_error", True, None),
]


@pytest.mark.parametrize(
    ("fixture", "expected_class", "status", "error_code", "retryable", "request_id"),
    [pytest.param(*row, id=row[0]) for row in ROWS],
)
def test_recorded_answer_maps_to_its_error(
    fixture: str,
    expected_class: type[ShoptetAPIError],
    status: int,
    error_code: str,
    retryable: bool,
    request_id: str | None,
) -> None:
    body = load_fixture(fixture)["body"]

    exc = error_from_response(recorded(fixture), endpoint="GET /api/orders")

    assert type(exc) is expected_class
    assert exc.status_code == status
    assert exc.error_code == error_code
    assert exc.retryable is retryable
    assert exc.request_id == request_id
    assert exc.endpoint == "GET /api/orders"
    assert exc.body == body
    assert exc.raw_body == ""  # JSON answers are kept parsed, not raw
    assert exc.errors == (body.get("errors") or [])


def test_every_recorded_fixture_has_a_mapping_row() -> None:
    on_disk = {path.stem for path in FIXTURES.glob("*.json")}

    assert on_disk == {row[0] for row in ROWS}


def test_api_error_message_is_the_first_error_message() -> None:
    exc = error_from_response(recorded("expired-token"))

    assert exc.message == "Token is expired. Please ask for new one."


def test_oauth_error_message_is_the_error_description() -> None:
    exc = error_from_response(recorded("oauth-invalid-grant"))

    assert exc.message == "The code is invalid, expired or already used."
    assert exc.errors == []


def test_rate_limited_reads_retry_after_as_an_http_date() -> None:
    exc = error_from_response(recorded("rate-limited"))

    assert isinstance(exc, ShoptetRateLimited)
    assert exc.retry_after == dt.datetime(2024, 7, 1, 12, 1, 11, tzinfo=dt.UTC)


def test_rate_limited_reads_retry_after_as_seconds() -> None:
    before = dt.datetime.now(tz=dt.UTC)
    exc = error_from_response(
        make_response(429, body=None, headers={"Retry-After": "120"})
    )
    after = dt.datetime.now(tz=dt.UTC)

    assert isinstance(exc, ShoptetRateLimited)
    assert exc.retry_after is not None
    assert (
        before + dt.timedelta(seconds=120)
        <= exc.retry_after
        <= after + dt.timedelta(seconds=120)
    )


@pytest.mark.parametrize("value", ["soon", "", "-5", "1.5", "Mon, 99 Foo 2024"])
def test_rate_limited_ignores_an_unparseable_retry_after(value: str) -> None:
    exc = error_from_response(
        make_response(429, body=None, headers={"Retry-After": value})
    )

    assert isinstance(exc, ShoptetRateLimited)
    assert exc.retry_after is None


def test_rate_limited_without_retry_after_has_none() -> None:
    exc = error_from_response(make_response(429, body=None))

    assert isinstance(exc, ShoptetRateLimited)
    assert exc.retry_after is None


@pytest.mark.parametrize("value", ["99999999999999", "\u00b2"])
def test_rate_limited_survives_an_absurd_retry_after(value: str) -> None:
    exc = error_from_response(
        make_response(429, body=None, headers={"Retry-After": value})
    )

    assert isinstance(exc, ShoptetRateLimited)
    assert exc.retry_after is None


def test_non_json_502_is_a_server_error_keeping_the_raw_body() -> None:
    page = "<html><body>502 Bad Gateway</body></html>" + "x" * 5000
    exc = error_from_response(
        make_response(
            502, raw=page.encode(), headers={"X-Request-ID": "gateway-request-1"}
        )
    )

    assert type(exc) is ShoptetServerError
    assert exc.status_code == 502
    assert exc.error_code is None
    assert exc.body is None
    assert exc.raw_body == page[:RAW_BODY_LIMIT]
    assert len(exc.raw_body) == 2000
    assert exc.request_id == "gateway-request-1"
    assert exc.message == "Bad Gateway"


def test_unmapped_status_stays_a_plain_api_error() -> None:
    exc = error_from_response(
        make_response(
            418,
            body={
                "data": None,
                "errors": [
                    {
                        "errorCode": "i-am-a-teapot",
                        "message": "No coffee.",
                        "instance": "unknown",
                    }
                ],
                "metadata": {"requestId": "teapot-1"},
            },
        )
    )

    assert type(exc) is ShoptetAPIError
    assert exc.status_code == 418
    assert exc.error_code == "i-am-a-teapot"
    assert exc.retryable is False


def test_envelope_without_errors_falls_back_to_the_reason() -> None:
    exc = error_from_response(
        make_response(500, body={"data": None, "errors": None, "metadata": None})
    )

    assert type(exc) is ShoptetServerError
    assert exc.error_code is None
    assert exc.errors == []
    assert exc.message == "Internal Server Error"


def test_request_id_comes_from_metadata_before_the_header() -> None:
    body = load_fixture("not-found")["body"]
    exc = error_from_response(
        make_response(404, body=body, headers={"X-Request-ID": "header-id"})
    )

    assert exc.request_id == api_request_id(6)


def test_request_id_falls_back_to_the_header() -> None:
    exc = error_from_response(
        make_response(
            404,
            body={"data": None, "errors": [{"errorCode": "not-found"}]},
            headers={"X-Request-ID": "header-id"},
        )
    )

    assert exc.request_id == "header-id"


def test_str_names_status_endpoint_code_message_and_request_id() -> None:
    exc = error_from_response(recorded("expired-token"), endpoint="GET /api/eshop")

    assert str(exc) == (
        "HTTP 401 GET /api/eshop: expired-token: Token is expired. Please ask for new one. "
        f"(request id {api_request_id(1)})"
    )


def test_repr_shows_class_status_and_codes_only() -> None:
    exc = error_from_response(
        recorded("invalid-token-no-rights"), endpoint="GET /api/orders"
    )

    assert repr(exc) == (
        "ShoptetForbidden(status_code=403, error_code='invalid-token-no-rights', "
        f"request_id='{api_request_id(4)}')"
    )


def test_str_and_repr_never_show_request_headers() -> None:
    response = recorded("expired-token")
    response.request = requests.Request(
        "GET",
        "http://127.0.0.1/api/eshop",
        headers={"Shoptet-Access-Token": "123456-a-secret-api-token-value"},
    ).prepare()

    exc = error_from_response(response)

    assert "secret-api-token" not in str(exc)
    assert "secret-api-token" not in repr(exc)
