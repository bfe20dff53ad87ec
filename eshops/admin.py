"""Operators' view of tenants. No secret is ever rendered: not as a field, not in a list."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from eshops.models import Eshop, EshopTransition

SECRET_FIELDS = [
    "oauth_access_token",
    "webhook_signature_key",
    "previous_signature_key",
]


class EshopTransitionInline(admin.TabularInline[EshopTransition, Eshop]):
    model = EshopTransition
    fields = [
        "occurred_at",
        "from_status",
        "to_status",
        "source",
        "actor",
        "reason",
        "created_at",
    ]
    readonly_fields = [
        "occurred_at",
        "from_status",
        "to_status",
        "source",
        "actor",
        "reason",
        "created_at",
    ]
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(
        self, request: HttpRequest, obj: Eshop | None = None
    ) -> bool:
        return False


@admin.register(Eshop)
class EshopAdmin(admin.ModelAdmin[Eshop]):
    list_display = [
        "eshop_id",
        "name",
        "url",
        "status",
        "contact_email",
        "installed_at",
        "last_installed_at",
        "install_count",
    ]
    list_filter = ["status", "trial"]
    search_fields = ["=eshop_id", "name", "url", "contact_email"]
    # `exclude` keeps the encrypted fields out of forms, change views and history diffs.
    exclude = SECRET_FIELDS
    # Everything is read-only: it changes through installs, webhooks and audited actions only.
    readonly_fields = [
        "eshop_id",
        "name",
        "url",
        "contact_email",
        "status",
        "status_reason",
        "status_changed_at",
        "trial",
        "missing_rights",
        "webhooks",
        "has_oauth_token",
        "has_signature_key",
        "signature_key_renewed_at",
        "oauth_token_received_at",
        "installed_at",
        "last_installed_at",
        "install_count",
        "setup_completed_at",
        "lifecycle_event_at",
        "uninstalled_at",
        "created_at",
        "updated_at",
    ]
    inlines = [EshopTransitionInline]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Eshop]:
        # Lists never need the secrets: skip decrypting them for every row.
        return super().get_queryset(request).defer(*SECRET_FIELDS)

    @admin.display(boolean=True, description="OAuth token stored")
    def has_oauth_token(self, obj: Eshop) -> bool:
        return bool(obj.oauth_access_token)

    @admin.display(boolean=True, description="webhook signature key stored")
    def has_signature_key(self, obj: Eshop) -> bool:
        return bool(obj.webhook_signature_key)

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Tenants come from Shoptet's install callback only.
        return False
