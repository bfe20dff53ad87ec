"""Celery tasks: ids in, one call each, explicit names. Transient Shoptet errors retry with backoff
(a 429 waits for its Retry-After); permanent ones stop, the tenant's status already changed."""

from __future__ import annotations

import collections
import datetime as dt
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis
from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import models
from django.db.models.functions import Cast
from django.utils import timezone

from addon_project import logging_context
from addon_project.encryption import DecryptionError, decrypt
from eshops.models import Eshop
from shoptet_api import retry, tokens, webhooks
from shoptet_api.client import ShoptetClient
from shoptet_api.errors import (
    AddonNotInstalled,
    AddonSuspended,
    ProcessingPaused,
    ShoptetAPIError,
)
from shoptet_api.models import WebhookEvent
from shoptet_api.provisioning import complete_install, sync_webhooks

logger = logging.getLogger(__name__)

MAX_RETRIES = 5
# Most post-install setups one sweep re-enqueues.
PENDING_SETUP_BATCH = 1000


class EshopTask(Task[[int], None]):
    """A task about one e-shop, called with its `eshop_id` (pretix `EventTask`).

    `for_eshop` loads the tenant, skips one that is gone or may not call the API (with a log
    line), runs the work, stops quietly on a permanent Shoptet verdict (the tenant's status has
    already changed) and retries only errors that say they are retryable, with the shared backoff
    (a 429 waits for its Retry-After).
    """

    max_retries = MAX_RETRIES

    def for_eshop(self, eshop_id: int, work: Callable[[Eshop], object]) -> None:
        """Run `work(eshop)` for the tenant `eshop_id` under this task's skip and retry rules."""
        logging_context.bind(eshop_id=eshop_id)
        eshop = Eshop.objects.filter(eshop_id=eshop_id).first()
        if eshop is None or not eshop.can_call_api:
            state = (
                "gone"
                if eshop is None
                else ("paused" if eshop.processing_paused_at else eshop.status)
            )
            logger.info("eshop_id=%s is %s; %s skipped", eshop_id, state, self.name)
            return
        try:
            work(eshop)
        except (AddonNotInstalled, AddonSuspended, ProcessingPaused) as exc:
            logger.warning("eshop_id=%s: %s; not retried", eshop_id, exc)
        except ShoptetAPIError as exc:
            if not exc.retryable or self.request.retries >= MAX_RETRIES:
                raise
            countdown = retry.task_countdown(exc, self.request.retries)
            logger.info(
                "eshop_id=%s: %s; retry %s in %.0f s",
                eshop_id,
                exc,
                self.request.retries + 1,
                countdown,
            )
            raise self.retry(
                exc=exc, countdown=countdown, max_retries=MAX_RETRIES
            ) from None


@shared_task(bind=True, base=EshopTask, name="shoptet_api.post_install")
def post_install(self: EshopTask, eshop_id: int) -> None:
    """After an install commits: first API token, webhook key and registrations, /api/eshop details."""
    self.for_eshop(eshop_id, complete_install)


@shared_task(name="shoptet_api.complete_pending_installs")
def complete_pending_installs() -> int:
    """Re-enqueue post-install setup that never ran or failed (broker down, Shoptet errors).

    Newest installs first, so a few shops whose setup keeps failing (a permission Shoptet
    refuses, a mistyped webhook event) cannot crowd out fresh ones; their failures are logged by
    post_install each time and they stay visible as pending in the operator dashboard.
    """
    cutoff = timezone.now() - dt.timedelta(minutes=2)
    pending = list(
        Eshop.objects.pending_setup(before=cutoff)
        .order_by("-last_installed_at")
        .values_list("eshop_id", flat=True)[:PENDING_SETUP_BATCH]
    )
    for eshop_id in pending:
        post_install.delay(eshop_id)
    if pending:
        logger.info("re-enqueued post-install setup for %s e-shops", len(pending))
    return len(pending)


@shared_task(name="shoptet_api.renew_expiring_tokens")
def renew_expiring_tokens() -> int:
    """Beat entry point: queue the renewal of every recently active e-shop whose token is due.

    Each renewal is timed for just before its token's margin, minus a random jitter, so tokens
    that expire together (10,000 shops installed at once) do not all renew in the same second.
    Shops due at about the same moment go out together as one `renew_token_chunk` (at most
    SHOPTET_TOKEN_RENEW_CHUNK shops): a hundred broker messages for 10,000 shops, not 10,000.
    Idle e-shops are skipped: they get a token on demand, so idle shops cost no calls.
    """
    now = time.time()
    interval = settings.SHOPTET_TOKEN_SWEEP_INTERVAL
    recent = tokens.recently_active_eshop_ids(
        since=now - settings.SHOPTET_TOKEN_ACTIVE_WINDOW
    )
    due: list[tuple[int, float]] = []
    for start in range(0, len(recent), 1000):
        chunk = recent[start : start + 1000]
        active = set(
            Eshop.objects.active()
            .filter(eshop_id__in=chunk)
            .values_list("eshop_id", flat=True)
        )
        due += tokens.renewal_due(sorted(active), now=now, horizon=interval * 1.5)
    chunks = tokens.renewal_chunks(due, size=settings.SHOPTET_TOKEN_RENEW_CHUNK)
    for eshop_ids, countdown in chunks:
        renew_token_chunk.apply_async((eshop_ids,), countdown=countdown)
    logger.info(
        "token sweep: %s recently active e-shops, %s renewals scheduled in %s chunks",
        len(recent),
        len(due),
        len(chunks),
    )
    return len(due)


