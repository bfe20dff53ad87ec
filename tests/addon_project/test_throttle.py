"""Throttles on the URLs that make us call Shoptet's OAuth servers: the install callback and the
settings-page login, with real Redis and the real emulator over loopback."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
import redis
from django.test import Client

from addon_project import redis_keys, throttle
from eshops.models import Eshop
from oauth.services import install_addon
from shoptet_api import provisioning
from shoptet_emulator import ShoptetEmulator

pytestmark = pytest.mark.django_db

TOKEN_PATH = "/action/ApiOAuthServer/token"


def calls_to(emulator: ShoptetEmulator, suffix: str) -> int:
    return sum(
        1 for _method, path, _status in emulator.stats.requests if path.endswith(suffix)
    )


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_junk_install_codes_from_one_address_stop_reaching_shoptet(
    client: Client, shoptet_settings: ShoptetEmulator, settings: Any
) -> None:
    settings.THROTTLE_INSTALL_PER_ADDRESS = (3, 60)

    answers = [client.get("/oauth/install/", {"code": f"junk{n}"}) for n in range(10)]

    assert [a.status_code for a in answers] == [400] * 3 + [429] * 7
    assert calls_to(shoptet_settings, TOKEN_PATH) == 3, shoptet_settings.stats.requests
    assert 1 <= int(answers[-1]["Retry-After"]) <= 60
    # Another address has its own allowance.
    other = client.get("/oauth/install/", {"code": "junk"}, REMOTE_ADDR="198.51.100.7")
    assert other.status_code == 400


def test_install_throttle_counts_ipv6_per_64(
    client: Client, shoptet_settings: ShoptetEmulator, settings: Any
) -> None:
    settings.THROTTLE_INSTALL_PER_ADDRESS = (1, 60)

    first = client.get("/oauth/install/", {"code": "junk"}, REMOTE_ADDR="2001:db8::1")
    same_64 = client.get(
        "/oauth/install/", {"code": "junk"}, REMOTE_ADDR="2001:db8::ffff"
    )
    other_64 = client.get(
        "/oauth/install/", {"code": "junk"}, REMOTE_ADDR="2001:db8:0:1::1"
    )

    assert [first.status_code, same_64.status_code, other_64.status_code] == [
        400,
        429,
        400,
    ]


def test_install_works_without_a_limit_when_redis_is_down_and_says_so(
    client: Client, shoptet_settings: ShoptetEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    dead = redis.Redis(port=unused_port(), socket_connect_timeout=0.5)
    shop = shoptet_settings.add_eshop()

    with mock.patch.object(throttle, "get_redis", return_value=dead):
        response = client.get(
            "/oauth/install/",
            {"code": shoptet_settings.issue_install_code(shop.eshop_id)},
        )

    assert response.status_code == 200
    assert Eshop.objects.filter(eshop_id=shop.eshop_id).exists()
    assert "install: throttle unavailable (Redis ConnectionError)" in caplog.text


@pytest.fixture
def installed(shoptet_settings: ShoptetEmulator) -> Callable[[], Eshop]:
    def make() -> Eshop:
        shop = shoptet_settings.add_eshop()
        eshop = install_addon(code=shoptet_settings.issue_install_code(shop.eshop_id))
        provisioning.refresh_eshop_details(eshop)
        return eshop

    return make


def test_junk_settings_logins_for_one_eshop_stop_reaching_its_oauth_server(
    client: Client,
    shoptet_settings: ShoptetEmulator,
    installed: Callable[[], Eshop],
    settings: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings.THROTTLE_SETTINGS_PER_ESHOP = (2, 60)
    eshop = installed()
    before = calls_to(shoptet_settings, "/OAuthServer/token")

    answers = [
        client.get(
            "/settings/",
            {"eshopId": str(eshop.eshop_id), "code": f"junk{n}"},
            REMOTE_ADDR=f"198.51.100.{n}",  # many sources, one e-shop
        )
        for n in range(6)
    ]

    assert [a.status_code for a in answers] == [403] * 2 + [429] * 4
    assert calls_to(shoptet_settings, "/OAuthServer/token") - before == 2
    assert int(answers[-1]["Retry-After"]) >= 1
    assert b"Too many sign-in attempts" in answers[-1].content
    assert "settings login throttled" in caplog.text
    # A real login later in another window works: the limit is a window, not a ban.
    settings.THROTTLE_SETTINGS_PER_ESHOP = (10, 60)
    code = shoptet_settings.issue_login_code(eshop.eshop_id)
    assert client.get(
        "/settings/", {"eshopId": str(eshop.eshop_id), "code": code}
    ).status_code in (302, 429)


def test_settings_logins_from_one_address_are_limited_across_eshops(
    client: Client,
    shoptet_settings: ShoptetEmulator,
    installed: Callable[[], Eshop],
    settings: Any,
) -> None:
    settings.THROTTLE_SETTINGS_PER_ADDRESS = (3, 60)
    eshops = [installed() for _ in range(5)]
    before = calls_to(shoptet_settings, "/OAuthServer/token")

    answers = [
        client.get("/settings/", {"eshopId": str(e.eshop_id), "code": "junk"})
        for e in eshops
    ]

    assert [a.status_code for a in answers] == [403] * 3 + [429] * 2
    assert calls_to(shoptet_settings, "/OAuthServer/token") - before == 3


def test_a_real_settings_login_passes_the_throttle(
    client: Client, shoptet_settings: ShoptetEmulator, installed: Callable[[], Eshop]
) -> None:
    eshop = installed()
    code = shoptet_settings.issue_login_code(eshop.eshop_id)

    response = client.get("/settings/", {"eshopId": str(eshop.eshop_id), "code": code})

    assert response.status_code == 302


def test_hit_counts_every_limit_and_waits_for_the_latest_window(settings: Any) -> None:
    short = redis_keys.throttle_key("t", "short")
    long = redis_keys.throttle_key("t", "long")
    limits = {short: (1, 5), long: (1, 50)}

    assert throttle.hit(limits, what="test") is None
    wait = throttle.hit(limits, what="test")

    assert wait is not None
    assert 5 < wait <= 50


def test_source_subject_of_odd_addresses() -> None:
    assert throttle.source_subject("203.0.113.9") == "203.0.113.9"
    assert throttle.source_subject("2001:db8::1") == "2001:db8::/64"
    assert throttle.source_subject("not an address") == "unknown"
    assert throttle.source_subject("") == "unknown"


@pytest.mark.parametrize("value", ["", "20", "0/60", "20/0", "a/b", "-1/60", "20/60/1"])
def test_a_bad_rate_stops_start_up(value: str) -> None:
    from django.core.exceptions import ImproperlyConfigured

    from addon_project.settings import _rate

    with pytest.raises(ImproperlyConfigured, match="COUNT/SECONDS"):
        _rate("THROTTLE_X", value)


def test_logs_name_no_code(
    client: Client,
    shoptet_settings: ShoptetEmulator,
    settings: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    settings.THROTTLE_INSTALL_PER_ADDRESS = (1, 60)
    secret_code = "S" * 200

    client.get("/oauth/install/", {"code": secret_code})
    client.get("/oauth/install/", {"code": secret_code})

    assert "throttled" in caplog.text
    assert secret_code not in caplog.text
