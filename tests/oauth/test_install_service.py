"""install_addon: the upsert rules, with the exchange stubbed at the module seam."""

from __future__ import annotations

import datetime as dt
from unittest import mock

import pytest
from django.utils import timezone

from addon_project.encryption import Secret
from eshops.models import Eshop
from oauth import services
from shoptet_api.types import OAuthGrant

pytestmark = pytest.mark.django_db


def grant(token: str, eshop_id: int = 4242) -> OAuthGrant:
    return OAuthGrant(
        access_token=Secret(token),
        eshop_id=eshop_id,
        eshop_url="https://x.myshoptet.com/",
        contact_email="a@b.c",
        trial=False,
    )


def test_install_addon_is_idempotent_for_a_reinstall() -> None:
    with mock.patch.object(
        services,
        "exchange_code",
        autospec=True,
        side_effect=[grant("first"), grant("second")],
    ):
        first = services.install_addon(code="c1")
        second = services.install_addon(code="c2")

    assert first.pk == second.pk
    assert Eshop.objects.count() == 1
    stored = Eshop.objects.get()
    assert stored.oauth_access_token == "second"
    assert stored.install_count == 2


def test_install_addon_keeps_the_token_that_arrived_later() -> None:
    later = timezone.now()
    earlier = later - dt.timedelta(seconds=1)
    with (
        mock.patch.object(
            services, "exchange_code", autospec=True, return_value=grant("newest")
        ),
        mock.patch("oauth.services.timezone.now", return_value=later),
    ):
        services.install_addon(code="c1")
    # A racing install whose answer arrived earlier commits afterwards: it must not win.
    with (
        mock.patch.object(
            services, "exchange_code", autospec=True, return_value=grant("older")
        ),
        mock.patch("oauth.services.timezone.now", return_value=earlier),
    ):
        services.install_addon(code="c2")

    stored = Eshop.objects.get()
    assert stored.oauth_access_token == "newest"
    assert stored.install_count == 2
    assert stored.status == Eshop.Status.ACTIVE
