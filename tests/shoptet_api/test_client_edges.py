"""ShoptetClient edges: a PATCH is never repeated, and the in-flight lease is returned after every
request, whatever its outcome (asserted on the Redis keys, not through a later wait)."""

from __future__ import annotations

import threading
import time

import pytest

from addon_project import redis_keys
from addon_project.redis_client import get_redis
from eshops.models import Eshop
from oauth import services
from shoptet_api import limiter
from shoptet_api.client import ShoptetClient
from shoptet_api.errors import (
    ShoptetConnectionError,
    ShoptetInvalidResponse,
    ShoptetServerError,
)
from shoptet_emulator import ShoptetEmulator

pytestmark = pytest.mark.django_db


@pytest.fixture
def installed_eshop(shoptet_settings: ShoptetEmulator) -> Eshop:
    shop = shoptet_settings.add_eshop()
    return services.install_addon(
        code=shoptet_settings.issue_install_code(shop.eshop_id)
    )


@pytest.fixture
def webhook_path(shoptet_settings: ShoptetEmulator, installed_eshop: Eshop) -> str:
    """An existing webhook's URL: a repeated PATCH would succeed, so only the policy stops it."""
    hook = shoptet_settings.add_webhook(
        installed_eshop.eshop_id, "order:create", "https://addon.example/hook", None
    )
    assert hook is not None
    return f"/api/webhooks/{hook.id}"


def answered(emulator: ShoptetEmulator, path: str, *, expect: int) -> list[int]:
    """Statuses the emulator sent on `path` (0: dropped), waiting briefly for `expect` of them
    (the emulator records an answer just after sending it); extra answers are returned too."""
    pause = threading.Event()
    deadline = time.monotonic() + 2.0
    while True:
        statuses = [
            status for _, seen, status in list(emulator.stats.requests) if seen == path
        ]
        if len(statuses) >= expect or time.monotonic() > deadline:
            return statuses
        pause.wait(0.01)


PATCH_BODY = {"data": {"url": "https://addon.example/other"}}


# --- PATCH is not idempotent: never repeated after a 5xx or a lost answer ------------------------


def test_patch_answered_500_is_not_retried(
    shoptet_settings: ShoptetEmulator, installed_eshop: Eshop, webhook_path: str
) -> None:
    shoptet_settings.fail_next(1, status=500, path_prefix=webhook_path)

    with (
        ShoptetClient(installed_eshop) as client,
        pytest.raises(ShoptetServerError),
    ):
        client.patch(webhook_path, json=PATCH_BODY, max_attempts=4)

    # Only one failure was armed: a second PATCH would have been answered 200.
    assert answered(shoptet_settings, webhook_path, expect=1) == [500]


def test_patch_whose_connection_dropped_is_not_retried(
    shoptet_settings: ShoptetEmulator, installed_eshop: Eshop, webhook_path: str
) -> None:
    shoptet_settings.drop_next(1, path_prefix=webhook_path)

    with (
        ShoptetClient(installed_eshop) as client,
        pytest.raises(ShoptetConnectionError) as caught,
    ):
        client.patch(webhook_path, json=PATCH_BODY, max_attempts=4)

    assert caught.value.request_sent is True
    assert answered(shoptet_settings, webhook_path, expect=1) == [0]


def test_a_patch_is_sent_and_its_answer_returned(
    shoptet_settings: ShoptetEmulator, installed_eshop: Eshop, webhook_path: str
) -> None:
    with ShoptetClient(installed_eshop) as client:
        client.patch(webhook_path, json=PATCH_BODY)

    [hook] = shoptet_settings.webhooks_of(installed_eshop.eshop_id)
    assert hook.url == "https://addon.example/other"
    assert answered(shoptet_settings, webhook_path, expect=1) == [200]


# --- The in-flight lease is returned after every request -----------------------------------------


def leases_held(eshop: Eshop) -> int:
    """Leases in Redis once this process has sent the ones it gave back (see limiter)."""
    limiter.flush_returned_leases()
    return int(get_redis().zcard(redis_keys.leases_key(eshop.eshop_id)))


def test_the_lease_is_returned_after_a_successful_request(
    shoptet_settings: ShoptetEmulator, installed_eshop: Eshop
) -> None:
    with ShoptetClient(installed_eshop) as client:
        client.get("/api/eshop")

    assert leases_held(installed_eshop) == 0
    assert answered(shoptet_settings, "/api/eshop", expect=1) == [200]


def test_the_lease_is_returned_after_an_error_answer(
    shoptet_settings: ShoptetEmulator, installed_eshop: Eshop
) -> None:
    shoptet_settings.fail_next(1, status=500, path_prefix="/api/eshop")

    with (
        ShoptetClient(installed_eshop) as client,
        pytest.raises(ShoptetServerError),
    ):
        client.get("/api/eshop", max_attempts=1)

    assert leases_held(installed_eshop) == 0


def test_the_lease_is_returned_after_a_dropped_connection(
    shoptet_settings: ShoptetEmulator, installed_eshop: Eshop
) -> None:
    shoptet_settings.drop_next(1, path_prefix="/api/eshop")

    with (
        ShoptetClient(installed_eshop) as client,
        pytest.raises(ShoptetConnectionError),
    ):
        client.get("/api/eshop", max_attempts=1)

    assert leases_held(installed_eshop) == 0


def test_the_lease_is_returned_after_an_answer_that_cannot_be_read(
    shoptet_settings: ShoptetEmulator, installed_eshop: Eshop
) -> None:
    shoptet_settings.fail_next(1, status=200, body="not json", path_prefix="/api/eshop")

    with (
        ShoptetClient(installed_eshop) as client,
        pytest.raises(ShoptetInvalidResponse),
    ):
        client.get("/api/eshop")

    assert leases_held(installed_eshop) == 0
