"""The settings page in a real browser, framed by a page from another origin, as the Shoptet admin does.

Headless Chromium (Debian's `chromium`, driven by Playwright) opens a stand-in admin page on
http://127.0.0.1:<port>; it embeds http://localhost:<live server port>/settings/?eshopId=…&code=… in an
iframe. That is another origin and another site, so the frame is a third-party context in which
Chromium stores no cookies: the whole login → edit → save round trip must work without any.
"""

from __future__ import annotations

import contextlib
import datetime
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import pytest
from django.utils import timezone

from eshops.models import Eshop, EshopSettings, SettingsChange
from oauth.services import install_addon
from shoptet_api import provisioning, tokens
from shoptet_api.models import WebhookEvent
from shoptet_emulator import ShoptetEmulator

if TYPE_CHECKING:
    from playwright.sync_api import (
        BrowserContext,
        ConsoleMessage,
        Frame,
        Page,
        Request,
        ViewportSize,
    )

    from tests.browser.conftest import AdminSite

pytestmark = pytest.mark.django_db(transaction=True)

HEADING = re.compile(r"^Nastavení doplňku")
# The admin page around the frame pads it by 1.5rem on each side: the frame is 800 px wide.
ADMIN_VIEWPORT_FOR_800PX_FRAME: ViewportSize = {"width": 848, "height": 1000}
# The page's own background colour (settings.css): proves the stylesheet loaded under the CSP.
PAGE_BACKGROUND = "rgb(242, 244, 247)"
SET_COOKIE_PROBE = """() => {
    document.cookie = "probe=1; SameSite=None; Secure; Path=/";
    return document.cookie;
}"""


def install(emulator: ShoptetEmulator) -> Eshop:
    """A tenant installed through the emulator, with what post-install setup stores."""
    shop = emulator.add_eshop()
    eshop = install_addon(code=emulator.issue_install_code(shop.eshop_id))
    provisioning.refresh_eshop_details(eshop)
    return eshop


def give_it_a_history(eshop: Eshop) -> None:
    """What a running installation shows in its status panel: a token, a webhook, a refused endpoint."""
    tokens.get_api_access_token(eshop)
    eshop.record_missing_right("GET /api/orders")
    WebhookEvent.objects.create(
        eshop=eshop,
        event="order:create",
        event_instance="2026000123",
        event_created=timezone.now(),
        dedup_key=f"{eshop.eshop_id}-order-create",
        raw_body="{}",
        verified_by="signature",
        status=WebhookEvent.Status.PROCESSED,
    )
    WebhookEvent.objects.filter(eshop=eshop).update(
        received_at=timezone.now() - datetime.timedelta(minutes=42)
    )


def entry_url(live_server: Any, emulator: ShoptetEmulator, eshop: Eshop) -> str:
    """The addon URL as Shoptet fills it in: #SHOP_ID#, #LANGUAGE# and a fresh #OAUTH_CODE#."""
    query = {
        "eshopId": str(eshop.eshop_id),
        "lang": "cs",
        "code": emulator.issue_login_code(eshop.eshop_id),
    }
    return f"{live_server.url}/settings/?{urlencode(query)}"


def addon_frame(page: Page) -> Frame:
    frame = page.locator("#addon").element_handle().content_frame()
    assert frame is not None, "the admin page has no addon iframe"
    return frame


def trail(requests: list[Request]) -> list[tuple[str, str, int | None]]:
    """(method, path, status) of each request, redirect hops included."""
    return [
        (
            request.method,
            urlsplit(request.url).path,
            response.status if (response := request.response()) else None,
        )
        for request in requests
    ]


def block_third_party_cookies(context: BrowserContext, page: Page) -> None:
    """Ask Chromium explicitly for what it does by default here: no cookies in third-party frames.

    The probe in the test, not this call, is what proves the blocking; an older or newer Chromium
    without this DevTools method is fine as long as the probe still finds cookies blocked.
    """
    from playwright.sync_api import Error as PlaywrightError

    with contextlib.suppress(PlaywrightError):
        context.new_cdp_session(page).send(
            "Network.setCookieControls",
            {
                "enableThirdPartyCookieRestriction": True,
                "disableThirdPartyCookieMetadata": True,
                "disableThirdPartyCookieHeuristics": True,
            },
        )


