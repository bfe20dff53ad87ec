"""The webhook inbox: every accepted delivery, stored before Shoptet gets its 200."""

from __future__ import annotations

import hashlib

from django.db import models

from eshops.models import Eshop


class WebhookEventQuerySet(models.QuerySet["WebhookEvent"]):
    def dead(self) -> WebhookEventQuerySet:
        return self.filter(status=WebhookEvent.Status.DEAD)


class WebhookEvent(models.Model):
    class Status(models.TextChoices):
        RECEIVED = "received", "Received"
        PROCESSING = "processing", "Processing (claimed by a worker)"
        PROCESSED = "processed", "Processed"
        IGNORED = "ignored", "Ignored (stale or no handler)"
        FAILED = "failed", "Failed (will retry)"
        DEAD = "dead", "Dead letter"

    eshop = models.ForeignKey(
        Eshop, on_delete=models.CASCADE, related_name="webhook_events"
    )
    event = models.CharField(max_length=64, db_index=True)
    # A string whose meaning depends on the event; for mass events a JSON list, so it can be long.
    event_instance = models.TextField()
    event_created = models.DateTimeField(
        help_text="Shoptet's eventCreated: the order of truth."
    )
    # sha256 of (eshopId, event, eventInstance, eventCreated): a redelivery is the same row.
    dedup_key = models.CharField(max_length=64, unique=True)
    raw_body = models.TextField(
        help_text="The body exactly as received (its signature was checked on it)."
    )
    headers = models.JSONField(
        default=dict,
        help_text="The request headers that matter, and the source address.",
    )
    verified_by = models.CharField(
        max_length=32, help_text="How the delivery was authenticated."
    )
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.RECEIVED, db_index=True
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # While PROCESSING: the worker's lease. Past it, the worker is taken for dead and the
    # redelivery sweep runs the row again (the attempt it spent is counted).
    claimed_until = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    result = models.CharField(
        max_length=255, blank=True, help_text="What the handler did."
    )
    received_at = models.DateTimeField(auto_now_add=True, db_index=True)
    processed_at = models.DateTimeField(null=True, blank=True)

    objects = WebhookEventQuerySet.as_manager()

    class Meta:
        ordering = ["-received_at", "-id"]
        indexes = [
            models.Index(fields=["status", "next_attempt_at"]),
            # A tenant's latest events (its admin page, the settings page's last webhook).
            models.Index(
                fields=["eshop", "-received_at"], name="webhookevent_eshop_recent_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event} {self.event_instance[:40]} (e-shop {self.eshop_id})"

    @staticmethod
    def make_dedup_key(
        *, eshop_id: int, event: str, event_instance: str, event_created: str
    ) -> str:
        """The identity of a delivery: Shoptet redelivers the same four values."""
        joined = "\x1f".join([str(eshop_id), event, event_instance, event_created])
        return hashlib.sha256(joined.encode()).hexdigest()
