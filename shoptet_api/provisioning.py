"""What an installation needs from Shoptet after the install commits: a webhook signature key, the
webhooks we subscribe to (idempotently, repairing drift), and the e-shop's details."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.utils import timezone

from eshops.models import Eshop
from shoptet_api.client import ShoptetClient
from shoptet_api.errors import ShoptetBadRequest, ShoptetInvalidResponse

logger = logging.getLogger(__name__)

# Shoptet accepts at most 50 webhooks per registration call.
REGISTRATION_BATCH = 50


def complete_install(eshop: Eshop) -> None:
    """Post-install setup; safe to run twice (a crash between steps is completed by the next run)."""
    with ShoptetClient(eshop) as client:
        if eshop.webhook_signature_key is None or (
            eshop.signature_key_renewed_at is None
            or eshop.signature_key_renewed_at < eshop.last_installed_at
        ):
            renew_signature_key(eshop, client=client)
        sync_webhooks(eshop, client=client)
        refresh_eshop_details(eshop, client=client)
    Eshop.objects.filter(pk=eshop.pk).update(
        setup_completed_at=timezone.now(), updated_at=timezone.now()
    )
    logger.info("eshop_id=%s: post-install setup complete", eshop.eshop_id)


# Reference: https://api.docs.shoptet.com/shoptet-api/openapi/webhooks/renewsignaturekey
def renew_signature_key(eshop: Eshop, *, client: ShoptetClient) -> None:
    """Get a new signature key; the previous one stays valid for the rotation window."""
    data = client.post("/api/webhooks/renew-signature-key")
    key = data.get("signatureKey") if isinstance(data, dict) else None
    if not isinstance(key, str) or not key or len(key) > 512:
        raise ShoptetInvalidResponse(
            "renew-signature-key answered without a signatureKey",
            endpoint="POST /api/webhooks/renew-signature-key",
        )
    eshop.previous_signature_key = eshop.webhook_signature_key
    eshop.webhook_signature_key = key
    eshop.signature_key_renewed_at = timezone.now()
    eshop.save(
        update_fields=[
            "previous_signature_key",
            "webhook_signature_key",
            "signature_key_renewed_at",
            "updated_at",
        ]
    )
    logger.info("eshop_id=%s: webhook signature key renewed", eshop.eshop_id)


# Reference: https://api.docs.shoptet.com/shoptet-api/openapi/webhooks
def sync_webhooks(eshop: Eshop, *, client: ShoptetClient) -> dict[str, int]:
    """Make the registered webhooks equal SHOPTET_WEBHOOK_EVENTS at SHOPTET_WEBHOOK_URL.

    List, diff, then create what is missing, move what points elsewhere, delete what is not
    wanted. Every webhook an addon can list is its own (Shoptet hides other addons' ones), so
    deleting the unwanted ones touches nobody else. Running it twice changes nothing.
    """
    url = settings.SHOPTET_WEBHOOK_URL
    if not url:
        logger.warning(
            "eshop_id=%s: SHOPTET_WEBHOOK_URL is not set; no webhooks registered",
            eshop.eshop_id,
        )
        return {}
    wanted = list(dict.fromkeys(settings.SHOPTET_WEBHOOK_EVENTS))
    existing = {hook["event"]: hook for hook in _list_webhooks(client)}
    for event, hook in existing.items():
        if event not in wanted:
            client.delete(f"/api/webhooks/{int(hook['id'])}")
            logger.info("eshop_id=%s: webhook %s removed", eshop.eshop_id, event)
        elif hook.get("url") != url:
            client.patch(
                f"/api/webhooks/{int(hook['id'])}", json={"data": {"url": url}}
            )
            logger.info(
                "eshop_id=%s: webhook %s moved to our URL", eshop.eshop_id, event
            )
    missing = [event for event in wanted if event not in existing]
    for start in range(0, len(missing), REGISTRATION_BATCH):
        batch = missing[start : start + REGISTRATION_BATCH]
        try:
            client.post(
                "/api/webhooks",
                json={"data": [{"event": event, "url": url} for event in batch]},
            )
        except ShoptetBadRequest as exc:
            # 422 "already exists" (a parallel run registered it) is fine: the re-list below shows
            # it. 409 means mutually exclusive events are configured: an operator must fix that.
            if exc.status_code == 409:
                raise
            logger.info(
                "eshop_id=%s: registration answered %s; re-listing",
                eshop.eshop_id,
                exc.error_code,
            )
        logger.info(
            "eshop_id=%s: webhooks registered: %s", eshop.eshop_id, ", ".join(batch)
        )
    registered = {hook["event"]: int(hook["id"]) for hook in _list_webhooks(client)}
    Eshop.objects.filter(pk=eshop.pk).update(
        webhooks=registered, updated_at=timezone.now()
    )
    eshop.webhooks = registered
    return registered


def _list_webhooks(client: ShoptetClient) -> list[dict[str, Any]]:
    hooks = [
        hook
        for hook in client.paginate("/api/webhooks", items_key="webhooks")
        if isinstance(hook, dict)
    ]
    if any("event" not in hook or "id" not in hook for hook in hooks):
        raise ShoptetInvalidResponse(
            "webhook list items lack event or id", endpoint="GET /api/webhooks"
        )
    return hooks


# Reference: https://api.docs.shoptet.com/shoptet-api/openapi/e-shop-info/geteshopinfo
def refresh_eshop_details(eshop: Eshop, *, client: ShoptetClient | None = None) -> None:
    """Copy the e-shop's name and URL from /api/eshop (its domain can change)."""
    if client is None:
        with ShoptetClient(eshop) as own_client:
            data = own_client.get("/api/eshop")
    else:
        data = client.get("/api/eshop")
    contact = data.get("contactInformation") if isinstance(data, dict) else None
    if not isinstance(contact, dict):
        raise ShoptetInvalidResponse(
            "/api/eshop has no contactInformation", endpoint="GET /api/eshop"
        )
    name, url = contact.get("eshopName"), contact.get("url")
    if isinstance(name, str):
        eshop.name = name[:255]
    if isinstance(url, str) and url.startswith(("https://", "http://")):
        eshop.url = url[:500]
    oauth_url = admin_oauth_url_of(data)
    if oauth_url:
        eshop.admin_oauth_url = oauth_url
    eshop.save(update_fields=["name", "url", "admin_oauth_url", "updated_at"])


def admin_oauth_url_of(eshop_info: Any) -> str:
    """`urls[ident=oauth]` of /api/eshop: the e-shop's OAuthServer base, if it looks like one."""
    urls = eshop_info.get("urls") if isinstance(eshop_info, dict) else None
    for item in urls if isinstance(urls, list) else []:
        if (
            isinstance(item, dict)
            and item.get("ident") == "oauth"
            and isinstance(item.get("url"), str)
        ):
            url: str = item["url"]
            allowed = (
                ("https://", "http://")
                if settings.SHOPTET_ALLOW_HTTP
                else ("https://",)
            )
            if url.startswith(allowed) and len(url) <= 500:
                return url if url.endswith("/") else url + "/"
            logger.warning("ignoring an oauth URL that is not https: %.80s", url)
    return ""