def test_merchant_saves_settings_in_a_cross_origin_iframe_without_cookies(
    live_server: Any,
    shoptet_settings: ShoptetEmulator,
    settings: Any,
    admin_site: AdminSite,
    browser_context: BrowserContext,
    page: Page,
    screenshot: Callable[[Page, str], Path],
) -> None:
    settings.SHOPTET_ADMIN_FRAME_ANCESTORS = [admin_site.origin]
    eshop = install(shoptet_settings)
    give_it_a_history(eshop)
    contact_email = shoptet_settings.get_eshop(eshop.eshop_id).contact_email
    admin_site.embed(entry_url(live_server, shoptet_settings, eshop))
    assert urlsplit(admin_site.origin).hostname != urlsplit(live_server.url).hostname
    block_third_party_cookies(browser_context, page)
    to_addon: list[Request] = []
    page.on(
        "request",
        lambda request: (
            to_addon.append(request)
            if request.url.startswith(live_server.url)
            else None
        ),
    )

    csp_violations: list[ConsoleMessage] = []
    page.on(
        "console",
        lambda message: (
            csp_violations.append(message)
            if "Content Security Policy" in message.text
            else None
        ),
    )
    page.set_viewport_size(ADMIN_VIEWPORT_FOR_800PX_FRAME)

    # The merchant opens the addon in the admin: the frame logs in with the one-time code.
    page.goto(admin_site.url)
    addon = page.frame_locator("#addon")
    addon.get_by_role("heading", name=HEADING).wait_for()
    frame = addon_frame(page)
    assert frame.url.startswith(f"{live_server.url}/settings/page/?s=")
    assert (
        "code=" not in frame.url
    )  # the one-time code left the frame's address at once
    assert addon.get_by_text("Emulated Admin").count() == 1
    assert frame.evaluate("document.documentElement.clientWidth") == 800
    # Styled by its own stylesheet, which the page's CSP lets in (and nothing else was refused).
    assert (
        frame.evaluate("getComputedStyle(document.body).backgroundColor")
        == PAGE_BACKGROUND
    )
    # The status panel in the admin's language, times in words.
    assert addon.locator("#last-webhook").inner_text().split() == [
        "Zpracováno",
        "order:create",
        "před",
        "42",
        "minutami",
    ]
    assert re.search(
        r"token vyprší za \d+\s+minut", addon.locator("#api-access").inner_text()
    )
    screenshot(page, "settings-iframe-800.png")

    # … changes two settings and saves.
    addon.get_by_label("Interval synchronizace (minuty)").fill("45")
    addon.get_by_label("E-mail pro upozornění").fill("eshop-ops@shop.example")
    addon.get_by_role("button", name="Uložit").click()
    # Either the confirmation or an error page ends the save; a refusal fails with what it showed.
    addon.locator("#saved, h1.error").first.wait_for()
    screenshot(page, "settings-iframe.png")
    assert addon.locator("#saved").count() == 1, (
        f"the save was refused; the frame shows {frame.inner_text('body')!r}; "
        f"requests: {trail(to_addon)}"
    )

    assert addon.locator("#saved").inner_text() == "Nastavení bylo uloženo."
    assert addon.get_by_label("Interval synchronizace (minuty)").input_value() == "45"
    assert (
        addon.get_by_label("E-mail pro upozornění").input_value()
        == "eshop-ops@shop.example"
    )
    stored = EshopSettings.objects.get(eshop=eshop)
    assert (
        stored.sync_orders,
        stored.sync_interval_minutes,
        stored.notification_email,
    ) == (True, 45, "eshop-ops@shop.example")
    change = SettingsChange.objects.get(eshop=eshop)
    assert change.changed_by == contact_email
    assert change.changes == {
        "sync_interval_minutes": [60, 45],
        "notification_email": ["", "eshop-ops@shop.example"],
    }
    # The code was exchanged at this e-shop's own OAuth server in the emulator.
    assert (
        "POST",
        f"/shop/{eshop.eshop_id}/action/OAuthServer/token",
        200,
    ) in shoptet_settings.stats.requests

    # The whole round trip, as the browser made it, with no cookie either way.
    pages = [hop for hop in trail(to_addon) if not hop[1].startswith("/static/")]
    assert pages == [
        ("GET", "/settings/", 302),
        ("GET", "/settings/page/", 200),
        ("POST", "/settings/page/", 302),
        ("GET", "/settings/page/", 200),
    ]
    assert ("GET", "/static/eshops/settings.css", 200) in trail(to_addon)
    for request in to_addon:
        assert "cookie" not in request.all_headers(), request.url
        response = request.response()
        assert response is not None
        assert response.header_value("set-cookie") is None, request.url
    assert browser_context.cookies() == []
    assert csp_violations == []

    # And none could have helped: in this frame Chromium refuses to store a cookie …
    assert frame.evaluate(SET_COOKIE_PROBE) == ""
    assert browser_context.cookies() == []
    # … which is the third-party context, not the probe: the same origin as a top-level page may.
    top_level = browser_context.new_page()
    top_level.goto(f"{live_server.url}/settings/")
    assert top_level.evaluate(SET_COOKIE_PROBE) == "probe=1"
    assert [cookie["name"] for cookie in browser_context.cookies()] == ["probe"]


