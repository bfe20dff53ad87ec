"""The install callback, end to end over real HTTP against the Shoptet emulator."""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from unittest import mock

import pytest
from django.db import OperationalError, connection, connections
from django.test import Client

from eshops.models import Eshop
from shoptet_emulator import ShoptetEmulator

INSTALL_URL = "/oauth/install/"

pytestmark = pytest.mark.django_db


def raw_token_column(eshop_id: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT oauth_access_token FROM eshops_eshop WHERE eshop_id = %s",
            [eshop_id],
        )
        return str(cursor.fetchone()[0])


def unused_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def install(client: Client, code: str, **extra: Any) -> Any:
    return client.get(INSTALL_URL, {"code": code}, **extra)


def test_install_exchanges_code_and_stores_encrypted_token(
    client: Client, shoptet_settings: ShoptetEmulator
) -> None:
    shop = shoptet_settings.add_eshop(
        url="https://demo-shop.myshoptet.com/", contact_email="owner@demo.example"
    )
    code = shoptet_settings.issue_install_code(shop.eshop_id)

    response = install(client, code)

    assert response.status_code == 200
    assert b"Installed" in response.content
    eshop = Eshop.objects.get(eshop_id=shop.eshop_id)
    oauth_token = shoptet_settings.oauth_token_for(shop.eshop_id)
    assert oauth_token
    assert eshop.oauth_access_token == oauth_token
    assert eshop.url == "https://demo-shop.myshoptet.com/"
    assert eshop.contact_email == "owner@demo.example"
    assert eshop.status == Eshop.Status.ACTIVE
    assert eshop.install_count == 1
    raw = raw_token_column(shop.eshop_id)
    assert oauth_token not in raw
    assert raw.startswith("gAAAA")
    assert shoptet_settings.stats.token_exchanges == 1
    assert oauth_token.encode() not in response.content


def test_install_sends_documented_token_request(
    client: Client, shoptet_settings: ShoptetEmulator
) -> None:
    shop = shoptet_settings.add_eshop()
    code = shoptet_settings.issue_install_code(shop.eshop_id)

    assert install(client, code).status_code == 200

    # The emulator validates client id/secret, redirect_uri, grant_type and scope; a request
    # missing any of them would have been refused.
    assert shoptet_settings.stats.failed_exchanges == 0


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("", b"Exactly one"),
        ("?code=", b"empty"),
        ("?code=" + "a" * 10_000, b"longer than"),
        ("?code=abc%20def", b"invalid characters"),
        ("?code=abc%00def", b"invalid characters"),
        ("?code=a&code=b", b"Exactly one"),
    ],
    ids=["missing", "empty", "10kB", "space", "nul", "duplicated"],
)
def test_install_rejects_bad_code_without_calling_shoptet(
    client: Client, shoptet_settings: ShoptetEmulator, query: str, reason: bytes
) -> None:
    response = client.get(INSTALL_URL + query)

    assert response.status_code == 400
    assert reason in response.content
    assert shoptet_settings.stats.requests == []
    assert not Eshop.objects.exists()


def test_install_rejects_post(
    client: Client, shoptet_settings: ShoptetEmulator
) -> None:
    assert client.post(INSTALL_URL, {"code": "x"}).status_code == 405
    assert shoptet_settings.stats.requests == []


def test_install_refuses_unknown_code(
    client: Client, shoptet_settings: ShoptetEmulator
) -> None:
    response = install(client, "not-a-code-shoptet-issued")

    assert response.status_code == 400
    assert b"refused the installation code" in response.content
    assert not Eshop.objects.exists()


def test_install_refuses_a_used_code(
    client: Client, shoptet_settings: ShoptetEmulator
) -> None:
    shop = shoptet_settings.add_eshop()
    code = shoptet_settings.issue_install_code(shop.eshop_id)
    assert install(client, code).status_code == 200
    first_token = Eshop.objects.get().oauth_access_token

    response = install(client, code)

    assert response.status_code == 400
    assert Eshop.objects.count() == 1
    assert Eshop.objects.get().oauth_access_token == first_token


def test_install_reports_rejected_client_credentials(
    client: Client, shoptet_settings: ShoptetEmulator, settings: Any
) -> None:
    settings.SHOPTET_CLIENT_SECRET = "wrong-secret"
    shop = shoptet_settings.add_eshop()

    response = install(client, shoptet_settings.issue_install_code(shop.eshop_id))

    assert response.status_code == 502
    assert b"client credentials" in response.content
    assert not Eshop.objects.exists()


def test_install_answers_503_when_not_configured(client: Client, settings: Any) -> None:
    settings.SHOPTET_CLIENT_ID = ""

    response = install(client, "a" * 255)

    assert response.status_code == 503
    assert b"not configured" in response.content


def test_install_answers_502_when_shoptet_fails(
    client: Client, shoptet_settings: ShoptetEmulator
) -> None:
    shop = shoptet_settings.add_eshop()
    shoptet_settings.fail_next(
        1, status=500, path_prefix="/action/ApiOAuthServer/token"
    )

    response = install(client, shoptet_settings.issue_install_code(shop.eshop_id))

    assert response.status_code == 502
    assert not Eshop.objects.exists()


