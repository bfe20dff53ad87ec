"""Post-install provisioning against the emulator: the signature key, webhook registrations (kept
equal to the settings, repairing drift) and the e-shop's details.

What Shoptet saw is read from the emulator's request log, so "idempotent" means "the second run sent
no write request", not "the code took a branch".
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
from django.db import connection, connections
from pytest_django import DjangoCaptureOnCommitCallbacks
from pytest_django.fixtures import Settings

from eshops.models import Eshop
from oauth.services import install_addon
from shoptet_api import provisioning, tasks
from shoptet_api.client import ShoptetClient
from shoptet_api.errors import ShoptetBadRequest, ShoptetInvalidResponse
from shoptet_emulator import ShoptetEmulator
from shoptet_emulator.schemas import webhook_events

pytestmark = pytest.mark.django_db

WEBHOOK_URL = "http://testserver/webhooks/shoptet/"
RENEW_PATH = "/api/webhooks/renew-signature-key"
WRITES = {"POST", "PATCH", "PUT", "DELETE"}


@pytest.fixture
def webhook_settings(settings: Settings) -> Settings:
    settings.SHOPTET_WEBHOOK_URL = WEBHOOK_URL
    settings.SHOPTET_WEBHOOK_EVENTS = ["eshop:projectDomain", "order:create"]
    # These tests count exactly SHOPTET_WEBHOOK_EVENTS; the sync's events have their own test.
    settings.SYNC_ENABLED = False
    return settings


@pytest.fixture
def install(
    shoptet_settings: ShoptetEmulator, webhook_settings: Settings
) -> Callable[..., Eshop]:
    """Install through the emulator's OAuth server (post-install setup not run yet)."""

    def installed(**shop: Any) -> Eshop:
        emulated = shoptet_settings.add_eshop(**shop)
        return install_addon(
            code=shoptet_settings.issue_install_code(emulated.eshop_id)
        )

    return installed


def api_writes(emulator: ShoptetEmulator, since: int = 0) -> list[tuple[str, str, int]]:
    """Write requests to the webhook API after request number `since`."""
    return [
        (method, path, status)
        for method, path, status in emulator.stats.requests[since:]
        if method in WRITES and path.startswith("/api/webhooks")
    ]


def registered(emulator: ShoptetEmulator, eshop_id: int) -> dict[str, str]:
    return {hook.event: hook.url for hook in emulator.webhooks_of(eshop_id)}


def raw_column(eshop_id: int, column: str) -> str | None:
    assert column in {
        "webhook_signature_key",
        "previous_signature_key",
        "oauth_access_token",
    }
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {column} FROM eshops_eshop WHERE eshop_id = %s",  # noqa: S608 (fixed names)
            [eshop_id],
        )
        row = cursor.fetchone()
    assert row is not None
    return None if row[0] is None else str(row[0])


def sync(eshop: Eshop) -> dict[str, int]:
    with ShoptetClient(eshop) as client:
        return provisioning.sync_webhooks(eshop, client=client)


# --- complete_install ------------------------------------------------------------------------------


def test_complete_install_provisions_the_key_the_webhooks_and_the_details(
    shoptet_settings: ShoptetEmulator, install: Callable[..., Eshop]
) -> None:
    eshop = install(url="https://kvetiny.myshoptet.com/", name="Květiny Praha")
    Eshop.objects.filter(pk=eshop.pk).update(url="https://stale.example/", name="")
    eshop.refresh_from_db()

    provisioning.complete_install(eshop)

    stored = Eshop.objects.get(pk=eshop.pk)
    assert stored.webhook_signature_key == shoptet_settings.signature_key_for(
        eshop.eshop_id
    )
    assert stored.signature_key_renewed_at is not None
    assert registered(shoptet_settings, eshop.eshop_id) == {
        "eshop:projectDomain": WEBHOOK_URL,
        "order:create": WEBHOOK_URL,
    }
    assert stored.webhooks == {
        hook.event: hook.id for hook in shoptet_settings.webhooks_of(eshop.eshop_id)
    }
    assert (stored.name, stored.url) == (
        "Květiny Praha",
        "https://kvetiny.myshoptet.com/",
    )
    assert stored.setup_completed_at is not None
    assert stored.setup_completed_at >= stored.last_installed_at


def test_the_signature_key_is_stored_encrypted(
    shoptet_settings: ShoptetEmulator, install: Callable[..., Eshop]
) -> None:
    eshop = install()

    provisioning.complete_install(eshop)

    key = shoptet_settings.signature_key_for(eshop.eshop_id)
    assert key
    raw = raw_column(eshop.eshop_id, "webhook_signature_key")
    assert raw is not None
    assert raw.startswith("gAAAA")  # a Fernet token
    assert key not in raw
    assert Eshop.objects.get(pk=eshop.pk).webhook_signature_key == key


