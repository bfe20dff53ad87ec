"""Inbox rows are claimed (status "processing" + a lease) instead of locked for a handler's run.

Also repairs rows an unvalidated eventCreated made unreadable (a year-1 date with a positive
offset is stored by PostgreSQL as a BC timestamp Python cannot load): they become dead letters an
operator can read and delete, their eventCreated replaced by the time of receipt (the original
stays in raw_body).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import migrations, models

OLDEST_EVENT = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def repair_unreadable_dates(apps: Any, schema_editor: Any) -> None:
    WebhookEvent = apps.get_model("shoptet_api", "WebhookEvent")
    # A filtered UPDATE compares in SQL and loads no row: it works on rows Python cannot read.
    WebhookEvent.objects.filter(event_created__lt=OLDEST_EVENT).update(
        event_created=models.F("received_at"),
        status="dead",
        next_attempt_at=None,
        last_error=(
            "eventCreated before 2000-01-01 (see the raw body); "
            "replaced by the time of receipt"
        ),
    )


class Migration(migrations.Migration):
    dependencies = [("shoptet_api", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="webhookevent",
            name="claimed_until",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AlterField(
            model_name="webhookevent",
            name="status",
            field=models.CharField(
                choices=[
                    ("received", "Received"),
                    ("processing", "Processing (claimed by a worker)"),
                    ("processed", "Processed"),
                    ("ignored", "Ignored (stale or no handler)"),
                    ("failed", "Failed (will retry)"),
                    ("dead", "Dead letter"),
                ],
                db_index=True,
                default="received",
                max_length=16,
            ),
        ),
        migrations.RunPython(repair_unreadable_dates, migrations.RunPython.noop),
    ]
