"""The tenant: one installed Shoptet e-shop, keyed by Shoptet's `eshopId`."""

from __future__ import annotations

import datetime
import logging
from functools import partial

from django.db import models, transaction
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from addon_project.encryption import EncryptedTextField
from eshops.signals import tenant_uninstalled

logger = logging.getLogger(__name__)


# Post-install setup finished for the latest (re)install.
SETUP_DONE = models.Q(setup_completed_at__gte=models.F("last_installed_at"))
# How far ahead of our clock a lifecycle event's own time may be (clock skew between Shoptet and
# us). The ordering mark never moves past now + this: a far-future event cannot freeze the tenant.
LIFECYCLE_EVENT_MAX_AHEAD = datetime.timedelta(days=1)


class EshopQuerySet(models.QuerySet["Eshop"]):
    def active(self) -> EshopQuerySet:
        """Installed and approved (operator pauses aside: see Eshop.api_refusal)."""
        return self.filter(status=Eshop.Status.ACTIVE)

    def purge_uninstalled(self, *, before: datetime.datetime) -> int:
        """Delete tenants uninstalled before `before`, with everything they own; how many.

        Each row is re-checked under its row lock in the deleting transaction: a reinstall that
        commits first is no longer uninstalled and stays; one that comes later waits for the
        delete and installs afresh.
        """
        with transaction.atomic():
            doomed = list(
                self.select_for_update()
                .filter(status=Eshop.Status.UNINSTALLED, uninstalled_at__lt=before)
                .values_list("pk", "eshop_id")
            )
            Eshop.objects.filter(pk__in=[pk for pk, _ in doomed]).delete()
        eshop_ids = [eshop_id for _, eshop_id in doomed]
        if eshop_ids:
            logger.warning(
                "purged %s uninstalled e-shops: %s",
                len(eshop_ids),
                ", ".join(map(str, eshop_ids[:50])),
            )
        return len(eshop_ids)

    def pending_setup(self, *, before: datetime.datetime) -> EshopQuerySet:
        """Active e-shops (re)installed before `before` whose post-install setup has not completed since."""
        return (
            self.active()
            .filter(last_installed_at__lt=before)
            .exclude(
                SETUP_DONE
            )  # exclude() also keeps rows whose setup_completed_at is NULL
        )


