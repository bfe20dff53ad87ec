"""System checks: misconfiguration is reported at start-up, not at the first install."""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, Warning, register
from django.core.exceptions import ImproperlyConfigured

from addon_project.encryption import get_fernet
from shoptet_api.oauth import missing_install_settings


@register()
def check_encryption_keys(**kwargs: Any) -> list[CheckMessage]:
    try:
        get_fernet()
    except ImproperlyConfigured as exc:
        return [Error(str(exc), id="shoptet_api.E001")]
    return []


@register()
def check_install_settings(**kwargs: Any) -> list[CheckMessage]:
    missing = missing_install_settings()
    if missing:
        return [
            Warning(
                f"{', '.join(missing)} not set: install callbacks will answer 503",
                hint="Copy them from API partner → Access to API in the Shoptet partner admin.",
                id="shoptet_api.W001",
            )
        ]
    return []
