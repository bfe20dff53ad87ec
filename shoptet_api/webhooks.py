"""Webhooks from Shoptet: receive (verify the raw body, store in the inbox, answer 200), then process.

Receiving is fast and trusts nothing before the signature: `Shoptet-Webhook-Signature` is the hex
HMAC-SHA1 of the raw request body with the installation's key (reference §4.3). A delivery is one
inbox row, unique on (eshopId, event, eventInstance, eventCreated), so a redelivery is acknowledged
and not processed twice. Processing happens in Celery: a handler per event name, retries with
backoff, then a dead-letter state an operator can replay from the admin.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from django.conf import settings
from django.db import connection, models, transaction
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from addon_project import logging_context, metrics
from addon_project.background import in_background
from addon_project.client_ip import client_ip, ip_in_networks
from eshops.models import LIFECYCLE_EVENT_MAX_AHEAD, Eshop
from shoptet_api import retry, tokens, verdicts
from shoptet_api.errors import (
    AddonNotInstalled,
    AddonSuspended,
    ProcessingPaused,
    ShoptetAPIError,
    ShoptetOAuthError,
)
from shoptet_api.models import WebhookEvent
from shoptet_api.provisioning import refresh_eshop_details
from shoptet_api.types import JSONTooDeep, ResponseShapeError, load_json

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


# Shoptet's body is one flat object; anything nested deeper than this is not a webhook (checked
# by load_json before it parses, so a 20,000-deep body costs one scan).
MAX_JSON_DEPTH = 16
# eventCreated must be a plausible instant: PostgreSQL stores a year-1 date with a positive offset
# as a BC timestamp Python cannot read back (a poison row), and a far-future one would make every
# later lifecycle event look stale. UTC offsets in use run from -12:00 to +14:00.
OLDEST_EVENT = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
EVENT_CREATED_MAX_AHEAD = LIFECYCLE_EVENT_MAX_AHEAD
MAX_UTC_OFFSET = dt.timedelta(hours=14)


VERIFY_FIELDS = (
    "id",
    "eshop_id",
    "webhook_signature_key",
    "previous_signature_key",
    "signature_key_renewed_at",
)


@functools.cache
def _tenant_statement(vendor: str) -> str:
    quote = connection.ops.quote_name
    meta = Eshop._meta
    column = {field.name: str(field.column) for field in meta.concrete_fields}
    columns = ", ".join(quote(column[name]) for name in VERIFY_FIELDS)
    key = quote(column["eshop_id"])
    return f"SELECT {columns} FROM {quote(meta.db_table)} WHERE {key} = %s"  # noqa: S608


def _tenant(eshop_id: int) -> Eshop | None:
    """The e-shop with only the columns verification needs (the others stay deferred).

    Its OAuth token and JSON columns are not read, decrypted or parsed on every delivery, and the
    statement is built once: the ORM's query compilation cost a delivery more than the query.
    """
    found = Eshop.objects.raw(_tenant_statement(connection.vendor), [eshop_id])
    return next(iter(found), None)


def _load(body: bytes) -> dict[str, Any] | str:
    """The body as a JSON object, or the reason it is not one; safe on any input."""
    try:
        # Strictly UTF-8 (json.loads(bytes) would also guess UTF-16/32), and no NUL anywhere:
        # PostgreSQL text cannot store it.
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "body is not UTF-8 JSON"
    try:
        payload = load_json(text, max_depth=MAX_JSON_DEPTH)
    except JSONTooDeep:
        return "body is nested too deeply"
    except ResponseShapeError:
        return "body is not UTF-8 JSON"
    if "\x00" in text or "\\u0000" in text:
        return "body contains NUL characters"
    if not isinstance(payload, dict):
        return "body is not a JSON object"
    eshop_id = payload.get("eshopId")
    if isinstance(eshop_id, bool) or not isinstance(eshop_id, int) or eshop_id <= 0:
        return "eshopId is missing or not a positive integer"
    return payload


def _event_created(value: object) -> dt.datetime | str:
    """eventCreated as an aware datetime inside the sane window, or the reason it is not."""
    if not isinstance(value, str):
        return "eventCreated is missing"
    try:
        # Shoptet's format, 2019-01-08T15:13:39+0100 (offset without a colon), parses on 3.11.
        created_at = dt.datetime.fromisoformat(value)
    except ValueError:
        return "eventCreated is not a date-time"
    offset = created_at.utcoffset()
    if offset is None:
        return "eventCreated has no UTC offset"
    if abs(offset) > MAX_UTC_OFFSET or offset % dt.timedelta(minutes=1):
        return "eventCreated has an impossible UTC offset"
    try:
        in_utc = created_at.astimezone(dt.UTC)
    except OverflowError:
        return "eventCreated is out of range"
    if not OLDEST_EVENT <= in_utc <= timezone.now() + EVENT_CREATED_MAX_AHEAD:
        return "eventCreated is out of range"
    return created_at


def _fields(payload: dict[str, Any]) -> dict[str, Any] | str:
    """The four documented fields of an authenticated body, or the reason they are not valid."""
    event, instance = payload.get("event"), payload.get("eventInstance")
    if not isinstance(event, str) or not 0 < len(event) <= 64:
        return "event is missing or invalid"
    if not isinstance(instance, str | int) or isinstance(instance, bool):
        return "eventInstance is missing or invalid"
    created_at = _event_created(payload.get("eventCreated"))
    if isinstance(created_at, str):
        return created_at
    return {
        "eshop_id": payload["eshopId"],
        "event": event,
        "instance": str(instance),
        "created": payload["eventCreated"],
        "created_at": created_at,
    }


@csrf_exempt
@require_POST
def receive(request: HttpRequest) -> JsonResponse:
    """`POST /webhooks/shoptet/`: verify, store, acknowledge. The work happens in Celery.

    In order: size, a depth-bounded parse (the signing key is the one of the body's eshopId),
    the signature over the raw bytes, then the other fields; every refusal is a 4xx.
    """
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
    payload = _load(body)
    if isinstance(payload, str):
        metrics.observe_webhook_delivery(None, "bad_request")
        return _refuse(400, payload, source=client_ip(request))
    claimed_event = payload.get("event")
    event_name = claimed_event[:64] if isinstance(claimed_event, str) else None
    logging_context.bind(eshop_id=payload["eshopId"])  # as claimed: verified just below
    eshop = _tenant(payload["eshopId"])
    if eshop is None:
        metrics.observe_webhook_delivery(event_name, "unknown_eshop")
        return _refuse(
            404, "unknown eshopId", eshop_id=payload["eshopId"], event=event_name
        )

    signature = request.headers.get(SIGNATURE_HEADER, "")
    verified_by = verify(eshop, body, signature)
    if event_name is not None and event_name.startswith(LIFECYCLE_PREFIX):
        # Whether Shoptet signs addon:* events, and with which key, is not documented: record what
        # arrives so the policy can be tightened once real deliveries have been seen.
        logger.info(
            "lifecycle webhook %s eshop_id=%s signature=%s verified=%s",
            event_name,
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
        metrics.observe_webhook_delivery(event_name, "bad_signature")
        return _refuse(
            401,
            reason,
            eshop_id=eshop.eshop_id,
            event=event_name,
            source=client_ip(request),
        )

    parsed = _fields(payload)
    if isinstance(parsed, str):
        metrics.observe_webhook_delivery(event_name, "bad_request")
        return _refuse(400, parsed, eshop_id=eshop.eshop_id, source=client_ip(request))
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
    event = WebhookEvent(
        eshop=eshop,
        event=parsed["event"],
        event_instance=parsed["instance"],
        event_created=parsed["created_at"],
        dedup_key=dedup_key,
        raw_body=body.decode(),
        headers=headers,
        verified_by=verified_by,
    )
    if not _insert_unless_stored(event):
        # Shoptet redelivered (or delivered in parallel): the first row stands.
        return WebhookEvent.objects.get(dedup_key=dedup_key), False
    transaction.on_commit(partial(_enqueue, event.pk), robust=True)
    return event, True


@functools.cache
def _insert_statement(vendor: str) -> tuple[str, tuple[models.Field[Any, Any], ...]]:
    """INSERT … ON CONFLICT (dedup_key) DO NOTHING RETURNING id, and the fields it fills."""
    quote = connection.ops.quote_name
    meta = WebhookEvent._meta
    fields = tuple(field for field in meta.concrete_fields if not field.primary_key)
    columns = ", ".join(quote(str(field.column)) for field in fields)
    placeholders = ", ".join(["%s"] * len(fields))
    table, key, pk = meta.db_table, quote("dedup_key"), quote(meta.pk.attname)
    # Names from the model's own metadata; every value is a parameter.
    sql = (
        f"INSERT INTO {quote(table)} ({columns}) VALUES ({placeholders}) "  # noqa: S608
        f"ON CONFLICT ({key}) DO NOTHING RETURNING {pk}"
    )
    return sql, fields


def _insert_unless_stored(event: WebhookEvent) -> bool:
    """Store a new inbox row; False (nothing written) when its dedup_key is already stored.

    One statement, atomic on its own: no BEGIN/COMMIT round trips, and a redelivery raises no
    IntegrityError (so it needs no savepoint either). Values are prepared by each field, as
    `Model.save()` would (defaults, auto_now_add, JSON, encryption).
    """
    sql, fields = _insert_statement(connection.vendor)
    params = [
        field.get_db_prep_save(field.pre_save(event, add=True), connection)
        for field in fields
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return False
    event.pk = row[0]
    event._state.adding = False
    return True


# Received rows not yet published, with the request id that received each: rows that arrive
# together share one task message (publishing costs a delivery more CPU than storing it,
# bench/ingest.py), at most PUBLISH_BATCH per message. `_publish_scheduled` says a publish is
# already waiting on the background thread, so each row schedules at most one.
PUBLISH_BATCH = 100
_unpublished: list[tuple[int, str | None]] = []
_unpublished_lock = threading.Lock()
_publish_scheduled = False


def _enqueue(event_pk: int) -> None:
    global _publish_scheduled
    with _unpublished_lock:
        _unpublished.append((event_pk, logging_context.current_request_id()))
        schedule, _publish_scheduled = not _publish_scheduled, True
    # Never on the request's clock: Shoptet waits 4 s; redeliver_webhooks covers a lost
    # publish. Rows received before the background thread gets to it go in the same message.
    if schedule and not in_background(publish_received):
        with (
            _unpublished_lock
        ):  # dropped (the thread is far behind): the next row tries again
            _publish_scheduled = False


def publish_received() -> None:
    """Queue every received row not yet published (`process_webhooks`, in batches)."""
    global _publish_scheduled
    from shoptet_api.tasks import process_webhooks  # tasks import this module

    with _unpublished_lock:
        batch = _unpublished[:]
        _unpublished.clear()
        _publish_scheduled = False
    for start in range(0, len(batch), PUBLISH_BATCH):
        process_webhooks.delay(
            [
                [pk, request_id]
                for pk, request_id in batch[start : start + PUBLISH_BATCH]
            ]
        )


def _forget_unpublished_after_fork() -> None:
    # A forked child holds a copy of the parent's list: those rows are the parent's to publish.
    global _unpublished_lock, _publish_scheduled
    _unpublished.clear()
    _unpublished_lock = threading.Lock()
    _publish_scheduled = False


os.register_at_fork(after_in_child=_forget_unpublished_after_fork)


# --- Processing ----------------------------------------------------------------------------------


def retry_delay(attempts: int) -> float:
    """Backoff before attempt `attempts + 1`: 30 s, 2 min, 8 min, 32 min, … capped at 2 h."""
    return retry.webhook_delay(attempts)


def claim_lease() -> dt.timedelta:
    """How long a claim lasts: past the task's hard time limit, the worker is surely gone."""
    return dt.timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 60)


