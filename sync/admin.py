"""Operators' view of the sync: every tenant's state per resource, and an audited "Resync now".

Read-only like the rest of the console: a state changes through runs and the action below, which
writes an `eshops.OperatorAction` row with the operator's username.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib import admin, messages
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from kombu.exceptions import OperationalError as BrokerError

from eshops.models import OperatorAction
from eshops.templatetags.console import format_utc
from sync import tasks
from sync.models import SyncState

# A mirror whose incremental checkpoint is older than this is "lagging" (list filter, dashboard).
LAG_ALERT_MINUTES = 120
# "Resync now" starts a full copy each: keep one click bounded.
RESYNC_NOW_LIMIT = 50
SHORT_ERROR = 48


def lagging_condition(now: dt.datetime | None = None) -> Q:
    """States whose mirror is more than LAG_ALERT_MINUTES behind (a first copy still running is not)."""
    now = now or timezone.now()
    return Q(changes_from__lt=now - dt.timedelta(minutes=LAG_ALERT_MINUTES))


FAILING = Q(phase=SyncState.Phase.FAILED) | ~Q(last_error="")


def format_lag(seconds: float | None) -> str:
    """`12 min`, `3 h 05 min`, `2 d 4 h`; "-" before the first complete copy."""
    if seconds is None:
        return "-"
    total = max(0, int(seconds))
    if total < 120:
        return f"{total} s"
    minutes = total // 60
    if minutes < 120:
        return f"{minutes} min"
    hours = minutes // 60
    if hours < 48:
        return f"{hours} h {minutes % 60:02d} min"
    return f"{hours // 24} d {hours % 24} h"


class HealthFilter(admin.SimpleListFilter):
    title = "health"
    parameter_name = "health"

    def lookups(
        self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]
    ) -> list[tuple[str, str]]:
        return [
            ("failing", "Failing (last run: an error)"),
            ("lagging", f"Lagging more than {LAG_ALERT_MINUTES} min"),
            ("running", "Running now"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "failing":
            return queryset.filter(FAILING)
        if self.value() == "lagging":
            return queryset.filter(lagging_condition())
        if self.value() == "running":
            return queryset.filter(running_since__isnull=False)
        return queryset


@admin.register(SyncState)
class SyncStateAdmin(admin.ModelAdmin[SyncState]):
    list_display = [
        "tenant",
        "resource",
        "phase",
        "progress",
        "counts",
        "last_success",
        "lag",
        "last_error_short",
        "running",
    ]
    list_display_links = ["resource"]
    list_filter = ["phase", "resource", HealthFilter]
    list_select_related = ["eshop"]
    search_fields = ["=eshop__eshop_id", "eshop__name"]
    list_per_page = 50
    actions = ["resync_now"]
    fields = (
        "tenant",
        "resource",
        "mode",
        "phase",
        "progress",
        "counts",
        "last_success",
        "last_full",
        "lag",
        "changes_from_utc",
        "last_error",
        "last_error_when",
        "running",
        "recent_item_errors_table",
        "checkpoint",
        "updated",
    )
    readonly_fields = fields

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        context = {"title": "Sync states", **(extra_context or {})}
        return super().changelist_view(request, context)

    # --- Columns -----------------------------------------------------------------------------

    @admin.display(description="e-shop", ordering="eshop__eshop_id")
    def tenant(self, obj: SyncState) -> SafeString:
        # The id fits a narrow column; the name is the link's tooltip and on the tenant's page.
        return format_html(
            '<a href="{}" title="{}">{}</a>',
            reverse("admin:eshops_eshop_change", args=[obj.eshop_id]),
            obj.eshop.name,
            obj.eshop.eshop_id,
        )

    @admin.display(description="progress")
    def progress(self, obj: SyncState) -> str:
        if obj.items_total:
            percent = min(100, obj.items_done * 100 // obj.items_total)
            return f"{obj.items_done} / {obj.items_total} ({percent} %)"
        return str(obj.items_done) if obj.items_done else "-"

    @admin.display(description="stored / del. / err.")
    def counts(self, obj: SyncState) -> str:
        return f"{obj.items_stored} / {obj.items_deleted} / {obj.item_errors}"

    @admin.display(description="last success", ordering="last_success_at")
    def last_success(self, obj: SyncState) -> str:
        return format_utc(obj.last_success_at, empty="never")

    @admin.display(description="last full copy", ordering="last_full_at")
    def last_full(self, obj: SyncState) -> str:
        return format_utc(obj.last_full_at, empty="never")

    @admin.display(description="lag", ordering="changes_from")
    def lag(self, obj: SyncState) -> str:
        return format_lag(obj.lag_seconds)

    @admin.display(description="complete up to")
    def changes_from_utc(self, obj: SyncState) -> str:
        return format_utc(obj.changes_from)

    @admin.display(description="last error")
    def last_error_short(self, obj: SyncState) -> SafeString | str:
        if not obj.last_error:
            return "-"
        short = obj.last_error
        if len(short) > SHORT_ERROR:
            short = short[: SHORT_ERROR - 1] + "…"
        # The full text and its time are the tooltip (and on the state's page).
        return format_html(
            '<span title="{} ({})">{}</span>',
            obj.last_error,
            format_utc(obj.last_error_at),
            short,
        )

    @admin.display(description="last error at")
    def last_error_when(self, obj: SyncState) -> str:
        return format_utc(obj.last_error_at)

    @admin.display(description="running since", ordering="running_since")
    def running(self, obj: SyncState) -> str:
        return format_utc(obj.running_since)

    @admin.display(description="updated")
    def updated(self, obj: SyncState) -> str:
        return format_utc(obj.updated_at)

    @admin.display(description="recent item errors")
    def recent_item_errors_table(self, obj: SyncState) -> str:
        if not obj.recent_item_errors:
            return "None"
        return "\n".join(
            f"{entry.get('at', '')} {entry.get('key', '')}: {entry.get('error', '')}"
            for entry in obj.recent_item_errors
        )

    # --- Permissions -------------------------------------------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # states come from runs

    def has_delete_permission(
        self, request: HttpRequest, obj: SyncState | None = None
    ) -> bool:
        return False

    def has_change_permission(
        self, request: HttpRequest, obj: SyncState | None = None
    ) -> bool:
        # Read-only page; the action asks without `obj` and needs the model's change permission.
        if obj is not None:
            return False
        return super().has_change_permission(request)

    # --- Actions -----------------------------------------------------------------------------

    @admin.action(
        description=f"Resync now (a full copy; at most {RESYNC_NOW_LIMIT})",
        permissions=["change"],
    )
    def resync_now(self, request: HttpRequest, queryset: QuerySet[SyncState]) -> None:
        if queryset.count() > RESYNC_NOW_LIMIT:
            self.message_user(
                request,
                f"Select at most {RESYNC_NOW_LIMIT} sync states: each starts a full copy.",
                messages.ERROR,
            )
            return
        operator = request.user.get_username()
        for state in queryset.select_related("eshop"):
            eshop = state.eshop
            if not eshop.can_call_api:
                detail, level = (
                    f"{state.resource}: skipped: the e-shop cannot call the API "
                    f"({eshop.status}{', paused' if eshop.processing_paused_at else ''})",
                    messages.WARNING,
                )
            else:
                try:
                    tasks.resync_now(eshop, state.resource)
                except BrokerError as exc:
                    detail, level = (
                        f"{state.resource}: full copy requested, not queued: broker "
                        f"unreachable ({type(exc).__name__}); the next scheduled run does it",
                        messages.WARNING,
                    )
                else:
                    detail, level = (
                        f"{state.resource}: full copy queued",
                        messages.SUCCESS,
                    )
            OperatorAction.objects.create(
                eshop_id=eshop.eshop_id,
                operator=operator,
                action="resync_now",
                detail=detail[:500],
            )
            self.message_user(request, f"{eshop}: {detail}", level)
