"""The tenant lifecycle: addon:* webhooks move an e-shop between active, suspended, terminated and
uninstalled; every move is audited; a suspended tenant makes no API calls; an uninstall forgets every
secret; a reinstall revives the same row; old tenants are purged after the retention period.

Lifecycle events go through the real receiver and inbox (signed by the emulator, processed after
commit), because ordering and staleness are decided there from each event's own `eventCreated`.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone
from pytest_django import DjangoCaptureOnCommitCallbacks
from pytest_django.fixtures import Settings

from addon_project.redis_client import get_redis
from eshops.models import ALLOWED_TRANSITIONS, Eshop, EshopTransition
from oauth.services import install_addon
from shoptet_api import provisioning, tasks, tokens
from shoptet_api.client import ShoptetClient
from shoptet_api.errors import AddonNotInstalled, AddonSuspended
from shoptet_api.models import WebhookEvent
from shoptet_emulator import ShoptetEmulator

pytestmark = pytest.mark.django_db

RECEIVER = "/webhooks/shoptet/"
WEBHOOK_URL = "http://testserver/webhooks/shoptet/"
SHOPTET_NETWORK_ADDRESS = "185.184.254.17"

ACTIVE, SUSPENDED = Eshop.Status.ACTIVE, Eshop.Status.SUSPENDED
TERMINATED, UNINSTALLED = Eshop.Status.TERMINATED, Eshop.Status.UNINSTALLED


# --- Helpers -------------------------------------------------------------------------------------


@pytest.fixture
def installed(shoptet_settings: ShoptetEmulator, settings: Settings) -> Eshop:
    """An installed, provisioned e-shop whose install happened a day ago."""
    settings.SHOPTET_WEBHOOK_URL = WEBHOOK_URL
    shop = shoptet_settings.add_eshop(name="Vinotéka Na Růžku")
    eshop = install_addon(code=shoptet_settings.issue_install_code(shop.eshop_id))
    provisioning.complete_install(eshop)
    day_ago = timezone.now() - dt.timedelta(days=1)
    Eshop.objects.filter(pk=eshop.pk).update(
        installed_at=day_ago, last_installed_at=day_ago
    )
    eshop.refresh_from_db()
    return eshop


def ago(minutes: int) -> dt.datetime:
    """An eventCreated `minutes` ago, whole seconds like Shoptet's."""
    return timezone.now().replace(microsecond=0) - dt.timedelta(minutes=minutes)


@pytest.fixture
def deliver(
    client: Client,
    shoptet_settings: ShoptetEmulator,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> Callable[..., WebhookEvent]:
    """POST one event as the emulator would send it, run what happens after commit, return the row."""

    def delivered(
        eshop: Eshop, event: str, at: dt.datetime, *, unsigned: bool = False
    ) -> WebhookEvent:
        body, headers = shoptet_settings.webhook_request(
            eshop.eshop_id, event, str(eshop.eshop_id), event_created=at
        )
        extra: dict[str, Any] = {"REMOTE_ADDR": SHOPTET_NETWORK_ADDRESS}
        if not unsigned:
            extra["HTTP_SHOPTET_WEBHOOK_SIGNATURE"] = headers[
                "Shoptet-Webhook-Signature"
            ]
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(
                RECEIVER, data=body, content_type="application/json", **extra
            )
        assert response.status_code == 200, response.content
        return WebhookEvent.objects.get(event=event, event_created=at)

    return delivered


def set_status(eshop: Eshop, status: str) -> None:
    Eshop.objects.filter(pk=eshop.pk).update(status=status)
    eshop.refresh_from_db()


def api_requests(emulator: ShoptetEmulator) -> int:
    return sum(1 for _, path, _ in emulator.stats.requests if path.startswith("/api/"))


# --- Each lifecycle event ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "event", "end"),
    [
        (ACTIVE, "addon:suspend", SUSPENDED),
        (SUSPENDED, "addon:approve", ACTIVE),
        (ACTIVE, "addon:terminate", TERMINATED),
        (SUSPENDED, "addon:terminate", TERMINATED),
        (ACTIVE, "addon:uninstall", UNINSTALLED),
        (SUSPENDED, "addon:uninstall", UNINSTALLED),
        (TERMINATED, "addon:uninstall", UNINSTALLED),
    ],
)
def test_each_lifecycle_webhook_moves_the_tenant_and_is_audited(
    installed: Eshop,
    deliver: Callable[..., WebhookEvent],
    start: str,
    event: str,
    end: str,
) -> None:
    set_status(installed, start)
    at = ago(5)

    row = deliver(installed, event, at)

    stored = Eshop.objects.get(pk=installed.pk)
    assert stored.status == end
    assert stored.status_reason == f"webhook {event}"
    assert stored.status_changed_at is not None
    assert stored.lifecycle_event_at == at
    audit = stored.transitions.exclude(source="install")
    assert [
        (t.from_status, t.to_status, t.source, t.reason, t.occurred_at) for t in audit
    ] == [(start, end, "webhook", f"webhook {event}", at)]
    assert (row.status, row.result) == (
        WebhookEvent.Status.PROCESSED,
        f"status -> {end}",
    )