def _claimable(now: dt.datetime) -> models.Q:
    """Rows a worker may claim: new, failed and due, or claimed by a worker whose lease ran out."""
    return (
        models.Q(status=WebhookEvent.Status.RECEIVED)
        | models.Q(status=WebhookEvent.Status.FAILED, next_attempt_at__isnull=True)
        | models.Q(status=WebhookEvent.Status.FAILED, next_attempt_at__lte=now)
        | models.Q(status=WebhookEvent.Status.PROCESSING, claimed_until__lt=now)
    )


def _claim(event_pk: int) -> tuple[int, str, int] | None:
    """Claim one row for this worker: (attempt number, event name, eshop_id), or None.

    One short transaction that counts the attempt up front, so a row that crashes its worker
    (or cannot even be loaded) still walks towards dead-letter. Reads only plain columns: a row
    whose other values Python cannot load is still claimed.
    """
    now = timezone.now()
    with transaction.atomic():
        # skip_locked: a row another worker is claiming right now is theirs (PostgreSQL; SQLite
        # serialises writers instead). of=("self",): never lock the e-shop row.
        locked = (
            WebhookEvent.objects.select_for_update(skip_locked=True, of=("self",))
            .filter(_claimable(now), pk=event_pk)
            .values_list("pk", flat=True)
            .first()
        )
        if locked is None:
            return None
        WebhookEvent.objects.filter(pk=event_pk).update(
            status=WebhookEvent.Status.PROCESSING,
            claimed_until=now + claim_lease(),
            attempts=models.F("attempts") + 1,
        )
        attempt, event, eshop_id = (
            WebhookEvent.objects.filter(pk=event_pk)
            .values_list("attempts", "event", "eshop__eshop_id")
            .get()
        )
    return attempt, event, eshop_id


