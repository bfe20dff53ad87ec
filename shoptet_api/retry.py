"""The one retry policy: which waits the client, the tasks and the webhook inbox use.

Three places retry, on three clocks: the client sleeps in-process between tries of one call, a
task asks Celery for a countdown, and the webhook inbox stores the time of the next attempt on its
row. They share one exponential backoff (`Backoff.delay`) and one rule for `Retry-After`; only the
scale differs. Every Celery countdown stays under `MAX_COUNTDOWN`, below the Redis broker's
one-hour visibility timeout (a longer countdown is redelivered early, and then runs twice): a
webhook retry due later than that is left to the `redeliver_webhooks` sweep, which reads the
row's `next_attempt_at`.

Code waits through `sleep()` below, never `time.sleep` directly, so a test can patch
`shoptet_api.retry.sleep` and count only the retry waits.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from dataclasses import dataclass

from django.conf import settings

from shoptet_api.errors import ShoptetAPIError, ShoptetLocked

# Longest countdown any task may ask Celery for (the Redis broker redelivers after an hour).
MAX_COUNTDOWN = 600.0


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: `first` seconds before the second attempt, times `factor` after each.

    `jitter` is the share of each delay drawn at random (0: exact; 0.5: between half and all of
    it), so failures that happened together do not all retry in the same second.
    """

    first: float
    factor: float
    cap: float
    jitter: float = 0.5

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if attempt < 1:
            raise ValueError(f"attempt is 1-based, got {attempt}")
        exponent = min(attempt - 1, 64)  # no float overflow for a runaway counter
        base = min(self.first * self.factor**exponent, self.cap)
        return base * (1 - self.jitter * random.random())  # noqa: S311 (jitter, not security)


# Between tries of one API call, in-process: short (the caller holds a worker).
CLIENT = Backoff(first=0.5, factor=2, cap=8.0)
# Between runs of a task: Celery countdowns.
TASK = Backoff(first=5.0, factor=2, cap=MAX_COUNTDOWN)
# Between attempts of a webhook handler: 30 s, 2 min, 8 min, 32 min, 2 h; stored on the row, so
# exact (the schedule an operator reads in the inbox).
WEBHOOK = Backoff(first=30.0, factor=4, cap=7200.0, jitter=0.0)
# Shoptet locks a write URL for at most 5 s: a 423 waits briefly and linearly.
LOCKED_STEP, LOCKED_CAP = 0.5, 2.5


def sleep(seconds: float) -> None:
    """Wait `seconds`; the one place retry code sleeps (tests patch it here)."""
    time.sleep(seconds)


def retry_after_seconds(error: ShoptetAPIError) -> float | None:
    """Seconds until the `Retry-After` of `error` (already measured against Shoptet's `Date`)."""
    if error.retry_after is None:
        return None
    return max((error.retry_after - dt.datetime.now(tz=dt.UTC)).total_seconds(), 0.0)


def client_wait(error: ShoptetAPIError, attempt: int) -> float:
    """Seconds the client sleeps before retrying an API call after failed attempt `attempt`.

    A `Retry-After` is honoured up to SHOPTET_RETRY_AFTER_CAP (a longer wait gives the call back to
    its caller's budget); a 423 waits briefly; anything else backs off exponentially.
    """
    jitter = random.uniform(0, 0.25)  # noqa: S311 (jitter, not security)
    after = retry_after_seconds(error)
    if after is not None:
        return min(after, float(settings.SHOPTET_RETRY_AFTER_CAP)) + jitter
    if isinstance(error, ShoptetLocked):
        return min(LOCKED_STEP * attempt, LOCKED_CAP) + jitter
    return CLIENT.delay(attempt)


def task_countdown(error: ShoptetAPIError, retries: int) -> float:
    """Celery countdown for the retry after `retries` earlier retries of a task.

    A `Retry-After` is honoured (at least 1 s); either way never beyond MAX_COUNTDOWN.
    """
    after = retry_after_seconds(error)
    if after is not None:
        return min(max(1.0, after), MAX_COUNTDOWN)
    return min(TASK.delay(retries + 1), MAX_COUNTDOWN)


def webhook_delay(attempts: int) -> float:
    """Seconds until the next attempt of a webhook handler that failed `attempts` times."""
    return WEBHOOK.delay(attempts)
