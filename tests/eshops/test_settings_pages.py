"""Settings pages inside the Shoptet admin: basic_eshop login, cookie-less signed session, tenant
isolation, languages, iframe headers."""

from __future__ import annotations

import contextlib
import datetime
import gettext
import re
import time
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
from django.core import signing
from django.test import Client
from django.utils import timezone

from eshops.models import Eshop, EshopSettings, SettingsChange
from eshops.settings_session import SALT, SettingsSession
from eshops.views import content_security_policy
from oauth.services import install_addon
from shoptet_api import provisioning, tokens
from shoptet_api.models import WebhookEvent
from shoptet_api.types import BasicEshop
from shoptet_emulator import ShoptetEmulator
from sync.models import SyncState

pytestmark = pytest.mark.django_db

ENTRY = "/settings/"
PAGE = "/settings/page/"


@pytest.fixture
def install(shoptet_settings: ShoptetEmulator) -> Callable[[], Eshop]:
    def installed() -> Eshop:
        shop = shoptet_settings.add_eshop()
        eshop = install_addon(code=shoptet_settings.issue_install_code(shop.eshop_id))
        provisioning.refresh_eshop_details(eshop)  # what post-install setup stores
        return eshop

    return installed


def login(
    client: Client, emulator: ShoptetEmulator, eshop: Eshop, *, lang: str = "en"
) -> str:
    """The settings URL as Shoptet opens it; returns the signed session from the redirect."""
    code = emulator.issue_login_code(eshop.eshop_id)
    response = client.get(
        ENTRY, {"eshopId": str(eshop.eshop_id), "lang": lang, "code": code}
    )
    assert response.status_code == 302, response.content
    assert "Set-Cookie" not in response.headers
    location = urlsplit(response["Location"])
    assert location.path == PAGE
    assert "code" not in parse_qs(
        location.query
    )  # the one-time code leaves the address bar
    return parse_qs(location.query)["s"][0]


def no_cookies(response: Any) -> bool:
    return "Set-Cookie" not in response.headers and not response.cookies


def test_login_through_the_eshop_oauth_server_opens_the_page(
    client: Client, shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    session = login(client, shoptet_settings, eshop)

    response = client.get(PAGE, {"s": session})

    assert response.status_code == 200
    assert b"Addon settings" in response.content
    assert b"Signed in as Emulated Admin." in response.content
    assert no_cookies(response)
    assert "X-Frame-Options" not in response.headers
    csp = response["Content-Security-Policy"]
    assert csp.startswith("frame-ancestors ")
    assert "https://*.myshoptet.com" in csp
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(eshop.url))
    assert origin in csp
    assert response["Referrer-Policy"] == "same-origin"


