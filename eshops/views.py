"""Per-shop settings pages, shown in an iframe inside the Shoptet admin.

`GET /settings/?eshopId=#SHOP_ID#&lang=#LANGUAGE#&code=#OAUTH_CODE#` logs the admin in through the
e-shop's own OAuth server and redirects to `/settings/page/?s=<signed session>`, so the one-time
code leaves the address bar at once. The page never sets a cookie.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any
from urllib.parse import urlsplit

from django.apps import apps
from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.http import urlencode
from django.utils.translation import gettext_lazy as _
from django.views.decorators.cache import never_cache
from django.views.decorators.clickjacking import xframe_options_exempt
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods
from django_stubs_ext import StrOrPromise

from addon_project import logging_context, redis_keys, throttle
from addon_project.client_ip import client_ip
from eshops.forms import EshopSettingsForm
from eshops.models import Eshop, EshopSettings, SettingsChange
from eshops.settings_session import (
    LANGUAGES,
    SettingsRequest,
    SettingsSession,
    settings_session_required,
)
from shoptet_api import oauth, tokens
from shoptet_api.client import ShoptetClient
from shoptet_api.errors import ShoptetAPIError, ShoptetOAuthError
from shoptet_api.models import WebhookEvent
from shoptet_api.provisioning import refresh_eshop_details
from shoptet_api.types import BasicEshop, is_code, parse_id

logger = logging.getLogger(__name__)

ERRORS = {
    "bad_request": _(
        "The link to this page is incomplete. Please open the addon from the Shoptet administration again."
    ),
    "not_installed": _("The addon is not installed or not active for this e-shop."),
    "login_failed": _(
        "We could not verify your Shoptet login. Please open the addon from the Shoptet administration again."
    ),
    "wrong_eshop": _("This login belongs to a different e-shop."),
    "unavailable": _(
        "Shoptet is not reachable right now. Please try again in a minute."
    ),
    "session": _(
        "Your session has expired. Please open the addon from the Shoptet administration again."
    ),
    "origin": _("This request did not come from the settings page."),
    "throttled": _("Too many sign-in attempts. Please wait a minute and try again."),
}


def _language(value: str | None) -> str:
    value = (value or "").lower()[:2]
    return value if value in LANGUAGES else "en"


def frame_ancestors(eshop: Eshop | None) -> str:
    """Who may frame the page: the configured Shoptet admin origins plus the e-shop's own origin
    (its admin may run on a custom domain)."""
    sources = list(settings.SHOPTET_ADMIN_FRAME_ANCESTORS)
    if eshop is not None and eshop.url:
        parts = urlsplit(eshop.url)
        if parts.scheme in ("https", "http") and parts.netloc:
            sources.append(f"{parts.scheme}://{parts.netloc}")
    return " ".join(dict.fromkeys(sources)) or "'none'"


def content_security_policy(eshop: Eshop | None) -> str:
    """The pages load nothing but our own stylesheet: no scripts, no inline styles, no other hosts.

    `frame-ancestors` comes first (the part that decides where the page may be shown)."""
    styles = ["'self'"]
    static = urlsplit(settings.STATIC_URL)
    if (
        static.scheme in ("https", "http") and static.netloc
    ):  # static files on another host
        styles.append(f"{static.scheme}://{static.netloc}")
    return "; ".join(
        [
            f"frame-ancestors {frame_ancestors(eshop)}",
            "default-src 'none'",
            f"style-src {' '.join(styles)}",
            "form-action 'self'",
            "base-uri 'none'",
        ]
    )


def _iframe_headers(response: HttpResponse, eshop: Eshop | None) -> HttpResponse:
    response["Content-Security-Policy"] = content_security_policy(eshop)
    # The session token is in the URL: never hand it to another site in a Referer. Not
    # "no-referrer": with it browsers send `Origin: null` on the page's own form posts.
    response["Referrer-Policy"] = "same-origin"
    return response


def error_page(
    request: HttpRequest, status: int, key: str, *, language: str | None = None
) -> HttpResponse:
    with translation.override(_language(language)):
        response = render(
            request,
            "eshops/settings_error.html",
            {"message": ERRORS[key]},
            status=status,
        )
    return _iframe_headers(response, None)


@never_cache
@xframe_options_exempt
@require_GET
def settings_entry(request: HttpRequest) -> HttpResponse:
    """Log the Shoptet admin user in (basic_eshop) and hand over to the settings page."""
    language = _language(request.GET.get("lang"))
    raw_id, code = request.GET.get("eshopId", ""), request.GET.get("code", "")
    eshop_id = parse_id(raw_id)
    if eshop_id is None or not is_code(code):
        return error_page(request, 400, "bad_request", language=language)
    eshop = Eshop.objects.filter(eshop_id=eshop_id, status=Eshop.Status.ACTIVE).first()
    if eshop is None:
        return error_page(request, 403, "not_installed", language=language)
    logging_context.bind(eshop_id=eshop.eshop_id)
    wait = _throttle_login(request, eshop.eshop_id)
    if wait is not None:
        response = error_page(request, 429, "throttled", language=language)
        response["Retry-After"] = str(wait)
        return response
    try:
        identity = _login(request, eshop, code)
    except ShoptetOAuthError as exc:
        logger.warning(
            "settings login refused for eshop_id=%s: %s", eshop.eshop_id, exc
        )
        return error_page(request, 403, "login_failed", language=language)
    except ShoptetAPIError as exc:
        logger.error("settings login failed for eshop_id=%s: %s", eshop.eshop_id, exc)
        return error_page(request, 502, "unavailable", language=language)
    if identity.project_id != eshop.eshop_id:
        # A code from another e-shop's admin: the whole point of getBasicEshop is this check.
        logger.warning(
            "settings login: project.id %s does not match eshopId %s",
            identity.project_id,
            eshop.eshop_id,
        )
        return error_page(request, 403, "wrong_eshop", language=language)
    session = SettingsSession(
        eshop.eshop_id, identity.user_email, identity.user_name, language
    )
    logger.info(
        "settings login: eshop_id=%s user=%s",
        eshop.eshop_id,
        identity.user_email or "?",
    )
    return HttpResponseRedirect(
        f"{reverse('eshops:settings_page')}?{urlencode({'s': session.sign()})}"
    )


def _throttle_login(request: HttpRequest, eshop_id: int) -> int | None:
    """Each login calls the e-shop's OAuth server with our credentials: limit them per source
    address and per e-shop before any call. Seconds to wait, or None."""
    source = throttle.source_subject(client_ip(request))
    wait = throttle.hit(
        {
            redis_keys.throttle_key("settings-login", source): (
                settings.THROTTLE_SETTINGS_PER_ADDRESS
            ),
            redis_keys.throttle_key("settings-login", f"eshop:{eshop_id}"): (
                settings.THROTTLE_SETTINGS_PER_ESHOP
            ),
        },
        what="settings login",
    )
    if wait is not None:
        logger.warning(
            "settings login throttled: eshop_id=%s source %s, retry in %s s",
            eshop_id,
            source,
            wait,
        )
    return wait


def _login(request: HttpRequest, eshop: Eshop, code: str) -> BasicEshop:
    if not eshop.admin_oauth_url:
        # Not known yet (post-install setup still running): ask /api/eshop now.
        # A person waits in the iframe: a short budget, not the background default.
        with ShoptetClient(eshop, max_time=5.0, max_attempts=2) as client:
            refresh_eshop_details(eshop, client=client)
        if not eshop.admin_oauth_url:
            raise ShoptetOAuthError("/api/eshop names no oauth URL for this e-shop")
    redirect_uri = settings.SHOPTET_SETTINGS_REDIRECT_URI or request.build_absolute_uri(
        reverse("eshops:settings")
    )
    token = oauth.exchange_admin_code(
        oauth_url=eshop.admin_oauth_url, code=code, redirect_uri=redirect_uri
    )
    return oauth.get_basic_eshop(oauth_url=eshop.admin_oauth_url, token=token)


@never_cache
@xframe_options_exempt
@csrf_exempt  # no cookies in a third-party iframe: the signed session in the form is the CSRF token
@require_http_methods(["GET", "POST"])
@settings_session_required
def settings_page(request: SettingsRequest) -> HttpResponse:
    """The shop's addon settings and its status panel."""
    eshop, session = request.eshop, request.settings_session
    logging_context.bind(eshop_id=eshop.eshop_id)
    if request.method == "POST" and not _same_origin(request):
        return error_page(request, 403, "origin", language=session.language)
    current, _created = EshopSettings.objects.get_or_create(eshop=eshop)
    saved = False
    if request.method == "POST":
        form = EshopSettingsForm(request.POST, instance=current)
        if form.is_valid():
            _save(form, eshop, session)
            query = urlencode({"s": session.sign(), "saved": "1"})
            return HttpResponseRedirect(f"{reverse('eshops:settings_page')}?{query}")
    else:
        form = EshopSettingsForm(instance=current)
        saved = request.GET.get("saved") == "1"
    context = {
        "eshop": eshop,
        "form": form,
        "session": session,
        "token": session.sign(),
        "saved": saved,
        **status_panel(eshop),
    }
    return _iframe_headers(render(request, "eshops/settings.html", context), eshop)


