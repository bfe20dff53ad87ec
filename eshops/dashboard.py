"""The operators' dashboard: services, 24-hour charts, tenant and webhook health on one admin page
(staff only).

Its database queries and Redis round trips do not grow with the number of tenants: the counts,
which read whole tables, are made at most once per COUNTS_TTL_SECONDS and otherwise read back with
one Redis GET (the page says when they were made); lists are capped at LIST_LIMIT, and Redis is
read in pipelines.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import redis
from django.apps import apps
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Exists, OuterRef, Q
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from addon_project import activity
from addon_project.celery import app as celery_app
from addon_project.redis_client import get_redis
from addon_project.redis_keys import dashboard_counts_key, heartbeat_key
from eshops.charts import Series, hourly_chart
from eshops.models import Eshop, EshopTransition, OperatorAction
from eshops.tasks import HEARTBEAT_STALE_AFTER
from eshops.templatetags.console import format_utc
from shoptet_api import tokens
from shoptet_api.models import WebhookEvent

if TYPE_CHECKING:
    from collections.abc import Sequence

    from django_stubs_ext import StrOrPromise

LIST_LIMIT = 20
# Post-install setup normally finishes within seconds; the sweep re-enqueues it after 2 minutes.
SETUP_GRACE = dt.timedelta(minutes=2)
# Lifecycle moves an operator should notice.
LOST_STATUSES = [
    Eshop.Status.SUSPENDED,
    Eshop.Status.TERMINATED,
    Eshop.Status.UNINSTALLED,
]
# Counts older than this are made again (they read every tenant and every sync state).
COUNTS_TTL_SECONDS = 30
# The page waits at most this long for workers to answer a ping.
WORKER_PING_TIMEOUT = 0.5

logger = logging.getLogger(__name__)

# (title, [(activity event, legend label, colour)]) of the 24-hour charts.
CHARTS = [
    (
        "Webhooks per hour",
        [
            ("webhooks_received", "received", "#2563eb"),
            ("webhooks_processed", "processed", "#16a34a"),
            ("webhooks_failed", "failed", "#dc2626"),
        ],
    ),
    (
        "Shoptet API calls per hour",
        [("api_calls", "API calls", "#2563eb"), ("api_429", "429 answers", "#dc2626")],
    ),
    (
        "API token renewals per hour",
        [
            ("token_renewals", "renewals", "#16a34a"),
            ("token_failures", "failures", "#dc2626"),
        ],
    ),
]


@dataclass(frozen=True)
class FeedItem:
    at: dt.datetime
    kind: str
    eshop_id: int
    summary: str


@dataclass(frozen=True)
class ServiceStatus:
    """One line of the services panel; `ok` is None when it could not be checked."""

    name: str
    ok: bool | None
    summary: str
    detail: str = ""


@dataclass(frozen=True)
class Chart:
    title: str
    svg: str


@dataclass(frozen=True)
class TokenTrouble:
    eshop_id: int
    failures: int
    last_error: str
    last_error_at: dt.datetime | None


@staff_member_required
def dashboard(request: HttpRequest) -> TemplateResponse:
    if not request.user.has_perm("eshops.view_eshop"):
        raise PermissionDenied
    now = timezone.now()
    counts = dashboard_counts(now=now)
    missing_rights = Eshop.objects.exclude(missing_rights={}).only(
        "eshop_id", "name", "status", "missing_rights"
    )
    pending_setup = (
        Eshop.objects.pending_setup(before=now - SETUP_GRACE)
        .only("eshop_id", "name", "last_installed_at", "setup_completed_at")
        .order_by("last_installed_at")
    )
    return TemplateResponse(
        request,
        "admin/dashboard.html",
        {
            **admin.site.each_context(request),
            "title": "Operator dashboard",
            "services": service_status(),
            "charts": activity_charts(now=now),
            "eshop_changelist": reverse("admin:eshops_eshop_changelist"),
            # The three count panels say how old their numbers are (at most COUNTS_TTL_SECONDS).
            "counts_as_of": f"{counts.as_of.astimezone(dt.UTC):%H:%M:%S} UTC",
            "tenants_by_status": labelled(
                counts.tenants_by_status, Eshop.Status.choices
            ),
            "events_last_day": labelled(
                counts.events_last_day, WebhookEvent.Status.choices
            ),
            "dead_events": counts.dead_events,
            "token_trouble": tenants_with_token_failures(),
            "missing_rights_count": counts.missing_rights,
            "missing_rights": [
                (eshop, ", ".join(sorted(eshop.missing_rights)))
                for eshop in missing_rights[:LIST_LIMIT]
            ],
            "pending_setup_count": counts.pending_setup,
            "pending_setup": pending_setup[:LIST_LIMIT],
            "recent_failures": recent_failures(limit=LIST_LIMIT),
            "sync_health": counts.sync_health,
            "sync_changelist": reverse("admin:sync_syncstate_changelist"),
        },
    )


@dataclass(frozen=True)
class SyncHealth:
    """Tenants (not resources) in each condition; one tenant may be in several."""

    syncing: int
    failing: int
    lagging: int
    running: int
    lag_alert_minutes: int


@dataclass(frozen=True)
class Counts:
    """The dashboard's totals as they were at `as_of`; per status: {status value: count}."""

    as_of: dt.datetime
    tenants_by_status: dict[str, int]
    events_last_day: dict[str, int]
    dead_events: int
    missing_rights: int
    pending_setup: int
    sync_health: SyncHealth

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "as_of": self.as_of.isoformat()})

    @classmethod
    def from_json(cls, raw: bytes | str) -> Counts:
        data = json.loads(raw)
        return cls(
            **{
                **data,
                "as_of": dt.datetime.fromisoformat(data["as_of"]),
                "sync_health": SyncHealth(**data["sync_health"]),
            }
        )