def test_rerunning_complete_install_does_not_rotate_the_key_again(
    shoptet_settings: ShoptetEmulator, install: Callable[..., Eshop]
) -> None:
    eshop = install()
    provisioning.complete_install(eshop)
    key = shoptet_settings.signature_key_for(eshop.eshop_id)
    since = len(shoptet_settings.stats.requests)

    provisioning.complete_install(Eshop.objects.get(pk=eshop.pk))

    assert shoptet_settings.signature_key_for(eshop.eshop_id) == key
    assert api_writes(shoptet_settings, since) == []
    assert Eshop.objects.get(pk=eshop.pk).webhook_signature_key == key


def test_a_reinstall_renews_the_key_once(
    shoptet_settings: ShoptetEmulator,
    install: Callable[..., Eshop],
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    eshop = install()
    provisioning.complete_install(eshop)
    first_key = shoptet_settings.signature_key_for(eshop.eshop_id)

    with django_capture_on_commit_callbacks(execute=True):
        # After commit: old API tokens forgotten, post_install (eager) runs complete_install.
        install_addon(code=shoptet_settings.issue_install_code(eshop.eshop_id))
    provisioning.complete_install(Eshop.objects.get(pk=eshop.pk))

    renewals = [
        request
        for request in shoptet_settings.stats.requests
        if request[1] == RENEW_PATH
    ]
    assert (
        renewals == [("POST", RENEW_PATH, 200)] * 2
    )  # first install, then the reinstall
    stored = Eshop.objects.get(pk=eshop.pk)
    assert stored.webhook_signature_key == shoptet_settings.signature_key_for(
        eshop.eshop_id
    )
    assert stored.webhook_signature_key != first_key
    assert stored.previous_signature_key == first_key


def test_a_renewal_answer_without_a_key_is_not_stored_and_setup_stays_pending(
    shoptet_settings: ShoptetEmulator, install: Callable[..., Eshop]
) -> None:
    eshop = install()
    shoptet_settings.fail_next(
        1, status=200, body={"data": {}, "errors": None}, path_prefix=RENEW_PATH
    )

    with pytest.raises(ShoptetInvalidResponse):
        provisioning.complete_install(eshop)

    stored = Eshop.objects.get(pk=eshop.pk)
    assert stored.webhook_signature_key is None
    assert stored.setup_completed_at is None  # the pending-install sweep will retry it
    assert raw_column(eshop.eshop_id, "webhook_signature_key") is None


@pytest.mark.django_db(transaction=True)
def test_concurrent_setups_keep_the_key_shoptet_signs_with(
    shoptet_settings: ShoptetEmulator,
    install: Callable[..., Eshop],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    eshop = install()  # committed: post_install ran (eager) and set a key
    Eshop.objects.filter(pk=eshop.pk).update(signature_key_renewed_at=None)
    first_run = Eshop.objects.get(pk=eshop.pk)
    second_run = Eshop.objects.get(pk=eshop.pk)  # a second worker loaded the same row
    renewed, second_done = threading.Event(), threading.Event()
    main = threading.current_thread()

    class RacingClient(ShoptetClient):
        def post(self, path: str, **kwargs: Any) -> Any:
            data = super().post(path, **kwargs)
            if path == RENEW_PATH and threading.current_thread() is main:
                renewed.set()  # the first run's key exists at Shoptet, not stored yet
                second_done.wait(
                    timeout=3
                )  # (a run that locks makes us wait this long)
            return data

    def second_worker() -> None:
        try:
            renewed.wait(timeout=10)
            provisioning.complete_install(second_run)
        finally:
            second_done.set()
            connections.close_all()

    monkeypatch.setattr(provisioning, "ShoptetClient", RacingClient)
    other = threading.Thread(target=second_worker)
    other.start()
    try:
        provisioning.complete_install(first_run)
    finally:
        other.join()

    stored = Eshop.objects.get(pk=eshop.pk)
    shoptet_key = shoptet_settings.signature_key_for(eshop.eshop_id)
    assert shoptet_key in (stored.webhook_signature_key, stored.previous_signature_key)
    assert stored.webhook_signature_key == shoptet_key


# --- sync_webhooks ---------------------------------------------------------------------------------


def test_sync_webhooks_twice_makes_no_change_the_second_time(
    shoptet_settings: ShoptetEmulator, install: Callable[..., Eshop]
) -> None:
    eshop = install()
    first = sync(eshop)
    since = len(shoptet_settings.stats.requests)

    second = sync(eshop)

    assert api_writes(shoptet_settings, since) == []
    assert second == first
    assert set(first) == {"eshop:projectDomain", "order:create"}


def test_sync_webhooks_registers_in_one_call_per_fifty_events(
    shoptet_settings: ShoptetEmulator,
    install: Callable[..., Eshop],
    webhook_settings: Settings,
) -> None:
    exclusive = {"order:update", "customer:update"}  # keep out of the 409 pairs
    events = sorted(
        event
        for event in webhook_events()
        if not event.startswith("addon:") and event not in exclusive
    )[:61]
    assert len(events) == 61
    webhook_settings.SHOPTET_WEBHOOK_EVENTS = events
    eshop = install()

    result = sync(eshop)

    assert set(result) == set(events)
    assert api_writes(shoptet_settings) == [("POST", "/api/webhooks", 201)] * 2


def _delete_one(emulator: ShoptetEmulator, eshop_id: int) -> None:
    (hook,) = [h for h in emulator.webhooks_of(eshop_id) if h.event == "order:create"]
    emulator.delete_webhook(eshop_id, hook.id)


def _move_one(emulator: ShoptetEmulator, eshop_id: int) -> None:
    (hook,) = [h for h in emulator.webhooks_of(eshop_id) if h.event == "order:create"]
    emulator.update_webhook(eshop_id, hook.id, {"url": "https://old-host.example/hook"})


def _add_unwanted(emulator: ShoptetEmulator, eshop_id: int) -> None:
    emulator.add_webhook(eshop_id, "invoice:create", WEBHOOK_URL, None)


@pytest.mark.parametrize(
    ("drift", "repair"),
    [
        (_delete_one, [("POST", "/api/webhooks", 201)]),
        (_move_one, [("PATCH", "/api/webhooks/{id}", 200)]),
        (_add_unwanted, [("DELETE", "/api/webhooks/{id}", 200)]),
    ],
    ids=["deleted", "moved", "unwanted"],
)
def test_sync_webhooks_repairs_drift(
    shoptet_settings: ShoptetEmulator,
    install: Callable[..., Eshop],
    drift: Callable[[ShoptetEmulator, int], None],
    repair: list[tuple[str, str, int]],
) -> None:
    eshop = install()
    sync(eshop)
    drift(shoptet_settings, eshop.eshop_id)
    since = len(shoptet_settings.stats.requests)

    result = sync(eshop)

    writes = [
        (
            method,
            "/api/webhooks/{id}" if path[len("/api/webhooks/") :].isdigit() else path,
            status,
        )
        for method, path, status in api_writes(shoptet_settings, since)
    ]
    assert writes == repair
    assert registered(shoptet_settings, eshop.eshop_id) == {
        "eshop:projectDomain": WEBHOOK_URL,
        "order:create": WEBHOOK_URL,
    }
    assert result == {
        hook.event: hook.id for hook in shoptet_settings.webhooks_of(eshop.eshop_id)
    }
    assert Eshop.objects.get(pk=eshop.pk).webhooks == result


def _race_after_first_list(
    monkeypatch: pytest.MonkeyPatch,
    emulator: ShoptetEmulator,
    eshop_id: int,
    events: list[str],
) -> None:
    """A parallel run registers `events` right after our first listing (between list and POST)."""
    real_list = provisioning._list_webhooks
    lists = 0

    def list_then_race(client: ShoptetClient) -> list[dict[str, Any]]:
        nonlocal lists
        hooks = real_list(client)
        lists += 1
        if lists == 1:
            for event in events:
                emulator.add_webhook(eshop_id, event, WEBHOOK_URL, None)
        return hooks

    monkeypatch.setattr(provisioning, "_list_webhooks", list_then_race)


def test_a_422_from_a_parallel_registration_is_tolerated(
    shoptet_settings: ShoptetEmulator,
    install: Callable[..., Eshop],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    eshop = install()
    _race_after_first_list(
        monkeypatch,
        shoptet_settings,
        eshop.eshop_id,
        ["eshop:projectDomain", "order:create"],
    )

    result = sync(eshop)

    assert api_writes(shoptet_settings) == [("POST", "/api/webhooks", 422)]
    assert set(result) == {"eshop:projectDomain", "order:create"}
    assert Eshop.objects.get(pk=eshop.pk).webhooks == result


def test_a_422_for_one_event_does_not_leave_the_rest_of_its_batch_unregistered(
    shoptet_settings: ShoptetEmulator,
    install: Callable[..., Eshop],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    eshop = install()
    # The parallel run registered only one of the two (e.g. an older deploy's event list).
    _race_after_first_list(
        monkeypatch, shoptet_settings, eshop.eshop_id, ["order:create"]
    )

    result = sync(eshop)

    assert set(result) == {"eshop:projectDomain", "order:create"}
    assert set(registered(shoptet_settings, eshop.eshop_id)) == set(result)


def test_a_409_for_mutually_exclusive_events_is_raised(
    shoptet_settings: ShoptetEmulator,
    install: Callable[..., Eshop],
    webhook_settings: Settings,
) -> None:
    webhook_settings.SHOPTET_WEBHOOK_EVENTS = ["order:update", "order:cancel"]
    eshop = install()

    with pytest.raises(ShoptetBadRequest) as raised:
        sync(eshop)

    assert raised.value.status_code == 409
    assert shoptet_settings.webhooks_of(eshop.eshop_id) == []
    assert Eshop.objects.get(pk=eshop.pk).setup_completed_at is None


def test_without_a_webhook_url_nothing_is_registered(
    shoptet_settings: ShoptetEmulator,
    install: Callable[..., Eshop],
    webhook_settings: Settings,
) -> None:
    webhook_settings.SHOPTET_WEBHOOK_URL = ""
    eshop = install()

    assert sync(eshop) == {}
    assert shoptet_settings.webhooks_of(eshop.eshop_id) == []
    assert api_writes(shoptet_settings) == []


def test_reconcile_repairs_every_active_eshop_and_skips_the_others(
    shoptet_settings: ShoptetEmulator, install: Callable[..., Eshop], settings: Settings
) -> None:
    settings.SHOPTET_WEBHOOK_RECONCILE_HOURS = 1  # every tenant in every run
    active, suspended = install(), install()
    for eshop in (active, suspended):
        provisioning.complete_install(eshop)
        _delete_one(shoptet_settings, eshop.eshop_id)
    Eshop.objects.filter(pk=suspended.pk).update(status=Eshop.Status.SUSPENDED)

    assert (
        tasks.reconcile_webhooks() == 1
    )  # one sync task per active e-shop (eager here)

    assert set(registered(shoptet_settings, active.eshop_id)) == {
        "eshop:projectDomain",
        "order:create",
    }
    assert set(registered(shoptet_settings, suspended.eshop_id)) == {
        "eshop:projectDomain"
    }


# --- refresh_eshop_details -------------------------------------------------------------------------


def test_refresh_eshop_details_copies_name_and_url_from_the_api(
    shoptet_settings: ShoptetEmulator, install: Callable[..., Eshop]
) -> None:
    eshop = install()
    shop = shoptet_settings.get_eshop(eshop.eshop_id)
    shop.name, shop.url = "Pekařství Novák", "https://www.pekarstvi-novak.cz/"

    provisioning.refresh_eshop_details(eshop)

    stored = Eshop.objects.get(pk=eshop.pk)
    assert (stored.name, stored.url) == (
        "Pekařství Novák",
        "https://www.pekarstvi-novak.cz/",
    )


def test_refresh_eshop_details_ignores_a_url_that_is_not_http(
    shoptet_settings: ShoptetEmulator, install: Callable[..., Eshop]
) -> None:
    eshop = install(url="https://puvodni.myshoptet.com/")
    shoptet_settings.get_eshop(eshop.eshop_id).url = "javascript:alert(1)"

    provisioning.refresh_eshop_details(eshop)

    assert Eshop.objects.get(pk=eshop.pk).url == "https://puvodni.myshoptet.com/"


def test_reconcile_checks_each_active_eshop_once_per_reconcile_hours(
    eshop_factory: Callable[..., Eshop], settings: Settings
) -> None:
    settings.SHOPTET_WEBHOOK_RECONCILE_HOURS = 4
    eshops = [eshop_factory() for _ in range(10)]
    eshop_factory(status=Eshop.Status.SUSPENDED)
    queued: list[int] = []
    with mock.patch.object(
        tasks.sync_eshop_webhooks,
        "apply_async",
        side_effect=lambda args, **_: queued.append(args[0]),
    ):
        runs = []
        for hour in range(8):  # two rounds of four hourly runs
            with mock.patch(
                "shoptet_api.tasks.time.time", return_value=hour * 3600.0 + 5
            ):
                runs.append(tasks.reconcile_webhooks())

    # Each run takes one slice; over four hours every active e-shop once, the suspended never.
    assert runs == [
        sum(1 for e in eshops if e.eshop_id % 4 == hour % 4) for hour in range(8)
    ]
    assert max(runs) < len(eshops)
    assert sorted(queued) == sorted(e.eshop_id for e in eshops for _ in range(2))
