"""Webhooks from Shoptet: receive (verify the raw body, store in the inbox, answer 200), then process.

Receiving is fast and trusts nothing before the signature: `Shoptet-Webhook-Signature` is the hex
HMAC-SHA1 of the raw request body with the installation's key (reference §4.3). A delivery is one
inbox row, unique on (eshopId, event, eventInstance, eventCreated), so a redelivery is acknowledged
and not processed twice. Processing happens in Celery: a handler per event name, retries with
backoff, then a dead-letter state an operator can replay from the admin.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from addon_project import logging_context, metrics
from addon_project.celery import in_background
from addon_project.client_ip import client_ip, ip_in_networks
from eshops.models import Eshop
from shoptet_api import tokens
from shoptet_api.errors import (
    AddonNotInstalled,
    AddonSuspended,
    ProcessingPaused,
    ShoptetAPIError,
    ShoptetOAuthError,
)
from shoptet_api.models import WebhookEvent
from shoptet_api.provisioning import refresh_eshop_details

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "Shoptet-Webhook-Signature"
_SIGNATURE_FORMAT = re.compile(r"[0-9a-f]{40}")
LIFECYCLE_PREFIX = "addon:"
# Headers kept with each inbox row: enough to debug a delivery, nothing secret.
KEPT_HEADERS = ("Content-Type", "User-Agent", "Content-Length", SIGNATURE_HEADER)

Handler = Callable[[WebhookEvent], str]
HANDLERS: dict[str, Handler] = {}


def webhook_handler(event: str) -> Callable[[Handler], Handler]:
    """Register `function(event_row) -> result text` as the handler of one Shoptet event."""

    def register(function: Handler) -> Handler:
        if event in HANDLERS:
            raise ValueError(f"a handler for {event!r} is already registered")
        HANDLERS[event] = function
        return function

    return register


# --- Verification --------------------------------------------------------------------------------


def signature_of(body: bytes, key: str) -> str:
    """Hex HMAC-SHA1 of the raw body, as Shoptet computes it."""
    return hmac.new(key.encode(), body, hashlib.sha1).hexdigest()


def _matches(body: bytes, key: str | None, signature: str) -> bool:
    return bool(key) and hmac.compare_digest(
        signature_of(body, str(key)).encode(), signature.encode()
    )


def verify(eshop: Eshop, body: bytes, signature: str) -> str | None:
    """How the body is authenticated ("key", "previous-key"), or None when it is not."""
    signature = signature.strip().lower()
    if not _SIGNATURE_FORMAT.fullmatch(signature):
        return None  # absent, or not a hex SHA-1 at all: nothing to compare
    if _matches(body, eshop.webhook_signature_key, signature):
        return "key"
    renewed = eshop.signature_key_renewed_at
    window = dt.timedelta(seconds=settings.SHOPTET_WEBHOOK_KEY_ROTATION_WINDOW)
    if (
        renewed is not None
        and timezone.now() - renewed <= window
        and _matches(body, eshop.previous_signature_key, signature)
    ):
        # Signed before our last renew-signature-key: accepted for a while, and logged to tune it.
        logger.info(
            "webhook for eshop_id=%s verified with the previous key", eshop.eshop_id
        )
        return "previous-key"
    return None


# --- Receiver ------------------------------------------------------------------------------------


def _refuse(status: int, reason: str, **log_fields: Any) -> JsonResponse:
    details = " ".join(f"{k}={v}" for k, v in log_fields.items())
    logger.warning("webhook refused (%s): %s %s", status, reason, details)
    return JsonResponse({"error": reason}, status=status)


def _parse(body: bytes) -> dict[str, Any] | str:
    """The four documented fields, or the reason the body is not a Shoptet webhook."""
    try:
        # Strictly UTF-8 (json.loads(bytes) would also guess UTF-16/32), and no NUL anywhere:
        # PostgreSQL text cannot store it.
        text = body.decode("utf-8")
        payload = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        return "body is not UTF-8 JSON"
    if "\x00" in text or "\\u0000" in text:
        return "body contains NUL characters"
    if not isinstance(payload, dict):
        return "body is not a JSON object"
    eshop_id, event = payload.get("eshopId"), payload.get("event")
    created, instance = payload.get("eventCreated"), payload.get("eventInstance")
    if isinstance(eshop_id, bool) or not isinstance(eshop_id, int) or eshop_id <= 0:
        return "eshopId is missing or not a positive integer"
    if not isinstance(event, str) or not 0 < len(event) <= 64:
        return "event is missing or invalid"
    if not isinstance(instance, str | int) or isinstance(instance, bool):
        return "eventInstance is missing or invalid"
    if not isinstance(created, str):
        return "eventCreated is missing"
    try:
        # Shoptet's format, 2019-01-08T15:13:39+0100 (offset without a colon), parses on 3.11.
        created_at = dt.datetime.fromisoformat(created)
    except ValueError:
        return "eventCreated is not a date-time"
    if created_at.tzinfo is None:
        return "eventCreated has no UTC offset"
    return {
        "eshop_id": eshop_id,
        "event": event,
        "instance": str(instance),
        "created": created,
        "created_at": created_at,
    }


@csrf_exempt
@require_POST
def receive(request: HttpRequest) -> JsonResponse:
    """`POST /webhooks/shoptet/`: verify, store, acknowledge. The work happens in Celery."""
    declared = str(request.META.get("CONTENT_LENGTH") or "0")
    if not declared.isdigit():
        metrics.observe_webhook_delivery(None, "bad_request")
        return _refuse(400, "invalid Content-Length")
    if int(declared) > settings.SHOPTET_WEBHOOK_MAX_BODY:
        metrics.observe_webhook_delivery(None, "too_large")
        return _refuse(413, "body too large")
    body = request.body  # the raw bytes, read once: the signature is over exactly these
    if len(body) > settings.SHOPTET_WEBHOOK_MAX_BODY:
        metrics.observe_webhook_delivery(None, "too_large")
        return _refuse(413, "body too large")
    parsed = _parse(body)
    if isinstance(parsed, str):
        metrics.observe_webhook_delivery(None, "bad_request")
        return _refuse(400, parsed, source=client_ip(request))
    logging_context.bind(eshop_id=parsed["eshop_id"])  # as claimed: verified just below
    eshop = Eshop.objects.filter(eshop_id=parsed["eshop_id"]).first()
    if eshop is None:
        metrics.observe_webhook_delivery(parsed["event"], "unknown_eshop")
        return _refuse(
            404, "unknown eshopId", eshop_id=parsed["eshop_id"], event=parsed["event"]
        )

    signature = request.headers.get(SIGNATURE_HEADER, "")
    verified_by = verify(eshop, body, signature)
    if parsed["event"].startswith(LIFECYCLE_PREFIX):
        # Whether Shoptet signs addon:* events, and with which key, is not documented: record what
        # arrives so the policy can be tightened once real deliveries have been seen.
        logger.info(
            "lifecycle webhook %s eshop_id=%s signature=%s verified=%s",
            parsed["event"],
            eshop.eshop_id,
            "present" if signature else "absent",
            verified_by or "no",
        )
        if (
            verified_by is None
            and settings.SHOPTET_LIFECYCLE_WEBHOOK_POLICY == "signed_or_network"
        ) and ip_in_networks(
            client_ip(request), settings.SHOPTET_WEBHOOK_ALLOWED_NETWORKS
        ):
            verified_by = "network"
    if verified_by is None:
        reason = "signature missing" if not signature.strip() else "signature invalid"
        metrics.observe_webhook_delivery(parsed["event"], "bad_signature")
        return _refuse(
            401,
            reason,
            eshop_id=eshop.eshop_id,
            event=parsed["event"],
            source=client_ip(request),
        )

    event, created = _store(request, eshop, parsed, body, verified_by)
    metrics.observe_webhook_delivery(
        parsed["event"], "accepted" if created else "duplicate"
    )
    if not created:
        logger.info(
            "webhook duplicate acknowledged: eshop_id=%s event=%s",
            eshop.eshop_id,
            parsed["event"],
        )
        return JsonResponse({"status": "duplicate"})
    logger.info(
        "webhook accepted: eshop_id=%s event=%s id=%s",
        eshop.eshop_id,
        parsed["event"],
        event.pk,
    )
    return JsonResponse({"status": "accepted"})


def _store(
    request: HttpRequest,
    eshop: Eshop,
    parsed: dict[str, Any],
    body: bytes,
    verified_by: str,
) -> tuple[WebhookEvent, bool]:
    dedup_key = WebhookEvent.make_dedup_key(
        eshop_id=eshop.eshop_id,
        event=parsed["event"],
        event_instance=parsed["instance"],
        event_created=parsed["created"],
    )
    headers = {
        name: request.headers[name] for name in KEPT_HEADERS if name in request.headers
    }
    headers["source"] = client_ip(request)
    try:
        with transaction.atomic():
            event = WebhookEvent.objects.create(
                eshop=eshop,
                event=parsed["event"],
                event_instance=parsed["instance"],
                event_created=parsed["created_at"],
                dedup_key=dedup_key,
                raw_body=body.decode(),
                headers=headers,
                verified_by=verified_by,
            )
            transaction.on_commit(partial(_enqueue, event.pk), robust=True)
    except IntegrityError:
        # Shoptet redelivered (or delivered in parallel): the first row stands.
        return WebhookEvent.objects.get(dedup_key=dedup_key), False
    return event, True


def _enqueue(event_pk: int) -> None:
    from shoptet_api.tasks import process_webhook  # tasks import this module

    # Never on the request's clock: Shoptet waits 4 s; redeliver_webhooks covers a lost publish.
    in_background(process_webhook.delay, event_pk)


# --- Processing ----------------------------------------------------------------------------------


def retry_delay(attempts: int) -> float:
    """Backoff before attempt `attempts + 1`: 30 s, 2 min, 8 min, 32 min, … capped at 2 h."""
    return float(min(30 * 4 ** (attempts - 1), 7200))


def process_event(event_pk: int) -> float | None:
    """Run the handler of one inbox row; the seconds until its retry, or None when settled.

    The row is locked for the whole run (a second worker skips it) and the handler's writes share
    its transaction through a savepoint: a failed handler leaves nothing half-done behind.
    """
    with transaction.atomic():
        event = (
            # of=("self",): lock only the inbox row; locking the joined e-shop too would make
            # every other event of the shop (and any transition) skip or wait.
            WebhookEvent.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("eshop")
            .filter(
                pk=event_pk,
                status__in=[WebhookEvent.Status.RECEIVED, WebhookEvent.Status.FAILED],
            )
            .first()
        )
        if event is None:
            return None  # processed already, dead, or in another worker's hands
        logging_context.bind(eshop_id=event.eshop.eshop_id)
        if (
            event.status == WebhookEvent.Status.FAILED
            and event.next_attempt_at
            and event.next_attempt_at > timezone.now()
        ):
            # An early duplicate of the retry task: keep the backoff, do not burn an attempt.
            # The scheduled retry (or the redeliver sweep, if it was lost) will run it.
            return None
        event.attempts += 1
        started = time.perf_counter()
        handler = HANDLERS.get(event.event)
        retry_in = None
        if handler is None:
            event.status, event.result = (
                WebhookEvent.Status.IGNORED,
                "no handler for this event",
            )
        else:
            try:
                with transaction.atomic():
                    event.result = handler(event)[:255]
            except (AddonSuspended, AddonNotInstalled, ProcessingPaused) as exc:
                # The tenant cannot use the API now; retrying would not help. A status change
                # the client made went down with the savepoint: make it again out here.
                _apply_verdict(event.eshop, exc)
                event.status, event.result = (
                    WebhookEvent.Status.IGNORED,
                    f"skipped: {exc}"[:255],
                )
            except (
                Exception
            ) as exc:  # any handler bug must land in the inbox, not vanish
                event.last_error = f"{type(exc).__name__}: {exc}"[:2000]
                if event.attempts >= settings.SHOPTET_WEBHOOK_MAX_ATTEMPTS:
                    event.status = WebhookEvent.Status.DEAD
                    logger.error(
                        "webhook id=%s %s dead after %s attempts: %s",
                        event.pk,
                        event.event,
                        event.attempts,
                        event.last_error,
                    )
                else:
                    event.status = WebhookEvent.Status.FAILED
                    retry_in = retry_delay(event.attempts)
                    event.next_attempt_at = timezone.now() + dt.timedelta(
                        seconds=retry_in
                    )
                    logger.warning(
                        "webhook id=%s %s failed (attempt %s), retry in %.0f s: %s",
                        event.pk,
                        event.event,
                        event.attempts,
                        retry_in,
                        event.last_error,
                    )
            else:
                event.status = WebhookEvent.Status.PROCESSED
                event.last_error = ""
        if event.status in (WebhookEvent.Status.PROCESSED, WebhookEvent.Status.IGNORED):
            event.processed_at = timezone.now()
            event.next_attempt_at = None
        event.save()
        metrics.observe_webhook_processing(
            event.event,
            event.status,
            time.perf_counter() - started if handler else None,
        )
        return retry_in


def _apply_verdict(eshop: Eshop, exc: ShoptetAPIError) -> None:
    """Apply what Shoptet itself said about the installation (local refusals carry no status)."""
    if exc.status_code is None:
        return
    if isinstance(exc, AddonSuspended):
        eshop.transition(
            Eshop.Status.SUSPENDED,
            reason=f"{exc.endpoint}: {exc.error_code}",
            source="shoptet",
        )
    elif isinstance(exc, AddonNotInstalled):
        eshop.transition(
            Eshop.Status.UNINSTALLED,
            reason=f"{exc.endpoint}: {exc.error_code}",
            source="shoptet",
        )


def replay(events: Any) -> int:
    """Put dead or failed events back in the queue (operator action); returns how many."""
    pks = list(
        events.filter(
            status__in=[WebhookEvent.Status.DEAD, WebhookEvent.Status.FAILED]
        ).values_list("pk", flat=True)
    )
    WebhookEvent.objects.filter(pk__in=pks).update(
        status=WebhookEvent.Status.RECEIVED, attempts=0, next_attempt_at=None
    )
    for pk in pks:
        transaction.on_commit(partial(_enqueue, pk), robust=True)
    return len(pks)


# --- Built-in handlers: the addon lifecycle and the e-shop's domain --------------------------------


# Moves that cannot be undone by a later event. When such an event was authenticated only by its
# source network (unsigned), Shoptet's OAuth server must confirm it first: the network is shared
# by every partner's addon, and an unsigned body does not say which addon it is about.
IRREVERSIBLE = {Eshop.Status.TERMINATED, Eshop.Status.UNINSTALLED}


def _installation_gone(eshop: Eshop) -> bool:
    """Ask getAccessToken whether the installation still exists (mints one token if it does)."""
    try:
        tokens.renew_if_expiring(eshop, within=float("inf"))
    except AddonNotInstalled:
        return True
    except ShoptetOAuthError as exc:
        return exc.status_code == 401
    return False


def _lifecycle(to: str) -> Handler:
    def handle(event: WebhookEvent) -> str:
        if (
            to in IRREVERSIBLE
            and event.verified_by == "network"
            and not _installation_gone(event.eshop)
        ):
            logger.warning(
                "unsigned %s for eshop_id=%s not confirmed by Shoptet; ignored",
                event.event,
                event.eshop.eshop_id,
            )
            return "not applied: Shoptet still issues tokens for this installation"
        moved = event.eshop.transition(
            to,
            reason=f"webhook {event.event}",
            source="webhook",
            occurred_at=event.event_created,
        )
        return (
            f"status -> {to}" if moved else f"no change (status {event.eshop.status})"
        )

    return handle


webhook_handler("addon:suspend")(_lifecycle(Eshop.Status.SUSPENDED))
webhook_handler("addon:approve")(_lifecycle(Eshop.Status.ACTIVE))
webhook_handler("addon:terminate")(_lifecycle(Eshop.Status.TERMINATED))
webhook_handler("addon:uninstall")(_lifecycle(Eshop.Status.UNINSTALLED))


@webhook_handler("eshop:projectDomain")
def update_project_domain(event: WebhookEvent) -> str:
    """The e-shop's domain changed: read the new URL from /api/eshop."""
    eshop = event.eshop
    if eshop.status != Eshop.Status.ACTIVE:
        return f"skipped: e-shop is {eshop.status}"
    refresh_eshop_details(eshop)
    return f"url {eshop.url}"
