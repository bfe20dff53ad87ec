"""The install callback against a slow, huge, deep or lying OAuth server (the real emulator over
loopback): Shoptet waits 5 s, so the install answers in time whatever the other side does."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest
from django.test import Client

from eshops.models import Eshop
from shoptet_emulator import ShoptetEmulator

pytestmark = pytest.mark.django_db

INSTALL_URL = "/oauth/install/"
TOKEN_PATH = "/action/ApiOAuthServer/token"


def grant(**extra: Any) -> dict[str, Any]:
    """A token answer the install would accept, plus `extra` keys."""
    return {
        "access_token": "oauth-token-" + "a" * 60,
        "token_type": "bearer",
        "scope": "api",
        "eshopId": 424242,
        "eshopUrl": "https://hostile.myshoptet.com/",
        "contactEmail": "owner@hostile.example",
        **extra,
    }


def install(client: Client, emulator: ShoptetEmulator) -> Any:
    shop = emulator.add_eshop()
    return client.get(INSTALL_URL, {"code": emulator.issue_install_code(shop.eshop_id)})


def test_install_answers_504_by_its_deadline_when_the_oauth_server_trickles(
    client: Client, shoptet_settings: ShoptetEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    # One byte every 0.2 s: each read gets a byte well inside the 3 s read timeout, so only a
    # wall-clock deadline ends the call (today's code waits for the whole answer, ~60 s).
    shoptet_settings.trickle_next(1, 0.2, path_prefix=TOKEN_PATH)

    started = time.monotonic()
    response = install(client, shoptet_settings)
    elapsed = time.monotonic() - started

    assert response.status_code == 504
    assert b"did not answer in time" in response.content
    assert "no complete answer within 3 s (deadline)" in caplog.text
    assert not Eshop.objects.exists()
    assert (
        elapsed < 15
    )  # a generous sanity bound, not the contract (the log line above is)


def test_install_refuses_an_oversized_oauth_answer_without_reading_it_whole(
    client: Client, shoptet_settings: ShoptetEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    shoptet_settings.fail_next(
        1, status=200, body=grant(padding="x" * 2_000_000), path_prefix=TOKEN_PATH
    )

    response = install(client, shoptet_settings)

    assert response.status_code == 502
    assert b"unexpected answer" in response.content
    assert "larger than 65536 bytes" in caplog.text
    assert not Eshop.objects.exists()


def test_install_refuses_a_deeply_nested_oauth_answer(
    client: Client, shoptet_settings: ShoptetEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    body = json.dumps(grant())[:-1] + ', "x": ' + "[" * 30_000 + "]" * 30_000 + "}"
    shoptet_settings.fail_next(1, status=200, body=body, path_prefix=TOKEN_PATH)

    response = install(client, shoptet_settings)

    assert response.status_code == 502
    assert "nested" in caplog.text
    assert not Eshop.objects.exists()


def test_install_refuses_a_moderately_nested_oauth_answer_python_could_parse(
    client: Client, shoptet_settings: ShoptetEmulator
) -> None:
    body = json.dumps(grant(x=json.loads("[" * 200 + "]" * 200)))
    shoptet_settings.fail_next(1, status=200, body=body, path_prefix=TOKEN_PATH)

    assert install(client, shoptet_settings).status_code == 502


def test_install_refuses_a_deeply_nested_oauth_error(
    client: Client, shoptet_settings: ShoptetEmulator
) -> None:
    body = '{"error": "invalid_grant", "x": ' + "[" * 30_000 + "]" * 30_000 + "}"
    shoptet_settings.fail_next(1, status=400, body=body, path_prefix=TOKEN_PATH)

    response = install(client, shoptet_settings)

    # Not JSON we accept: an unexplained 400 from the OAuth server, not a crash.
    assert response.status_code == 502


@pytest.mark.parametrize("eshop_id", [2**70, "9999999999999999999", 0, -5, 1.5])
def test_install_answers_502_and_says_why_for_an_eshop_id_out_of_range(
    client: Client,
    shoptet_settings: ShoptetEmulator,
    caplog: pytest.LogCaptureFixture,
    eshop_id: Any,
) -> None:
    shoptet_settings.fail_next(
        1, status=200, body=grant(eshopId=eshop_id), path_prefix=TOKEN_PATH
    )

    response = install(client, shoptet_settings)

    assert response.status_code == 502
    assert b"unexpected answer" in response.content
    assert "'eshopId' is missing or not an integer from 1 to" in caplog.text
    assert not Eshop.objects.exists()


def test_install_accepts_the_largest_eshop_id_the_database_holds(
    client: Client, shoptet_settings: ShoptetEmulator
) -> None:
    shoptet_settings.fail_next(
        1, status=200, body=grant(eshopId=2**63 - 1), path_prefix=TOKEN_PATH
    )

    assert install(client, shoptet_settings).status_code == 200
    assert Eshop.objects.get().eshop_id == 2**63 - 1


def test_install_truncates_a_huge_oauth_error_code_in_page_and_logs(
    client: Client, shoptet_settings: ShoptetEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    # With the description, just under the 64 KiB cap on OAuth answers.
    huge = "E" * 30_000
    shoptet_settings.fail_next(
        1,
        status=400,
        body={"error": huge, "error_description": "D" * 30_000},
        path_prefix=TOKEN_PATH,
    )

    response = install(client, shoptet_settings)

    assert response.status_code == 400
    assert b"E" * 101 not in response.content
    assert len(response.content) < 5_000
    everything = caplog.text + "".join(repr(r.args) for r in caplog.records)
    assert "E" * 101 not in everything
    assert "D" * 501 not in everything


def test_install_reflects_no_control_characters_from_an_oauth_error(
    client: Client, shoptet_settings: ShoptetEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    shoptet_settings.fail_next(
        1,
        status=400,
        body={"error": "bad\ninstall ok: eshop_id=1"},
        path_prefix=TOKEN_PATH,
    )

    response = install(client, shoptet_settings)

    assert response.status_code == 400
    assert b"bad?install ok" in response.content
    assert all("\n" not in record.getMessage() for record in caplog.records)
