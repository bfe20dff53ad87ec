"""The /_emulator/ control API, the management command and the no-Django rule."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from shoptet_emulator import ShoptetEmulator

ROOT = Path(__file__).resolve().parents[2]


def test_control_install_creates_a_shop_and_a_usable_code(emu_client):
    answer = emu_client.http.post(
        emu_client.emu.base_url + "/_emulator/install", json={}, timeout=5
    ).json()

    assert answer["eshopId"] == 100001
    assert len(answer["code"]) == 255
    assert answer["installUrl"].startswith("http://testserver/oauth/install/?code=")
    assert emu_client.exchange(answer["code"]).json()["eshopId"] == 100001


def test_control_install_reuses_a_given_shop(emu_client):
    emu_client.emu.add_eshop(eshop_id=555)

    answer = emu_client.http.post(
        emu_client.emu.base_url + "/_emulator/install", json={"eshopId": 555}, timeout=5
    ).json()

    assert answer["eshopId"] == 555
    assert len(emu_client.emu.eshops) == 1


@pytest.mark.parametrize(
    "body", [b"[]", b"{bad", b'{"eshopId": "1"}', b'{"eshopId": true}']
)
def test_control_install_rejects_bad_input(emu_client, body):
    response = emu_client.http.post(
        emu_client.emu.base_url + "/_emulator/install", data=body, timeout=5
    )

    assert response.status_code == 400
    assert emu_client.emu.eshops == []


def test_control_stats_reports_counters_without_tokens(emu_client):
    eshop_id, token = emu_client.api_token()
    emu_client.api("GET", "/api/eshop", token)

    stats = emu_client.http.get(
        emu_client.emu.base_url + "/_emulator/stats", timeout=5
    ).json()

    assert stats["tokenExchanges"] == 1
    assert stats["apiTokensIssued"] == {str(eshop_id): 1}
    assert stats["peakConcurrency"] == {str(eshop_id): 1}
    assert stats["statusCounts"]["/api/eshop 200"] == 1
    assert stats["eshops"] == 1
    text = emu_client.http.get(
        emu_client.emu.base_url + "/_emulator/stats", timeout=5
    ).text
    assert token not in text
    assert emu_client.emu.oauth_token_for(eshop_id) not in text


def test_control_orders_login_code_webhook_and_reset(emu_client):
    eshop = emu_client.emu.add_eshop()
    base = emu_client.emu.base_url + "/_emulator/"

    orders = emu_client.http.post(
        base + "orders", json={"eshopId": eshop.eshop_id, "count": 7}, timeout=5
    ).json()
    login = emu_client.http.post(
        base + "login-code", json={"eshopId": eshop.eshop_id}, timeout=5
    ).json()
    webhook = emu_client.http.post(
        base + "webhook",
        json={"eshopId": eshop.eshop_id, "event": "order:create", "eventInstance": "1"},
        timeout=5,
    )
    unknown = emu_client.http.post(
        base + "orders", json={"eshopId": 1, "count": 1}, timeout=5
    )

    assert orders == {"eshopId": eshop.eshop_id, "orders": 7}
    assert len(login["code"]) == 64
    assert webhook.status_code == 400  # no webhook registered for the event
    assert unknown.status_code == 400
    assert emu_client.http.post(base + "reset", timeout=5).status_code == 200
    assert emu_client.emu.eshops == []
    assert emu_client.http.get(base + "nothing", timeout=5).status_code == 404


class _InstallView(BaseHTTPRequestHandler):
    """A stand-in addon install callback that exchanges the code like the real one."""

    emulator: ShoptetEmulator
    results: list[int]

    def do_GET(self) -> None:
        code = parse_qs(urlsplit(self.path).query)["code"][0]
        fields = {
            "client_id": "cid",
            "client_secret": "secret",
            "code": code,
            "grant_type": "authorization_code",
            "redirect_uri": self.emulator.redirect_uri,
            "scope": "api",
        }
        status = requests.post(
            self.emulator.oauth_url + "token", json=fields, timeout=5
        ).status_code
        type(self).results.append(status)
        self.send_response(200 if status == 200 else 502)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def addon_and_emulator() -> Iterator[tuple[ShoptetEmulator, list[int]]]:
    class Handler(_InstallView):
        results: list[int] = []  # noqa: RUF012 - one list per fixture

    handler = Handler
    addon = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=addon.serve_forever, daemon=True).start()
    redirect_uri = f"http://127.0.0.1:{addon.server_address[1]}/oauth/install/"
    with ShoptetEmulator(
        client_id="cid", client_secret="secret", redirect_uri=redirect_uri
    ) as emulator:
        handler.emulator = emulator
        yield emulator, handler.results
    addon.shutdown()
    addon.server_close()


def test_control_install_can_call_the_addon_like_shoptet(addon_and_emulator):
    emulator, results = addon_and_emulator

    answer = requests.post(
        emulator.base_url + "/_emulator/install", json={"callback": True}, timeout=10
    ).json()

    assert answer["callbackStatus"] == 200
    assert results == [200]
    assert emulator.stats.token_exchanges == 1
    assert emulator.oauth_token_for(answer["eshopId"]) is not None


def test_core_emulator_does_not_import_django():
    code = (
        "import sys, shoptet_emulator, shoptet_emulator.schemas;"
        "from shoptet_emulator import ShoptetEmulator;"
        "e = ShoptetEmulator().start(); e.stop();"
        "bad = [m for m in sys.modules if m == 'django' or m.startswith('django.')];"
        "assert not bad, bad"
    )
    env = {
        key: value
        for key, value in os.environ.items()
        if key != "DJANGO_SETTINGS_MODULE"
    }

    command = [sys.executable, "-c", code]
    subprocess.run(command, cwd=ROOT, env=env, check=True, timeout=30)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_management_command_serves_until_interrupted_and_hides_the_secret():
    port = _free_port()
    env = {
        **os.environ,
        "SHOPTET_CLIENT_SECRET": "very-secret-value",
        "SHOPTET_ALLOW_HTTP": "true",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "shoptet_emulator",
            "--port",
            str(port),
            "--seed-eshops",
            "2",
            "--orders",
            "3",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "Quit with Ctrl-C" in line:
                break
        output = "".join(lines)
        assert (
            f"SHOPTET_OAUTH_URL=http://127.0.0.1:{port}/action/ApiOAuthServer/"
            in output
        )
        assert f"SHOPTET_API_URL=http://127.0.0.1:{port}" in output
        stats = requests.get(
            f"http://127.0.0.1:{port}/_emulator/stats", timeout=5
        ).json()
        assert stats["eshops"] == 2
        code = requests.post(
            f"http://127.0.0.1:{port}/_emulator/install",
            json={"eshopId": 100001},
            timeout=5,
        ).json()
        assert code["eshopId"] == 100001

        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert "very-secret-value" not in output + rest
    assert code["code"] not in output + rest


def test_open_settings_redirects_with_a_fresh_login_code(
    shoptet_emulator: ShoptetEmulator,
) -> None:
    shop = shoptet_emulator.add_eshop()
    url = f"{shoptet_emulator.base_url}/_emulator/open-settings"
    params: dict[str, str] = {
        "eshopId": str(shop.eshop_id),
        "lang": "sk",
        "url": "http://127.0.0.1:9/settings/",
    }

    first = requests.get(url, params=params, allow_redirects=False, timeout=5)
    second = requests.get(url, params=params, allow_redirects=False, timeout=5)

    assert first.status_code == second.status_code == 302
    query = parse_qs(urlsplit(first.headers["Location"]).query)
    assert query["eshopId"] == [str(shop.eshop_id)]
    assert query["lang"] == ["sk"]
    assert (
        first.headers["Location"] != second.headers["Location"]
    )  # a new code each time
    assert (
        requests.get(
            url,
            params={**params, "url": "javascript:x"},
            allow_redirects=False,
            timeout=5,
        ).status_code
        == 400
    )


def test_control_products_seeds_products(emu_client):
    eshop = emu_client.emu.add_eshop()
    base = emu_client.emu.base_url + "/_emulator/"

    added = emu_client.http.post(
        base + "products", json={"eshopId": eshop.eshop_id, "count": 4}, timeout=5
    )
    refused = emu_client.http.post(
        base + "products", json={"eshopId": eshop.eshop_id, "count": -1}, timeout=5
    )

    assert added.json() == {"eshopId": eshop.eshop_id, "added": 4}
    assert emu_client.emu.get_eshop(eshop.eshop_id).products.live_count == 4
    assert refused.status_code == 400
