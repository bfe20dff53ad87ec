"""Celery tasks of the sync: ids in, explicit names, bounded slices that re-queue at the back.

A slice works at most SYNC_SLICE_PAGES pages or SYNC_SLICE_SECONDS, then queues its successor
behind everything already waiting, so one huge shop cannot starve small ones; per-shop
concurrency and bucket pacing come from the client's limiter. A tenant that may no longer call
the API stops at its next slice (its checkpoint stays for later).
"""

from __future__ import annotations

import datetime as dt
import logging
import time

from celery import shared_task
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from addon_project import logging_context
from eshops.models import Eshop, EshopSettings
from shoptet_api.client import ShoptetClient
from shoptet_api.errors import ShoptetAPIError
from sync import resources
from sync.download import DownloadError
from sync.engine import Budget, Engine, Outcome, SyncStopped, state_for
from sync.lease import Lease, LeaseHeld
from sync.models import SyncState
from sync.service import run_resource

logger = logging.getLogger(__name__)

# A slice that found no progress possible (Shoptet error) tries again after this long.
ERROR_BACKOFF_SECONDS = 300
# running_since older than this without an update: the run died; schedule_due may start another.
STALE_RUN_SECONDS = 600


def toggles_of(settings_row: EshopSettings | None) -> dict[str, bool]:
    """Which resources the merchant wants mirrored."""
    if settings_row is None:
        return {"orders": True, "products": False}
    return {"orders": settings_row.sync_orders, "products": settings_row.sync_products}


@shared_task(name="sync.run_slice", ignore_result=True)
def run_slice(eshop_id: int, resource: str, full: bool = False) -> str:  # noqa: FBT001, FBT002
    """Work one bounded slice of a tenant's sync, then queue the next one at the back."""
    logging_context.bind(eshop_id=eshop_id)
    eshop = Eshop.objects.filter(eshop_id=eshop_id).first()
    if eshop is None or not eshop.can_call_api:
        SyncState.objects.filter(eshop__eshop_id=eshop_id).update(running_since=None)
        logger.info(
            "eshop_id=%s: sync of %s stopped (tenant cannot call the API)",
            eshop_id,
            resource,
        )
        return "stopped"
    budget = Budget(
        pages=settings.SYNC_SLICE_PAGES, seconds=settings.SYNC_SLICE_SECONDS
    )
    try:
        outcome, wait = run_resource(eshop, resource, full=full, budget=budget)
    except LeaseHeld as exc:
        logger.info("eshop_id=%s: %s sync skipped: %s", eshop_id, resource, exc)
        return "busy"
    except SyncStopped as exc:
        logger.info("eshop_id=%s: %s sync stopped: %s", eshop_id, resource, exc)
        return "stopped"
    except (ShoptetAPIError, DownloadError) as exc:
        retryable = getattr(exc, "retryable", True)
        logger.warning(
            "eshop_id=%s: %s sync failed (%s): %s",
            eshop_id,
            resource,
            "retry later" if retryable else "next schedule",
            exc,
        )
        if retryable:
            run_slice.apply_async((eshop_id, resource), countdown=ERROR_BACKOFF_SECONDS)
        return "failed"
    if outcome is Outcome.MORE:
        run_slice.apply_async((eshop_id, resource))  # to the back of the queue
    elif outcome is Outcome.WAITING:
        run_slice.apply_async((eshop_id, resource), countdown=min(wait, 900))
    return str(outcome)


@shared_task(name="sync.schedule_due", ignore_result=True)
def schedule_due() -> int:
    """Queue a sync for every active tenant whose merchant enabled it and whose interval elapsed."""
    now = timezone.now()
    queued = 0
    rows = (
        EshopSettings.objects.filter(
            eshop__status=Eshop.Status.ACTIVE, eshop__processing_paused_at=None
        )
        .filter(Q(sync_orders=True) | Q(sync_products=True))
        .select_related("eshop")
    )
    states = {
        (s.eshop_id, s.resource): s
        for s in SyncState.objects.filter(eshop__in=[row.eshop_id for row in rows])
    }
    for row in rows:
        interval = dt.timedelta(minutes=row.sync_interval_minutes)
        for resource, wanted in toggles_of(row).items():
            if not wanted:
                continue
            state = states.get((row.eshop_id, resource))
            if state is not None:
                running = (
                    state.running_since is not None
                    and (now - state.updated_at).total_seconds() < STALE_RUN_SECONDS
                )
                recent = (
                    state.last_success_at and now - state.last_success_at < interval
                )
                if running or (recent and not state.full_requested):
                    continue
            state = (
                state
                or SyncState.objects.get_or_create(eshop=row.eshop, resource=resource)[
                    0
                ]
            )
            SyncState.objects.filter(pk=state.pk).update(
                running_since=now, updated_at=now
            )
            run_slice.delay(row.eshop.eshop_id, resource)
            queued += 1
    return queued


@shared_task(name="sync.refresh_order", ignore_result=True)
def refresh_order(eshop_id: int, code: str) -> str:
    """Fetch one order a webhook named and store it (404: remove it)."""
    logging_context.bind(eshop_id=eshop_id)
    eshop = Eshop.objects.filter(eshop_id=eshop_id).first()
    if eshop is None or not eshop.can_call_api:
        return "stopped"
    resource = resources.get("orders")
    with ShoptetClient(eshop) as client:
        engine = Engine(eshop, resource, client=client)
        item = engine.fetch_detail(code)
        if item is None:
            engine.model._default_manager.filter(eshop=eshop, code=code).delete()
            return "removed"
        engine.store([item])
    # Item errors and counts go on the state row without touching its phase or checkpoint.
    SyncState.objects.filter(pk=engine.state.pk).update(
        items_stored=engine.state.items_stored,
        item_errors=engine.state.item_errors,
        recent_item_errors=engine.state.recent_item_errors,
    )
    return "stored"


@shared_task(name="sync.sweep_jobs", ignore_result=True)
def sweep_jobs() -> int:
    """Wake runs whose snapshot job never reported (Shoptet sends no webhook for a job it fails
    after 3 h) or whose run died: each gets a slice, which polls, retries or restarts the job."""
    now = time.time()
    woken = 0
    for state in SyncState.objects.filter(
        phase=SyncState.Phase.SNAPSHOT
    ).select_related("eshop"):
        started = state.checkpoint.get("started_at")
        stale = (timezone.now() - state.updated_at).total_seconds() > STALE_RUN_SECONDS
        overdue = (
            isinstance(started, int | float)
            and now - started > settings.SYNC_JOB_TIMEOUT_SECONDS
        )
        if (stale or overdue) and state.eshop.can_call_api:
            run_slice.delay(state.eshop.eshop_id, state.resource)
            woken += 1
    return woken


def resync_now(eshop: Eshop, resource: str) -> None:
    """Operator action: the next run copies everything; start it now."""
    state = state_for(eshop, resources.get(resource))
    SyncState.objects.filter(pk=state.pk).update(full_requested=True)
    run_slice.delay(eshop.eshop_id, resource)


__all__ = [
    "Lease",
    "refresh_order",
    "resync_now",
    "run_slice",
    "schedule_due",
    "sweep_jobs",
]
