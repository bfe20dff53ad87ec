"""What an installation needs from Shoptet after the install commits: a webhook signature key, the
webhooks we subscribe to (idempotently, repairing drift), and the e-shop's details."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from addon_project.redis_client import RELEASE_LOCK, get_redis, lua
from addon_project.redis_keys import key_renewal_lock_key
from eshops.models import Eshop
from shoptet_api.client import ShoptetClient
from shoptet_api.errors import ShoptetBadRequest, ShoptetInvalidResponse

logger = logging.getLogger(__name__)

# Shoptet accepts at most 50 webhooks per registration call.
REGISTRATION_BATCH = 50
# Longer than a renew-signature-key call can take (connect + read timeout).
KEY_RENEWAL_LOCK_MS = 60_000


def complete_install(eshop: Eshop) -> None:
    """Post-install setup; safe to run twice (a crash between steps is completed by the next run)."""
    with ShoptetClient(eshop) as client:
        renew_signature_key_once(eshop, client=client)
        sync_webhooks(eshop, client=client)
        refresh_eshop_details(eshop, client=client)
    # Done only with a signature key of this install: when another setup holds the renewal and
    # then fails, this one must not mark it done (complete_pending_installs runs it again).
    done = Eshop.objects.filter(
        pk=eshop.pk,
        webhook_signature_key__isnull=False,
        signature_key_renewed_at__gte=F("last_installed_at"),
    ).update(setup_completed_at=timezone.now(), updated_at=timezone.now())
    if done:
        logger.info("eshop_id=%s: post-install setup complete", eshop.eshop_id)
    else:
        logger.info(
            "eshop_id=%s: post-install setup waits for the signature key "
            "(another process is renewing it)",
            eshop.eshop_id,
        )


def renew_signature_key_once(eshop: Eshop, *, client: ShoptetClient) -> None:
    """One signature key per (re)install, even when two setups run at once.

    Every renewal invalidates the previous key at Shoptet, so two racing renewals could leave us
    storing a key Shoptet no longer signs with. One process renews under a Redis lock; the
    others skip (the holder stores the key). The row is re-read after taking the lock.
    """
    r = get_redis()
    owner = uuid.uuid4().hex
    if not r.set(
        key_renewal_lock_key(eshop.eshop_id), owner, nx=True, px=KEY_RENEWAL_LOCK_MS
    ):
        logger.info(
            "eshop_id=%s: another process is renewing the signature key", eshop.eshop_id
        )
        return
    try:
        eshop.refresh_from_db(
            fields=[
                "webhook_signature_key",
                "previous_signature_key",
                "signature_key_renewed_at",
                "last_installed_at",
            ]
        )
        renewed = eshop.signature_key_renewed_at
        if (
            not eshop.webhook_signature_key
            or renewed is None
            or renewed < eshop.last_installed_at
        ):
            renew_signature_key(eshop, client=client)
    finally:
        lua(RELEASE_LOCK)(
            keys=[key_renewal_lock_key(eshop.eshop_id)], args=[owner], client=r
        )


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


def wanted_events() -> list[str]:
    """SHOPTET_WEBHOOK_EVENTS, plus the sync's events (job:finished, order:*) when sync is on."""
    events = list(settings.SHOPTET_WEBHOOK_EVENTS)
    if settings.SYNC_ENABLED:
        events += settings.SYNC_WEBHOOK_EVENTS
    return events


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
    wanted = list(dict.fromkeys(wanted_events()))
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
    hooks = list(existing.values())
    for attempt in range(1, 4):
        missing = [
            event for event in wanted if event not in {hook["event"] for hook in hooks}
        ]
        if not missing:
            break
        if attempt == 3:
            raise ShoptetBadRequest(
                f"webhooks still not registered after retries: {', '.join(missing)}",
                endpoint="POST /api/webhooks",
            )
        for start in range(0, len(missing), REGISTRATION_BATCH):
            _register(eshop, client, missing[start : start + REGISTRATION_BATCH], url)
        hooks = _list_webhooks(client)
    registered = {hook["event"]: int(hook["id"]) for hook in _list_webhooks(client)}
    Eshop.objects.filter(pk=eshop.pk).update(
        webhooks=registered, updated_at=timezone.now()
    )
    eshop.webhooks = registered
    return registered


def _register(eshop: Eshop, client: ShoptetClient, events: list[str], url: str) -> None:
    try:
        client.post(
            "/api/webhooks",
            json={"data": [{"event": event, "url": url} for event in events]},
        )
    except ShoptetBadRequest as exc:
        # "Already exists" means a parallel run registered some of them: the caller re-lists and
        # registers what is still missing. Anything else (409 mutually exclusive events, 422 for
        # an event name Shoptet does not know) needs an operator.
        if not _already_exists(exc):
            raise
        logger.info(
            "eshop_id=%s: some webhooks already existed; re-listing", eshop.eshop_id
        )
    else:
        logger.info(
            "eshop_id=%s: webhooks registered: %s", eshop.eshop_id, ", ".join(events)
        )


def _already_exists(exc: ShoptetBadRequest) -> bool:
    # UNCERTAIN: Shoptet documents the message ("Webhook already exists for this event"), not the code.
    texts = [
        exc.error_code or "",
        exc.message,
        *(str(item.get("message", "")) for item in exc.errors),
    ]
    return exc.status_code == 422 and any("exist" in text.lower() for text in texts)


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