def _same_origin(request: HttpRequest) -> bool:
    """A browser's Origin header, when sent, must be our own origin (defence in depth for the form)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return origin == f"{request.scheme}://{request.get_host()}"


def _save(form: EshopSettingsForm, eshop: Eshop, session: SettingsSession) -> None:
    with transaction.atomic():
        before = EshopSettings.objects.select_for_update().get(pk=form.instance.pk)
        changes = {
            name: [getattr(before, name), form.cleaned_data[name]]
            for name in form.changed_data
            if getattr(before, name) != form.cleaned_data[name]
        }
        form.save()
        if changes:
            SettingsChange.objects.create(
                eshop=eshop,
                changed_by=session.user_email or session.user_name or "unknown",
                changes=changes,
            )
    logger.info(
        "settings saved: eshop_id=%s fields=%s",
        eshop.eshop_id,
        ",".join(changes) or "-",
    )


# How the last webhook's state reads to a merchant, and the colour of its badge. Our own words
# (the inbox's status labels are written for operators).
WEBHOOK_STATES: dict[str, tuple[StrOrPromise, str]] = {
    WebhookEvent.Status.RECEIVED: (_("Waiting to be processed"), "info"),
    # Claimed by a worker: to the merchant, still not done.
    WebhookEvent.Status.PROCESSING: (_("Waiting to be processed"), "info"),
    WebhookEvent.Status.PROCESSED: (_("Processed"), "ok"),
    WebhookEvent.Status.IGNORED: (_("Nothing to do"), "neutral"),
    WebhookEvent.Status.FAILED: (_("Failed, will be retried"), "warn"),
    WebhookEvent.Status.DEAD: (_("Failed"), "error"),
}


def _from_epoch(value: float | None) -> datetime.datetime | None:
    return (
        None if value is None else datetime.datetime.fromtimestamp(value, datetime.UTC)
    )


def _parse_time(value: object) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(str(value))
    except ValueError:
        return None


# The resources a merchant can switch on, as the settings page names them.
SYNC_RESOURCES: list[tuple[str, str, StrOrPromise]] = [
    ("orders", "sync_orders", _("Orders")),
    ("products", "sync_products", _("Products")),
]


def sync_rows(eshop: Eshop) -> list[dict[str, Any]]:
    """For each resource the merchant enabled: when it was last synced and whether it failed since."""
    current = EshopSettings.objects.filter(eshop=eshop).first() or EshopSettings()
    enabled = [
        (name, label)
        for name, toggle, label in SYNC_RESOURCES
        if getattr(current, toggle)
    ]
    if not enabled:
        return []
    # Looked up in the app registry: the sync app depends on eshops, not the other way round.
    sync_state = apps.get_model("sync", "SyncState")
    states = {
        state.resource: state
        for state in sync_state.objects.filter(
            eshop=eshop, resource__in=[name for name, _label in enabled]
        )
    }
    rows = []
    for name, label in enabled:
        state = states.get(name)
        rows.append(
            {
                "resource": name,
                "label": label,
                "last_success_at": state.last_success_at if state else None,
                "failed": bool(state and state.last_error),
                "running": bool(state and state.running_since),
            }
        )
    return rows


def status_panel(eshop: Eshop) -> dict[str, Any]:
    """Installation state, token health, the last webhook and the endpoints Shoptet refused.

    Times are datetimes (the template shows them as "in 29 minutes" in the page's language)."""
    try:
        health: dict[str, Any] | None = tokens.token_health(eshop.eshop_id)
    except Exception:  # Redis down must not take the settings page with it
        logger.warning(
            "settings page: token health unavailable for eshop_id=%s", eshop.eshop_id
        )
        health = None
    api_token: dict[str, Any] | None = None
    if health is not None:
        expires_in = health["expires_in"]
        api_token = {
            "failures": health["failures"],
            "expires_at": None
            if expires_in is None
            else timezone.now() + datetime.timedelta(seconds=expires_in),
            "renewed_at": _from_epoch(health["renewed_at"]),
            "failed_at": _from_epoch(health["last_error_at"]),
        }
    last_webhook = (
        WebhookEvent.objects.filter(eshop=eshop).order_by("-received_at").first()
    )
    webhook_state = (
        WEBHOOK_STATES.get(last_webhook.status, (last_webhook.status, "neutral"))
        if last_webhook
        else None
    )
    return {
        "api_token": api_token,
        "sync_rows": sync_rows(eshop),
        "last_webhook": last_webhook,
        "webhook_state": webhook_state,
        "missing_rights": [
            (endpoint, _parse_time(refused_at))
            for endpoint, refused_at in sorted(eshop.missing_rights.items())
        ],
    }
