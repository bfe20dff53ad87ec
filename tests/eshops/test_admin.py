"""The operators' admin lists tenants and never renders a secret, on any of its pages."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from eshops.models import Eshop
from oauth.services import install_addon
from shoptet_api import tasks, tokens
from shoptet_emulator import ShoptetEmulator

pytestmark = pytest.mark.django_db


def test_admin_lists_and_shows_tenants_without_their_token(
    admin_client: Client, eshop_factory: Callable[..., Eshop]
) -> None:
    eshop = eshop_factory(
        oauth_access_token="never-render-this-oauth-token", name="Demo shop"
    )

    changelist = admin_client.get("/admin/eshops/eshop/")
    change = admin_client.get(f"/admin/eshops/eshop/{eshop.pk}/change/")
    search = admin_client.get("/admin/eshops/eshop/", {"q": str(eshop.eshop_id)})

    for response in (changelist, change, search):
        assert response.status_code == 200
        assert b"never-render-this-oauth-token" not in response.content
    assert b"Demo shop" in changelist.content
    assert b"Demo shop" in search.content
    assert b"OAuth token stored" in change.content


def test_admin_cannot_add_tenants_by_hand(admin_client: Client) -> None:
    assert admin_client.get("/admin/eshops/eshop/add/").status_code == 403


def test_admin_cannot_delete_tenants_by_hand(
    admin_client: Client, eshop_factory: Callable[..., Eshop]
) -> None:
    eshop = eshop_factory()

    response = admin_client.get(f"/admin/eshops/eshop/{eshop.pk}/delete/")

    assert response.status_code == 403
    assert Eshop.objects.filter(pk=eshop.pk).exists()


def test_no_operator_page_renders_a_secret(
    admin_client: Client, shoptet_settings: ShoptetEmulator, settings: Any
) -> None:
    settings.SHOPTET_WEBHOOK_URL = "https://addon.example/webhooks/shoptet/"
    shop = shoptet_settings.add_eshop(name="Secretive shop")
    eshop = install_addon(code=shoptet_settings.issue_install_code(shop.eshop_id))
    tasks.post_install.apply(
        args=(eshop.eshop_id,)
    )  # API token, signature key, webhooks
    eshop.refresh_from_db()
    api_token = tokens.get_api_access_token(eshop)
    eshop.record_missing_right("GET /api/orders")
    Eshop.objects.filter(pk=eshop.pk).update(previous_signature_key="old-signature-key")
    secrets = [
        str(eshop.oauth_access_token),
        str(eshop.webhook_signature_key),
        "old-signature-key",
        str(api_token),
    ]
    assert all(secrets)

    pages = {
        url: admin_client.get(url)
        for url in [
            "/admin/",
            "/admin/eshops/eshop/",
            f"/admin/eshops/eshop/?q={eshop.eshop_id}",
            "/admin/eshops/eshop/?missing_rights=yes&setup_completed=yes",
            f"/admin/eshops/eshop/{eshop.pk}/change/",
            f"/admin/eshops/eshop/{eshop.pk}/history/",
            "/admin/eshops/operatoraction/",
            "/admin/shoptet_api/webhookevent/",
            "/admin/dashboard/",
        ]
    }

    for url, response in pages.items():
        assert response.status_code == 200, url
        for secret in secrets:
            assert secret.encode() not in response.content, url
    listed = pages["/admin/eshops/eshop/"].content.decode()
    assert "Token expires in" in listed
    assert re.search(r"<td class=\"field-token_expires_in\">(29|30) min</td>", listed)
    assert "Secretive shop" in listed
    assert "1: GET /api/orders" in listed
    assert (
        f"valid tokens: 1 of {tokens.token_cap()}"
        in pages[f"/admin/eshops/eshop/{eshop.pk}/change/"].content.decode()
    )
