"""The settings page in a real browser, framed by a page from another origin, as the Shoptet admin does.

Headless Chromium (Debian's `chromium`, driven by Playwright) opens a stand-in admin page on
http://127.0.0.1:<port>; it embeds http://localhost:<live server port>/settings/?eshopId=…&code=… in an
iframe. That is another origin and another site, so the frame is a third-party context in which
Chromium stores no cookies: the whole login → edit → save round trip must work without any.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import pytest

from eshops.models import Eshop, EshopSettings, SettingsChange
from oauth.services import install_addon
from shoptet_api import provisioning
from shoptet_api.emulator import ShoptetEmulator

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Frame, Page, Request

    from tests.browser.conftest import AdminSite

pytestmark = pytest.mark.django_db(transaction=True)

HEADING = re.compile(r"^Nastavení doplňku")
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
    assert trail(to_addon) == [
        ("GET", "/settings/", 302),
        ("GET", "/settings/page/", 200),
        ("POST", "/settings/page/", 302),
        ("GET", "/settings/page/", 200),
    ]
    for request in to_addon:
        assert "cookie" not in request.all_headers(), request.url
        response = request.response()
        assert response is not None
        assert response.header_value("set-cookie") is None, request.url
    assert browser_context.cookies() == []

    # And none could have helped: in this frame Chromium refuses to store a cookie …
    assert frame.evaluate(SET_COOKIE_PROBE) == ""
    assert browser_context.cookies() == []
    # … which is the third-party context, not the probe: the same origin as a top-level page may.
    top_level = browser_context.new_page()
    top_level.goto(f"{live_server.url}/settings/")
    assert top_level.evaluate(SET_COOKIE_PROBE) == "probe=1"
    assert [cookie["name"] for cookie in browser_context.cookies()] == ["probe"]


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
