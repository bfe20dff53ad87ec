"""The operators' admin lists tenants and never renders a secret."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.test import Client

from eshops.models import Eshop

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
