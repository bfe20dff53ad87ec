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
from dataclasses import dataclass
from typing import Any

from celery import shared_task
from django.conf import settings
from django.db.models import DurationField, Exists, F, Func, OuterRef, Q
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


# The merchant's switch for each resource, on EshopSettings.
TOGGLES = {"orders": "sync_orders", "products": "sync_products"}
# At most this many slices are queued per beat tick, most overdue first; the rest wait a minute.
SCHEDULE_LIMIT = 1000


class Minutes(Func):
    """An integer column as a duration of that many minutes (PostgreSQL; SQLite below)."""

    template = "make_interval(mins => %(expressions)s)"
    output_field = DurationField()

    def as_sqlite(
        self, compiler: Any, connection: Any, **extra_context: Any
    ) -> tuple[str, Any]:
        # SQLite holds a duration as integer microseconds.
        return self.as_sql(
            compiler, connection, template="(%(expressions)s * 60000000)"
        )


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
    """Queue a sync for every active tenant whose merchant enabled it and whose interval elapsed.

    The database decides what is due and returns only that, most overdue first (never synced
    before all), at most SCHEDULE_LIMIT per tick (the rest the next tick). It still looks at each
    sync-enabled tenant's state once; tenants that never switched sync on cost nothing.
    """
    now = timezone.now()
    due = sorted(
        [
            *_never_scheduled(limit=SCHEDULE_LIMIT),
            *_due_states(now, limit=SCHEDULE_LIMIT),
        ],
        key=lambda run: (
            run.due_at is not None,
            run.due_at or now,
            run.pk,
            run.resource,
        ),
    )[:SCHEDULE_LIMIT]
    SyncState.objects.bulk_create(
        [
            SyncState(eshop_id=run.pk, resource=run.resource, running_since=now)
            for run in due
            if run.state_pk is None
        ],
        ignore_conflicts=True,  # another tick created it meanwhile: it runs either way
    )
    SyncState.objects.filter(
        pk__in=[run.state_pk for run in due if run.state_pk is not None]
    ).update(running_since=now, updated_at=now)
    for run in due:
        run_slice.delay(run.eshop_id, run.resource)
    return len(due)


@dataclass(frozen=True)
class DueRun:
    pk: int  # the tenant's primary key
    eshop_id: int
    resource: str
    state_pk: int | None  # None: never scheduled, no SyncState yet
    due_at: dt.datetime | None  # None: never completed


def _enabled(toggle: str, *, settings: str = "") -> Q:
    """Active, unpaused tenants whose merchant switched `toggle` on; `settings` is the path to
    EshopSettings from the queried model (both models reach the tenant as `eshop`)."""
    return Q(
        eshop__status=Eshop.Status.ACTIVE,
        eshop__processing_paused_at=None,
        **{f"{settings}{toggle}": True},
    )


def _never_scheduled(*, limit: int) -> list[DueRun]:
    """Enabled resources that have no SyncState yet (a new tenant, a switch just turned on)."""
    runs: list[DueRun] = []
    for resource, toggle in TOGGLES.items():
        rows = (
            EshopSettings.objects.filter(_enabled(toggle))
            .exclude(
                Exists(
                    SyncState.objects.filter(eshop=OuterRef("eshop"), resource=resource)
                )
            )
            .order_by("eshop_id")
            .values_list("eshop_id", "eshop__eshop_id")[:limit]
        )
        runs += [DueRun(pk, eshop_id, resource, None, None) for pk, eshop_id in rows]
    return runs


def _due_states(now: dt.datetime, *, limit: int) -> list[DueRun]:
    """SyncStates of enabled resources not running now whose interval elapsed (or a full copy
    was asked for), most overdue first."""
    settings_of = "eshop__addon_settings__"
    runs: list[DueRun] = []
    for resource, toggle in TOGGLES.items():
        rows = (
            SyncState.objects.filter(
                _enabled(toggle, settings=settings_of), resource=resource
            )
            # Running, unless the run stopped reporting (it died): then it may start again.
            .filter(
                Q(running_since=None)
                | Q(updated_at__lte=now - dt.timedelta(seconds=STALE_RUN_SECONDS))
            )
            .annotate(
                due_at=F("last_success_at")
                + Minutes(f"{settings_of}sync_interval_minutes")
            )
            .filter(
                Q(last_success_at=None) | Q(due_at__lte=now) | Q(full_requested=True)
            )
            .order_by(F("due_at").asc(nulls_first=True), "eshop_id")
            .values_list("eshop_id", "eshop__eshop_id", "pk", "due_at")[:limit]
        )
        runs += [
            DueRun(pk, eshop_id, resource, state_pk, due_at)
            for pk, eshop_id, state_pk, due_at in rows
        ]
    return runs


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
