"""The beat heartbeat: a tiny periodic task whose last run the operator dashboard shows.

Beat schedules it every `HEARTBEAT_INTERVAL` seconds (CELERY_BEAT_SCHEDULE) and a worker runs it,
so a fresh timestamp means beat, the broker and at least one worker all work; the dashboard's
worker ping tells the worker part apart.
"""

from __future__ import annotations

import time

from celery import shared_task

from addon_project.redis_client import get_redis
from addon_project.redis_keys import heartbeat_key

HEARTBEAT_INTERVAL = 30.0
# Older than this (three missed beats) and the dashboard flags beat as stale.
HEARTBEAT_STALE_AFTER = 3 * HEARTBEAT_INTERVAL
# Keep the last timestamp for a week: "last seen 2 days ago" says more than "never".
_TTL_SECONDS = 7 * 86_400


@shared_task(name="eshops.beat_heartbeat", ignore_result=True)
def beat_heartbeat() -> None:
    """Write the current time (epoch seconds) to Redis."""
    get_redis().set(heartbeat_key(), f"{time.time():.3f}", ex=_TTL_SECONDS)
