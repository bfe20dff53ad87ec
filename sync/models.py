"""The mirror of each tenant's Shoptet data, and where each tenant's sync stands."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.utils import timezone

from eshops.models import Eshop


class Order(models.Model):
    """One order as Shoptet's detail or snapshot endpoint last returned it."""

    eshop = models.ForeignKey(Eshop, on_delete=models.CASCADE, related_name="+")
    code = models.CharField(max_length=64)
    # Shoptet's schema allows a null guid; null (not "") keeps "unknown" apart from a value.
    guid = models.CharField(max_length=64, null=True, blank=True)  # noqa: DJ001
    status_id = models.IntegerField(null=True, blank=True)
    creation_time = models.DateTimeField(null=True, blank=True)
    change_time = models.DateTimeField(null=True, blank=True)
    price_with_vat = models.DecimalField(
        max_digits=20, decimal_places=4, null=True, blank=True
    )
    currency_code = models.CharField(max_length=8, blank=True)
    paid = models.BooleanField(null=True, blank=True)
    data = models.JSONField()
    # When a run last stored or saw it: a full copy removes the rows it did not see.
    synced_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["eshop", "code"], name="sync_order_unique")
        ]

    def __str__(self) -> str:
        return f"order {self.code}"


class Product(models.Model):
    """One product as Shoptet's detail or snapshot endpoint last returned it."""

    eshop = models.ForeignKey(Eshop, on_delete=models.CASCADE, related_name="+")
    guid = models.CharField(max_length=64)
    name = models.CharField(max_length=500, blank=True)
    visibility = models.CharField(max_length=32, blank=True)
    creation_time = models.DateTimeField(null=True, blank=True)
    change_time = models.DateTimeField(null=True, blank=True)
    data = models.JSONField()
    synced_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["eshop", "guid"], name="sync_product_unique"
            )
        ]

    def __str__(self) -> str:
        return f"product {self.guid}"


class SyncState(models.Model):
    """Where one tenant's sync of one resource stands; saved as work progresses.

    `checkpoint` holds the phase's position (page, snapshot job and line, /changes window); a
    crashed run resumes from it. `changes_from` is the incremental checkpoint: everything changed
    before it is stored.
    """

    class Mode(models.TextChoices):
        FULL = "full", "full copy"
        INCREMENTAL = "incremental", "incremental"

    class Phase(models.TextChoices):
        IDLE = "idle", "idle"
        LISTING = "listing", "full copy (list)"
        SNAPSHOT = "snapshot", "full copy (snapshot)"
        CHANGES = "changes", "incremental"
        FAILED = "failed", "failed"

    eshop = models.ForeignKey(
        Eshop, on_delete=models.CASCADE, related_name="sync_states"
    )
    resource = models.CharField(max_length=32)
    mode = models.CharField(max_length=16, choices=Mode.choices, blank=True)
    phase = models.CharField(max_length=16, choices=Phase.choices, default=Phase.IDLE)
    checkpoint = models.JSONField(default=dict, blank=True)
    changes_from = models.DateTimeField(null=True, blank=True)
    full_requested = models.BooleanField(default=False)
    items_done = models.PositiveIntegerField(default=0)
    items_total = models.PositiveIntegerField(null=True, blank=True)
    items_stored = models.PositiveBigIntegerField(default=0)
    items_deleted = models.PositiveBigIntegerField(default=0)
    item_errors = models.PositiveBigIntegerField(default=0)
    recent_item_errors = models.JSONField(default=list, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_full_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    running_since = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["eshop", "resource"], name="sync_state_unique"
            )
        ]
        ordering = ["eshop_id", "resource"]
        verbose_name = "sync state"
        # sync.sweep_jobs looks only at runs waiting for a snapshot job.
        indexes = [
            models.Index(
                fields=["updated_at"],
                condition=models.Q(phase="snapshot"),
                name="syncstate_snapshot_idx",
            )
        ]

    def __str__(self) -> str:
        return f"{self.resource} of e-shop {self.eshop_id}: {self.phase}"

    @property
    def lag_seconds(self) -> float | None:
        """How far behind Shoptet the mirror may be (None before the first complete copy)."""
        if self.changes_from is None:
            return None
        return (timezone.now() - self.changes_from).total_seconds()

    def record_item_error(self, key: str, error: str) -> None:
        """Remember one item that could not be stored (the last 20 are kept)."""
        self.item_errors += 1
        entry: dict[str, Any] = {
            "key": key[:100],
            "error": error[:300],
            "at": timezone.now().isoformat(),
        }
        self.recent_item_errors = [*self.recent_item_errors[-19:], entry]
