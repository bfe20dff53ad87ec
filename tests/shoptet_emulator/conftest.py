"""Helpers for the emulator's own tests: an HTTP client that speaks its protocols."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from shoptet_emulator import ShoptetEmulator
from shoptet_emulator.testing import (
    EMULATOR_CLIENT_ID,
    EMULATOR_CLIENT_SECRET,
    EMULATOR_REDIRECT_URI,
)


@dataclass
class EmulatorClient:
    """Drives the emulator over real HTTP the way an addon would."""

    emu: ShoptetEmulator
    http: requests.Session

    def token_fields(self, code: str, **overrides: Any) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "client_id": EMULATOR_CLIENT_ID,
            "client_secret": EMULATOR_CLIENT_SECRET,
            "code": code,
            "grant_type": "authorization_code",
            "redirect_uri": EMULATOR_REDIRECT_URI,
            "scope": "api",
        }
        fields.update(overrides)
        return {key: value for key, value in fields.items() if value is not None}

    def exchange(self, code: str, **overrides: Any) -> requests.Response:
        return self.http.post(
            self.emu.oauth_url + "token",
            json=self.token_fields(code, **overrides),
            timeout=5,
        )

    def install(self, eshop_id: int | None = None) -> tuple[int, str]:
        """Install the addon on an e-shop; (eshop id, OAuth token)."""
        response = self.exchange(self.emu.issue_install_code(eshop_id))
        assert response.status_code == 200, response.text
        body = response.json()
        return body["eshopId"], body["access_token"]

    def mint(self, oauth_token: str | None) -> requests.Response:
        headers = {"Authorization": f"Bearer {oauth_token}"} if oauth_token else {}
        return self.http.get(
            self.emu.oauth_url + "getAccessToken", headers=headers, timeout=5
        )

    def api_token(self, eshop_id: int | None = None) -> tuple[int, str]:
        """Install and mint one API token; (eshop id, API token)."""
        eshop_id, oauth_token = self.install(eshop_id)
        response = self.mint(oauth_token)
        assert response.status_code == 200, response.text
        return eshop_id, response.json()["access_token"]

    def api(
        self, method: str, path: str, token: str | None, **kwargs: Any
    ) -> requests.Response:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Shoptet-Access-Token"] = token
        return self.http.request(
            method, self.emu.api_url + path, headers=headers, timeout=10, **kwargs
        )


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture
def emu_client(
    shoptet_emulator: ShoptetEmulator, http: requests.Session
) -> EmulatorClient:
    return EmulatorClient(shoptet_emulator, http)


class _HookReceiver(BaseHTTPRequestHandler):
    """Records each POST it receives and answers 200 (a stand-in for the addon)."""

    received: list[tuple[str, dict[str, str], bytes]]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        type(self).received.append((self.path, dict(self.headers), body))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def hook_receiver() -> Iterator[tuple[str, list[tuple[str, dict[str, str], bytes]]]]:
    """A webhook receiver on a loopback port: (base URL, what it received)."""

    class Handler(_HookReceiver):
        received: list[tuple[str, dict[str, str], bytes]] = []  # noqa: RUF012 - per fixture

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", Handler.received
    server.shutdown()
    server.server_close()
