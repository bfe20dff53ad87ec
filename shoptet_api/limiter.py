"""The rate governor shared by every process: in-flight leases per e-shop and leaky-bucket pacing.

Shoptet allows 3 concurrent connections per token and drains a 200-drop bucket at 10 drops/s per
installation; both overflow as 429. Every request takes a lease from a per-e-shop sorted set (one
Lua call: drop stale leases, add ours if fewer than the limit) and returns it afterwards; a crashed
process's leases expire on their own. Each answer's `X-RateLimit-Bucket-Filling` is stored, and the
next caller pauses in proportion once the estimated level is past the slowdown threshold.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Iterator

import redis
from django.conf import settings

from addon_project import metrics
from addon_project.redis_client import get_redis, lua
from addon_project.redis_keys import bucket_key, leases_key
from shoptet_api.errors import ShoptetTimeoutError
from shoptet_api.retry import sleep

logger = logging.getLogger(__name__)

# The longest pause bucket pacing imposes on one request.
MAX_BUCKET_PAUSE = 10.0


# KEYS[1] leases, KEYS[2] bucket; ARGV: limit, lease id, lease seconds.
# Returns {acquired (0/1), bucket level, bucket max, bucket reading time} as strings.
# "Now" is Redis's clock (a host whose clock runs ahead must not evict other hosts' live leases),
# and the set's lifetime only grows (a short lease must not expire a set holding a long one).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local acquired = 0
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
  local want = math.ceil(tonumber(ARGV[3]) * 1000) + 1000
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl == -1 or (ttl >= 0 and ttl < want) then redis.call('PEXPIRE', KEYS[1], want) end
  acquired = 1
end
local bucket = redis.call('HMGET', KEYS[2], 'level', 'max', 'at')
return {acquired, bucket[1] or '', bucket[2] or '', bucket[3] or ''}
"""

_local_semaphores: dict[int, threading.BoundedSemaphore] = {}
_local_lock = threading.Lock()


def parse_bucket_filling(value: str | None) -> tuple[float, float] | None:
    """`X-RateLimit-Bucket-Filling: 120/200` → (120.0, 200.0); None when absent or malformed.

    `inf` and `nan` are malformed too: a stored `inf/200` would pause every request for the
    longest pause until the reading expires."""
    if not value or "/" not in value:
        return None
    current, _, maximum = value.partition("/")
    try:
        level, top = float(current.strip()), float(maximum.strip())
    except ValueError:
        return None
    if not (math.isfinite(level) and math.isfinite(top)) or top <= 0:
        return None
    return level, top


def bucket_pause(level: float, maximum: float, read_at: float, now: float) -> float:
    """Seconds to wait before sending so the bucket stays below the slowdown threshold."""
    leak = float(settings.SHOPTET_BUCKET_LEAK_PER_SECOND)
    estimated = level - leak * max(0.0, now - read_at)
    threshold = float(settings.SHOPTET_BUCKET_SLOWDOWN_AT) * maximum
    if estimated <= threshold or leak <= 0:
        return 0.0
    return min((estimated - threshold) / leak, MAX_BUCKET_PAUSE)


class Slot:
    """A held request slot; set `bucket_filling` from the answer so the release records it."""

    def __init__(self) -> None:
        self.bucket_filling: str | None = None


@contextlib.contextmanager
def request_slot(
    eshop_id: int, *, deadline: float, lease_seconds: float
) -> Iterator[Slot]:
    """Hold one of the e-shop's in-flight slots (and respect bucket pacing) around one request.

    Two Redis round trips per request: acquire (one Lua call that also reads the bucket), and
    release (one pipeline that also stores the bucket level the answer reported).
    """
    slot = Slot()
    try:
        r = get_redis()
        lease = uuid.uuid4().hex
        pause = _acquire(
            r, eshop_id, lease, deadline=deadline, lease_seconds=lease_seconds
        )
    except redis.RedisError as exc:
        logger.warning(
            "limiter unavailable (%s); eshop_id=%s limited per process only",
            type(exc).__name__,
            eshop_id,
        )
        with _local_slot(eshop_id, deadline=deadline):
            yield slot
        return
    try:
        if pause > 0:
            metrics.observe_bucket_pause()
            logger.info(
                "eshop_id=%s: bucket nearly full, pausing %.2f s", eshop_id, pause
            )
            sleep(pause)
        yield slot
    finally:
        with contextlib.suppress(redis.RedisError):
            pipe = r.pipeline(transaction=False)
            pipe.zrem(leases_key(eshop_id), lease)
            reading = parse_bucket_filling(slot.bucket_filling)
            if reading is not None:
                pipe.hset(
                    bucket_key(eshop_id),
                    mapping={"level": reading[0], "max": reading[1], "at": time.time()},
                )
                pipe.expire(bucket_key(eshop_id), 120)
            pipe.execute()


def _acquire(
    r: redis.Redis, eshop_id: int, lease: str, *, deadline: float, lease_seconds: float
) -> float:
    limit = settings.SHOPTET_MAX_IN_FLIGHT
    delay = 0.01
    waited_since: float | None = None
    while True:
        now = time.time()
        acquired, level, maximum, read_at = lua(_ACQUIRE)(
            keys=[leases_key(eshop_id), bucket_key(eshop_id)],
            # The lease also covers a bucket pause taken while holding it.
            args=[limit, lease, lease_seconds + MAX_BUCKET_PAUSE],
            client=r,
        )
        if int(acquired):
            if waited_since is not None:
                metrics.observe_slot_wait("acquired", time.monotonic() - waited_since)
            if level and maximum and read_at:
                return bucket_pause(float(level), float(maximum), float(read_at), now)
            return 0.0
        waited_since = waited_since or time.monotonic()
        if time.monotonic() + delay > deadline:
            metrics.observe_slot_wait("timeout", time.monotonic() - waited_since)
            raise ShoptetTimeoutError(
                f"no free request slot ({limit} in flight) before the deadline",
                endpoint="limiter",
                request_sent=False,
            )
        sleep(delay + random.uniform(0, delay))  # noqa: S311 (jitter)
        delay = min(delay * 1.5, 0.1)


@contextlib.contextmanager
def _local_slot(eshop_id: int, *, deadline: float) -> Iterator[None]:
    with _local_lock:
        semaphore = _local_semaphores.setdefault(
            eshop_id, threading.BoundedSemaphore(settings.SHOPTET_MAX_IN_FLIGHT)
        )
    if not semaphore.acquire(timeout=max(0.0, deadline - time.monotonic())):
        raise ShoptetTimeoutError(
            "no free request slot before the deadline",
            endpoint="limiter",
            request_sent=False,
        )
    try:
        yield
    finally:
        semaphore.release()
