"""The partner OAuth server: install code exchange and getAccessToken."""

from __future__ import annotations

import threading
import time

import pytest

from shoptet_emulator.testing import EMULATOR_REDIRECT_URI

# The official install sample's "Expected response", plus `trial` (adbros SDK).
INSTALL_RESPONSE_KEYS = {
    "access_token",
    "expires_in",
    "token_type",
    "scope",
    "eshopId",
    "eshopUrl",
    "contactEmail",
    "trial",
}


def test_install_code_is_255_characters_and_unique(shoptet_emulator):
    codes = {shoptet_emulator.issue_install_code() for _ in range(20)}

    assert len(codes) == 20
    assert {len(code) for code in codes} == {255}


def test_exchange_answers_the_documented_install_response(emu_client):
    shop = emu_client.emu.add_eshop(contact_email="boss@example.com")

    response = emu_client.exchange(emu_client.emu.issue_install_code(shop.eshop_id))

    assert response.status_code == 200
    body = response.json()
    assert set(body) == INSTALL_RESPONSE_KEYS
    assert body["expires_in"] is None
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "api"
    assert body["eshopId"] == shop.eshop_id
    assert body["eshopUrl"] == emu_client.emu.shop_url(shop.eshop_id)
    assert body["contactEmail"] == "boss@example.com"
    assert body["trial"] is False
    assert len(body["access_token"]) == 255
    assert emu_client.emu.oauth_token_for(shop.eshop_id) == body["access_token"]
    assert emu_client.emu.stats.token_exchanges == 1


def test_exchange_accepts_a_form_encoded_body(emu_client):
    code = emu_client.emu.issue_install_code()

    response = emu_client.http.post(
        emu_client.emu.oauth_url + "token",
        data=emu_client.token_fields(code),
        timeout=5,
    )

    assert response.status_code == 200
    assert response.json()["eshopId"] == 100001


def test_eshop_ids_count_up_from_100001(shoptet_emulator):
    first = shoptet_emulator.add_eshop()
    second = shoptet_emulator.add_eshop()
    explicit = shoptet_emulator.add_eshop(eshop_id=222651, url="https://my.shop/")

    assert (first.eshop_id, second.eshop_id) == (100001, 100002)
    assert explicit.url == "https://my.shop/"
    assert shoptet_emulator.add_eshop(eshop_id=222651) is explicit


def test_a_code_can_be_exchanged_only_once(emu_client):
    code = emu_client.emu.issue_install_code()

    assert emu_client.exchange(code).status_code == 200
    again = emu_client.exchange(code)

    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"
    assert emu_client.emu.stats.token_exchanges == 1
    assert emu_client.emu.stats.failed_exchanges == 1


def test_concurrent_exchanges_of_one_code_succeed_exactly_once(
    emu_client, shoptet_emulator
):
    import requests

    code = shoptet_emulator.issue_install_code()
    statuses: list[int] = []
    barrier = threading.Barrier(10)

    def exchange() -> None:
        with requests.Session() as http:
            barrier.wait()
            fields = emu_client.token_fields(code)
            statuses.append(
                http.post(
                    shoptet_emulator.oauth_url + "token", json=fields, timeout=5
                ).status_code
            )

    threads = [threading.Thread(target=exchange) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(statuses) == [200] + [400] * 9


def test_expired_code_is_refused(emu_client):
    emu_client.emu.install_code_lifetime = 0.05
    code = emu_client.emu.issue_install_code()
    time.sleep(0.1)

    response = emu_client.exchange(code)

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_unknown_and_oversized_codes_are_refused(emu_client):
    for code in ("nope", "x" * 10_000):
        response = emu_client.exchange(code)
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    ("override", "status", "error"),
    [
        ({"client_secret": "wrong"}, 401, "invalid_client"),
        ({"client_id": "someone-else"}, 401, "invalid_client"),
        ({"client_secret": None}, 400, "invalid_request"),
        ({"grant_type": "client_credentials"}, 400, "unsupported_grant_type"),
        ({"scope": "basic_eshop"}, 400, "invalid_scope"),
        ({"redirect_uri": None}, 400, "invalid_request"),
    ],
)
def test_bad_token_requests_get_oauth_errors_and_keep_the_code(
    emu_client, override, status, error
):
    code = emu_client.emu.issue_install_code()

    response = emu_client.exchange(code, **override)

    assert response.status_code == status
    assert response.json()["error"] == error
    assert "error_description" in response.json()
    assert (
        emu_client.exchange(code).status_code == 200
    )  # rejected before the code was looked at


