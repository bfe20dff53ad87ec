"""The operator console: tenant filters, audited actions, the webhook replay audit and the dashboard."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.test import Client
from django.utils import timezone

from addon_project.redis_client import get_redis
from eshops.models import Eshop, EshopTransition, OperatorAction
from oauth.services import install_addon
from shoptet_api import tokens
from shoptet_api.client import ShoptetClient
from shoptet_api.errors import ProcessingPaused
from shoptet_api.models import WebhookEvent
from shoptet_api.tasks import post_install
from shoptet_emulator import ShoptetEmulator

if TYPE_CHECKING:
    from django.test.client import _MonkeyPatchedWSGIResponse as TestResponse

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/eshops/eshop/"
TOKEN_PATH = "/action/ApiOAuthServer/getAccessToken"


@pytest.fixture
def redis_down(settings: Any) -> Iterator[None]:
    """The token store is unreachable (a closed port) for the test."""
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    get_redis.cache_clear()
    yield
    get_redis.cache_clear()


def run_action(
    client: Client, action: str, eshops: list[Eshop], **extra: str
) -> tuple[TestResponse, list[str]]:
    response = client.post(
        CHANGELIST,
        {"action": action, "_selected_action": [e.pk for e in eshops], **extra},
    )
    notes = [str(m) for m in get_messages(response.wsgi_request)]
    client.cookies.pop(
        "messages", None
    )  # shown once: the next request starts without them
    return response, notes


def listed(client: Client, **params: str) -> set[int]:
    response = client.get(CHANGELIST, params)
    assert response.status_code == 200
    return {eshop.eshop_id for eshop in response.context["cl"].result_list}


def audit(eshop: Eshop) -> list[tuple[str, str, str]]:
    return list(
        OperatorAction.objects.filter(eshop_id=eshop.eshop_id)
        .order_by("id")
        .values_list("operator", "action", "detail")
    )


def uninstalled(eshop_factory: Callable[..., Eshop], **fields: Any) -> Eshop:
    eshop = eshop_factory(**fields)
    eshop.transition(Eshop.Status.UNINSTALLED, reason="test", source="webhook")
    return eshop


def webhook_event(eshop: Eshop, **fields: Any) -> WebhookEvent:
    values: dict[str, Any] = {
        "event": "eshop:projectDomain",
        "event_instance": str(eshop.eshop_id),
        "event_created": timezone.now(),
        "raw_body": "{}",
        "verified_by": "signature",
        **fields,
    }
    values["dedup_key"] = WebhookEvent.make_dedup_key(
        eshop_id=eshop.eshop_id,
        event=values["event"],
        event_instance=values["event_instance"],
        event_created=values["event_created"].isoformat(),
    )
    return WebhookEvent.objects.create(eshop=eshop, **values)


# --- The tenant list: filters and search ----------------------------------------------------------


def test_tenant_list_filters_by_status_trial_missing_rights_and_setup(
    admin_client: Client, eshop_factory: Callable[..., Eshop]
) -> None:
    now = timezone.now()
    earlier = now - dt.timedelta(hours=1)
    healthy = eshop_factory(
        trial=False, last_installed_at=earlier, setup_completed_at=now
    )
    on_trial = eshop_factory(trial=True)
    refused = eshop_factory(missing_rights={"GET /api/orders": now.isoformat()})
    reinstalled = eshop_factory(
        setup_completed_at=now - dt.timedelta(days=1), last_installed_at=now
    )
    suspended = eshop_factory(last_installed_at=earlier, setup_completed_at=now)
    suspended.transition(Eshop.Status.SUSPENDED, reason="test", source="webhook")
    everyone = {
        e.eshop_id for e in (healthy, on_trial, refused, reinstalled, suspended)
    }

    assert listed(admin_client) == everyone
    assert listed(admin_client, status__exact="suspended") == {suspended.eshop_id}
    assert listed(admin_client, trial__exact="1") == {on_trial.eshop_id}
    assert listed(admin_client, missing_rights="yes") == {refused.eshop_id}
    assert listed(admin_client, missing_rights="no") == everyone - {refused.eshop_id}
    assert listed(admin_client, setup_completed="yes") == {
        healthy.eshop_id,
        suspended.eshop_id,
    }
    assert listed(admin_client, setup_completed="no") == {
        on_trial.eshop_id,
        refused.eshop_id,
        reinstalled.eshop_id,
    }


def test_tenant_search_matches_exact_id_name_url_and_email(
    admin_client: Client, eshop_factory: Callable[..., Eshop]
) -> None:
    target = eshop_factory(
        eshop_id=424242,
        name="Kavárna U Lípy",
        url="https://kavarna-lipa.cz/",
        contact_email="majitel@kavarna.example",
    )
    other = eshop_factory(eshop_id=4242, name="Other")

    assert listed(admin_client, q="424242") == {target.eshop_id}
    assert listed(admin_client, q="Lípy") == {target.eshop_id}
    assert listed(admin_client, q="kavarna-lipa.cz") == {target.eshop_id}
    assert listed(admin_client, q="majitel@kavarna") == {target.eshop_id}
    assert listed(admin_client, q="4242") == {other.eshop_id}  # ids match exactly
    assert listed(admin_client, q="no such shop") == set()


# --- Renew API token now --------------------------------------------------------------------------


def test_renew_now_mints_a_new_token_even_when_the_current_one_is_fresh(
    admin_client: Client,
    admin_user: User,
    shoptet_settings: ShoptetEmulator,
    install: Callable[..., Eshop],
) -> None:
    eshop = install()
    first = tokens.get_api_access_token(eshop)

    response, notes = run_action(admin_client, "renew_api_token_now", [eshop])

    assert response.status_code == 302
    assert shoptet_settings.stats.api_tokens_issued[eshop.eshop_id] == 2
    tokens.clear_process_cache()
    assert tokens.get_api_access_token(eshop) != first
    assert audit(eshop) == [
        (admin_user.get_username(), "renew_api_token", "new API token issued")
    ]
    assert notes == [f"{eshop}: new API token issued"]


def test_renew_now_reports_shoptet_refusal_without_secrets(
    admin_client: Client,
    shoptet_settings: ShoptetEmulator,
    install: Callable[..., Eshop],
) -> None:
    eshop = install()
    oauth_token = str(eshop.oauth_access_token)
    shoptet_settings.set_addon_state(eshop.eshop_id, "not_installed")

    _, notes = run_action(admin_client, "renew_api_token_now", [eshop])

    [(_, _, detail)] = audit(eshop)
    assert detail.startswith("failed: ")
    assert "addon_not_installed" in detail
    assert oauth_token not in detail
    assert notes == [f"{eshop}: {detail}"]
    assert Eshop.objects.get(pk=eshop.pk).status == Eshop.Status.UNINSTALLED


def test_renew_now_says_so_when_shoptet_mints_nothing(
    admin_client: Client,
    shoptet_settings: ShoptetEmulator,
    install: Callable[..., Eshop],
) -> None:
    eshop = install()
    tokens.get_api_access_token(eshop)
    shoptet_settings.fail_next(
        1, status=429, body={"error": "maximum_tokens_reached"}, path_prefix=TOKEN_PATH
    )

    _, notes = run_action(admin_client, "renew_api_token_now", [eshop])

    assert shoptet_settings.stats.api_tokens_issued[eshop.eshop_id] == 1
    assert audit(eshop)[0][2].startswith("no new token")
    assert "no new token" in notes[0]


def test_renew_now_skips_inactive_tenants_and_refuses_more_than_twenty(
    admin_client: Client, eshop_factory: Callable[..., Eshop]
) -> None:
    many = [eshop_factory() for _ in range(21)]
    gone = uninstalled(eshop_factory)

    _, too_many = run_action(admin_client, "renew_api_token_now", many)
    _, skipped = run_action(admin_client, "renew_api_token_now", [gone])

    assert too_many == [
        "Select at most 20 e-shops: each renewal calls Shoptet while you wait."
    ]
    assert not OperatorAction.objects.exclude(eshop_id=gone.eshop_id).exists()
    assert skipped == [f"{gone}: skipped: e-shop is uninstalled"]
    assert audit(gone)[0][1:] == ("renew_api_token", "skipped: e-shop is uninstalled")


# --- Re-register webhooks -------------------------------------------------------------------------


def test_reregister_webhooks_registers_them_at_shoptet(
    admin_client: Client,
    admin_user: User,
    settings: Any,
    shoptet_settings: ShoptetEmulator,
    install: Callable[..., Eshop],
    eshop_factory: Callable[..., Eshop],
) -> None:
    settings.SHOPTET_WEBHOOK_URL = "https://addon.example/webhooks/shoptet/"
    settings.SYNC_ENABLED = False  # only SHOPTET_WEBHOOK_EVENTS are registered
    eshop = install()
    gone = uninstalled(eshop_factory)
    assert shoptet_settings.webhooks_of(eshop.eshop_id) == []

    _, notes = run_action(admin_client, "reregister_webhooks", [eshop, gone])

    hooks = shoptet_settings.webhooks_of(eshop.eshop_id)
    assert [(h.event, h.url) for h in hooks] == [
        ("eshop:projectDomain", "https://addon.example/webhooks/shoptet/")
    ]
    assert Eshop.objects.get(pk=eshop.pk).webhooks == {
        "eshop:projectDomain": hooks[0].id
    }
    assert audit(eshop) == [
        (admin_user.get_username(), "reregister_webhooks", "queued")
    ]
    assert audit(gone)[0][2] == "skipped: e-shop is uninstalled"
    assert notes == [
        "Webhook registration queued for 1 e-shop(s).",
        f"{gone}: skipped: e-shop is uninstalled",
    ]


# --- Pause and resume processing -------------------------------------------------------------------


def test_pause_and_resume_are_audited_and_leave_the_lifecycle_alone(
    admin_client: Client, admin_user: User, eshop_factory: Callable[..., Eshop]
) -> None:
    eshop = eshop_factory()
    bystander = eshop_factory()
    username = admin_user.get_username()

    run_action(admin_client, "pause_processing", [eshop])
    paused = Eshop.objects.get(pk=eshop.pk)
    _, notes = run_action(admin_client, "resume_processing", [eshop])
    resumed = Eshop.objects.get(pk=eshop.pk)

    assert paused.processing_paused_at is not None
    assert paused.processing_paused_by == username
    assert not paused.can_call_api
    assert resumed.processing_paused_at is None
    assert resumed.can_call_api
    assert paused.status == resumed.status == Eshop.Status.ACTIVE
    assert Eshop.objects.get(pk=bystander.pk).processing_paused_at is None
    assert not EshopTransition.objects.filter(source="operator").exists()
    assert audit(eshop) == [
        (username, "pause", "paused"),
        (username, "resume", "resumed"),
    ]
    assert notes == [f"{eshop}: resumed"]


def test_paused_tenant_makes_no_api_calls_and_its_tasks_skip(
    admin_client: Client, shoptet_settings: ShoptetEmulator
) -> None:
    shop = shoptet_settings.add_eshop()
    eshop = install_addon(code=shoptet_settings.issue_install_code(shop.eshop_id))
    run_action(admin_client, "pause_processing", [eshop])
    eshop.refresh_from_db()

    with pytest.raises(ProcessingPaused, match="paused by operator"):
        ShoptetClient(eshop).get("/api/eshop")
    post_install.apply(args=(eshop.eshop_id,))

    reached = [
        path
        for _, path, _ in shoptet_settings.stats.requests
        if path.startswith("/api/") or "getAccessToken" in path
    ]
    assert reached == []
    assert Eshop.objects.get(pk=eshop.pk).setup_completed_at is None


def test_shoptet_approval_does_not_undo_an_operator_pause(
    admin_client: Client, eshop_factory: Callable[..., Eshop]
) -> None:
    eshop = eshop_factory()
    run_action(admin_client, "pause_processing", [eshop])
    eshop.refresh_from_db()
    eshop.transition(
        Eshop.Status.SUSPENDED, reason="webhook addon:suspend", source="webhook"
    )
    eshop.transition(
        Eshop.Status.ACTIVE, reason="webhook addon:approve", source="webhook"
    )

    assert Eshop.objects.get(pk=eshop.pk).processing_paused_at is not None


def test_pausing_twice_or_resuming_a_running_tenant_changes_nothing_and_says_so(
    admin_client: Client, eshop_factory: Callable[..., Eshop]
) -> None:
    running = eshop_factory()

    _, resume_notes = run_action(admin_client, "resume_processing", [running])
    run_action(admin_client, "pause_processing", [running])
    _, pause_notes = run_action(admin_client, "pause_processing", [running])

    assert resume_notes == [f"{running}: no change: already running"]
    assert pause_notes == [f"{running}: no change: already paused"]


def test_resume_warns_when_shoptet_suspended_the_tenant(
    admin_client: Client, eshop_factory: Callable[..., Eshop]
) -> None:
    eshop = eshop_factory()
    run_action(admin_client, "pause_processing", [eshop])
    eshop.transition(
        Eshop.Status.SUSPENDED, reason="webhook addon:suspend", source="webhook"
    )

    _, notes = run_action(admin_client, "resume_processing", [eshop])

    assert Eshop.objects.get(pk=eshop.pk).status == Eshop.Status.SUSPENDED
    assert notes == [
        f"{eshop}: resumed (the e-shop is suspended: Shoptet decides that)"
    ]


# --- Purge ----------------------------------------------------------------------------------------


def test_purge_asks_first_then_deletes_only_the_selected_uninstalled_tenant(
    admin_client: Client, admin_user: User, eshop_factory: Callable[..., Eshop]
) -> None:
    doomed = uninstalled(eshop_factory, name="Doomed shop")
    webhook_event(doomed)
    other_uninstalled = uninstalled(eshop_factory)
    active = eshop_factory()

    confirmation, _ = run_action(admin_client, "purge_uninstalled_tenants", [doomed])
    assert confirmation.status_code == 200
    assert b"Doomed shop" in confirmation.content
    assert b'name="post" value="yes"' in confirmation.content
    assert Eshop.objects.filter(pk=doomed.pk).exists()

    response, notes = run_action(
        admin_client, "purge_uninstalled_tenants", [doomed], post="yes"
    )

    assert response.status_code == 302
    assert not Eshop.objects.filter(pk=doomed.pk).exists()
    assert not WebhookEvent.objects.filter(eshop_id=doomed.pk).exists()
    assert not EshopTransition.objects.filter(eshop_id=doomed.pk).exists()
    assert Eshop.objects.filter(pk__in=[other_uninstalled.pk, active.pk]).count() == 2
    [(operator, action, _)] = audit(doomed)
    assert (operator, action) == (admin_user.get_username(), "purge")
    assert notes == [
        f"Purged 1 uninstalled e-shop(s) with all their data: {doomed.eshop_id}"
    ]


def test_purge_refuses_a_tenant_that_is_not_uninstalled(
    admin_client: Client, eshop_factory: Callable[..., Eshop]
) -> None:
    active = eshop_factory()
    gone = uninstalled(eshop_factory)

    _, notes = run_action(
        admin_client, "purge_uninstalled_tenants", [active, gone], post="yes"
    )

    assert Eshop.objects.filter(pk__in=[active.pk, gone.pk]).count() == 2
    assert not OperatorAction.objects.exists()
    assert notes == [
        "Only uninstalled e-shops can be purged; nothing was deleted. "
        f"Not uninstalled: {active} (active)"
    ]


def test_purge_needs_the_delete_permission(
    client: Client, eshop_factory: Callable[..., Eshop]
) -> None:
    gone = uninstalled(eshop_factory)
    operator = User.objects.create_user("viewer", password="pw", is_staff=True)
    operator.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_eshop", "change_eshop"])
    )
    client.force_login(operator)

    response = client.post(
        CHANGELIST,
        {
            "action": "purge_uninstalled_tenants",
            "_selected_action": [gone.pk],
            "post": "yes",
        },
    )

    assert response.status_code == 302
    assert Eshop.objects.filter(pk=gone.pk).exists()
    assert b"purge_uninstalled_tenants" not in client.get(CHANGELIST).content


# --- The audit log and the webhook inbox ----------------------------------------------------------


def test_operator_action_log_is_read_only(
    admin_client: Client, eshop_factory: Callable[..., Eshop]
) -> None:
    eshop = eshop_factory()
    run_action(admin_client, "pause_processing", [eshop])
    action = OperatorAction.objects.get()

    listing = admin_client.get("/admin/eshops/operatoraction/", {"action": "pause"})

    assert listing.status_code == 200
    assert b'<td class="field-detail">paused</td>' in listing.content
    assert admin_client.get("/admin/eshops/operatoraction/add/").status_code == 403
    assert (
        admin_client.get(
            f"/admin/eshops/operatoraction/{action.pk}/delete/"
        ).status_code
        == 403
    )
    change = admin_client.post(
        f"/admin/eshops/operatoraction/{action.pk}/change/", {"detail": "rewritten"}
    )
    assert change.status_code == 403
    assert OperatorAction.objects.get().detail == "paused"


def test_replaying_webhooks_records_an_operator_action_per_eshop(
    admin_client: Client, admin_user: User, eshop_factory: Callable[..., Eshop]
) -> None:
    first, second = eshop_factory(), eshop_factory()
    now = timezone.now()
    dead = [
        webhook_event(first, status=WebhookEvent.Status.DEAD, event_created=now),
        webhook_event(
            first,
            status=WebhookEvent.Status.DEAD,
            event_created=now - dt.timedelta(seconds=1),
        ),
        webhook_event(second, status=WebhookEvent.Status.FAILED, event="addon:suspend"),
    ]
    done = webhook_event(second, status=WebhookEvent.Status.PROCESSED)

    response = admin_client.post(
        "/admin/shoptet_api/webhookevent/",
        {
            "action": "replay_selected",
            "_selected_action": [e.pk for e in [*dead, done]],
        },
    )

    assert response.status_code == 302
    assert set(
        WebhookEvent.objects.filter(pk__in=[e.pk for e in dead]).values_list(
            "status", flat=True
        )
    ) == {WebhookEvent.Status.RECEIVED}
    username = admin_user.get_username()
    assert audit(first) == [
        (
            username,
            "replay_webhooks",
            "2 event(s) queued again: eshop:projectDomain x2",
        )
    ]
    assert audit(second) == [
        (username, "replay_webhooks", "1 event(s) queued again: addon:suspend x1")
    ]


# --- Dashboard ------------------------------------------------------------------------------------


def test_dashboard_is_for_staff_who_may_view_tenants(client: Client) -> None:
    User.objects.create_user("merchant", password="pw")
    anonymous = client.get("/admin/dashboard/")
    client.force_login(User.objects.get(username="merchant"))
    not_staff = client.get("/admin/dashboard/")

    User.objects.create_user("helpdesk", password="pw", is_staff=True)
    client.force_login(User.objects.get(username="helpdesk"))
    staff_without_tenant_access = client.get("/admin/dashboard/")

    for response in (anonymous, not_staff):
        assert response.status_code == 302
        assert response["Location"] == "/admin/login/?next=/admin/dashboard/"
    assert staff_without_tenant_access.status_code == 403


def test_admin_index_links_the_dashboard(admin_client: Client) -> None:
    assert b'href="/admin/dashboard/"' in admin_client.get("/admin/").content


def test_dashboard_counts_tenants_events_failures_rights_and_pending_setups(
    admin_client: Client,
    shoptet_settings: ShoptetEmulator,
    install: Callable[..., Eshop],
    eshop_factory: Callable[..., Eshop],
) -> None:
    now = timezone.now()
    failing = install()  # active, set up long ago, but its token renewals fail
    Eshop.objects.filter(pk=failing.pk).update(
        last_installed_at=now - dt.timedelta(hours=1),
        setup_completed_at=now - dt.timedelta(minutes=30),
    )
    shoptet_settings.fail_next(5, status=500, path_prefix=TOKEN_PATH)
    run_action(admin_client, "renew_api_token_now", [failing])
    pending = eshop_factory(last_installed_at=now - dt.timedelta(minutes=10))
    eshop_factory(last_installed_at=now)  # installing right now: not pending yet
    refused = eshop_factory(
        missing_rights={"GET /api/orders": now.isoformat()}, setup_completed_at=now
    )
    uninstalled(eshop_factory)
    suspended = eshop_factory(setup_completed_at=now)
    suspended.transition(
        Eshop.Status.SUSPENDED, reason="webhook addon:suspend", source="webhook"
    )
    webhook_event(refused, status=WebhookEvent.Status.PROCESSED)
    webhook_event(refused, status=WebhookEvent.Status.FAILED, last_error="HTTP 500")
    old_dead = webhook_event(
        refused, status=WebhookEvent.Status.DEAD, last_error="gave up after 5"
    )
    WebhookEvent.objects.filter(pk=old_dead.pk).update(
        received_at=now - dt.timedelta(days=3)
    )

    response = admin_client.get("/admin/dashboard/")

    assert response.status_code == 200
    context = response.context
    assert {v: n for v, _, n in context["tenants_by_status"]} == {
        "active": 4,
        "suspended": 1,
        "uninstalled": 1,
        "terminated": 0,
    }
    events = {v: n for v, _, n in context["events_last_day"]}
    assert (events["processed"], events["failed"], events["dead"]) == (1, 1, 0)
    assert context["dead_events"] == 1
    [trouble] = context["token_trouble"]
    assert (trouble.eshop_id, trouble.failures) == (failing.eshop_id, 1)
    assert "ShoptetServerError" in trouble.last_error
    assert context["missing_rights_count"] == 1
    assert context["missing_rights"] == [
        (Eshop.objects.get(pk=refused.pk), "GET /api/orders")
    ]
    assert context["pending_setup_count"] == 1
    assert [e.pk for e in context["pending_setup"]] == [pending.pk]
    kinds = [(item.kind, item.eshop_id) for item in context["recent_failures"]]
    assert ("webhook dead", refused.eshop_id) in kinds
    assert ("webhook failed", refused.eshop_id) in kinds
    assert ("status suspended", suspended.eshop_id) in kinds
    assert ("operator renew_api_token", failing.eshop_id) in kinds
    content = response.content.decode()
    assert "gave up after 5" in content
    assert "Tenants with missing rights: 1" in content


# --- Redis down -----------------------------------------------------------------------------------


def test_console_still_works_when_redis_is_unreachable(
    redis_down: None, admin_client: Client, eshop_factory: Callable[..., Eshop]
) -> None:
    eshops = [eshop_factory(name=f"Shop {n}") for n in range(3)]

    changelist = admin_client.get(CHANGELIST)
    change = admin_client.get(f"{CHANGELIST}{eshops[0].pk}/change/")
    dashboard = admin_client.get("/admin/dashboard/")
    _, notes = run_action(admin_client, "renew_api_token_now", [eshops[0]])

    assert changelist.status_code == 200
    assert changelist.content.count(b'<td class="field-token_expires_in">unknown') == 3
    assert change.status_code == 200
    assert b"unknown (token store unreachable)" in change.content
    assert dashboard.status_code == 200
    assert dashboard.context["token_trouble"] is None
    assert b"the token store (Redis) is unreachable" in dashboard.content
    assert notes == [f"{eshops[0]}: failed: token store unreachable (ConnectionError)"]


def test_staff_who_may_only_view_events_cannot_replay_them(
    client: Client, eshop_factory: Callable[..., Eshop]
) -> None:
    viewer = User.objects.create_user(
        "viewer", password="x-long-enough-password", is_staff=True
    )
    viewer.user_permissions.add(Permission.objects.get(codename="view_webhookevent"))
    dead = webhook_event(eshop_factory(), status=WebhookEvent.Status.DEAD)
    client.force_login(viewer)

    client.post(
        "/admin/shoptet_api/webhookevent/",
        {"action": "replay_selected", "_selected_action": [dead.pk]},
    )

    assert WebhookEvent.objects.get(pk=dead.pk).status == WebhookEvent.Status.DEAD
    assert not OperatorAction.objects.exists()
