"""The tenant: one installed Shoptet e-shop, keyed by Shoptet's `eshopId`."""

from __future__ import annotations

import datetime
import logging

from django.db import models, transaction
from django.utils import timezone

from addon_project.encryption import EncryptedTextField

logger = logging.getLogger(__name__)


class EshopQuerySet(models.QuerySet["Eshop"]):
    def active(self) -> EshopQuerySet:
        return self.filter(status=Eshop.Status.ACTIVE)

    def pending_setup(self, *, before: datetime.datetime) -> EshopQuerySet:
        """Active e-shops (re)installed before `before` whose post-install setup has not completed since."""
        return (
            self.active()
            .filter(last_installed_at__lt=before)
            .filter(
                models.Q(setup_completed_at__isnull=True)
                | models.Q(setup_completed_at__lt=models.F("last_installed_at"))
            )
        )


class Eshop(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUSPENDED = "suspended", "Suspended"
        UNINSTALLED = "uninstalled", "Uninstalled"
        TERMINATED = "terminated", "Terminated"

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
    # The long-lived OAuth access token (scope api), encrypted at rest. Never shown anywhere.
    oauth_access_token = EncryptedTextField()
    # When our exchange received the stored token: of two racing installs the later answer wins.
    oauth_token_received_at = models.DateTimeField(null=True, blank=True)

    status_reason = models.CharField(
        max_length=255, blank=True, help_text="Why the status last changed."
    )
    status_changed_at = models.DateTimeField(null=True, blank=True)
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

    def __str__(self) -> str:
        return f"e-shop {self.eshop_id}" + (f" ({self.name})" if self.name else "")

    def mark_inactive(
        self, *, status: str, reason: str, same_token: bool = False
    ) -> None:
        """Move an active tenant to `status` because Shoptet said so; a no-op if already inactive.

        `same_token`: only if the OAuth token is still the one this object holds. A reinstall may
        have stored a new token since; an answer about the old one says nothing about the tenant.
        """
        now = timezone.now()
        rows = Eshop.objects.filter(pk=self.pk, status=Eshop.Status.ACTIVE)
        if same_token:
            rows = rows.filter(oauth_token_received_at=self.oauth_token_received_at)
        updated = rows.update(
            uninstalled_at=now if status == Eshop.Status.UNINSTALLED else None,
            status=status,
            status_reason=reason[:255],
            status_changed_at=now,
            updated_at=now,
        )
        if updated:
            logger.warning(
                "eshop_id=%s: status %s -> %s (%s)",
                self.eshop_id,
                self.status,
                status,
                reason,
            )
            self.status, self.status_reason, self.status_changed_at = (
                status,
                reason[:255],
                now,
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