def test_wrong_redirect_uri_is_invalid_grant_and_spends_the_code(emu_client):
    code = emu_client.emu.issue_install_code()

    response = emu_client.exchange(code, redirect_uri=EMULATOR_REDIRECT_URI + "evil")

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert emu_client.exchange(code).status_code == 400


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"[1, 2]", "application/json"),
        (b"\x00\xff", "application/octet-stream"),
    ],
)
def test_malformed_token_request_is_invalid_request(emu_client, body, content_type):
    response = emu_client.http.post(
        emu_client.emu.oauth_url + "token",
        data=body,
        headers={"Content-Type": content_type},
        timeout=5,
    )

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


def test_reinstall_replaces_the_oauth_token(emu_client):
    eshop_id, first = emu_client.install()
    _, second = emu_client.install(eshop_id)

    assert first != second
    assert emu_client.emu.oauth_token_for(eshop_id) == second
    assert emu_client.mint(first).status_code == 401
    assert emu_client.mint(second).status_code == 200


def test_get_access_token_issues_a_shoptet_shaped_token(emu_client):
    eshop_id, oauth_token = emu_client.install()
    emu_client.emu.token_lifetime = 60

    response = emu_client.mint(oauth_token)

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access_token", "expires_in"}
    assert body["expires_in"] == 60
    assert body["access_token"].startswith(f"{eshop_id}-a-")
    assert 38 <= len(body["access_token"]) <= 60
    assert emu_client.emu.stats.api_tokens_issued[eshop_id] == 1


@pytest.mark.parametrize("authorization", [None, "Bearer nope", "Basic abc"])
def test_get_access_token_without_a_valid_bearer_is_unauthorized(
    emu_client, authorization
):
    headers = {"Authorization": authorization} if authorization else {}

    response = emu_client.http.get(
        emu_client.emu.oauth_url + "getAccessToken", headers=headers, timeout=5
    )

    assert response.status_code == 401
    assert response.json() == {"error": "Unauthorized"}


def test_a_sixth_valid_token_is_refused(emu_client):
    eshop_id, oauth_token = emu_client.install()

    statuses = [emu_client.mint(oauth_token).status_code for _ in range(6)]

    assert statuses == [200] * 5 + [429]
    assert emu_client.mint(oauth_token).json() == {"error": "maximum_tokens_reached"}
    assert emu_client.emu.stats.cap_rejections[eshop_id] == 2
    assert emu_client.emu.stats.max_valid_tokens_seen[eshop_id] == 5
    assert emu_client.emu.valid_api_tokens(eshop_id) == 5


def test_expired_tokens_free_the_cap(emu_client):
    eshop_id, oauth_token = emu_client.install()
    emu_client.emu.max_valid_tokens = 2
    emu_client.mint(oauth_token)
    emu_client.mint(oauth_token)

    emu_client.emu.expire_api_tokens(eshop_id)

    assert emu_client.mint(oauth_token).status_code == 200
    assert emu_client.emu.valid_api_tokens(eshop_id) == 1


def test_tokens_expire_after_their_lifetime(emu_client):
    eshop_id, oauth_token = emu_client.install()
    emu_client.emu.token_lifetime = 1
    token = emu_client.mint(oauth_token).json()["access_token"]

    assert emu_client.api("GET", "/api/eshop", token).status_code == 200
    time.sleep(1.05)

    response = emu_client.api("GET", "/api/eshop", token)
    assert response.status_code == 401
    assert response.json()["errors"][0]["errorCode"] == "expired-token"
    assert emu_client.emu.valid_api_tokens(eshop_id) == 0


@pytest.mark.parametrize(
    ("state", "status", "error"),
    [
        ("suspended", 403, "addon_suspended"),
        ("not_installed", 404, "addon_not_installed"),
    ],
)
def test_addon_state_blocks_get_access_token(emu_client, state, status, error):
    eshop_id, oauth_token = emu_client.install()
    emu_client.emu.set_addon_state(eshop_id, state)

    response = emu_client.mint(oauth_token)

    assert response.status_code == status
    assert response.json() == {"error": error}
    emu_client.emu.set_addon_state(eshop_id, "active")
    assert emu_client.mint(oauth_token).status_code == 200


def test_revoked_oauth_token_is_unauthorized(emu_client):
    eshop_id, oauth_token = emu_client.install()

    emu_client.emu.revoke_oauth_token(eshop_id)

    assert emu_client.mint(oauth_token).status_code == 401


def test_get_access_token_accepts_post_too(emu_client):
    _, oauth_token = emu_client.install()

    response = emu_client.http.post(
        emu_client.emu.oauth_url + "getAccessToken",
        headers={"Authorization": f"Bearer {oauth_token}"},
        timeout=5,
    )

    assert response.status_code == 200