def _record(event_pk: int, attempt: int, **outcome: Any) -> bool:
    """Store the outcome if the claim of `attempt` is still ours; False when it was taken over."""
    with transaction.atomic():
        return bool(
            WebhookEvent.objects.filter(
                pk=event_pk, status=WebhookEvent.Status.PROCESSING, attempts=attempt
            ).update(claimed_until=None, **outcome)
        )


def _failure(exc: Exception) -> dict[str, Any]:
    return {"last_error": f"{type(exc).__name__}: {exc}"[:2000]}


def _run(event_pk: int) -> tuple[str, dict[str, Any], bool]:
    """Load the row and run its handler, with no transaction open.

    Returns the status, the fields to store and whether a handler ran.
    """
    try:
        # Loaded here, not in the claim: a value Python cannot read fails this attempt only.
        event = WebhookEvent.objects.select_related("eshop").get(pk=event_pk)
    except Exception as exc:  # an unreadable row must still walk towards dead-letter
        return WebhookEvent.Status.FAILED, _failure(exc), False
    handler = HANDLERS.get(event.event)
    if handler is None:
        return (
            WebhookEvent.Status.IGNORED,
            {"result": "no handler for this event"},
            False,
        )
    try:
        # Handlers call Shoptet (retries, token waits) outside any transaction: each keeps its
        # own writes short and atomic, and is safe to run again after a crash.
        result = handler(event)[:255]
    except (AddonSuspended, AddonNotInstalled, ProcessingPaused) as exc:
        # The tenant cannot use the API now; retrying would not help.
        _apply_verdict(event.eshop, exc)
        return WebhookEvent.Status.IGNORED, {"result": f"skipped: {exc}"[:255]}, True
    except Exception as exc:  # any handler bug must land in the inbox, not vanish
        return WebhookEvent.Status.FAILED, _failure(exc), True
    return WebhookEvent.Status.PROCESSED, {"result": result, "last_error": ""}, True


