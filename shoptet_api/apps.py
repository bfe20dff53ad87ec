from __future__ import annotations

from typing import Any

from django.apps import AppConfig


def forget_uninstalled_tokens(sender: Any, *, eshop_id: int, **kwargs: Any) -> None:
    """An uninstall committed: every API token of the installation is void, drop them all."""
    from shoptet_api.tokens import forget_tokens

    forget_tokens(eshop_id)


class ShoptetApiConfig(AppConfig):
    name = "shoptet_api"
    verbose_name = "Shoptet API"

    def ready(self) -> None:
        from eshops.signals import tenant_uninstalled
        from shoptet_api import checks  # noqa: F401  (registers system checks)

        # The tenant model knows nothing of tokens: the token store listens for uninstalls.
        tenant_uninstalled.connect(
            forget_uninstalled_tokens,
            dispatch_uid="shoptet_api.forget_uninstalled_tokens",
        )