@shared_task(name="shoptet_api.renew_token_chunk")
def renew_token_chunk(eshop_ids: list[int]) -> dict[str, int]:
    """Renew ahead the tokens of one chunk of e-shops queued by the sweep; outcome counts.

    One query loads the tenants that may still call the API (those paused, suspended or
    uninstalled since the sweep are skipped). The chunk is renewed in bulk steps (a few Redis
    round trips for the whole chunk, see `tokens.chunk`); the getAccessToken calls mostly wait
    for Shoptet, so up to SHOPTET_TOKEN_RENEW_THREADS run at once. One shop's failure never
    stops the others (see `_outcome`). One summary line per chunk; shops only when they fail.
    """
    eshops, undecryptable = _load_for_renewal(eshop_ids)
    outcomes: collections.Counter[str] = collections.Counter()
    skipped = len(set(eshop_ids)) - len(eshops) - undecryptable
    if skipped:
        outcomes["skipped"] = skipped
    if undecryptable:
        outcomes["failed"] = undecryptable
    try:
        results = tokens.renew_chunk_ahead(eshops, pool=_renewal_pool())
    except redis.RedisError as exc:
        # Nothing was minted; the next sweep finds these shops still due.
        logger.error(
            "token chunk: token store unreachable (%s); %s renewals failed",
            type(exc).__name__,
            len(eshops),
        )
        outcomes["failed"] += len(eshops)
    else:
        for eshop in eshops:
            outcomes[_outcome(eshop, result=results[eshop.eshop_id])] += 1
    logger.info(
        "token chunk: %s",
        ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items())),
    )
    return dict(outcomes)


def _load_for_renewal(eshop_ids: list[int]) -> tuple[list[Eshop], int]:
    """The tenants of a chunk that may still call the API, and how many of them were left out
    because their OAuth token cannot be decrypted (logged).

    The OAuth token is the only secret a renewal needs: the others stay encrypted. It is
    decrypted row by row, so that one tenant whose token no configured key decrypts (a key
    rotated away) fails alone instead of failing the whole chunk on every sweep.
    """
    rows = (
        Eshop.objects.active()
        .filter(eshop_id__in=eshop_ids, processing_paused_at__isnull=True)
        .defer("oauth_access_token", "webhook_signature_key", "previous_signature_key")
        # The stored ciphertext, as text: the field itself would decrypt it at load.
        .annotate(oauth_ciphertext=Cast("oauth_access_token", models.TextField()))
    )
    eshops: list[Eshop] = []
    undecryptable = 0
    for eshop in rows:
        ciphertext: str | None = eshop.oauth_ciphertext  # type: ignore[attr-defined]
        try:
            eshop.oauth_access_token = decrypt(ciphertext) if ciphertext else None
        except DecryptionError:
            logger.error(
                "eshop_id=%s: token renewal failed: its OAuth token cannot be decrypted "
                "with any key in FIELD_ENCRYPTION_KEYS",
                eshop.eshop_id,
            )
            undecryptable += 1
            continue
        eshops.append(eshop)
    return eshops, undecryptable


def _outcome(eshop: Eshop, *, result: bool | Exception) -> str:
    """How one shop of a chunk went, logged when it failed.

    Errors are handled as `EshopTask.for_eshop` handles them for `renew_api_token`: a permanent
    verdict (the tenant's status has already changed) stops quietly; a retryable error schedules
    `renew_api_token` for this shop alone, with the same backoff; anything else is logged.
    """
    if result is True:
        return "renewed"
    if result is False:
        return "fresh"
    exc = result
    if isinstance(exc, AddonNotInstalled | AddonSuspended | ProcessingPaused):
        logger.warning("eshop_id=%s: %s; not retried", eshop.eshop_id, exc)
        return "stopped"
    if isinstance(exc, ShoptetAPIError):
        if not exc.retryable:
            logger.error("eshop_id=%s: token renewal failed: %s", eshop.eshop_id, exc)
            return "failed"
        countdown = retry.task_countdown(exc, 0)
        renew_api_token.apply_async((eshop.eshop_id,), countdown=countdown)
        logger.info(
            "eshop_id=%s: %s; retried alone in %.0f s", eshop.eshop_id, exc, countdown
        )
        return "retrying"
    logger.error("eshop_id=%s: token renewal failed", eshop.eshop_id, exc_info=exc)
    return "failed"