def test_install_answers_504_when_shoptet_is_slow(
    client: Client, shoptet_settings: ShoptetEmulator, settings: Any
) -> None:
    settings.SHOPTET_INSTALL_READ_TIMEOUT = 0.3
    shop = shoptet_settings.add_eshop()
    shoptet_settings.set_latency(1.0, path_prefix="/action/ApiOAuthServer/token")

    response = install(client, shoptet_settings.issue_install_code(shop.eshop_id))

    assert response.status_code == 504
    assert b"did not answer in time" in response.content
    assert not Eshop.objects.exists()


def test_install_answers_502_when_shoptet_drops_the_connection(
    client: Client, shoptet_settings: ShoptetEmulator
) -> None:
    shop = shoptet_settings.add_eshop()
    shoptet_settings.drop_next(1, path_prefix="/action/ApiOAuthServer/token")

    response = install(client, shoptet_settings.issue_install_code(shop.eshop_id))

    assert response.status_code == 502
    assert b"could not be reached" in response.content


def test_install_answers_502_when_shoptet_is_unreachable(
    client: Client, settings: Any
) -> None:
    settings.SHOPTET_CLIENT_ID = "cid"
    settings.SHOPTET_CLIENT_SECRET = "secret"
    settings.SHOPTET_REDIRECT_URI = "http://testserver/oauth/install/"
    settings.SHOPTET_OAUTH_URL = (
        f"http://127.0.0.1:{unused_port()}/action/ApiOAuthServer/"
    )

    response = install(client, "a" * 255)

    assert response.status_code == 502


def test_install_answers_502_on_malformed_token_response(
    client: Client, shoptet_settings: ShoptetEmulator
) -> None:
    shop = shoptet_settings.add_eshop()
    shoptet_settings.fail_next(
        1,
        status=200,
        body={"access_token": "tok", "token_type": "Bearer"},
        path_prefix="/action/ApiOAuthServer/token",
    )

    response = install(client, shoptet_settings.issue_install_code(shop.eshop_id))

    assert response.status_code == 502
    assert b"unexpected answer" in response.content
    assert not Eshop.objects.exists()


def test_install_answers_503_without_spending_the_code_when_database_is_down(
    client: Client, shoptet_settings: ShoptetEmulator
) -> None:
    shop = shoptet_settings.add_eshop()
    code = shoptet_settings.issue_install_code(shop.eshop_id)

    with mock.patch(
        "oauth.views.connection.ensure_connection", side_effect=OperationalError("down")
    ):
        response = install(client, code)

    assert response.status_code == 503
    assert shoptet_settings.stats.token_exchanges == 0
    # The code is still good: the merchant's retry succeeds.
    assert install(client, code).status_code == 200


def test_install_answers_503_and_stores_nothing_when_database_fails_mid_install(
    client: Client, shoptet_settings: ShoptetEmulator
) -> None:
    shop = shoptet_settings.add_eshop()

    with mock.patch(
        "oauth.services.Eshop.objects.select_for_update",
        side_effect=OperationalError("gone"),
    ):
        response = install(client, shoptet_settings.issue_install_code(shop.eshop_id))

    assert response.status_code == 503
    assert not Eshop.objects.exists()


def test_reinstall_replaces_token_and_reactivates(
    client: Client, shoptet_settings: ShoptetEmulator
) -> None:
    shop = shoptet_settings.add_eshop()
    assert (
        install(client, shoptet_settings.issue_install_code(shop.eshop_id)).status_code
        == 200
    )
    eshop = Eshop.objects.get()
    old_token = eshop.oauth_access_token
    Eshop.objects.filter(pk=eshop.pk).update(
        status=Eshop.Status.UNINSTALLED, name="Kept name"
    )

    assert (
        install(client, shoptet_settings.issue_install_code(shop.eshop_id)).status_code
        == 200
    )

    eshop.refresh_from_db()
    assert Eshop.objects.count() == 1
    assert eshop.oauth_access_token == shoptet_settings.oauth_token_for(shop.eshop_id)
    assert eshop.oauth_access_token != old_token
    assert eshop.status == Eshop.Status.ACTIVE
    assert eshop.uninstalled_at is None
    assert eshop.install_count == 2
    assert eshop.name == "Kept name"
    assert eshop.last_installed_at > eshop.installed_at