def test_an_operator_transition_records_who_did_it(eshop: Eshop) -> None:
    assert eshop.transition(
        SUSPENDED, reason="unpaid invoice", source="operator", actor="ops@example.com"
    )

    (audit,) = eshop.transitions.all()
    assert (audit.from_status, audit.to_status, audit.source, audit.actor) == (
        ACTIVE,
        SUSPENDED,
        "operator",
        "ops@example.com",
    )
    assert audit.occurred_at is not None
    assert eshop.status == SUSPENDED  # the caller's object follows the database


EXPECTED_ALLOWED = {
    (ACTIVE, SUSPENDED),
    (ACTIVE, TERMINATED),
    (ACTIVE, UNINSTALLED),
    (SUSPENDED, ACTIVE),
    (SUSPENDED, TERMINATED),
    (SUSPENDED, UNINSTALLED),
    (TERMINATED, UNINSTALLED),
}


@pytest.mark.parametrize(
    ("start", "end"),
    list(itertools.permutations(Eshop.Status.values, 2)),
)
def test_only_the_lifecycle_moves_are_allowed(
    eshop_factory: Callable[..., Eshop], start: str, end: str
) -> None:
    eshop = eshop_factory(status=start)
    allowed = (start, end) in EXPECTED_ALLOWED

    moved = eshop.transition(end, reason="test", source="operator")

    assert moved is allowed
    assert Eshop.objects.get(pk=eshop.pk).status == (end if allowed else start)
    assert eshop.transitions.count() == (1 if allowed else 0)
    assert (end in ALLOWED_TRANSITIONS[start]) is allowed


def test_a_transition_about_a_replaced_token_changes_nothing(
    eshop_factory: Callable[..., Eshop],
) -> None:
    eshop = eshop_factory(
        oauth_token_received_at=timezone.now() - dt.timedelta(hours=1)
    )
    # A reinstall stored a newer OAuth token after this object was loaded.
    Eshop.objects.filter(pk=eshop.pk).update(oauth_token_received_at=timezone.now())

    moved = eshop.transition(
        UNINSTALLED, reason="invalid token", source="shoptet", same_token=True
    )

    assert moved is False
    stored = Eshop.objects.get(pk=eshop.pk)
    assert stored.status == ACTIVE
    assert stored.oauth_access_token is not None


# --- Suspended: no API calls, tasks skip -------------------------------------------------------------


def test_a_suspended_tenant_makes_no_api_calls_and_its_tasks_skip(
    installed: Eshop,
    shoptet_settings: ShoptetEmulator,
    deliver: Callable[..., WebhookEvent],
) -> None:
    deliver(installed, "addon:suspend", ago(10))
    eshop = Eshop.objects.get(pk=installed.pk)
    assert eshop.status == SUSPENDED
    shoptet_settings.get_eshop(eshop.eshop_id).url = "https://moved.example.cz/"
    before = api_requests(shoptet_settings)

    with pytest.raises(AddonSuspended), ShoptetClient(eshop) as client:
        client.get("/api/eshop")
    tasks.post_install.apply(args=(eshop.eshop_id,))
    tasks.sync_eshop_webhooks.apply(args=(eshop.eshop_id,))
    domain = deliver(eshop, "eshop:projectDomain", ago(5))

    assert api_requests(shoptet_settings) == before
    assert domain.result == "skipped: e-shop is suspended"
    assert Eshop.objects.get(pk=eshop.pk).url != "https://moved.example.cz/"


def test_approve_resumes_api_calls(
    installed: Eshop,
    shoptet_settings: ShoptetEmulator,
    deliver: Callable[..., WebhookEvent],
) -> None:
    deliver(installed, "addon:suspend", ago(10))
    deliver(installed, "addon:approve", ago(5))
    eshop = Eshop.objects.get(pk=installed.pk)
    before = api_requests(shoptet_settings)

    with ShoptetClient(eshop) as client:
        data = client.get("/api/eshop")

    assert data["contactInformation"]["eshopId"] == eshop.eshop_id
    assert api_requests(shoptet_settings) == before + 1
    assert [t.to_status for t in eshop.transitions.exclude(source="install")] == [
        ACTIVE,
        SUSPENDED,
    ]


