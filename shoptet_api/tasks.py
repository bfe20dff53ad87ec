"""Celery tasks: ids in, one call each, explicit names. Transient Shoptet errors retry with backoff
(a 429 waits for its Retry-After); permanent ones stop, the tenant's status already changed."""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Task, shared_task
from django.conf import settings
from django.utils import timezone

from eshops.models import Eshop
from shoptet_api import tokens
from shoptet_api.client import ShoptetClient
from shoptet_api.errors import (
    AddonNotInstalled,
    AddonSuspended,
    ShoptetAPIError,
    ShoptetRateLimited,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_RETRIES = 5


def _active_eshop(eshop_id: int) -> Eshop | None:
    eshop = Eshop.objects.filter(eshop_id=eshop_id).first()
    if eshop is None or eshop.status != Eshop.Status.ACTIVE:
        logger.info(
            "eshop_id=%s is %s; task skipped",
            eshop_id,
            eshop.status if eshop else "gone",
        )
        return None
    return eshop


def _run(task: Task[Any, Any], eshop_id: int, call: Callable[[], T]) -> T | None:
    """Run `call`; retry transient errors with backoff, stop quietly on permanent ones."""
    try:
        return call()
    except (AddonNotInstalled, AddonSuspended) as exc:
        logger.warning("eshop_id=%s: %s; not retried", eshop_id, exc)
        return None
    except ShoptetAPIError as exc:
        if not exc.retryable or task.request.retries >= MAX_RETRIES:
            raise
        countdown = 2.0**task.request.retries * 5 * (0.5 + random.random())  # noqa: S311 (jitter)
        if isinstance(exc, ShoptetRateLimited) and exc.retry_after is not None:
            countdown = max(
                1.0, (exc.retry_after - dt.datetime.now(tz=dt.UTC)).total_seconds()
            )
        logger.info(
            "eshop_id=%s: %s; retry %s in %.0f s",
            eshop_id,
            exc,
            task.request.retries + 1,
            countdown,
        )
        raise task.retry(
            exc=exc, countdown=countdown, max_retries=MAX_RETRIES
        ) from None


@shared_task(bind=True, name="shoptet_api.post_install")
def post_install(self: Task[Any, Any], eshop_id: int) -> None:
    """After an install commits: the first API token and the e-shop's details from /api/eshop."""
    eshop = _active_eshop(eshop_id)
    if eshop is not None:
        _run(self, eshop_id, lambda: complete_install(eshop))


def complete_install(eshop: Eshop) -> None:
    """Fetch `/api/eshop` (which also mints the first API token) and record the shop's name."""
    with ShoptetClient(eshop) as client:
        data = client.get("/api/eshop")
    contact = data.get("contactInformation") if isinstance(data, dict) else None
    name = contact.get("eshopName") if isinstance(contact, dict) else None
    Eshop.objects.filter(pk=eshop.pk).update(
        name=str(name or "")[:255],
        setup_completed_at=timezone.now(),
        updated_at=timezone.now(),
    )
    logger.info("eshop_id=%s: post-install setup complete", eshop.eshop_id)


@shared_task(name="shoptet_api.complete_pending_installs")
def complete_pending_installs() -> int:
    """Re-enqueue post-install setup that never ran (the broker was down at install time)."""
    cutoff = timezone.now() - dt.timedelta(minutes=2)
    pending = list(
        Eshop.objects.pending_setup(before=cutoff).values_list("eshop_id", flat=True)[
            :1000
        ]
    )
    for eshop_id in pending:
        post_install.delay(eshop_id)
    if pending:
        logger.info("re-enqueued post-install setup for %s e-shops", len(pending))
    return len(pending)


@shared_task(name="shoptet_api.renew_expiring_tokens")
def renew_expiring_tokens() -> int:
    """Beat entry point: schedule a renewal for every recently active e-shop whose token is due.

    Each renewal is timed for just before its token's margin, minus a random jitter, so tokens
    that expire together (10,000 shops installed at once) do not all renew in the same second.
    Idle e-shops are skipped: they get a token on demand, so idle shops cost no calls.
    """
    now = time.time()
    interval = settings.SHOPTET_TOKEN_SWEEP_INTERVAL
    recent = tokens.recently_active_eshop_ids(
        since=now - settings.SHOPTET_TOKEN_ACTIVE_WINDOW
    )
    scheduled = 0
    for start in range(0, len(recent), 1000):
        chunk = recent[start : start + 1000]
        active = set(
            Eshop.objects.active()
            .filter(eshop_id__in=chunk)
            .values_list("eshop_id", flat=True)
        )
        for eshop_id, due_in in tokens.renewal_due(
            sorted(active), now=now, horizon=interval * 1.5
        ):
            renew_api_token.apply_async((eshop_id,), countdown=due_in)
            scheduled += 1
    logger.info(
        "token sweep: %s recently active e-shops, %s renewals scheduled",
        len(recent),
        scheduled,
    )
    return scheduled


@shared_task(bind=True, name="shoptet_api.renew_api_token")
def renew_api_token(self: Task[Any, Any], eshop_id: int) -> None:
    """Renew one e-shop's shared API token ahead of its expiry (single-flight, within the cap)."""
    eshop = _active_eshop(eshop_id)
    if eshop is not None:
        _run(self, eshop_id, lambda: tokens.renew_ahead(eshop))