class Eshop(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", _("Active")
        SUSPENDED = "suspended", _("Suspended")
        UNINSTALLED = "uninstalled", _("Uninstalled")
        TERMINATED = "terminated", _("Terminated")

    # Shoptet's eshopId is the tenant key; the domain can change (eshop:projectDomain).
    eshop_id = models.PositiveBigIntegerField("Shoptet eshopId", unique=True)
    url = models.URLField("e-shop URL", max_length=500)
    contact_email = models.EmailField(blank=True)
    name = models.CharField(max_length=255, blank=True)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.ACTIVE, db_index=True
    )
    trial = models.BooleanField(
        null=True, help_text="`trial` from the install answer (meaning not documented)."
    )
    # The long-lived OAuth access token (scope api), encrypted at rest. Never shown anywhere;
    # empty after an uninstall.
    oauth_access_token: EncryptedTextField[str | None, str | None] = EncryptedTextField(
        null=True, blank=True
    )
    # When our exchange received the stored token: of two racing installs the later answer wins.
    oauth_token_received_at = models.DateTimeField(null=True, blank=True)

    status_reason = models.CharField(
        max_length=255, blank=True, help_text="Why the status last changed."
    )
    status_changed_at = models.DateTimeField(null=True, blank=True)
    # An operator's pause of all API calls and jobs, independent of Shoptet's own lifecycle (an
    # addon:approve must not silently undo it).
    processing_paused_at = models.DateTimeField(null=True, blank=True)
    processing_paused_by = models.CharField(max_length=150, blank=True)

    # eventCreated of the newest lifecycle event applied: older deliveries are ignored.
    lifecycle_event_at = models.DateTimeField(null=True, blank=True)

    # Webhooks: the signature key from renew-signature-key (encrypted); the previous key stays
    # valid for SHOPTET_WEBHOOK_KEY_ROTATION_WINDOW seconds after a renewal.
    webhook_signature_key: EncryptedTextField[str | None, str | None] = (
        EncryptedTextField(null=True, blank=True)
    )
    previous_signature_key: EncryptedTextField[str | None, str | None] = (
        EncryptedTextField(null=True, blank=True)
    )
    signature_key_renewed_at = models.DateTimeField(null=True, blank=True)
    # The e-shop's own OAuthServer base (from /api/eshop urls[ident=oauth]) for settings-page login.
    admin_oauth_url = models.URLField(max_length=500, blank=True)
    # Registered webhooks as Shoptet last listed them: {"eshop:projectDomain": 12}.
    webhooks = models.JSONField(default=dict, blank=True)

    # Endpoints Shoptet refused with 403 (not approved by the e-shop): {"GET /api/orders": iso time}.
    missing_rights = models.JSONField(default=dict, blank=True)

    installed_at = models.DateTimeField(help_text="First install.")
    last_installed_at = models.DateTimeField(
        help_text="Most recent install or reinstall."
    )
    install_count = models.PositiveIntegerField(default=1)
    uninstalled_at = models.DateTimeField(null=True, blank=True)
    # Post-install setup (first API token, /api/eshop details) finished for the latest install.
    setup_completed_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = EshopQuerySet.as_manager()

    class Meta:
        ordering = ["eshop_id"]
        verbose_name = "e-shop"
        # Partial indexes for the few rows the sweeps, the dashboard and the list filters look
        # for, so none of them reads every tenant.
        indexes = [
            models.Index(
                fields=["last_installed_at"],
                condition=~SETUP_DONE,
                name="eshop_setup_pending_idx",
            ),
            models.Index(
                fields=["eshop_id"],
                condition=~models.Q(missing_rights={}),
                name="eshop_missing_rights_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"e-shop {self.eshop_id}" + (f" ({self.name})" if self.name else "")

    def transition(
        self,
        to: str,
        *,
        reason: str,
        source: str,
        occurred_at: datetime.datetime | None = None,
        actor: str = "",
        same_token: bool = False,
    ) -> bool:
        """Move the tenant to status `to` if the lifecycle allows it; True when it moved.

        Every move is recorded in `EshopTransition`. `occurred_at` is the event's own time
        (`eventCreated`): an event older than the last applied one, or older than the latest
        install, is stale and changes nothing, so out-of-order delivery cannot undo newer state.
        `same_token`: apply only if the OAuth token is still the one this object holds (an answer
        about a token that a reinstall has since replaced says nothing about the tenant).
        Uninstalling wipes the tenant's secrets; its other data stays until the retention purge.
        """
        with transaction.atomic():
            locked = Eshop.objects.select_for_update().get(pk=self.pk)
            stale = (
                same_token
                and locked.oauth_token_received_at != self.oauth_token_received_at
            ) or (
                occurred_at is not None
                and (
                    occurred_at < locked.last_installed_at
                    or (
                        locked.lifecycle_event_at is not None
                        and occurred_at < locked.lifecycle_event_at
                    )
                )
            )
            if stale:
                logger.info(
                    "eshop_id=%s: stale %s -> %s ignored (%s)",
                    self.eshop_id,
                    locked.status,
                    to,
                    reason,
                )
                return False
            if occurred_at is not None:
                locked.lifecycle_event_at = min(
                    occurred_at, timezone.now() + LIFECYCLE_EVENT_MAX_AHEAD
                )
            if to != locked.status and to not in ALLOWED_TRANSITIONS[locked.status]:
                logger.warning(
                    "eshop_id=%s: %s -> %s not allowed (%s)",
                    self.eshop_id,
                    locked.status,
                    to,
                    reason,
                )
                locked.save(update_fields=["lifecycle_event_at", "updated_at"])
                return False
            moved = to != locked.status
            now = timezone.now()
            if moved:
                EshopTransition.objects.create(
                    eshop=locked,
                    from_status=locked.status,
                    to_status=to,
                    reason=reason[:255],
                    source=source,
                    actor=actor[:150],
                    occurred_at=occurred_at or now,
                )
                logger.warning(
                    "eshop_id=%s: %s -> %s (%s)",
                    self.eshop_id,
                    locked.status,
                    to,
                    reason,
                )
                locked.status, locked.status_reason, locked.status_changed_at = (
                    to,
                    reason[:255],
                    now,
                )
                if to == Eshop.Status.UNINSTALLED:
                    locked.uninstalled_at = now
                    locked.forget_secrets()
            locked.save()
        for field in (
            "status",
            "status_reason",
            "status_changed_at",
            "uninstalled_at",
            "lifecycle_event_at",
            "oauth_access_token",
            "webhook_signature_key",
            "previous_signature_key",
        ):
            setattr(self, field, getattr(locked, field))
        return moved

    @property
    def setup_done(self) -> bool:
        """The object-level form of SETUP_DONE."""
        return (
            self.setup_completed_at is not None
            and self.setup_completed_at >= self.last_installed_at
        )

    @property
    def api_refusal(self) -> str | None:
        """Why this tenant may not call the API or run jobs now ("paused", or its status); None
        when it may. The one rule the client, the tasks, the handlers and the admin apply."""
        if self.processing_paused_at is not None:
            return "paused"
        if self.status != Eshop.Status.ACTIVE:
            return str(self.status)
        return None

    @property
    def can_call_api(self) -> bool:
        """Active and not paused by an operator: API calls and jobs may run."""
        return self.api_refusal is None

    def apply_verdict(self, to: str, *, reason: str) -> bool:
        """Apply what Shoptet answered about this installation (suspended, or not installed).

        The answer was about the OAuth token this object holds: when a reinstall has replaced
        that token since (even one committing while this waits for the row lock), the answer
        says nothing about the new installation and changes nothing. True when the tenant moved.
        """
        if to not in (Eshop.Status.SUSPENDED, Eshop.Status.UNINSTALLED):
            raise ValueError(
                f"Shoptet's verdicts are suspended or uninstalled, not {to!r}"
            )
        return self.transition(to, reason=reason, source="shoptet", same_token=True)

    def reinstall(
        self,
        *,
        oauth_access_token: str,
        received_at: datetime.datetime,
        url: str,
        contact_email: str,
        trial: bool | None,
    ) -> None:
        """A new install of this shop: active again with the new OAuth token, whatever its status.

        Call it on a row the caller's transaction locked (select_for_update). Of two racing
        installs the later exchange answer's token wins. Lifecycle ordering starts afresh:
        events from before this install are stale by `last_installed_at` anyway.
        """
        stored_at = self.oauth_token_received_at
        if stored_at is None or stored_at <= received_at:
            self.oauth_access_token = oauth_access_token
            self.oauth_token_received_at = received_at
        else:
            # Two installs for one shop raced and the other answer came later: its token is
            # the one Shoptet issued last, so it stays.
            logger.warning(
                "install: eshop_id=%s kept the newer token of a concurrent install",
                self.eshop_id,
            )
        self.record_install(created=False, at=received_at)
        self.url, self.contact_email, self.trial = url, contact_email, trial
        self.status = Eshop.Status.ACTIVE
        self.status_reason = "reinstalled"
        self.status_changed_at = received_at
        self.uninstalled_at = None
        self.lifecycle_event_at = None
        self.last_installed_at = max(self.last_installed_at, received_at)
        self.install_count = models.F("install_count") + 1
        self.save()
        self.refresh_from_db(fields=["install_count"])

    def pause(self, *, by: str) -> bool:
        """An operator stops this tenant's API calls and jobs; True when it was running.

        A flag of its own, not the lifecycle status: Shoptet's addon:approve must not undo it.
        """
        now = timezone.now()
        changed = Eshop.objects.filter(
            pk=self.pk, processing_paused_at__isnull=True
        ).update(
            processing_paused_at=now, processing_paused_by=by[:150], updated_at=now
        )
        if changed:
            self.processing_paused_at, self.processing_paused_by = now, by[:150]
        return bool(changed)

    def resume(self) -> bool:
        """Undo an operator's pause; True when it was paused. Shoptet's status stays as it is."""
        changed = Eshop.objects.filter(
            pk=self.pk, processing_paused_at__isnull=False
        ).update(
            processing_paused_at=None,
            processing_paused_by="",
            updated_at=timezone.now(),
        )
        if changed:
            self.processing_paused_at, self.processing_paused_by = None, ""
        return bool(changed)

    def forget_secrets(self) -> None:
        """Drop every credential (on uninstall): the OAuth token and webhook keys here; after the
        commit, `tenant_uninstalled` tells the token store to drop the API tokens."""
        self.oauth_access_token = None
        self.webhook_signature_key = None
        self.previous_signature_key = None
        self.webhooks = {}
        transaction.on_commit(
            partial(tenant_uninstalled.send, sender=Eshop, eshop_id=self.eshop_id),
            robust=True,
        )

    def record_install(self, *, created: bool, at: datetime.datetime) -> None:
        """Audit an install or reinstall (a reinstall may revive any status)."""
        EshopTransition.objects.create(
            eshop=self,
            from_status="" if created else self.status,
            to_status=Eshop.Status.ACTIVE,
            reason="installed" if created else "reinstalled",
            source="install",
            occurred_at=at,
        )

    def record_missing_right(self, endpoint: str) -> None:
        """Remember that Shoptet refused `endpoint` (403): operators and the settings page show it."""
        with transaction.atomic():
            locked = (
                Eshop.objects.select_for_update()
                .only("pk", "missing_rights")
                .get(pk=self.pk)
            )
            locked.missing_rights = {
                **locked.missing_rights,
                endpoint[:200]: timezone.now().isoformat(),
            }
            locked.save(update_fields=["missing_rights", "updated_at"])
        self.missing_rights = locked.missing_rights


# Which status can follow which. Anything may become ACTIVE again through a reinstall
# (Eshop.record_install); lifecycle events alone cannot revive a terminated or uninstalled shop.
ALLOWED_TRANSITIONS: dict[str, set[str]] = {
    Eshop.Status.ACTIVE: {
        Eshop.Status.SUSPENDED,
        Eshop.Status.TERMINATED,
        Eshop.Status.UNINSTALLED,
    },
    Eshop.Status.SUSPENDED: {
        Eshop.Status.ACTIVE,
        Eshop.Status.TERMINATED,
        Eshop.Status.UNINSTALLED,
    },
    Eshop.Status.TERMINATED: {Eshop.Status.UNINSTALLED},
    Eshop.Status.UNINSTALLED: set(),
}


class EshopTransition(models.Model):
    """The audit trail of a tenant's lifecycle: who or what moved it, when, and why."""

    eshop = models.ForeignKey(
        Eshop, on_delete=models.CASCADE, related_name="transitions"
    )
    from_status = models.CharField(max_length=16, blank=True)
    to_status = models.CharField(max_length=16)
    reason = models.CharField(max_length=255)
    # install / webhook / shoptet (an OAuth or API answer) / operator
    source = models.CharField(max_length=16)
    actor = models.CharField(
        max_length=150, blank=True, help_text="The operator, for manual changes."
    )
    occurred_at = models.DateTimeField(
        help_text="When it happened (the event's own time when known)."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        # The dashboard's newest moves, without sorting every tenant's history.
        indexes = [
            models.Index(
                fields=["-created_at", "-id"], name="eshoptransition_recent_idx"
            )
        ]

    def __str__(self) -> str:
        return f"{self.from_status or 'new'} -> {self.to_status} ({self.source})"


class EshopSettings(models.Model):
    """The addon's settings for one e-shop, edited by the merchant on the settings page."""

    eshop = models.OneToOneField(
        Eshop, on_delete=models.CASCADE, related_name="addon_settings"
    )
    sync_orders = models.BooleanField(
        default=True, help_text=_("Copy new orders in the background.")
    )
    sync_products = models.BooleanField(
        default=False, help_text=_("Copy products in the background.")
    )
    sync_interval_minutes = models.PositiveSmallIntegerField(default=60)
    notification_email = models.EmailField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "addon settings"
        verbose_name_plural = "addon settings"
        # sync.schedule_due reads only the tenants that switched a resource on.
        indexes = [
            models.Index(
                fields=["eshop"],
                condition=models.Q(sync_orders=True),
                name="eshopsettings_sync_orders_idx",
            ),
            models.Index(
                fields=["eshop"],
                condition=models.Q(sync_products=True),
                name="eshopsettings_sync_prods_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"settings of e-shop {self.eshop_id}"


class SettingsChange(models.Model):
    """One saved change of an e-shop's addon settings: who (the Shoptet admin user) changed what."""

    eshop = models.ForeignKey(
        Eshop, on_delete=models.CASCADE, related_name="settings_changes"
    )
    changed_by = models.CharField(
        max_length=255, help_text="The Shoptet admin user, from getBasicEshop."
    )
    changes = models.JSONField(help_text='{"field": [old, new]}')
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{', '.join(self.changes)} by {self.changed_by}"


class OperatorAction(models.Model):
    """An operator's action from the admin (renew token, re-register webhooks, suspend, purge …).

    Keyed by the plain eshopId rather than a foreign key: the record of a purge outlives the tenant.
    """

    eshop_id = models.PositiveBigIntegerField(db_index=True)
    operator = models.CharField(max_length=150)
    action = models.CharField(max_length=64)
    detail = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.action} on e-shop {self.eshop_id} by {self.operator}"