@pytest.mark.parametrize("width", [800, 375])
def test_settings_page_reads_well_in_a_wide_and_a_narrow_frame(
    live_server: Any,
    shoptet_settings: ShoptetEmulator,
    page: Page,
    screenshot: Callable[[Page, str], Path],
    width: int,
) -> None:
    """The page alone at the frame's width (full length, for the screenshots): nothing sticks out
    sideways, labels sit above their inputs, refused input is explained in the admin's language."""
    eshop = install(shoptet_settings)
    give_it_a_history(eshop)
    page.set_viewport_size({"width": width, "height": 900})

    page.goto(entry_url(live_server, shoptet_settings, eshop))
    page.get_by_role("heading", name=HEADING).wait_for()
    screenshot(page, f"settings-{width}.png")

    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == (
        PAGE_BACKGROUND
    )
    assert page.evaluate(
        "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    )
    label = page.locator("label[for=id_sync_interval_minutes]").bounding_box()
    field = page.get_by_label("Interval synchronizace (minuty)").bounding_box()
    assert label is not None
    assert field is not None
    assert label["y"] + label["height"] <= field["y"]
    assert page.locator(".badge").all_inner_texts() == [
        "Aktivní",
        "Připojeno",
        "Zatím ne",  # orders are synced by default; no run has finished yet
        "Zpracováno",
    ]
    assert (
        page.locator("#status dt").nth(2).inner_text()
        == "Naposledy synchronizováno: Objednávky"
    )

    page.get_by_label("Interval synchronizace (minuty)").fill("1")
    page.get_by_label("E-mail pro upozornění").fill("not-an-email")
    page.get_by_role("button", name="Uložit").click()
    page.locator(".errorlist").first.wait_for()
    screenshot(page, f"settings-{width}-refused.png")

    assert page.locator("#not-saved").inner_text() == (
        "Nastavení nebylo uloženo. Opravte prosím označená pole níže."
    )
    assert page.locator(".errorlist").all_inner_texts() == [
        "Zvolte hodnotu mezi 5 a 1440 minutami.",
        "Zadejte platnou e-mailovou adresu.",
    ]
    assert page.evaluate(
        "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    )
    assert not SettingsChange.objects.filter(eshop=eshop).exists()


def test_error_page_is_styled_and_in_the_admin_language(
    live_server: Any,
    page: Page,
    screenshot: Callable[[Page, str], Path],
) -> None:
    page.set_viewport_size({"width": 800, "height": 600})

    response = page.goto(f"{live_server.url}/settings/?lang=cs&eshopId=1")
    screenshot(page, "settings-error-800.png")

    assert response is not None
    assert response.status == 400
    assert page.get_by_role("alert").inner_text().splitlines()[0] == (
        "Nastavení nelze zobrazit"
    )
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == (
        PAGE_BACKGROUND
    )


def test_admin_page_on_an_origin_not_in_frame_ancestors_cannot_frame_the_settings(
    live_server: Any,
    shoptet_settings: ShoptetEmulator,
    settings: Any,
    admin_site: AdminSite,
    page: Page,
    screenshot: Callable[[Page, str], Path],
) -> None:
    settings.SHOPTET_ADMIN_FRAME_ANCESTORS = ["https://*.myshoptet.com"]
    eshop = install(shoptet_settings)
    admin_site.embed(entry_url(live_server, shoptet_settings, eshop))

    with (
        page.expect_console_message(
            lambda message: "frame-ancestors" in message.text
        ) as violation,
        page.expect_response(
            lambda response: "/settings/page/" in response.url
        ) as settings_response,
    ):
        page.goto(admin_site.url)
    page.wait_for_load_state("load")
    screenshot(page, "settings-iframe-blocked.png")

    csp = settings_response.value.header_value("content-security-policy") or ""
    assert csp.startswith("frame-ancestors https://*.myshoptet.com")
    assert admin_site.origin not in csp
    # Chromium: "Framing 'http://localhost:…/' violates the following Content Security Policy
    # directive: "frame-ancestors …". The request has been blocked."
    assert f"{live_server.url}/" in violation.value.text
    assert "frame-ancestors https://*.myshoptet.com" in violation.value.text
    frame = addon_frame(page)
    assert not frame.url.startswith(live_server.url)
    assert (
        page.frame_locator("#addon").get_by_role("heading", name=HEADING).count() == 0
    )
    assert not SettingsChange.objects.filter(eshop=eshop).exists()