def process_event(event_pk: int) -> float | None:
    """Run the handler of one inbox row; the seconds until its retry, or None when settled.

    Claim (a short transaction: status "processing", a lease, the attempt counted), run (no
    transaction open around the handler's HTTP work, no row lock held), record (a short
    transaction, only if the claim is still ours). A worker that dies mid-run leaves a claim
    whose lease expires; the redelivery sweep then runs the row again.
    """
    claimed = _claim(event_pk)
    if claimed is None:
        return None  # settled, not yet due, or in another worker's hands
    attempt, event_name, eshop_id = claimed
    logging_context.bind(eshop_id=eshop_id)
    started = time.perf_counter()
    status, outcome, ran = _run(event_pk)
    elapsed = time.perf_counter() - started if ran else None
    retry_in = None
    now = timezone.now()
    if status == WebhookEvent.Status.FAILED:
        if attempt >= settings.SHOPTET_WEBHOOK_MAX_ATTEMPTS:
            status = WebhookEvent.Status.DEAD
            logger.error(
                "webhook id=%s %s dead after %s attempts: %s",
                event_pk,
                event_name,
                attempt,
                outcome["last_error"],
            )
        else:
            retry_in = retry_delay(attempt)
            outcome["next_attempt_at"] = now + dt.timedelta(seconds=retry_in)
            logger.warning(
                "webhook id=%s %s failed (attempt %s), retry in %.0f s: %s",
                event_pk,
                event_name,
                attempt,
                retry_in,
                outcome["last_error"],
            )
    else:
        outcome.update(processed_at=now, next_attempt_at=None)
    if not _record(event_pk, attempt, status=status, **outcome):
        logger.warning(
            "webhook id=%s %s: claim of attempt %s was taken over; outcome %s dropped",
            event_pk,
            event_name,
            attempt,
            status,
        )
        return None
    metrics.observe_webhook_processing(event_name, status, elapsed)
    return retry_in


def _apply_verdict(eshop: Eshop, exc: ShoptetAPIError) -> None:
    """Apply what Shoptet itself said about the installation (local refusals carry no status).

    Guarded by the OAuth token the handler's tenant object holds: a reinstall that committed
    meanwhile replaced it, and the answer says nothing about the new installation.
    """
    verdicts.apply_verdict(eshop, exc)


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
    """Ask getAccessToken whether the installation still exists (mints one token if it does).

    Only its explicit `addon_not_installed` says "gone". A 401 does not: a wrong
    SHOPTET_OAUTH_URL or client gets one for every shop, and an uninstall cannot be undone.
    """
    try:
        tokens.renew_if_expiring(eshop, within=float("inf"))
    except ShoptetOAuthError as exc:
        return verdicts.verdict_of(exc) == Eshop.Status.UNINSTALLED
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
    if eshop.api_refusal is not None:
        return f"skipped: e-shop is {eshop.api_refusal}"
    refresh_eshop_details(eshop)
    return f"url {eshop.url}"