def dashboard_counts(*, now: dt.datetime) -> Counts:
    """The counts made within the last COUNTS_TTL_SECONDS (one Redis GET), else made now and kept.

    Without Redis they are made for every page: slower, but the page still shows them."""
    r = get_redis()
    try:
        cached = r.get(dashboard_counts_key())
    except redis.RedisError:
        return count_now(now=now)
    if cached is not None:
        try:
            return Counts.from_json(cached)
        except (KeyError, TypeError, ValueError):
            logger.warning("dashboard: cached counts unreadable, counting again")
    counts = count_now(now=now)
    with contextlib.suppress(redis.RedisError):
        r.set(dashboard_counts_key(), counts.to_json(), ex=COUNTS_TTL_SECONDS)
    return counts


def count_now(*, now: dt.datetime) -> Counts:
    """Every total of the dashboard from the database (six aggregate queries)."""
    return Counts(
        as_of=now,
        tenants_by_status=count_by_status(Eshop.objects.all()),
        events_last_day=count_by_status(
            WebhookEvent.objects.filter(received_at__gte=now - dt.timedelta(days=1))
        ),
        dead_events=WebhookEvent.objects.dead().count(),
        missing_rights=Eshop.objects.exclude(missing_rights={}).count(),
        pending_setup=Eshop.objects.pending_setup(before=now - SETUP_GRACE).count(),
        sync_health=sync_health(now=now),
    )


def sync_health(*, now: dt.datetime) -> SyncHealth:
    """One aggregate query over the sync states."""
    # Looked up lazily: the sync app depends on eshops, not the other way round.
    from sync.admin import FAILING, LAG_ALERT_MINUTES, lagging_condition

    sync_state = apps.get_model("sync", "SyncState")
    # Suspended, uninstalled and paused tenants stop syncing on purpose: not counted.
    counts = sync_state.objects.filter(
        eshop__status=Eshop.Status.ACTIVE, eshop__processing_paused_at=None
    ).aggregate(
        syncing=Count("eshop", distinct=True),
        failing=Count("eshop", distinct=True, filter=FAILING),
        lagging=Count("eshop", distinct=True, filter=lagging_condition(now)),
        running=Count("eshop", distinct=True, filter=Q(running_since__isnull=False)),
    )
    return SyncHealth(**counts, lag_alert_minutes=LAG_ALERT_MINUTES)


def count_by_status(queryset: Any) -> dict[str, int]:
    """{status: rows} of `queryset` (statuses without rows are absent)."""
    return dict(queryset.order_by().values_list("status").annotate(n=Count("pk")))


def labelled(
    counts: dict[str, int], choices: Sequence[tuple[str, StrOrPromise]]
) -> list[tuple[str, StrOrPromise, int]]:
    """(value, label, count) for every status, zeros included."""
    return [(value, label, counts.get(value, 0)) for value, label in choices]


def service_status() -> list[ServiceStatus]:
    """Redis (ping), the Celery workers (a broadcast ping, WORKER_PING_TIMEOUT) and beat (its heartbeat)."""
    try:
        pipe = get_redis().pipeline(transaction=False)
        pipe.ping()
        pipe.get(heartbeat_key())
        _, beat_at = pipe.execute()
    except redis.RedisError as exc:
        unreachable = f"Redis unreachable ({type(exc).__name__})"
        return [
            ServiceStatus("Redis", ok=False, summary=unreachable),
            ServiceStatus("Worker", ok=None, summary="unknown: the broker is Redis"),
            ServiceStatus(
                "Beat", ok=None, summary="unknown: its heartbeat is in Redis"
            ),
        ]
    return [
        ServiceStatus("Redis", ok=True, summary="answers PING"),
        _worker_status(),
        _beat_status(beat_at),
    ]


