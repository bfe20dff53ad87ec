"""Operators' view of tenants: health at a glance and a few audited actions.

No secret is ever rendered: not as a field, not in a list, not in a message. Everything about a
tenant is read-only here; it changes only through installs, webhooks and the actions below, each
of which writes an `OperatorAction` row with the operator's username.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import redis
from django.apps import apps
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connection, transaction
from django.db.models import Q, QuerySet
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from kombu.exceptions import OperationalError as BrokerError

from eshops.models import SETUP_DONE, Eshop, EshopTransition, OperatorAction
from eshops.templatetags.console import format_utc
from shoptet_api import tokens
from shoptet_api.errors import ShoptetAPIError
from shoptet_api.models import WebhookEvent
from shoptet_api.tasks import sync_eshop_webhooks
from shoptet_api.tokens.health import token_health_many

admin.site.site_header = "Shoptet addon platform — operators"
admin.site.site_title = "Shoptet addon platform — operators"
admin.site.index_title = "Operations"
# "View site" opens the service's own start page (addon_project/pages.py).
admin.site.site_url = "/"
# The header's own navigation (templates/admin/base_site.html) replaces the app sidebar, which took
# a quarter of a 1366 px screen from the tenant list's health columns.
admin.site.enable_nav_sidebar = False

SECRET_FIELDS = [
    "oauth_access_token",
    "webhook_signature_key",
    "previous_signature_key",
]

# "Renew now" calls Shoptet while the operator waits: keep a click bounded.
RENEW_NOW_LIMIT = 20
# renew_if_expiring renews a token expiring within this many seconds: every token does.
FORCE_RENEWAL = 10**9

UNKNOWN = "unknown"
# The largest value the eshop_id column holds (a bigint): a longer number matches no tenant.
MAX_ESHOP_ID = 2**63 - 1
# Webhook events listed on a tenant's page; the rest are one click away in the inbox.
RECENT_EVENTS = 10
# Actions a tenant's page offers as buttons: (action name, button label, for a destructive one).
TENANT_ACTIONS = {
    "renew_api_token_now": "Renew API token now",
    "reregister_webhooks": "Re-register webhooks",
    "pause_processing": "Pause processing",
    "resume_processing": "Resume processing",
    "purge_uninstalled_tenants": "Purge…",
}
# Per-row cache of tokens.token_health in the instance's __dict__ (None: Redis down).
_HEALTH = "_operator_token_health"


def read_token_health(eshop_id: int) -> dict[str, Any] | None:
    """`tokens.token_health`, or None when the token store cannot be reached."""
    try:
        return tokens.token_health(eshop_id)
    except redis.RedisError:
        return None


def _token_health(eshop: Eshop) -> dict[str, Any] | None:
    cache = vars(eshop)
    if _HEALTH not in cache:
        cache[_HEALTH] = read_token_health(eshop.eshop_id)
    health: dict[str, Any] | None = cache[_HEALTH]
    return health


def _prefetch_token_health(eshops: Any) -> None:
    """The token health of every listed row in one Redis round trip ("unknown" if Redis fails)."""
    rows = list(eshops)
    try:
        health = token_health_many([eshop.eshop_id for eshop in rows])
    except redis.RedisError:
        health = {}
    for eshop in rows:
        vars(eshop)[_HEALTH] = health.get(eshop.eshop_id)


class TenantPaginator(Paginator[Any]):
    """The unfiltered tenant list counts from PostgreSQL's statistics instead of reading every row.

    The estimate (pg_class.reltuples, kept by autovacuum and ANALYZE) is used only past
    ESTIMATE_FROM rows and only without a filter or search: a filtered list is counted exactly
    (its filters are index-backed), and a small table always is.
    """

    ESTIMATE_FROM = 10_000

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if (
            isinstance(queryset, QuerySet)
            and not queryset.query.where
            and connection.vendor == "postgresql"
        ):
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass",
                    [queryset.model._meta.db_table],
                )
                row = cursor.fetchone()
            if row and row[0] >= self.ESTIMATE_FROM:
                return int(row[0])
        return int(super().count)


def _epoch(value: float | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromtimestamp(value, tz=dt.UTC)


def _format_expires_in(seconds: int | None) -> str:
    if seconds is None:
        return "no token"
    if seconds <= 0:
        return "expired"
    return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min"


def _iso_to_utc(value: Any) -> str:
    try:
        return format_utc(dt.datetime.fromisoformat(str(value)))
    except ValueError:
        return str(value)


def _table(headers: list[str], rows: list[tuple[str, ...]]) -> SafeString:
    """A small HTML table for a read-only field; every cell is escaped."""
    return format_html(
        '<table class="console-table"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>',
        format_html_join("", '<th scope="col">{}</th>', ((h,) for h in headers)),
        format_html_join(
            "",
            "<tr>{}</tr>",
            (
                (format_html_join("", "<td>{}</td>", ((cell,) for cell in row)),)
                for row in rows
            ),
        ),
    )


def _webhook_events_url(eshop: Eshop) -> str:
    """The webhook inbox filtered to one tenant."""
    return (
        reverse("admin:shoptet_api_webhookevent_changelist")
        + f"?eshop__id__exact={eshop.pk}"
    )


def _operator(request: HttpRequest) -> str:
    return request.user.get_username()


def _record(request: HttpRequest, eshop_id: int, action: str, detail: str) -> None:
    OperatorAction.objects.create(
        eshop_id=eshop_id,
        operator=_operator(request),
        action=action,
        detail=detail[:500],
    )


class YesNoFilter(admin.SimpleListFilter):
    """A yes/no list filter on one condition (`condition`, with the labels in `labels`)."""

    condition: Q
    labels: tuple[str, str]

    def lookups(
        self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]
    ) -> list[tuple[str, str]]:
        return [("yes", self.labels[0]), ("no", self.labels[1])]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "yes":
            return queryset.filter(self.condition)
        if self.value() == "no":
            return queryset.exclude(self.condition)
        return queryset


class MissingRightsFilter(YesNoFilter):
    title = "missing rights"
    parameter_name = "missing_rights"
    condition = ~Q(missing_rights={})
    labels = ("Some endpoints refused", "None refused")


class SetupCompletedFilter(YesNoFilter):
    title = "setup completed"
    parameter_name = "setup_completed"
    condition = SETUP_DONE
    labels = ("Yes, for the latest install", "No")


class EshopTransitionInline(admin.TabularInline[EshopTransition, Eshop]):
    model = EshopTransition
    verbose_name_plural = "lifecycle history"
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
    # What an operator scans for at 1366 px: identity, state, and the three health columns. URL,
    # trial, install times, the pause details and the last renewal are on the tenant's page.
    list_display = [
        "eshop_id",
        "name",
        "state",
        "setup_completed",
        "token_expires_in",
        "token_failures",
        "missing_rights_summary",
    ]
    list_display_links = ["eshop_id", "name"]
    # Counting 100,000 rows on every page load is most of the page's cost: the filtered count
    # is shown, the total is not counted again, and the unfiltered total is PostgreSQL's estimate.
    show_full_result_count = False
    paginator = TenantPaginator
    list_filter = [
        "status",
        "trial",
        MissingRightsFilter,
        SetupCompletedFilter,
    ]
    # A number is an eshop id, looked up exactly (get_search_results); text is a case-insensitive
    # substring of these, answered by trigram indexes on PostgreSQL (migration 0007).
    search_fields = ["name", "url", "contact_email"]
    # `exclude` keeps the encrypted fields out of forms, change views and history diffs.
    exclude = SECRET_FIELDS
    # Everything is read-only (see has_change_permission): it changes through installs, webhooks
    # and the audited actions only.
    fieldsets = [
        (
            None,
            {
                "fields": [
                    "eshop_id",
                    "name",
                    "url",
                    "contact_email",
                    "state",
                    "status_reason",
                    "status_changed_at",
                    "processing_paused_at",
                    "processing_paused_by",
                    "trial",
                ]
            },
        ),
        (
            "API access",
            {
                "fields": [
                    "token_health_summary",
                    "has_oauth_token",
                    "oauth_token_received_at",
                    "missing_rights_table",
                ]
            },
        ),
        (
            "Webhooks",
            {
                "fields": [
                    "webhooks_table",
                    "recent_webhook_events",
                    "has_signature_key",
                    "signature_key_renewed_at",
                ]
            },
        ),
        ("Sync", {"fields": ["sync_states_table"]}),
        (
            "Installation",
            {
                "fields": [
                    "installed_at",
                    "last_installed_at",
                    "install_count",
                    "setup_completed_at",
                    "lifecycle_event_at",
                    "uninstalled_at",
                    "admin_oauth_url",
                    "created_at",
                    "updated_at",
                ]
            },
        ),
    ]
    # The page is read-only: operators act through the audited actions, never by editing fields.
    readonly_fields = [
        field
        for _, options in fieldsets
        for field in options["fields"]
        if isinstance(field, str)
    ]
    inlines = [EshopTransitionInline]
    actions = [
        "renew_api_token_now",
        "reregister_webhooks",
        "pause_processing",
        "resume_processing",
        "purge_uninstalled_tenants",
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Eshop]:
        # Lists never need the secrets: skip decrypting them for every row.
        return super().get_queryset(request).defer(*SECRET_FIELDS)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Eshop], search_term: str
    ) -> tuple[QuerySet[Eshop], bool]:
        # An id is never also matched as a substring of names and URLs: that OR reads every row.
        term = search_term.strip()
        if term.isascii() and term.isdigit():
            eshop_id = int(term)
            if eshop_id > MAX_ESHOP_ID:
                return queryset.none(), False
            return queryset.filter(eshop_id=eshop_id), False
        return super().get_search_results(request, queryset, search_term)

    def get_changelist_instance(self, request: HttpRequest) -> ChangeList:
        changelist = super().get_changelist_instance(request)
        # A POST runs an action and redirects: there is no list to show.
        if request.method == "GET":
            _prefetch_token_health(changelist.result_list)
        return changelist

    def has_change_permission(
        self, request: HttpRequest, obj: Eshop | None = None
    ) -> bool:
        # A tenant's page is read-only (no form to save, no Save buttons): what changes goes through
        # the audited actions, which need the model's change permission (asked without `obj`).
        if obj is not None:
            return False
        return super().has_change_permission(request)

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "<path:object_id>/actions/<str:action>/",
                self.admin_site.admin_view(self.tenant_action_view),
                name="eshops_eshop_tenant_action",
            ),
            *super().get_urls(),
        ]

    def tenant_action_view(
        self, request: HttpRequest, object_id: str, action: str
    ) -> HttpResponseBase:
        """Run one list action on one tenant, from a button on its page (POST, CSRF-checked)."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        chosen = self.get_actions(request).get(action)
        if action not in TENANT_ACTIONS or chosen is None:
            # Unknown here, or not allowed for this operator (the actions' own permissions).
            raise PermissionDenied
        eshop = self.get_object(request, unquote(object_id))
        if eshop is None:
            raise Http404("No such e-shop.")
        func = chosen[0]
        # django-stubs types an action's result as str; ours return None or a response.
        response: object = func(
            self, request, self.get_queryset(request).filter(pk=eshop.pk)
        )
        if isinstance(response, HttpResponseBase):
            return response  # the purge confirmation page; it posts back here
        if Eshop.objects.filter(pk=eshop.pk).exists():
            return HttpResponseRedirect(
                reverse("admin:eshops_eshop_change", args=[eshop.pk])
            )
        return HttpResponseRedirect(reverse("admin:eshops_eshop_changelist"))

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        eshop = self.get_object(request, unquote(object_id))
        context = dict(extra_context or {})
        if eshop is not None:
            context["tenant_actions"] = self._tenant_actions(request, eshop)
            context["webhook_events_url"] = _webhook_events_url(eshop)
        return super().change_view(request, object_id, form_url, context)

    def _tenant_actions(
        self, request: HttpRequest, eshop: Eshop
    ) -> list[dict[str, Any]]:
        """The buttons that apply to `eshop` now and that this operator may use."""
        allowed = self.get_actions(request)
        active = eshop.status == Eshop.Status.ACTIVE
        paused = eshop.processing_paused_at is not None
        applies = {
            "renew_api_token_now": active,
            "reregister_webhooks": active,
            "pause_processing": not paused,
            "resume_processing": paused,
            "purge_uninstalled_tenants": eshop.status == Eshop.Status.UNINSTALLED,
        }
        return [
            {
                "name": name,
                "label": label,
                "description": description,
                "danger": name == "purge_uninstalled_tenants",
                "url": reverse(
                    "admin:eshops_eshop_tenant_action", args=[eshop.pk, name]
                ),
            }
            for name, label in TENANT_ACTIONS.items()
            if applies[name] and (action := allowed.get(name)) is not None
            for description in [action[2]]
        ]

    # --- Columns -----------------------------------------------------------------------------

    @admin.display(description="status", ordering="status")
    def state(self, obj: Eshop) -> str:
        # An operator's pause is not Shoptet's lifecycle, but a paused shop must not read "Active".
        label = str(obj.get_status_display())
        return f"{label} · paused" if obj.processing_paused_at else label

    @admin.display(description="missing rights")
    def missing_rights_table(self, obj: Eshop) -> SafeString | str:
        if not obj.missing_rights:
            return "none: every endpoint called so far was allowed"
        return _table(
            ["Endpoint", "Refused at"],
            [
                (endpoint, _iso_to_utc(refused_at))
                for endpoint, refused_at in sorted(obj.missing_rights.items())
            ],
        )

    @admin.display(description="registered webhooks")
    def webhooks_table(self, obj: Eshop) -> SafeString | str:
        if not obj.webhooks:
            return "none registered"
        return _table(
            ["Event", "Shoptet webhook id"],
            [(event, str(hook_id)) for event, hook_id in sorted(obj.webhooks.items())],
        )

    @admin.display(description="sync states")
    def sync_states_table(self, obj: Eshop) -> SafeString | str:
        # Looked up in the app registry: the sync app depends on eshops, not the other way round.
        from sync.admin import format_lag

        sync_state = apps.get_model("sync", "SyncState")
        states = list(sync_state.objects.filter(eshop=obj).order_by("resource"))
        if not states:
            return "not synced yet"
        table = _table(
            ["Resource", "Phase", "Stored", "Last success", "Lag", "Last error"],
            [
                (
                    state.resource,
                    state.get_phase_display(),
                    str(state.items_stored),
                    format_utc(state.last_success_at, empty="never"),
                    format_lag(state.lag_seconds),
                    state.last_error[:120] or "-",
                )
                for state in states
            ],
        )
        return format_html(
            '{}<p><a href="{}?eshop__id__exact={}">Sync states of this tenant</a></p>',
            table,
            reverse("admin:sync_syncstate_changelist"),
            obj.pk,
        )

    @admin.display(description="recent webhook events")
    def recent_webhook_events(self, obj: Eshop) -> SafeString | str:
        events = list(
            WebhookEvent.objects.filter(eshop=obj)
            .order_by("-received_at", "-id")
            .values(
                "id",
                "received_at",
                "event",
                "event_created",
                "status",
                "attempts",
                "last_error",
            )[:RECENT_EVENTS]
        )
        if not events:
            return "none received"
        table = _table(
            [
                "Received",
                "Event",
                "Created at Shoptet",
                "Status",
                "Attempts",
                "Last error",
            ],
            [
                (
                    format_utc(event["received_at"]),
                    event["event"],
                    format_utc(event["event_created"]),
                    event["status"],
                    str(event["attempts"]),
                    event["last_error"][:120],
                )
                for event in events
            ],
        )
        return format_html(
            '{}<p><a href="{}">All webhook events of this e-shop</a></p>',
            table,
            _webhook_events_url(obj),
        )

    @admin.display(boolean=True, description="OAuth token stored")
    def has_oauth_token(self, obj: Eshop) -> bool:
        return bool(obj.oauth_access_token)

    @admin.display(boolean=True, description="webhook signature key stored")
    def has_signature_key(self, obj: Eshop) -> bool:
        return bool(obj.webhook_signature_key)

    @admin.display(boolean=True, description="setup done")
    def setup_completed(self, obj: Eshop) -> bool:
        return obj.setup_done

    @admin.display(description="token expires in")
    def token_expires_in(self, obj: Eshop) -> str:
        health = _token_health(obj)
        return UNKNOWN if health is None else _format_expires_in(health["expires_in"])

    @admin.display(description="renewal failures")
    def token_failures(self, obj: Eshop) -> int | str:
        health = _token_health(obj)
        return UNKNOWN if health is None else int(health["failures"])

    @admin.display(description="missing rights")
    def missing_rights_summary(self, obj: Eshop) -> str:
        endpoints = sorted(obj.missing_rights)
        if not endpoints:
            return "-"
        shown = ", ".join(endpoints[:3]) + (", …" if len(endpoints) > 3 else "")
        return f"{len(endpoints)}: {shown}"

    @admin.display(description="API token health")
    def token_health_summary(self, obj: Eshop) -> str:
        health = _token_health(obj)
        if health is None:
            return f"{UNKNOWN} (token store unreachable)"
        renewed_at, error_at = (
            _epoch(health["renewed_at"]),
            _epoch(health["last_error_at"]),
        )
        lines = [
            f"expires in: {_format_expires_in(health['expires_in'])}",
            f"valid tokens: {health['valid_tokens']} of {health['cap']}",
            # Known while a token is held: an idle tenant's expired one is gone, and its next
            # API call mints a new one.
            f"last renewal: {format_utc(renewed_at, empty='no token held (idle)')}",
            f"consecutive renewal failures: {health['failures']}",
        ]
        if health["last_error"]:
            # Exception texts from the Shoptet seam never carry a token (shoptet_api/errors.py).
            lines.append(
                f"last error: {health['last_error']}"
                + (f" at {format_utc(error_at)}" if error_at else "")
            )
        return "\n".join(lines)

    # --- Permissions -------------------------------------------------------------------------

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Tenants come from Shoptet's install callback only.
        return False

    def has_delete_permission(
        self, request: HttpRequest, obj: Eshop | None = None
    ) -> bool:
        # No plain delete (it would remove a live tenant); uninstalled ones are purged by an action.
        return False

    def has_purge_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("eshops.delete_eshop")

    # --- Actions -----------------------------------------------------------------------------

    @admin.action(
        description=f"Renew API token now (at most {RENEW_NOW_LIMIT}; uses a token slot each)",
        permissions=["change"],
    )
    def renew_api_token_now(
        self, request: HttpRequest, queryset: QuerySet[Eshop]
    ) -> None:
        if queryset.count() > RENEW_NOW_LIMIT:
            self.message_user(
                request,
                f"Select at most {RENEW_NOW_LIMIT} e-shops: each renewal calls Shoptet while you wait.",
                messages.ERROR,
            )
            return
        # Loaded with their OAuth tokens: minting needs them.
        for eshop in Eshop.objects.filter(pk__in=queryset.values("pk")):
            level, detail = self._force_renewal(eshop)
            _record(request, eshop.eshop_id, "renew_api_token", detail)
            self.message_user(request, f"{eshop}: {detail}", level)

    def _force_renewal(self, eshop: Eshop) -> tuple[int, str]:
        if eshop.status != Eshop.Status.ACTIVE:
            return messages.WARNING, f"skipped: e-shop is {eshop.status}"
        try:
            renewed = tokens.renew_if_expiring(eshop, within=FORCE_RENEWAL)
        except ShoptetAPIError as exc:
            # str() of a Shoptet error never contains a token (shoptet_api/errors.py).
            return messages.ERROR, f"failed: {exc}"
        except redis.RedisError as exc:
            return (
                messages.ERROR,
                f"failed: token store unreachable ({type(exc).__name__})",
            )
        if not renewed:
            # At the cap the broker keeps the current token rather than mint a sixth.
            health = read_token_health(eshop.eshop_id)
            cap = (
                f" ({health['valid_tokens']} of {health['cap']} valid)"
                if health
                else ""
            )
            return (
                messages.WARNING,
                f"no new token{cap}: the current one stays in use",
            )
        return messages.SUCCESS, "new API token issued"

    @admin.action(description="Re-register webhooks", permissions=["change"])
    def reregister_webhooks(
        self, request: HttpRequest, queryset: QuerySet[Eshop]
    ) -> None:
        queued: list[str] = []
        other: list[str] = []
        for eshop in queryset.only("pk", "eshop_id", "name", "status"):
            if eshop.status != Eshop.Status.ACTIVE:
                detail = f"skipped: e-shop is {eshop.status}"
            else:
                try:
                    sync_eshop_webhooks.delay(eshop.eshop_id)
                except BrokerError as exc:
                    detail = f"not queued: broker unreachable ({type(exc).__name__})"
                else:
                    detail = "queued"
            _record(request, eshop.eshop_id, "reregister_webhooks", detail)
            (queued if detail == "queued" else other).append(f"{eshop}: {detail}")
        if queued:
            self.message_user(
                request,
                f"Webhook registration queued for {len(queued)} e-shop(s).",
                messages.SUCCESS,
            )
        for line in other:
            self.message_user(request, line, messages.WARNING)

    @admin.action(
        description="Pause processing (API calls and jobs)", permissions=["change"]
    )
    def pause_processing(self, request: HttpRequest, queryset: QuerySet[Eshop]) -> None:
        self._pause(request, queryset, paused=True)

    @admin.action(description="Resume processing", permissions=["change"])
    def resume_processing(
        self, request: HttpRequest, queryset: QuerySet[Eshop]
    ) -> None:
        self._pause(request, queryset, paused=False)

    def _pause(
        self, request: HttpRequest, queryset: QuerySet[Eshop], *, paused: bool
    ) -> None:
        # A flag of its own, not the lifecycle status: Shoptet's addon:approve must not undo an
        # operator's pause, and resuming must not revive a shop Shoptet suspended.
        operator = _operator(request)
        for eshop in queryset:
            changed = eshop.pause(by=operator) if paused else eshop.resume()
            if changed:
                detail, level = ("paused" if paused else "resumed"), messages.SUCCESS
            else:
                detail, level = (
                    f"no change: already {'paused' if paused else 'running'}",
                    messages.WARNING,
                )
            if not paused and changed and eshop.status != Eshop.Status.ACTIVE:
                detail += f" (the e-shop is {eshop.status}: Shoptet decides that)"
                level = messages.WARNING
            _record(request, eshop.eshop_id, "pause" if paused else "resume", detail)
            self.message_user(request, f"{eshop}: {detail}", level)

    @admin.action(
        description="Purge uninstalled tenants (delete now, with all their data)",
        permissions=["purge"],
    )
    def purge_uninstalled_tenants(
        self, request: HttpRequest, queryset: QuerySet[Eshop]
    ) -> TemplateResponse | None:
        refused = list(queryset.exclude(status=Eshop.Status.UNINSTALLED))
        if refused:
            self.message_user(
                request,
                "Only uninstalled e-shops can be purged; nothing was deleted. Not uninstalled: "
                + ", ".join(f"{eshop} ({eshop.status})" for eshop in refused[:20]),
                messages.ERROR,
            )
            return None
        if request.POST.get("post") == "yes":
            purged = self._purge(request, list(queryset.values_list("pk", flat=True)))
            self.message_user(
                request,
                f"Purged {len(purged)} uninstalled e-shop(s) with all their data: "
                + ", ".join(map(str, purged[:50])),
                messages.SUCCESS if purged else messages.WARNING,
            )
            return None
        return TemplateResponse(
            request,
            "admin/eshops/eshop/purge_confirmation.html",
            {
                **self.admin_site.each_context(request),
                "title": "Purge uninstalled e-shops?",
                "opts": self.opts,
                "eshops": list(queryset),
                "action_checkbox_name": ACTION_CHECKBOX_NAME,
                "action_name": "purge_uninstalled_tenants",
            },
        )

    def _purge(self, request: HttpRequest, pks: list[int]) -> list[int]:
        """Delete the uninstalled tenants among `pks` now; their eshopIds. Audited before deleting."""
        with transaction.atomic():
            # Locked: a reinstall racing the purge either wins (the row is no longer
            # uninstalled and stays) or waits and installs afresh.
            doomed = list(
                Eshop.objects.select_for_update()
                .filter(
                    pk__in=pks,
                    status=Eshop.Status.UNINSTALLED,
                    uninstalled_at__isnull=False,
                )
                .values_list("pk", "eshop_id", "uninstalled_at")
            )
            OperatorAction.objects.bulk_create(
                OperatorAction(
                    eshop_id=eshop_id,
                    operator=_operator(request),
                    action="purge",
                    detail=f"purged, uninstalled {uninstalled_at:%Y-%m-%d %H:%M} UTC",
                )
                for _, eshop_id, uninstalled_at in doomed
            )
            # purge_uninstalled without the retention cutoff: every doomed row is older than this.
            Eshop.objects.filter(pk__in=[pk for pk, _, _ in doomed]).purge_uninstalled(
                before=timezone.now() + dt.timedelta(days=1)
            )
        return [eshop_id for _, eshop_id, _ in doomed]


@admin.register(OperatorAction)
class OperatorActionAdmin(admin.ModelAdmin[OperatorAction]):
    """The audit log of operator actions: read-only, kept after a tenant is purged."""

    list_display = ["created_at", "eshop_id", "operator", "action", "detail"]
    list_filter = ["action", "operator", "created_at"]
    search_fields = ["=eshop_id", "operator", "detail"]
    date_hierarchy = "created_at"
    readonly_fields = ["created_at", "eshop_id", "operator", "action", "detail"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(
        self, request: HttpRequest, obj: OperatorAction | None = None
    ) -> bool:
        return False

    def has_delete_permission(
        self, request: HttpRequest, obj: OperatorAction | None = None
    ) -> bool:
        return False
