"""What Shoptet's answers say about an installation, and applying it to the tenant.

One mapping for the token broker, the API client and the webhook handlers. Only an explicit code is
a verdict: `addon_not_installed` (the addon is gone) and `addon_suspended` or the API's "Addon
installation is not approved." (suspended). A bare 401 from getAccessToken is not: a wrong
SHOPTET_OAUTH_URL or client gets one for every shop. A local refusal (no HTTP status) says nothing.
"""

from __future__ import annotations

from eshops.models import Eshop
from shoptet_api.errors import AddonNotInstalled, AddonSuspended, ShoptetAPIError


def verdict_of(exc: ShoptetAPIError) -> str | None:
    """The tenant status Shoptet's answer `exc` proves, or None when it proves none."""
    if exc.status_code is None:
        return None
    if isinstance(exc, AddonNotInstalled):
        return Eshop.Status.UNINSTALLED
    if isinstance(exc, AddonSuspended):
        return Eshop.Status.SUSPENDED
    return None


def apply_verdict(eshop: Eshop, exc: ShoptetAPIError) -> bool:
    """Apply Shoptet's answer `exc` to `eshop` (guarded by the OAuth token it was about)."""
    to = verdict_of(exc)
    if to is None:
        return False
    return eshop.apply_verdict(
        to, reason=f"{exc.endpoint or 'Shoptet'}: {exc.message or exc.error_code}"
    )
