"""Hourly activity counters for the operator dashboard's 24-hour charts.

`count()` only adds to a buffer in process memory; the buffer reaches Redis in one pipeline
(HINCRBY into a per-hour hash, EXPIRE ~26 h) at most every `FLUSH_INTERVAL` seconds, from the
counting call sites, and at task end (Celery `task_postrun`) and process exit (atexit). So an API
call never pays a Redis round trip of its own for being counted. Counts are global (no tenant):
per-tenant detail belongs in the admin.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from celery.signals import task_postrun

from addon_project.redis_client import get_redis
from addon_project.redis_keys import activity_hour_key

logger = logging.getLogger(__name__)

EVENTS: tuple[str, ...] = (
    "webhooks_received",
    "webhooks_processed",
    "webhooks_failed",
    "api_calls",
    "api_429",
    "token_renewals",
    "token_failures",
)

# Seconds between flushes triggered by count(); a failed flush waits longer before the next try,
# so a dead Redis costs the counting code one connect timeout per FAILURE_BACKOFF, not per call.
FLUSH_INTERVAL = 5.0
FAILURE_BACKOFF = 30.0
# An hour's hash lives this long: the 24-hour chart plus slack for the current, partial hour.
RETENTION_HOURS = 26
_TTL_SECONDS = RETENTION_HOURS * 3600

_lock = threading.Lock()
# (hash key, event) -> count not yet written. The key holds the prefix in force when counted.
_pending: dict[tuple[str, str], int] = {}
_next_flush = 0.0  # time.monotonic() after which count() flushes


def _utcnow() -> datetime:
    return datetime.now(UTC)


def count(event: str, n: int = 1) -> None:
    """Add `n` to `event` in the current UTC hour. Never raises for Redis trouble."""
    if event not in EVENTS:
        raise ValueError(f"unknown activity event {event!r}; expected one of {EVENTS}")
    if type(n) is not int or n < 0:  # bool and float are mistakes here
        raise ValueError(f"activity count must be a non-negative int, not {n!r}")
    if n == 0:
        return
    key = (activity_hour_key(_utcnow()), event)
    with _lock:
        _pending[key] = _pending.get(key, 0) + n
        due = time.monotonic() >= _next_flush
    if due:
        flush()


def flush() -> None:
    """Write the buffered counts to Redis now, in one pipeline. Logs, never raises, on Redis trouble."""
    global _next_flush
    with _lock:
        batch = dict(_pending)
        _pending.clear()
        _next_flush = time.monotonic() + FLUSH_INTERVAL
    if not batch:
        return
    try:
        pipe = get_redis().pipeline(transaction=False)
        for (key, event), n in batch.items():
            pipe.hincrby(key, event, n)
        for key in {key for key, _event in batch}:
            pipe.expire(key, _TTL_SECONDS)
        pipe.execute()
    except redis.RedisError as exc:
        logger.warning(
            "activity: flush of %d counters failed: %s", len(batch), type(exc).__name__
        )
        with _lock:
            # Keep the counts for the next try; the buffer stays small (events x hours).
            for item, n in batch.items():
                _pending[item] = _pending.get(item, 0) + n
            _next_flush = time.monotonic() + FAILURE_BACKOFF


def hourly(
    events: Sequence[str], *, hours: int = 24, now: datetime | None = None
) -> tuple[list[datetime], dict[str, list[int]]]:
    """Counts per hour for the last `hours` UTC hours, oldest first, the current hour last.

    Returns the hour starts (aware, UTC) and, per event, one count per hour (0 for an hour with
    none). Reads Redis in one pipeline; counts still buffered in some process are not included.
    Raises ValueError for an unknown event, a bad `hours` or a naive `now`; RedisError propagates.
    """
    if isinstance(events, str):
        raise ValueError("events must be a sequence of event names, not one string")
    unknown = [event for event in events if event not in EVENTS]
    if unknown:
        raise ValueError(
            f"unknown activity events {unknown}; expected some of {EVENTS}"
        )
    if type(hours) is not int or not 1 <= hours <= RETENTION_HOURS:
        raise ValueError(
            f"hours must be an int from 1 to {RETENTION_HOURS}, not {hours!r}"
        )
    if now is None:
        now = _utcnow()
    elif now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    current = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    starts = [current - timedelta(hours=back) for back in range(hours - 1, -1, -1)]
    series: dict[str, list[int]] = {event: [] for event in events}
    if not series:
        return starts, series
    fields = list(series)
    pipe = get_redis().pipeline(transaction=False)
    for start in starts:
        pipe.hmget(activity_hour_key(start), fields)
    for values in pipe.execute():
        for event, value in zip(fields, values, strict=True):
            series[event].append(int(value) if value is not None else 0)
    return starts, series


def _reset_after_fork() -> None:
    # A forked child (Celery prefork, gunicorn) must not write its parent's counts a second time.
    global _lock, _next_flush
    _lock = threading.Lock()
    _pending.clear()
    _next_flush = 0.0


def _flush_after_task(**_kwargs: Any) -> None:
    flush()


os.register_at_fork(after_in_child=_reset_after_fork)
atexit.register(flush)
task_postrun.connect(
    _flush_after_task, weak=False, dispatch_uid="addon_project.activity"
)
