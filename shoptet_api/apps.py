from __future__ import annotations

from django.apps import AppConfig


class ShoptetApiConfig(AppConfig):
    name = "shoptet_api"
    verbose_name = "Shoptet API"

    def ready(self) -> None:
        from shoptet_api import checks  # noqa: F401  (registers system checks)
