"""The operators' dashboard: tenant and webhook health on one admin page (staff only)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from eshops.admin import read_token_health
from eshops.models import Eshop, EshopTransition, OperatorAction
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
PIPELINE_BATCH = 1000


@dataclass(frozen=True)
class FeedItem:
    at: dt.datetime
    kind: str
    eshop_id: int
    summary: str


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
            "eshop_changelist": reverse("admin:eshops_eshop_changelist"),
            "tenants_by_status": count_by_status(
                Eshop.objects.all(), Eshop.Status.choices
            ),
            "events_last_day": count_by_status(
                WebhookEvent.objects.filter(
                    received_at__gte=now - dt.timedelta(days=1)
                ),
                WebhookEvent.Status.choices,
            ),
            "dead_events": WebhookEvent.objects.dead().count(),
            "token_trouble": tenants_with_token_failures(),
            "missing_rights_count": missing_rights.count(),
            "missing_rights": [
                (eshop, ", ".join(sorted(eshop.missing_rights)))
                for eshop in missing_rights[:LIST_LIMIT]
            ],
            "pending_setup_count": pending_setup.count(),
            "pending_setup": pending_setup[:LIST_LIMIT],
            "recent_failures": recent_failures(limit=LIST_LIMIT),
        },
    )


def count_by_status(
    queryset: Any, choices: Sequence[tuple[str, StrOrPromise]]
) -> list[tuple[str, StrOrPromise, int]]:
    """(value, label, count) for every status, zeros included."""
    counts = dict(queryset.order_by().values_list("status").annotate(n=Count("pk")))
    return [(value, label, counts.get(value, 0)) for value, label in choices]


def tenants_with_token_failures() -> list[TokenTrouble] | None:
    """Tenants whose latest API-token renewals failed, most failures first; None if Redis is down."""
    eshop_ids = list(
        Eshop.objects.exclude(status=Eshop.Status.UNINSTALLED).values_list(
            "eshop_id", flat=True
        )
    )
    try:
        failing = list(tokens.renewal_failures(eshop_ids).items())
    except redis.RedisError:
        return None
    failing.sort(key=lambda pair: (-pair[1], pair[0]))
    trouble = []
    for eshop_id, failures in failing[:LIST_LIMIT]:
        health = read_token_health(eshop_id) or {}
        error_at = health.get("last_error_at")
        trouble.append(
            TokenTrouble(
                eshop_id=eshop_id,
                failures=failures,
                last_error=health.get("last_error") or "",
                last_error_at=dt.datetime.fromtimestamp(error_at, tz=dt.UTC)
                if error_at
                else None,
            )
        )
    return trouble


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
        for move in EshopTransition.objects.filter(to_status__in=LOST_STATUSES).values(
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