_pool: ThreadPoolExecutor | None = None
_pool_pid = 0
_pool_lock = threading.Lock()


def _renewal_pool() -> ThreadPoolExecutor:
    """This process's renewal threads. They outlive a chunk so that each keeps its pooled HTTP
    connection to Shoptet (sessions are per thread); a forked worker child makes its own."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(
                max_workers=settings.SHOPTET_TOKEN_RENEW_THREADS,
                thread_name_prefix="token-renewal",
            )
            _pool_pid = os.getpid()
        return _pool


@shared_task(bind=True, base=EshopTask, name="shoptet_api.renew_api_token")
def renew_api_token(self: EshopTask, eshop_id: int) -> None:
    """Renew one e-shop's shared API token ahead of its expiry (single-flight, within the cap)."""
    self.for_eshop(eshop_id, tokens.renew_ahead)


@shared_task(name="shoptet_api.process_webhook")
def process_webhook(event_pk: int) -> None:
    """Run the handler of one inbox row; a failure schedules its own retry with backoff."""
    retry_in = webhooks.process_event(event_pk)
    # A later retry is left to redeliver_webhooks, which reads the row's next_attempt_at: a
    # countdown past the broker's visibility timeout would be delivered early, and twice.
    if retry_in is not None and retry_in <= retry.MAX_COUNTDOWN:
        process_webhook.apply_async((event_pk,), countdown=retry_in)


@shared_task(name="shoptet_api.process_webhooks")
def process_webhooks(deliveries: list[list[Any]]) -> None:
    """Run the inbox rows of deliveries that arrived together (webhooks.publish_received), each
    on its own and under the request id of the request that received it: one that fails
    schedules its own retry and never stops the others."""
    for event_pk, request_id in deliveries:
        with logging_context.bound(request_id=request_id):
            # A row failing outside its handler stays claimable: redeliver_webhooks runs it again.
            # The batch's time limit is not a row's failure: it ends the batch, and the rows not
            # run yet wait for redeliver_webhooks.
            try:
                process_webhook(int(event_pk))
            except SoftTimeLimitExceeded:
                raise
            except Exception:
                logger.exception(
                    "webhook event %s failed outside its handler", event_pk
                )


@shared_task(name="shoptet_api.redeliver_webhooks")
def redeliver_webhooks() -> int:
    """Re-enqueue inbox rows whose task was lost (broker down at receipt, worker crash, a retry
    due later than the longest countdown)."""
    now = timezone.now()
    due = WebhookEvent.objects.filter(
        models.Q(
            status=WebhookEvent.Status.RECEIVED,
            received_at__lt=now - dt.timedelta(minutes=2),
        )
        | models.Q(
            status=WebhookEvent.Status.FAILED,
            next_attempt_at__lt=now - dt.timedelta(minutes=2),
        )
        # A worker that died mid-run: its claim's lease has run out.
        | models.Q(status=WebhookEvent.Status.PROCESSING, claimed_until__lt=now)
    ).values_list("pk", flat=True)[:1000]
    pks = list(due)
    for pk in pks:
        process_webhook.delay(pk)
    if pks:
        logger.info("re-enqueued %s webhook events", len(pks))
    return len(pks)


@shared_task(name="shoptet_api.reconcile_webhooks")
def reconcile_webhooks() -> int:
    """Beat entry point (hourly): check the registrations of this hour's slice of the active
    e-shops, one task each, so each is checked once per SHOPTET_WEBHOOK_RECONCILE_HOURS."""
    hours = settings.SHOPTET_WEBHOOK_RECONCILE_HOURS
    this_slice = int(time.time() // 3600) % hours
    count = 0
    for eshop_id in (
        Eshop.objects.active()
        .annotate(reconcile_slice=models.F("eshop_id") % hours)
        .filter(reconcile_slice=this_slice)
        .values_list("eshop_id", flat=True)
        .iterator()
    ):
        sync_eshop_webhooks.apply_async((eshop_id,), countdown=random.uniform(0, 600))  # noqa: S311 (spread)
        count += 1
    return count


@shared_task(bind=True, base=EshopTask, name="shoptet_api.sync_eshop_webhooks")
def sync_eshop_webhooks(self: EshopTask, eshop_id: int) -> None:
    """Repair drift between the registered webhooks and the configured ones for one e-shop."""
    self.for_eshop(eshop_id, _sync)


def _sync(eshop: Eshop) -> None:
    with ShoptetClient(eshop) as client:
        sync_webhooks(eshop, client=client)


@shared_task(name="shoptet_api.purge_uninstalled")
def purge_uninstalled() -> int:
    """Delete e-shops uninstalled longer than SHOPTET_UNINSTALLED_RETENTION_DAYS, with all their data."""
    return Eshop.objects.purge_uninstalled(
        before=timezone.now()
        - dt.timedelta(days=settings.SHOPTET_UNINSTALLED_RETENTION_DAYS)
    )
