"""The operator console's look and navigation: header, favicon, start page, one time format, the
tenant list at a glance, and the read-only tenant page with its action buttons and webhook tables."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.test import Client

from eshops.models import Eshop, OperatorAction
from eshops.templatetags.console import format_utc
from shoptet_api.models import WebhookEvent

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/eshops/eshop/"
WHEN = dt.datetime(2026, 11, 30, 4, 15, 9, tzinfo=dt.UTC)


def change_url(eshop: Eshop) -> str:
    return f"{CHANGELIST}{eshop.pk}/change/"


def action_url(eshop: Eshop, action: str) -> str:
    return f"{CHANGELIST}{eshop.pk}/actions/{action}/"


def event(eshop: Eshop, n: int, **fields: Any) -> WebhookEvent:
    return WebhookEvent.objects.create(
        eshop=eshop,
        event="eshop:projectDomain",
        event_instance=f"{eshop.eshop_id}-{n}",
        event_created=WHEN,
        raw_body="{}",
        verified_by="signature",
        dedup_key=f"{eshop.eshop_id}-{n}",
        **fields,
    )


# --- One time format -------------------------------------------------------------------------------


def test_format_utc_shows_seconds_and_zone_in_utc() -> None:
    prague = dt.timezone(dt.timedelta(hours=1))

    assert format_utc(WHEN) == "2026-11-30 04:15:09 UTC"
    assert format_utc(WHEN.astimezone(prague)) == "2026-11-30 04:15:09 UTC"
    assert format_utc(None) == "-"
    assert format_utc(None, empty="never") == "never"
    with pytest.raises(ValueError, match="naive"):
        format_utc(dt.datetime(2026, 11, 30))  # noqa: DTZ001


def test_admin_pages_show_times_with_seconds_and_zone(
    admin_client: Client, eshop_factory: Callable[..., Eshop]
) -> None:
    eshop = eshop_factory(installed_at=WHEN, last_installed_at=WHEN)
    event(eshop, 1, status=WebhookEvent.Status.PROCESSED)
    OperatorAction.objects.create(eshop_id=eshop.eshop_id, operator="op", action="x")
    OperatorAction.objects.update(created_at=WHEN)

    change = admin_client.get(change_url(eshop)).content.decode()
    inbox = admin_client.get("/admin/shoptet_api/webhookevent/").content.decode()
    audit = admin_client.get("/admin/eshops/operatoraction/").content.decode()

    assert "2026-11-30 04:15:09 UTC" in change  # installed_at, event times
    assert "2026-11-30 04:15:09 UTC" in inbox  # event_created
    assert "2026-11-30 04:15:09 UTC" in audit
    for page in (change, inbox, audit):
        assert "a.m." not in page
        assert "p.m." not in page


# --- Header, navigation, favicon, start page -------------------------------------------------------


def test_every_admin_page_names_the_console_and_links_the_dashboard(
    admin_client: Client, eshop: Eshop
) -> None:
    for url in ("/admin/", CHANGELIST, change_url(eshop), "/admin/dashboard/"):
        page = admin_client.get(url).content.decode()
        assert "Shoptet addon platform — operators" in page, url
        assert '<a href="/admin/dashboard/"' in page, url
        assert '<link rel="icon" href="/static/eshops/favicon.svg"' in page, url
        assert 'href="/static/eshops/console.css"' in page, url


def test_login_page_has_the_console_header_and_icon(client: Client) -> None:
    page = client.get("/admin/login/").content.decode()

    assert "Shoptet addon platform — operators" in page
    assert 'rel="icon"' in page
    assert "/admin/dashboard/" not in page  # no navigation before login


def test_view_site_opens_a_start_page_that_says_what_this_is(
    admin_client: Client, client: Client
) -> None:
    admin_page = admin_client.get("/admin/").content.decode()
    home = client.get("/")

    assert re.search(r'<a href="/">View site</a>', admin_page)
    assert home.status_code == 200
    text = home.content.decode()
    assert "Shoptet addon platform" in text
    assert 'href="/admin/"' in text
    assert 'href="/healthz"' in text
    assert client.post("/").status_code == 405


def test_favicon_ico_leads_to_the_served_svg_icon(client: Client) -> None:
    response = client.get("/favicon.ico")

    assert response.status_code == 302
    assert response["Location"] == "/static/eshops/favicon.svg"
    icon = client.get(response["Location"])
    assert icon.status_code == 200
    assert icon["Content-Type"].startswith("image/svg+xml")
    assert b"<svg" in b"".join(icon.streaming_content)  # type: ignore[attr-defined]


# --- Tenant list ------------------------------------------------------------------------------------


def test_tenant_list_shows_health_columns_and_a_paused_shop_as_paused(
    admin_client: Client, eshop_factory: Callable[..., Eshop]
) -> None:
    eshop_factory(name="Running shop")
    eshop_factory(
        name="Paused shop", processing_paused_at=WHEN, processing_paused_by="op"
    )

    page = admin_client.get(CHANGELIST).content.decode()

    cells = re.findall(r'<td class="field-state">([^<]*)</td>', page)
    assert sorted(cells) == ["Active", "Active · paused"]
    for column in ("token_expires_in", "token_failures", "missing_rights_summary"):
        assert f'class="column-{column}' in page, column
    for moved in (
        "url",
        "trial",
        "installed_at",
        "uninstalled_at",
        "processing_paused_at",
    ):
        assert f"column-{moved}" not in page, moved


def test_tenant_list_sorts_by_status(
    admin_client: Client, eshop_factory: Callable[..., Eshop]
) -> None:
    suspended = eshop_factory()
    suspended.transition(Eshop.Status.SUSPENDED, reason="t", source="webhook")
    active = eshop_factory()

    response = admin_client.get(CHANGELIST, {"o": "3"})  # the status column, ascending

    assert [e.pk for e in response.context["cl"].result_list] == [
        active.pk,
        suspended.pk,
    ]


# --- Tenant page ------------------------------------------------------------------------------------


def test_tenant_page_is_read_only_without_save_buttons(
    admin_client: Client, eshop_factory: Callable[..., Eshop]
) -> None:
    eshop = eshop_factory(name="Before")

    page = admin_client.get(change_url(eshop)).content.decode()
    post = admin_client.post(change_url(eshop), {"name": "After"})

    assert 'name="_save"' not in page
    assert 'name="_continue"' not in page
    assert 'name="_addanother"' not in page
    assert post.status_code == 403
    assert Eshop.objects.get(pk=eshop.pk).name == "Before"


def test_tenant_page_shows_webhooks_and_missing_rights_as_tables(
    admin_client: Client, eshop_factory: Callable[..., Eshop]
) -> None:
    eshop = eshop_factory(
        webhooks={"eshop:projectDomain": 12, "addon:uninstall": 7},
        missing_rights={"GET /api/orders": WHEN.isoformat()},
    )
    other = eshop_factory()
    event(eshop, 1, status=WebhookEvent.Status.DEAD, last_error="HTTP 500 <boom>")
    event(other, 2, status=WebhookEvent.Status.PROCESSED)

    page = admin_client.get(change_url(eshop)).content.decode()

    assert "<td>addon:uninstall</td><td>7</td>" in page
    assert "<td>eshop:projectDomain</td><td>12</td>" in page
    assert "<td>GET /api/orders</td><td>2026-11-30 04:15:09 UTC</td>" in page
    assert "HTTP 500 &lt;boom&gt;" in page
    assert f"{other.eshop_id}-2" not in page
    inbox_url = f"/admin/shoptet_api/webhookevent/?eshop__id__exact={eshop.pk}"
    assert f'href="{inbox_url}"' in page
    inbox = admin_client.get(inbox_url)
    assert [e.eshop_id for e in inbox.context["cl"].result_list] == [eshop.pk]


def test_tenant_page_offers_the_actions_that_apply(
    admin_client: Client, eshop_factory: Callable[..., Eshop]
) -> None:
    running = eshop_factory()
    paused = eshop_factory(processing_paused_at=WHEN)
    gone = eshop_factory()
    gone.transition(Eshop.Status.UNINSTALLED, reason="t", source="webhook")

    def buttons(eshop: Eshop) -> set[str]:
        page = admin_client.get(change_url(eshop)).content.decode()
        return set(re.findall(r'name="tenant_action" value="(\w+)"', page))

    assert buttons(running) == {
        "renew_api_token_now",
        "reregister_webhooks",
        "pause_processing",
    }
    assert buttons(paused) == {
        "renew_api_token_now",
        "reregister_webhooks",
        "resume_processing",
    }
    assert buttons(gone) == {"pause_processing", "purge_uninstalled_tenants"}


def test_pause_and_resume_buttons_use_the_audited_actions(
    admin_client: Client, eshop: Eshop
) -> None:
    paused = admin_client.post(action_url(eshop, "pause_processing"))
    notes = [str(m) for m in get_messages(paused.wsgi_request)]
    page = admin_client.get(change_url(eshop)).content.decode()
    admin_client.post(action_url(eshop, "resume_processing"))

    assert paused.status_code == 302
    assert paused["Location"] == change_url(eshop)
    assert notes == [f"{eshop}: paused"]
    assert "Active · paused" in page
    assert Eshop.objects.get(pk=eshop.pk).processing_paused_at is None
    assert list(
        OperatorAction.objects.filter(eshop_id=eshop.eshop_id)
        .order_by("id")
        .values_list("operator", "action", "detail")
    ) == [("admin", "pause", "paused"), ("admin", "resume", "resumed")]


def test_renew_button_mints_a_token_through_shoptet(
    admin_client: Client, install: Callable[..., Eshop]
) -> None:
    eshop = install()

    response = admin_client.post(action_url(eshop, "renew_api_token_now"))

    notes = [str(m) for m in get_messages(response.wsgi_request)]
    assert notes == [f"{eshop}: new API token issued"]
    assert (
        OperatorAction.objects.get(eshop_id=eshop.eshop_id).action == "renew_api_token"
    )


def test_purge_button_asks_first_then_purges(
    admin_client: Client, eshop_factory: Callable[..., Eshop]
) -> None:
    eshop = eshop_factory()
    eshop.transition(Eshop.Status.UNINSTALLED, reason="t", source="webhook")
    url = action_url(eshop, "purge_uninstalled_tenants")

    question = admin_client.post(url)
    assert question.status_code == 200
    assert b"Yes, purge them" in question.content
    assert Eshop.objects.filter(pk=eshop.pk).exists()

    done = admin_client.post(url, {"post": "yes"})

    assert done.status_code == 302
    assert done["Location"] == CHANGELIST
    assert not Eshop.objects.filter(pk=eshop.pk).exists()
    assert OperatorAction.objects.get(eshop_id=eshop.eshop_id).action == "purge"


def test_tenant_actions_need_post_csrf_and_the_actions_permission(
    admin_client: Client, eshop: Eshop
) -> None:
    assert admin_client.get(action_url(eshop, "pause_processing")).status_code == 405
    assert admin_client.post(action_url(eshop, "delete_selected")).status_code == 403
    assert admin_client.post(action_url(eshop, "no_such_action")).status_code == 403
    assert (
        admin_client.post(f"{CHANGELIST}999999/actions/pause_processing/").status_code
        == 404
    )

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(User.objects.get(username="admin"))
    assert strict.post(action_url(eshop, "pause_processing")).status_code == 403

    viewer = User.objects.create_user("viewer", password="x-long-enough", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_eshop"))
    as_viewer = Client()
    as_viewer.force_login(viewer)
    page = as_viewer.get(change_url(eshop)).content.decode()
    assert 'name="tenant_action"' not in page
    assert as_viewer.post(action_url(eshop, "pause_processing")).status_code == 403

    assert Eshop.objects.get(pk=eshop.pk).processing_paused_at is None
    assert not OperatorAction.objects.exists()
