"""Fault knobs (latency, errors, drops, locks), counters and reset."""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests


def test_fail_next_answers_a_shoptet_envelope_then_recovers(emu_client):
    _, token = emu_client.api_token()
    emu_client.emu.fail_next(2, status=500, path_prefix="/api/orders")

    statuses = [emu_client.api("GET", "/api/orders", token) for _ in range(3)]

    assert [response.status_code for response in statuses] == [500, 500, 200]
    assert statuses[0].json()["errors"][0]["errorCode"] == "unknown-error"
    assert (
        statuses[0].headers["X-Request-ID"]
        == statuses[0].json()["metadata"]["requestId"]
    )


def test_fail_next_only_hits_matching_paths(emu_client):
    _, token = emu_client.api_token()
    emu_client.emu.fail_next(1, status=503, path_prefix="/api/orders")

    assert emu_client.api("GET", "/api/eshop", token).status_code == 200
    maintenance = emu_client.api("GET", "/api/orders", token)
    assert maintenance.status_code == 503
    assert maintenance.json()["errors"][0]["errorCode"] == "system-maintenance"


def test_fail_next_with_429_sends_retry_after(emu_client):
    _, token = emu_client.api_token()
    emu_client.emu.fail_next(1, status=429, retry_after=3)

    response = emu_client.api("GET", "/api/eshop", token)

    assert response.status_code == 429
    assert response.headers["Retry-After"].endswith(" GMT")


def test_fail_next_on_the_oauth_server_answers_oauth_errors(emu_client):
    _, oauth_token = emu_client.install()
    emu_client.emu.fail_next(
        1, status=502, path_prefix="/action/ApiOAuthServer/getAccessToken"
    )
    emu_client.emu.fail_next(
        1, status=429, path_prefix="/action/ApiOAuthServer/getAccessToken"
    )

    assert emu_client.mint(oauth_token).json() == {"error": "server_error"}
    assert emu_client.mint(oauth_token).json() == {"error": "maximum_tokens_reached"}
    assert emu_client.mint(oauth_token).status_code == 200


def test_fail_next_sends_a_custom_body(emu_client):
    emu_client.emu.fail_next(1, status=502, body="<html>Bad gateway</html>")
    emu_client.emu.fail_next(1, status=400, body={"error": "custom"})

    first = emu_client.http.get(emu_client.emu.api_url + "/api/eshop", timeout=5)
    second = emu_client.http.get(emu_client.emu.api_url + "/api/eshop", timeout=5)

    assert (first.status_code, first.text) == (502, "<html>Bad gateway</html>")
    assert (second.status_code, second.json()) == (400, {"error": "custom"})


def test_failed_exchange_knob_counts_as_a_failure_and_keeps_the_code(emu_client):
    code = emu_client.emu.issue_install_code()
    emu_client.emu.fail_next(1, status=500, path_prefix="/action/ApiOAuthServer/token")

    assert emu_client.exchange(code).status_code == 500
    assert emu_client.exchange(code).status_code == 200


def test_drop_next_closes_the_connection_without_an_answer(emu_client):
    _, token = emu_client.api_token()
    emu_client.emu.drop_next(1, path_prefix="/api/")

    with pytest.raises(requests.ConnectionError):
        emu_client.api("GET", "/api/eshop", token)

    assert emu_client.api("GET", "/api/eshop", token).status_code == 200
    assert ("GET", "/api/eshop", 0) in emu_client.emu.stats.requests


def test_lock_next_answers_423(emu_client):
    _, token = emu_client.api_token()
    emu_client.emu.lock_next(1, "/api/webhooks")

    locked = emu_client.api("POST", "/api/webhooks/renew-signature-key", token)

    assert locked.status_code == 423
    assert locked.json()["errors"][0]["errorCode"] == "url-locked"
    assert (
        emu_client.api("POST", "/api/webhooks/renew-signature-key", token).status_code
        == 200
    )


