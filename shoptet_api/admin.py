"""Operators' webhook inbox: what arrived, what happened to it, and replay for dead letters
(recorded per e-shop in the operator audit log)."""

from __future__ import annotations

from collections import Counter, defaultdict

from django.contrib import admin, messages
from django.db import transaction
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from eshops.models import OperatorAction
from shoptet_api import webhooks
from shoptet_api.models import WebhookEvent


@admin.register(WebhookEvent)
class WebhookEventAdmin(admin.ModelAdmin[WebhookEvent]):
    list_display = [
        "received_at",
        "eshop",
        "event",
        "event_instance_short",
        "event_created",
        "status",
        "attempts",
        "result",
    ]
    list_filter = ["status", "event", "verified_by"]
    search_fields = ["=eshop__eshop_id", "event", "event_instance"]
    list_select_related = ["eshop"]
    date_hierarchy = "received_at"
    actions = ["replay_selected"]
    readonly_fields = [field.name for field in WebhookEvent._meta.fields]

    @admin.display(description="event instance")
    def event_instance_short(self, obj: WebhookEvent) -> str:
        return obj.event_instance[:60]

    @admin.action(
        description="Replay selected dead or failed events", permissions=["replay"]
    )
    def replay_selected(
        self, request: HttpRequest, queryset: QuerySet[WebhookEvent]
    ) -> None:
        with transaction.atomic():
            # The rows webhooks.replay() puts back (dead or failed), per e-shop, for the audit log.
            per_eshop: defaultdict[int, Counter[str]] = defaultdict(Counter)
            for eshop_id, event, count in (
                queryset.filter(
                    status__in=[WebhookEvent.Status.DEAD, WebhookEvent.Status.FAILED]
                )
                .order_by()
                .values_list("eshop__eshop_id", "event")
                .annotate(n=Count("pk"))
            ):
                per_eshop[eshop_id][event] += count
            count = webhooks.replay(queryset)
            OperatorAction.objects.bulk_create(
                OperatorAction(
                    eshop_id=eshop_id,
                    operator=request.user.get_username(),
                    action="replay_webhooks",
                    detail=(
                        f"{events.total()} event(s) queued again: "
                        + ", ".join(
                            f"{event} x{n}" for event, n in sorted(events.items())
                        )
                    )[:500],
                )
                for eshop_id, events in sorted(per_eshop.items())
            )
        self.message_user(
            request,
            f"{count} event(s) queued again.",
            messages.SUCCESS if count else messages.WARNING,
        )

    def get_queryset(self, request: HttpRequest) -> QuerySet[WebhookEvent]:
        # The eshop column's __str__ must not decrypt the tenant's secrets for every row.
        return (
            super()
            .get_queryset(request)
            .defer(
                "eshop__oauth_access_token",
                "eshop__webhook_signature_key",
                "eshop__previous_signature_key",
            )
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(
        self, request: HttpRequest, obj: WebhookEvent | None = None
    ) -> bool:
        return False

    def has_delete_permission(
        self, request: HttpRequest, obj: WebhookEvent | None = None
    ) -> bool:
        # The inbox is the record of what Shoptet sent: it goes only with its tenant (purge).
        return False

    def has_replay_permission(self, request: HttpRequest) -> bool:
        # Replaying runs handlers again: for operators who may change events, not for viewers.
        return bool(request.user.has_perm("shoptet_api.change_webhookevent"))