@pytest.mark.django_db(transaction=True)
def test_concurrent_installs_and_duplicate_codes_make_one_tenant_per_shop(
    shoptet_settings: ShoptetEmulator, settings: Any
) -> None:
    # 26 installs from one test address.
    settings.THROTTLE_INSTALL_PER_ADDRESS = (100, 60)
    shops = [shoptet_settings.add_eshop() for _ in range(20)]
    codes = [shoptet_settings.issue_install_code(shop.eshop_id) for shop in shops]
    # Five codes are delivered twice, and one shop gets a second install code racing its first.
    requests_to_send = (
        codes + codes[:5] + [shoptet_settings.issue_install_code(shops[19].eshop_id)]
    )
    barrier = threading.Barrier(len(requests_to_send))

    def call(code: str) -> tuple[str, int]:
        barrier.wait()
        try:
            return code, install(Client(), code).status_code
        finally:
            connections.close_all()  # this thread's connection; the test DB is dropped afterwards

    with ThreadPoolExecutor(max_workers=len(requests_to_send)) as pool:
        results = list(pool.map(call, requests_to_send))

    statuses = [status for _, status in results]
    assert 500 not in statuses
    assert set(statuses) <= {200, 400}
    for code in codes[:5]:
        assert sorted(status for c, status in results if c == code) == [200, 400]
    assert Eshop.objects.count() == 20
    for shop in shops[:19]:
        stored = Eshop.objects.get(eshop_id=shop.eshop_id)
        assert stored.oauth_access_token == shoptet_settings.oauth_token_for(
            shop.eshop_id
        )
    # Which of two racing installs Shoptet answered last is decided by arrival order; that rule
    # is tested deterministically in test_install_service.py.
    assert Eshop.objects.get(eshop_id=shops[19].eshop_id).install_count == 2


def test_install_allow_list_refuses_other_networks(
    client: Client, shoptet_settings: ShoptetEmulator, settings: Any
) -> None:
    settings.SHOPTET_INSTALL_ALLOWED_NETWORKS = [ipaddress.ip_network("78.24.15.64/26")]
    shop = shoptet_settings.add_eshop()
    code = shoptet_settings.issue_install_code(shop.eshop_id)

    # A forged X-Forwarded-For is ignored while NUM_PROXIES is 0.
    response = install(client, code, HTTP_X_FORWARDED_FOR="78.24.15.70")

    assert response.status_code == 403
    assert shoptet_settings.stats.requests == []


def test_install_allow_list_trusts_only_our_proxy_entry(
    client: Client, shoptet_settings: ShoptetEmulator, settings: Any
) -> None:
    settings.SHOPTET_INSTALL_ALLOWED_NETWORKS = [ipaddress.ip_network("78.24.15.64/26")]
    settings.NUM_PROXIES = 1
    shop = shoptet_settings.add_eshop()

    spoofed = install(
        client, "a" * 255, HTTP_X_FORWARDED_FOR="78.24.15.70, 203.0.113.9"
    )
    allowed = install(
        client,
        shoptet_settings.issue_install_code(shop.eshop_id),
        HTTP_X_FORWARDED_FOR="203.0.113.9, 78.24.15.70",
    )

    assert spoofed.status_code == 403
    assert allowed.status_code == 200


def test_no_secret_reaches_logs_or_pages(
    client: Client, shoptet_settings: ShoptetEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    shop = shoptet_settings.add_eshop()
    good_code = shoptet_settings.issue_install_code(shop.eshop_id)
    bad_code = "B" * 255
    pages = [
        install(client, good_code).content,
        install(client, good_code).content,
        install(client, bad_code).content,
    ]
    shoptet_settings.fail_next(
        1, status=500, path_prefix="/action/ApiOAuthServer/token"
    )
    pages.append(
        install(client, shoptet_settings.issue_install_code(shop.eshop_id)).content
    )

    secrets = [
        shoptet_settings.oauth_token_for(shop.eshop_id),
        good_code,
        bad_code,
        shoptet_settings.client_secret,
    ]
    everything = caplog.text + "".join(repr(r.args) for r in caplog.records)
    assert "install ok: eshop_id=" in caplog.text
    for secret in secrets:
        assert secret
        assert secret not in everything
        assert all(secret.encode() not in page for page in pages)
    assert repr(Eshop.objects.get()) == f"<Eshop: e-shop {shop.eshop_id}>"


@pytest.mark.django_db(transaction=True)
def test_install_answers_without_waiting_for_a_hung_broker(
    shoptet_settings: ShoptetEmulator, settings: Any
) -> None:
    from addon_project.celery import app as celery_app

    shop = shoptet_settings.add_eshop()
    release, publishing = threading.Event(), threading.Event()

    def hung_publish(eshop_id: int) -> None:
        publishing.set()
        release.wait(
            timeout=30
        )  # a broker that accepted the connection and never answers

    eager = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = False
    try:
        with mock.patch(
            "oauth.services.post_install_task.delay", side_effect=hung_publish
        ) as delay:
            response = install(
                Client(), shoptet_settings.issue_install_code(shop.eshop_id)
            )
            # The answer is out while the publish is still stuck.
            assert response.status_code == 200
            assert publishing.wait(timeout=10)
            assert not release.is_set()
            release.set()
    finally:
        celery_app.conf.task_always_eager = eager
    delay.assert_called_once_with(shop.eshop_id)
    assert Eshop.objects.filter(eshop_id=shop.eshop_id).exists()
