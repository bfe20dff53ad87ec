"""Operators' view of tenants. The OAuth token is never rendered: not as a field, not in a list."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from eshops.models import Eshop


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
    # `exclude` keeps the encrypted field out of forms, change views and history diffs.
    exclude = ["oauth_access_token"]
    # Everything Shoptet owns is read-only: it changes through installs and webhooks, not by hand.
    readonly_fields = [
        "eshop_id",
        "url",
        "contact_email",
        "trial",
        "status_reason",
        "status_changed_at",
        "missing_rights",
        "oauth_token_received_at",
        "has_oauth_token",
        "installed_at",
        "last_installed_at",
        "install_count",
        "uninstalled_at",
        "created_at",
        "updated_at",
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Eshop]:
        # Lists never need the token: skip decrypting it for every row.
        return super().get_queryset(request).defer("oauth_access_token")

    @admin.display(boolean=True, description="OAuth token stored")
    def has_oauth_token(self, obj: Eshop) -> bool:
        return bool(obj.oauth_access_token)

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Tenants come from Shoptet's install callback only.
        return False
