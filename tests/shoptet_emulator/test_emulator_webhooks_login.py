"""Webhooks (registration, signed deliveries) and the e-shop's admin-login server."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest


class _Receiver(BaseHTTPRequestHandler):
    """Records what it receives and answers 200 (a stand-in for the addon)."""

    received: list[tuple[str, dict[str, str], bytes]]

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        type(self).received.append((self.path, dict(self.headers), body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self._record()

    def do_POST(self) -> None:
        self._record()

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[str, dict[str, str], bytes]]]]:
    class Handler(_Receiver):
        received: list[tuple[str, dict[str, str], bytes]] = []  # noqa: RUF012 - per fixture

    handler = Handler
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler.received
    server.shutdown()
    server.server_close()


def test_registered_webhooks_are_listed_and_removable(emu_client):
    _, token = emu_client.api_token()

    created = emu_client.api(
        "POST",
        "/api/webhooks",
        token,
        json={
            "data": [
                {"event": "order:create", "url": "https://addon.example/wh"},
                {"event": "addon:uninstall", "url": "https://addon.example/wh"},
            ]
        },
    )
    assert created.status_code == 422  # system events cannot be registered via the API
    created = emu_client.api(
        "POST",
        "/api/webhooks",
        token,
        json={
            "data": [
                {
                    "event": "order:create",
                    "url": "https://addon.example/wh",
                    "sendPayload": None,
                }
            ]
        },
    )
    assert created.status_code == 201
    hook = created.json()["data"]["webhooks"][0]
    listed = emu_client.api("GET", "/api/webhooks", token).json()["data"]

    assert hook["event"] == "order:create"
    assert listed["webhooks"] == [hook]
    assert listed["paginator"]["totalCount"] == 1
    assert (
        emu_client.api("DELETE", f"/api/webhooks/{hook['id']}", token).status_code
        == 200
    )
    assert (
        emu_client.api("GET", "/api/webhooks", token).json()["data"]["webhooks"] == []
    )


def test_unknown_event_is_rejected(emu_client):
    _, token = emu_client.api_token()

    response = emu_client.api(
        "POST",
        "/api/webhooks",
        token,
        json={"data": [{"event": "order:explode", "url": "https://a.example/"}]},
    )

    assert response.status_code == 422
    assert response.json()["errors"][0]["instance"] == "data[0]"


def test_webhooks_of_one_shop_are_invisible_to_another(emu_client):
    _, token_a = emu_client.api_token()
    _, token_b = emu_client.api_token()
    emu_client.api(
        "POST",
        "/api/webhooks",
        token_a,
        json={"data": [{"event": "order:create", "url": "https://a.example/"}]},
    )

    hook_id = emu_client.api("GET", "/api/webhooks", token_a).json()["data"][
        "webhooks"
    ][0]["id"]

    assert (
        emu_client.api("GET", "/api/webhooks", token_b).json()["data"]["webhooks"] == []
    )
    assert emu_client.api("GET", f"/api/webhooks/{hook_id}", token_b).status_code == 404


def test_renewing_the_signature_key_rotates_it(emu_client):
    eshop_id, token = emu_client.api_token()

    first = emu_client.api("POST", "/api/webhooks/renew-signature-key", token).json()[
        "data"
    ]["signatureKey"]
    second = emu_client.api("POST", "/api/webhooks/renew-signature-key", token).json()[
        "data"
    ]["signatureKey"]

    assert first != second
    assert len(second) == 32
    assert emu_client.emu.signature_key_for(eshop_id) == second


def test_delivered_webhook_is_signed_with_hmac_sha1_of_the_raw_body(
    emu_client, receiver
):
    url, received = receiver
    eshop_id, token = emu_client.api_token()
    key = emu_client.api("POST", "/api/webhooks/renew-signature-key", token).json()[
        "data"
    ]["signatureKey"]
    emu_client.api(
        "POST",
        "/api/webhooks",
        token,
        json={"data": [{"event": "order:create", "url": url + "/wh"}]},
    )

    status = emu_client.emu.deliver_webhook(eshop_id, "order:create", "2025000001")

    assert status == 200
    path, headers, body = received[0]
    assert path == "/wh"
    expected = hmac.new(key.encode(), body, hashlib.sha1).hexdigest()
    assert headers["Shoptet-Webhook-Signature"] == expected
    payload = json.loads(body)
    assert payload["eshopId"] == eshop_id
    assert payload["event"] == "order:create"
    assert payload["eventInstance"] == "2025000001"
    assert emu_client.emu.stats.webhook_deliveries[eshop_id] == 1


def test_webhook_request_is_unsigned_without_a_key(emu_client):
    eshop = emu_client.emu.add_eshop()

    body, headers = emu_client.emu.webhook_request(
        eshop.eshop_id, "addon:suspend", str(eshop.eshop_id)
    )

    assert "Shoptet-Webhook-Signature" not in headers
    assert json.loads(body)["event"] == "addon:suspend"


def test_delivery_without_a_registered_webhook_is_an_error(emu_client):
    eshop = emu_client.emu.add_eshop()

    with pytest.raises(LookupError):
        emu_client.emu.deliver_webhook(eshop.eshop_id, "order:create", "1")


def test_delivery_to_a_dead_receiver_reports_no_answer(emu_client):
    eshop = emu_client.emu.add_eshop()

    assert (
        emu_client.emu.deliver_webhook(
            eshop.eshop_id, "order:create", "1", url="http://127.0.0.1:9/", timeout=1
        )
        is None
    )


# -- admin login on the e-shop's own OAuthServer ------------------------------------


def _login_token(emu_client, base: str, code: str, **overrides: Any):
    return emu_client.http.post(
        base + "token",
        data=emu_client.token_fields(code, scope="basic_eshop", **overrides),
        timeout=5,
    )


def test_settings_code_logs_in_as_that_shop(emu_client):
    eshop_id, _ = emu_client.install()
    base = emu_client.emu.customer_oauth_url(eshop_id)
    code = emu_client.emu.issue_login_code(
        eshop_id, user_email="admin@shop.example", user_name="Ada"
    )

    token = _login_token(emu_client, base, code).json()["access_token"]
    identity = emu_client.http.post(
        base + "resource?method=getBasicEshop",
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    ).json()

    assert identity["success"] is True
    assert identity["data"]["project"]["id"] == eshop_id
    assert identity["data"]["user"] == {"email": "admin@shop.example", "name": "Ada"}


def test_a_login_code_only_works_at_its_own_shop(emu_client):
    eshop_a, _ = emu_client.install()
    eshop_b, _ = emu_client.install()
    code = emu_client.emu.issue_login_code(eshop_a)

    response = _login_token(
        emu_client, emu_client.emu.customer_oauth_url(eshop_b), code
    )

    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_a_login_code_is_single_use_and_needs_the_client_secret(emu_client):
    eshop_id, _ = emu_client.install()
    base = emu_client.emu.customer_oauth_url(eshop_id)
    code = emu_client.emu.issue_login_code(eshop_id)

    assert (
        _login_token(emu_client, base, code, client_secret="wrong").status_code == 401
    )
    assert _login_token(emu_client, base, code).status_code == 200
    assert _login_token(emu_client, base, code).status_code == 400


def test_basic_eshop_refuses_a_foreign_or_missing_token(emu_client):
    eshop_a, _ = emu_client.install()
    eshop_b, _ = emu_client.install()
    code = emu_client.emu.issue_login_code(eshop_a)
    token = _login_token(
        emu_client, emu_client.emu.customer_oauth_url(eshop_a), code
    ).json()["access_token"]

    foreign = emu_client.http.get(
        emu_client.emu.customer_oauth_url(eshop_b) + "resource",
        params={"method": "getBasicEshop"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )
    missing = emu_client.http.get(
        emu_client.emu.customer_oauth_url(eshop_a) + "resource",
        params={"method": "getBasicEshop"},
        timeout=5,
    )

    assert foreign.status_code == 401
    assert missing.status_code == 401


def test_authorize_redirects_back_with_code_and_state(emu_client):
    eshop_id, _ = emu_client.install()
    base = emu_client.emu.customer_oauth_url(eshop_id)
    redirect_uri = "http://testserver/settings/"

    response = emu_client.http.get(
        base + "authorize",
        params={
            "client_id": "emulator-client-id",
            "scope": "basic_eshop",
            "response_type": "code",
            "redirect_uri": redirect_uri,
            "state": "s-123",
        },
        allow_redirects=False,
        timeout=5,
    )

    assert response.status_code == 302
    location = urlsplit(response.headers["Location"])
    query = parse_qs(location.query)
    assert f"{location.scheme}://{location.netloc}{location.path}" == redirect_uri
    assert query["state"] == ["s-123"]
    assert (
        _login_token(
            emu_client, base, query["code"][0], redirect_uri="http://evil/"
        ).status_code
        == 400
    )


def test_authorize_code_exchanges_with_the_same_redirect_uri(emu_client):
    eshop_id, _ = emu_client.install()
    base = emu_client.emu.customer_oauth_url(eshop_id)
    params = {
        "client_id": "emulator-client-id",
        "scope": "basic_eshop",
        "response_type": "code",
        "redirect_uri": "http://testserver/settings/?x=1",
    }
    location = emu_client.http.get(
        base + "authorize", params=params, allow_redirects=False, timeout=5
    ).headers["Location"]
    code = parse_qs(urlsplit(location).query)["code"][0]

    assert (
        _login_token(
            emu_client, base, code, redirect_uri=params["redirect_uri"]
        ).status_code
        == 200
    )


def test_unknown_shop_oauth_server_is_404(emu_client):
    response = emu_client.http.post(
        emu_client.emu.base_url + "/shop/424242/action/OAuthServer/token",
        json={},
        timeout=5,
    )

    assert response.status_code == 404
