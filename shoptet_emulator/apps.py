from __future__ import annotations

from django.apps import AppConfig


class ShoptetEmulatorConfig(AppConfig):
    """Only for `manage.py shoptet_emulator`; installed only where http:// Shoptet URLs are allowed."""

    name = "shoptet_emulator"
    verbose_name = "Shoptet emulator"