# --- Uninstall and reinstall (prior art pain points 1 and 2) -------------------------------------


def raw_secrets(eshop_id: int) -> tuple[Any, ...]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT oauth_access_token, webhook_signature_key, previous_signature_key "
            "FROM eshops_eshop WHERE eshop_id = %s",
            [eshop_id],
        )
        row = cursor.fetchone()
    assert row is not None
    return tuple(row)


def test_uninstall_wipes_the_secrets_from_the_database_and_redis(
    installed: Eshop, deliver: Callable[..., WebhookEvent]
) -> None:
    with ShoptetClient(installed) as client:
        provisioning.renew_signature_key(installed, client=client)  # a previous key too
    assert all(raw_secrets(installed.eshop_id))
    redis = get_redis()
    assert redis.exists(tokens.token_key(installed.eshop_id))  # the API was used

    deliver(installed, "addon:uninstall", ago(5))

    stored = Eshop.objects.get(pk=installed.pk)
    assert stored.status == UNINSTALLED
    assert stored.uninstalled_at is not None
    assert raw_secrets(installed.eshop_id) == (None, None, None)
    assert stored.webhooks == {}
    assert not redis.exists(tokens.token_key(installed.eshop_id))
    assert not redis.exists(tokens.issued_key(installed.eshop_id))
    assert stored.name == "Vinotéka Na Růžku"  # kept until the retention purge
    with pytest.raises(AddonNotInstalled), ShoptetClient(stored) as client:
        client.get("/api/eshop")


def test_an_uninstall_is_processed_without_calling_shoptet(
    installed: Eshop,
    shoptet_settings: ShoptetEmulator,
    deliver: Callable[..., WebhookEvent],
) -> None:
    # By the time the webhook arrives, Shoptet has already revoked the tokens.
    shoptet_settings.set_addon_state(installed.eshop_id, "not_installed")
    before = len(shoptet_settings.stats.requests)

    row = deliver(installed, "addon:uninstall", ago(1))

    assert row.status == WebhookEvent.Status.PROCESSED
    assert Eshop.objects.get(pk=installed.pk).status == UNINSTALLED
    assert len(shoptet_settings.stats.requests) == before


def test_a_reinstall_after_uninstall_revives_the_same_tenant(
    client: Client,
    installed: Eshop,
    shoptet_settings: ShoptetEmulator,
    deliver: Callable[..., WebhookEvent],
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
    settings: Settings,
) -> None:
    settings.SYNC_ENABLED = False  # only SHOPTET_WEBHOOK_EVENTS are registered
    old_token = installed.oauth_access_token
    old_key = installed.webhook_signature_key
    deliver(installed, "addon:uninstall", ago(30))

    with django_capture_on_commit_callbacks(execute=True):
        # After commit, post_install (eager) provisions the new installation.
        reinstalled = install_addon(
            code=shoptet_settings.issue_install_code(installed.eshop_id)
        )

    assert reinstalled.pk == installed.pk
    assert Eshop.objects.count() == 1
    stored = Eshop.objects.get(pk=installed.pk)
    assert stored.status == ACTIVE
    assert stored.uninstalled_at is None
    assert stored.install_count == 2
    assert stored.oauth_access_token == shoptet_settings.oauth_token_for(
        installed.eshop_id
    )
    assert stored.oauth_access_token != old_token
    assert stored.name == "Vinotéka Na Růžku"
    assert stored.installed_at == installed.installed_at
    assert stored.last_installed_at > installed.last_installed_at
    latest = stored.transitions.first()
    assert latest is not None
    assert (latest.from_status, latest.to_status, latest.reason, latest.source) == (
        UNINSTALLED,
        ACTIVE,
        "reinstalled",
        "install",
    )
    # Provisioned again: a new key, the webhooks, and the API works.
    assert stored.webhook_signature_key == shoptet_settings.signature_key_for(
        installed.eshop_id
    )
    assert stored.webhook_signature_key != old_key
    assert set(stored.webhooks) == {"eshop:projectDomain"}
    assert stored.setup_completed_at is not None
    assert stored.setup_completed_at >= stored.last_installed_at
    row = deliver(
        stored,
        "addon:suspend",
        timezone.now().replace(microsecond=0) + dt.timedelta(seconds=2),
    )
    assert row.verified_by == "key"
    assert Eshop.objects.get(pk=installed.pk).status == SUSPENDED


