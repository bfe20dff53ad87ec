"""What the tenant model announces; other apps react to it without the model knowing them."""

from __future__ import annotations

from django.dispatch import Signal

# Sent after an uninstall commits, with `eshop_id`: every credential of that installation is void.
# shoptet_api connects the token store to it (ShoptetApiConfig.ready).
tenant_uninstalled = Signal()