def test_saving_settings_records_who_changed_what(
    client: Client, shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    session = login(client, shoptet_settings, eshop)

    response = client.post(
        PAGE,
        {
            "s": session,
            "sync_orders": "",
            "sync_interval_minutes": "15",
            "notification_email": "ops@shop.example",
        },
    )

    assert response.status_code == 302
    assert no_cookies(response)
    saved = EshopSettings.objects.get(eshop=eshop)
    assert (
        saved.sync_orders,
        saved.sync_interval_minutes,
        saved.notification_email,
    ) == (False, 15, "ops@shop.example")
    change = SettingsChange.objects.get(eshop=eshop)
    assert change.changed_by == shoptet_settings.get_eshop(eshop.eshop_id).contact_email
    assert change.changes == {
        "sync_orders": [True, False],
        "sync_interval_minutes": [60, 15],
        "notification_email": ["", "ops@shop.example"],
    }
    page = client.get(response["Location"])
    assert b"Settings saved." in page.content


def test_invalid_settings_are_refused_and_nothing_changes(
    client: Client, shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    session = login(client, shoptet_settings, eshop)

    response = client.post(
        PAGE,
        {
            "s": session,
            "sync_orders": "on",
            "sync_interval_minutes": "1",
            "notification_email": "not-an-email",
        },
    )

    assert response.status_code == 200
    assert b"Choose between 5 and 1440 minutes." in response.content
    assert b"The settings were not saved." in response.content
    assert EshopSettings.objects.get(eshop=eshop).sync_interval_minutes == 60
    assert not SettingsChange.objects.exists()


@pytest.mark.parametrize(
    ("lang", "expected"),
    [
        ("cs", "Nastavení doplňku"),
        ("sk", "Nastavenia doplnku"),
        ("hu", "A kiegészítő beállításai"),
        ("en", "Addon settings"),
        ("de", "Addon settings"),
    ],
)
def test_page_speaks_the_admin_language(
    client: Client,
    shoptet_settings: ShoptetEmulator,
    install: Callable[[], Eshop],
    lang: str,
    expected: str,
) -> None:
    eshop = install()
    session = login(client, shoptet_settings, eshop, lang=lang)

    response = client.get(PAGE, {"s": session})

    assert expected in response.content.decode()


def test_login_accepts_only_the_eshop_named_by_getbasiceshop(
    client: Client, shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    other = BasicEshop(
        project_id=eshop.eshop_id + 1, user_email="intruder@example.com", user_name="X"
    )

    with mock.patch(
        "eshops.views.oauth.get_basic_eshop", autospec=True, return_value=other
    ):
        response = client.get(
            ENTRY,
            {
                "eshopId": str(eshop.eshop_id),
                "lang": "cs",
                "code": shoptet_settings.issue_login_code(eshop.eshop_id),
            },
        )

    assert response.status_code == 403
    assert "Toto přihlášení patří jinému e-shopu." in response.content.decode()


def test_code_from_another_eshop_is_refused(
    client: Client, shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    mine, theirs = install(), install()

    response = client.get(
        ENTRY,
        {
            "eshopId": str(mine.eshop_id),
            "lang": "en",
            "code": shoptet_settings.issue_login_code(theirs.eshop_id),
        },
    )

    assert response.status_code == 403
    assert b"could not verify your Shoptet login" in response.content


def test_login_ignores_any_host_in_the_query(
    client: Client, shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    code = shoptet_settings.issue_login_code(eshop.eshop_id)

    response = client.get(
        ENTRY,
        {
            "eshopId": str(eshop.eshop_id),
            "lang": "en",
            "code": code,
            "oauthUrl": "http://127.0.0.2:9/",
            "eshopUrl": "http://127.0.0.2:9/",
        },
    )

    assert response.status_code == 302
    token_calls = [
        path
        for _, path, _ in shoptet_settings.stats.requests
        if path.endswith("/action/OAuthServer/token")
    ]
    assert token_calls == [f"/shop/{eshop.eshop_id}/action/OAuthServer/token"]


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"eshopId": "abc", "code": "x"},
        {"eshopId": "1"},
        {"eshopId": "1", "code": "x" * 10_000},
    ],
    ids=["nothing", "non-numeric-id", "no-code", "10kB-code"],
)
def test_bad_entry_links_get_a_clear_error(
    client: Client, shoptet_settings: ShoptetEmulator, query: dict[str, str]
) -> None:
    response = client.get(ENTRY, query)

    assert response.status_code == 400
    assert b"incomplete" in response.content
    assert shoptet_settings.stats.requests == []


def test_unknown_or_suspended_eshop_gets_no_page(
    client: Client, shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    Eshop.objects.filter(pk=eshop.pk).update(status=Eshop.Status.SUSPENDED)

    suspended = client.get(ENTRY, {"eshopId": str(eshop.eshop_id), "code": "x"})
    unknown = client.get(ENTRY, {"eshopId": "4242", "code": "x"})

    assert suspended.status_code == unknown.status_code == 403
    assert b"not installed or not active" in suspended.content


def test_session_for_one_eshop_never_reaches_another(
    client: Client, shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    a, b = install(), install()
    EshopSettings.objects.create(eshop=b, notification_email="b@shop.example")
    session_a = login(client, shoptet_settings, a)

    # Naming shop B in the form changes nothing: the session decides the tenant.
    client.post(
        PAGE,
        {
            "s": session_a,
            "eshop": str(b.pk),
            "eshop_id": str(b.eshop_id),
            "sync_interval_minutes": "30",
            "notification_email": "evil@x.example",
        },
    )
    # A session forged for B (signed with a different key) is refused.
    forged = signing.dumps(
        [b.eshop_id, "x@x", "x", "en"],
        salt=SALT,
        key="not-our-secret-key",
        compress=True,
    )
    refused = client.get(PAGE, {"s": forged})
    # Tampering with A's own token is refused too.
    tampered = client.get(
        PAGE, {"s": session_a[:-2] + ("AA" if not session_a.endswith("AA") else "BB")}
    )

    assert EshopSettings.objects.get(eshop=b).notification_email == "b@shop.example"
    assert EshopSettings.objects.get(eshop=a).notification_email == "evil@x.example"
    assert refused.status_code == tampered.status_code == 403
    page_a = client.get(PAGE, {"s": session_a}).content
    assert b"b@shop.example" not in page_a


def test_expired_session_is_refused(
    client: Client,
    shoptet_settings: ShoptetEmulator,
    install: Callable[[], Eshop],
    settings: Any,
) -> None:
    eshop = install()
    session = login(client, shoptet_settings, eshop)
    settings.SHOPTET_SETTINGS_SESSION_MAX_AGE = -1

    response = client.get(PAGE, {"s": session})

    assert response.status_code == 403
    assert b"session has expired" in response.content


def test_post_from_a_foreign_origin_is_refused(
    client: Client, shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    session = login(client, shoptet_settings, eshop)

    response = client.post(
        PAGE,
        {"s": session, "sync_interval_minutes": "30", "notification_email": ""},
        HTTP_ORIGIN="https://evil.example",
    )

    assert response.status_code == 403
    assert not SettingsChange.objects.exists()


def test_post_without_a_session_is_refused(
    client: Client, shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()

    response = client.post(PAGE, {"sync_interval_minutes": "30"})

    assert response.status_code == 403
    assert not EshopSettings.objects.filter(eshop=eshop).exists()


def test_status_panel_lists_the_endpoints_shoptet_refused(
    client: Client, shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    eshop.record_missing_right("GET /api/orders")
    session = login(client, shoptet_settings, eshop)

    response = client.get(PAGE, {"s": session})

    assert b"<code>GET /api/orders</code>" in response.content
    assert b"Access the addon still needs" in response.content


def test_every_message_is_translated_and_compiled() -> None:
    # msgfmt leaves untranslated entries out of the .mo, so equal counts mean all are translated
    # and the committed .mo matches its .po.
    locale = Path(__file__).resolve().parents[2] / "locale"
    for language in ("cs", "sk", "hu"):
        folder = locale / language / "LC_MESSAGES"
        entries = sum(
            1
            for line in (folder / "django.po").read_text().splitlines()
            if line.startswith("msgid ")
        )
        with (folder / "django.mo").open("rb") as handle:
            catalog = gettext.GNUTranslations(handle)._catalog  # type: ignore[attr-defined]
        compiled = {key[0] if isinstance(key, tuple) else key for key in catalog}
        assert len(compiled) == entries, (
            f"{language}: {entries - len(compiled)} message(s) untranslated or not compiled"
        )


def test_a_session_ends_at_its_max_age_however_active_it_is(
    client: Client,
    shoptet_settings: ShoptetEmulator,
    install: Callable[[], Eshop],
    settings: Any,
) -> None:
    eshop = install()
    session = SettingsSession.load(login(client, shoptet_settings, eshop))
    assert session is not None
    # Re-signed on every page, but still carrying the login time: an hour-old login is over.
    old = SettingsSession(
        session.eshop_id,
        session.user_email,
        session.user_name,
        "en",
        logged_in_at=session.logged_in_at - 3600,
    )

    response = client.get(PAGE, {"s": old.sign()})

    assert response.status_code == 403
    assert b"session has expired" in response.content


@pytest.mark.parametrize("raw_id", ["\u00b2", "9" * 5000, "-1", "1.0"])
def test_odd_eshop_ids_get_a_clear_400(
    client: Client, shoptet_settings: ShoptetEmulator, raw_id: str
) -> None:
    response = client.get(ENTRY, {"eshopId": raw_id, "code": "x"})

    assert response.status_code == 400


def receive_webhook(eshop: Eshop, *, status: str, hours_ago: int = 0) -> WebhookEvent:
    """An inbox row as the receiver stores it, in the given state."""
    event = WebhookEvent.objects.create(
        eshop=eshop,
        event="order:create",
        event_instance="2026000123",
        event_created=timezone.now(),
        dedup_key=f"{eshop.eshop_id}-{status}-{hours_ago}",
        raw_body="{}",
        verified_by="signature",
        status=status,
    )
    if hours_ago:
        WebhookEvent.objects.filter(pk=event.pk).update(
            received_at=timezone.now() - datetime.timedelta(hours=hours_ago)
        )
    return event


def parse_csp(header: str) -> dict[str, str]:
    return dict(
        directive.strip().split(" ", 1)
        for directive in header.split(";")
        if directive.strip()
    )


def test_page_is_styled_by_its_own_stylesheet_under_a_strict_csp(
    client: Client, shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    session = login(client, shoptet_settings, eshop)

    page = client.get(PAGE, {"s": session})
    error = client.get(ENTRY, {})

    for response in (page, error):
        html = response.content.decode()
        # No inline style anywhere: the CSP allows only the stylesheet file.
        assert "<style" not in html
        assert " style=" not in html
        csp = parse_csp(response["Content-Security-Policy"])
        assert csp["default-src"] == "'none'"
        assert csp["style-src"] == "'self'"
        assert csp["form-action"] == "'self'"
        assert csp["base-uri"] == "'none'"
        assert "unsafe-inline" not in response["Content-Security-Policy"]
        links = re.findall(r'<link rel="stylesheet" href="([^"]+)">', html)
        assert links == ["/static/eshops/settings.css"]
    stylesheet = client.get(links[0])
    assert stylesheet.status_code == 200
    assert stylesheet["Content-Type"].startswith("text/css")
    assert b".badge-ok" in b"".join(stylesheet.streaming_content)  # type: ignore[attr-defined]


def test_csp_allows_static_files_served_from_another_host(settings: Any) -> None:
    settings.STATIC_URL = "https://static.example.net/addon/"

    csp = parse_csp(content_security_policy(None))

    assert csp["style-src"] == "'self' https://static.example.net"
    assert csp["default-src"] == "'none'"


@pytest.mark.parametrize(
    ("lang", "expires"),
    [
        ("cs", r"token vyprší za \d+\s+minut"),
        ("sk", r"token vyprší o \d+\s+minút"),
        ("hu", r"a token \d+\s+perc múlva lejár"),
        ("en", r"token expires \d+\s+minutes from now"),
    ],
)
def test_status_panel_tells_times_in_words_of_the_page_language(
    client: Client,
    shoptet_settings: ShoptetEmulator,
    install: Callable[[], Eshop],
    lang: str,
    expires: str,
) -> None:
    eshop = install()
    tokens.get_api_access_token(eshop)  # the emulator's tokens live 30 minutes
    receive_webhook(eshop, status=WebhookEvent.Status.PROCESSED, hours_ago=2)
    session = login(client, shoptet_settings, eshop, lang=lang)

    html = client.get(PAGE, {"s": session}).content.decode()

    api_access = re.search(r'<dd id="api-access">(.*?)</dd>', html, re.S)
    assert api_access is not None
    assert re.search(expires, api_access.group(1)), api_access.group(1)
    assert not re.search(r"\d+ s\b", api_access.group(1))  # no raw seconds
    last_webhook = re.search(r'<dd id="last-webhook">(.*?)</dd>', html, re.S)
    assert last_webhook is not None
    two_hours_ago = {
        "cs": r"před 2\s+hodinami",
        "sk": r"pred 2\s+hodinami",
        "hu": r"2\s+órája",
        "en": r"2\s+hours ago",
    }[lang]
    assert re.search(two_hours_ago, last_webhook.group(1)), last_webhook.group(1)


class _VisibleText(HTMLParser):
    """The text a merchant reads: text nodes and the attributes shown as text, minus <code>
    (endpoints and event names are data) and the form's own values."""

    SHOWN_ATTRIBUTES = frozenset({"title", "placeholder", "aria-label", "alt"})

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._in_code = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._in_code += tag == "code"
        self.parts += [v for k, v in attrs if k in self.SHOWN_ATTRIBUTES and v]

    def handle_endtag(self, tag: str) -> None:
        self._in_code -= tag == "code"

    def handle_data(self, data: str) -> None:
        if not self._in_code:
            self.parts.append(data)


def visible_words(html: str) -> set[str]:
    parser = _VisibleText()
    parser.feed(html)
    return set(re.findall(r"[^\W\d_]{3,}", " ".join(parser.parts)))


# Words that read the same in English and in Czech: names, not untranslated text.
SAME_IN_EVERY_LANGUAGE = {"API", "Shoptet", "webhook", "token", "mail", "UTC"}


def _page_state(
    eshop: Eshop, state: str, stack: contextlib.ExitStack
) -> dict[str, str] | None:
    """Put the e-shop into `state`; the form to post, if the state is a refused form."""
    eshop.record_missing_right("GET /api/orders")
    if state.startswith("webhook-"):
        tokens.get_api_access_token(eshop)
        receive_webhook(eshop, status=state.removeprefix("webhook-"), hours_ago=3)
    elif state == "paused-idle":
        Eshop.objects.filter(pk=eshop.pk).update(processing_paused_at=timezone.now())
        tokens.forget_tokens(eshop.eshop_id)
    elif state == "renewals-failing":
        health = {
            "expires_in": None,
            "valid_tokens": 0,
            "cap": 5,
            "renewed_at": None,
            "failures": 3,
            "last_error": "ShoptetServerError: 503",
            "last_error_at": time.time() - 120,
        }
        stack.enter_context(
            mock.patch("eshops.views.tokens.token_health", return_value=health)
        )
    elif state == "redis-down":
        stack.enter_context(
            mock.patch(
                "eshops.views.tokens.token_health",
                side_effect=redis.ConnectionError("down"),
            )
        )
    elif state.startswith("sync-"):
        EshopSettings.objects.update_or_create(
            eshop=eshop, defaults={"sync_orders": True, "sync_products": True}
        )
        now = timezone.now()
        SyncState.objects.create(
            eshop=eshop,
            resource="orders",
            last_success_at=now - datetime.timedelta(minutes=5),
            last_error="ShoptetServerError: 503" if state == "sync-failed" else "",
            running_since=now if state == "sync-running" else None,
        )
    elif state == "form-errors":
        return {"sync_interval_minutes": "1", "notification_email": "not-an-email"}
    elif state == "form-required":
        return {"sync_interval_minutes": "", "notification_email": ""}
    return None


@pytest.mark.parametrize(
    "state",
    [f"webhook-{status}" for status in WebhookEvent.Status.values]
    + ["paused-idle", "renewals-failing", "redis-down", "form-errors", "form-required"]
    + ["sync-ok", "sync-failed", "sync-running"],
)
def test_czech_page_has_no_english_left(
    client: Client,
    shoptet_settings: ShoptetEmulator,
    install: Callable[[], Eshop],
    state: str,
) -> None:
    """Every word on the Czech page that also appears on the English page, other than data and
    names, is a string someone forgot to translate (a label, a status name, a form error)."""
    eshop = install()
    pages = {}
    with contextlib.ExitStack() as stack:
        form = _page_state(eshop, state, stack)
        for lang in ("en", "cs"):
            session = login(client, shoptet_settings, eshop, lang=lang)
            if form is None:
                response = client.get(PAGE, {"s": session})
            else:
                response = client.post(PAGE, {"s": session, **form})
            assert response.status_code == 200
            pages[lang] = response.content.decode()
    signed_in = SettingsSession.load(session)
    assert signed_in is not None
    data = visible_words(
        " ".join([eshop.name, eshop.url, signed_in.user_name, signed_in.user_email])
    )

    untranslated = (
        (visible_words(pages["en"]) & visible_words(pages["cs"]))
        - SAME_IN_EVERY_LANGUAGE
        - data
    )

    assert untranslated == set(), (
        f"English left on the Czech page: {sorted(untranslated)}"
    )


@pytest.mark.parametrize(
    ("lang", "five_minutes_ago", "never"),
    [
        ("cs", r"před 5\s+minutami", "Zatím ne"),
        ("sk", r"pred 5\s+minútami", "Zatiaľ nie"),
        ("hu", r"5\s+perce", "Még nem"),
        ("en", r"5\s+minutes ago", "Not yet"),
    ],
)
def test_status_panel_tells_when_each_enabled_resource_was_last_synced(
    client: Client,
    shoptet_settings: ShoptetEmulator,
    install: Callable[[], Eshop],
    lang: str,
    five_minutes_ago: str,
    never: str,
) -> None:
    eshop = install()
    EshopSettings.objects.update_or_create(
        eshop=eshop, defaults={"sync_orders": True, "sync_products": True}
    )
    SyncState.objects.create(
        eshop=eshop,
        resource="orders",
        last_success_at=timezone.now() - datetime.timedelta(minutes=5),
    )
    session = login(client, shoptet_settings, eshop, lang=lang)

    html = client.get(PAGE, {"s": session}).content.decode()

    orders = re.search(r'<dd id="last-synced-orders">(.*?)</dd>', html, re.S)
    products = re.search(r'<dd id="last-synced-products">(.*?)</dd>', html, re.S)
    assert orders is not None
    assert products is not None
    assert re.search(five_minutes_ago, orders.group(1)), orders.group(1)
    assert never in products.group(1)


def test_status_panel_shows_only_the_resources_the_merchant_enabled(
    client: Client, shoptet_settings: ShoptetEmulator, install: Callable[[], Eshop]
) -> None:
    eshop = install()
    EshopSettings.objects.update_or_create(
        eshop=eshop, defaults={"sync_orders": False, "sync_products": True}
    )
    SyncState.objects.create(
        eshop=eshop,
        resource="products",
        last_success_at=timezone.now() - datetime.timedelta(hours=1),
        last_error="ShoptetServerError: 503",
    )
    session = login(client, shoptet_settings, eshop)

    html = client.get(PAGE, {"s": session}).content.decode()

    assert 'id="last-synced-orders"' not in html
    products = re.search(r'<dd id="last-synced-products">(.*?)</dd>', html, re.S)
    assert products is not None
    assert "the last attempt failed, it will be retried" in products.group(1)
    assert "503" not in html  # the error itself is for operators