@pytest.mark.parametrize("start", [UNINSTALLED, TERMINATED])
def test_a_lifecycle_webhook_cannot_revive_a_removed_tenant(
    installed: Eshop,
    deliver: Callable[..., WebhookEvent],
    start: str,
) -> None:
    deliver(
        installed,
        f"addon:{'uninstall' if start == UNINSTALLED else 'terminate'}",
        ago(20),
    )
    transitions = EshopTransition.objects.count()

    # The uninstalled shop has no key any more: the approve comes unsigned from Shoptet's network.
    row = deliver(installed, "addon:approve", ago(10), unsigned=start == UNINSTALLED)

    stored = Eshop.objects.get(pk=installed.pk)
    assert stored.status == start
    assert EshopTransition.objects.count() == transitions
    assert row.status == WebhookEvent.Status.PROCESSED
    assert row.result == f"no change (status {start})"
    if start == UNINSTALLED:
        assert raw_secrets(installed.eshop_id) == (None, None, None)


# --- Ordering ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("order", "moves"),
    [
        (["addon:suspend", "addon:approve"], [SUSPENDED, ACTIVE]),
        (["addon:approve", "addon:suspend"], []),
    ],
    ids=["in-order", "out-of-order"],
)
def test_out_of_order_lifecycle_events_do_not_undo_newer_state(
    installed: Eshop,
    deliver: Callable[..., WebhookEvent],
    order: list[str],
    moves: list[str],
) -> None:
    created = {
        "addon:suspend": ago(10),
        "addon:approve": ago(5),
    }  # suspend first, then approve

    for event in order:
        deliver(installed, event, created[event])

    stored = Eshop.objects.get(pk=installed.pk)
    assert stored.status == ACTIVE
    assert stored.lifecycle_event_at == created["addon:approve"]
    assert [
        t.to_status for t in stored.transitions.exclude(source="install").order_by("id")
    ] == moves


def test_a_late_uninstall_from_before_a_reinstall_is_ignored(
    installed: Eshop,
    shoptet_settings: ShoptetEmulator,
    deliver: Callable[..., WebhookEvent],
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    deliver(installed, "addon:uninstall", ago(60))
    with django_capture_on_commit_callbacks(execute=True):
        install_addon(code=shoptet_settings.issue_install_code(installed.eshop_id))
    reinstalled = Eshop.objects.get(pk=installed.pk)
    assert reinstalled.status == ACTIVE
    assert reinstalled.webhook_signature_key is not None

    # Shoptet retries a delivery that failed half an hour ago, before the reinstall.
    row = deliver(reinstalled, "addon:uninstall", ago(30))

    stored = Eshop.objects.get(pk=installed.pk)
    assert row.status == WebhookEvent.Status.PROCESSED
    assert row.result == "no change (status active)"
    assert stored.status == ACTIVE
    assert stored.oauth_access_token == shoptet_settings.oauth_token_for(
        installed.eshop_id
    )
    assert stored.webhook_signature_key == reinstalled.webhook_signature_key
    assert stored.transitions.filter(to_status=UNINSTALLED).count() == 1


# --- Retention purge ---------------------------------------------------------------------------------


def _with_history(eshop: Eshop) -> Eshop:
    """Give a tenant inbox rows and audit rows, as a real one would have."""
    for n in range(3):
        WebhookEvent.objects.create(
            eshop=eshop,
            event="order:create",
            event_instance=str(n),
            event_created=timezone.now(),
            dedup_key=f"{eshop.eshop_id}-{n}".ljust(64, "0"),
            raw_body="{}",
            verified_by="key",
        )
    eshop.record_install(created=True, at=eshop.installed_at)
    return eshop


def test_purge_deletes_tenants_uninstalled_longer_than_the_retention(
    eshop_factory: Callable[..., Eshop], settings: Settings
) -> None:
    settings.SHOPTET_UNINSTALLED_RETENTION_DAYS = 30
    now = timezone.now()
    expired = _with_history(
        eshop_factory(status=UNINSTALLED, uninstalled_at=now - dt.timedelta(days=31))
    )
    yesterday = _with_history(
        eshop_factory(status=UNINSTALLED, uninstalled_at=now - dt.timedelta(days=1))
    )
    almost = _with_history(
        eshop_factory(status=UNINSTALLED, uninstalled_at=now - dt.timedelta(days=29))
    )
    # Uninstalled long ago, then reinstalled: active again, never purged.
    active = _with_history(eshop_factory(uninstalled_at=now - dt.timedelta(days=90)))

    assert tasks.purge_uninstalled() == 1

    assert set(Eshop.objects.values_list("pk", flat=True)) == {
        yesterday.pk,
        almost.pk,
        active.pk,
    }
    assert not WebhookEvent.objects.filter(eshop_id=expired.pk).exists()
    assert not EshopTransition.objects.filter(eshop_id=expired.pk).exists()
    for kept in (yesterday, almost, active):
        assert WebhookEvent.objects.filter(eshop=kept).count() == 3
        assert EshopTransition.objects.filter(eshop=kept).count() == 1