def test_path_latency_slows_only_its_prefix(emu_client):
    emu_client.emu.set_latency(0.3, path_prefix="/action/ApiOAuthServer/token")
    code = emu_client.emu.issue_install_code()

    started = time.monotonic()
    emu_client.http.get(emu_client.emu.api_url + "/api/eshop", timeout=5)
    fast = time.monotonic() - started
    started = time.monotonic()
    emu_client.exchange(code)
    slow = time.monotonic() - started

    assert fast < 0.2
    assert slow >= 0.3


def test_latency_property_is_the_global_delay(shoptet_emulator):
    shoptet_emulator.latency = 0.05
    shoptet_emulator.set_latency(0.2, "/api/orders")

    assert shoptet_emulator.latency == 0.05
    assert shoptet_emulator.latency_for("/api/eshop") == 0.05
    assert shoptet_emulator.latency_for("/api/orders") == 0.2
    shoptet_emulator.latency = 0
    assert shoptet_emulator.latency_for("/api/eshop") == 0.0


def test_control_endpoints_ignore_faults_and_latency(emu_client):
    emu_client.emu.fail_next(5, status=500)
    emu_client.emu.latency = 1.0

    started = time.monotonic()
    response = emu_client.http.get(
        emu_client.emu.base_url + "/_emulator/stats", timeout=5
    )

    assert response.status_code == 200
    assert time.monotonic() - started < 0.5


def test_status_counts_and_request_log_record_answers(emu_client):
    _, token = emu_client.api_token()
    emu_client.api("GET", "/api/eshop", token)
    emu_client.api("GET", "/api/eshop", None)

    stats = emu_client.emu.stats
    assert stats.status_counts[("/api/eshop", 200)] == 1
    assert stats.status_counts[("/api/eshop", 401)] == 1
    assert stats.requests[-2:] == [
        ("GET", "/api/eshop", 200),
        ("GET", "/api/eshop", 401),
    ]
    assert stats.api_requests[100001] == 1


def test_request_log_is_bounded(shoptet_emulator):
    for _ in range(12_000):
        shoptet_emulator.record_answer("GET", "/api/eshop", 200)

    assert len(shoptet_emulator.stats.requests) <= 5000
    assert shoptet_emulator.stats.status_counts[("/api/eshop", 200)] == 12_000


def test_reset_forgets_everything(emu_client):
    eshop_id, token = emu_client.api_token()
    emu_client.emu.latency = 0.5
    emu_client.emu.token_lifetime = 5
    emu_client.emu.fail_next(3)

    emu_client.emu.reset()

    assert emu_client.emu.eshops == []
    assert emu_client.emu.latency == 0.0
    assert emu_client.emu.token_lifetime == 1800
    assert emu_client.emu.stats.token_exchanges == 0
    assert emu_client.emu.oauth_token_for(eshop_id) is None
    assert emu_client.api("GET", "/api/eshop", token).status_code == 401
    assert emu_client.emu.add_eshop().eshop_id == 100001


def _raw_get(emu, path: str, headers: dict[str, str]) -> list[bytes]:
    """The answer to one GET as the chunks `recv` returned them (nothing buffers in between)."""
    host, port = emu.base_url.removeprefix("http://").split(":")
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    chunks = []
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return chunks


def test_trickle_next_sends_the_usual_answer_one_byte_at_a_time(emu_client):
    _, oauth_token = emu_client.install()
    path = emu_client.emu.oauth_url.removeprefix(emu_client.emu.base_url)
    emu_client.emu.trickle_next(1, 0.003, path_prefix=path + "getAccessToken")
    headers = {"Authorization": f"Bearer {oauth_token}"}

    trickled = _raw_get(emu_client.emu, path + "getAccessToken", headers)
    normal = _raw_get(emu_client.emu, path + "getAccessToken", headers)

    answer = b"".join(trickled)
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["access_token"]
    # Byte by byte: the status line's first byte arrives alone, and so do most of the others
    # (a busy machine may let a few pile up between two reads).
    assert trickled[0] == b"H"
    assert len(trickled) >= len(answer) // 4
    assert len(normal) < len(b"".join(normal)) // 4


def test_trickle_next_needs_a_positive_interval(shoptet_emulator):
    with pytest.raises(ValueError, match="interval"):
        shoptet_emulator.trickle_next(1, 0)