def _worker_status() -> ServiceStatus:
    try:
        replies = celery_app.control.ping(timeout=WORKER_PING_TIMEOUT)
    except (
        Exception
    ) as exc:  # a broker's errors vary by transport; the page must still render
        logger.warning("dashboard: worker ping failed: %s", type(exc).__name__)
        return ServiceStatus(
            "Worker", ok=None, summary=f"ping failed ({type(exc).__name__})"
        )
    names = sorted(name for reply in replies or [] for name in reply)
    if not names:
        return ServiceStatus(
            "Worker",
            ok=False,
            summary=f"no worker answered within {WORKER_PING_TIMEOUT} s",
        )
    return ServiceStatus(
        "Worker",
        ok=True,
        summary=f"{len(names)} answered",
        detail=", ".join(names[:LIST_LIMIT]),
    )


def _beat_status(beat_at: bytes | None) -> ServiceStatus:
    if beat_at is None:
        return ServiceStatus(
            "Beat",
            ok=False,
            summary="no heartbeat recorded (beat or worker not running)",
        )
    at = dt.datetime.fromtimestamp(float(beat_at), tz=dt.UTC)
    age = max(0, round(time.time() - float(beat_at)))
    stale = age > HEARTBEAT_STALE_AFTER
    return ServiceStatus(
        "Beat",
        ok=not stale,
        summary=f"heartbeat {_age(age)} ago" + (" — stale" if stale else ""),
        detail=format_utc(at),
    )


def _age(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def activity_charts(*, now: dt.datetime) -> list[Chart] | None:
    """The 24-hour charts from `addon_project.activity` (one Redis pipeline); None if Redis is down."""
    events = [event for _, lines in CHARTS for event, _, _ in lines]
    try:
        hours, counts = activity.hourly(events, hours=24, now=now)
    except redis.RedisError as exc:
        logger.warning(
            "dashboard: activity counters unreadable: %s", type(exc).__name__
        )
        return None
    return [
        Chart(
            title=title,
            svg=hourly_chart(
                title=f"{title}, last 24 hours (UTC)",
                hours=hours,
                series=[
                    Series(label=label, values=counts[event], color=color)
                    for event, label, color in lines
                ],
            ),
        )
        for title, lines in CHARTS
    ]


def tenants_with_token_failures() -> list[TokenTrouble] | None:
    """Tenants whose latest API-token renewals failed, most failures first; None if Redis is down.

    Read from the failing set that each failure updates (two Redis round trips), not by asking
    every tenant. An uninstalled tenant's health is forgotten, so it is not listed."""
    try:
        failing = tokens.renewal_failures(limit=LIST_LIMIT)
    except redis.RedisError:
        return None
    return [
        TokenTrouble(
            eshop_id=item.eshop_id,
            failures=item.failures,
            last_error=item.last_error,
            last_error_at=dt.datetime.fromtimestamp(item.last_error_at, tz=dt.UTC)
            if item.last_error_at is not None
            else None,
        )
        for item in failing
    ]


def recent_failures(*, limit: int) -> list[FeedItem]:
    """The newest dead or failing webhook events, lost tenants and operator actions, merged."""
    events = [
        FeedItem(
            at=event["received_at"],
            kind=f"webhook {event['status']}",
            eshop_id=event["eshop__eshop_id"],
            summary=f"{event['event']}: {event['last_error'][:200]}",
        )
        for event in WebhookEvent.objects.filter(
            status__in=[WebhookEvent.Status.DEAD, WebhookEvent.Status.FAILED]
        )
        .order_by("-received_at", "-id")
        .values("received_at", "status", "eshop__eshop_id", "event", "last_error")[
            :limit
        ]
    ]
    moves = [
        FeedItem(
            at=move["created_at"],
            kind=f"status {move['to_status']}",
            eshop_id=move["eshop__eshop_id"],
            summary=f"{move['from_status'] or 'new'} -> {move['to_status']} by "
            f"{move['actor'] or move['source']}: {move['reason']}",
        )
        # Only a tenant's latest move: a suspend that a later approve reversed is no failure now.
        for move in EshopTransition.objects.filter(to_status__in=LOST_STATUSES)
        .exclude(
            Exists(
                EshopTransition.objects.filter(
                    eshop=OuterRef("eshop"), id__gt=OuterRef("id")
                )
            )
        )
        .values(
            "created_at",
            "eshop__eshop_id",
            "from_status",
            "to_status",
            "source",
            "actor",
            "reason",
        )[:limit]
    ]
    actions = [
        FeedItem(
            at=action.created_at,
            kind=f"operator {action.action}",
            eshop_id=action.eshop_id,
            summary=f"{action.operator}: {action.detail}",
        )
        for action in OperatorAction.objects.all()[:limit]
    ]
    return sorted(events + moves + actions, key=lambda item: item.at, reverse=True)[
        :limit
    ]
