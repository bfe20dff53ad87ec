"""The rate governor shared by every process: in-flight leases per e-shop and leaky-bucket pacing.

Shoptet allows 3 concurrent connections per token and drains a 200-drop bucket at 10 drops/s per
installation; both overflow as 429. Every request takes a lease from a per-e-shop sorted set (one
Lua call: drop stale leases, add ours if fewer than the limit) and gives it back afterwards; a
crashed process's leases expire on their own. Each answer's `X-RateLimit-Bucket-Filling` is stored,
and the next caller pauses in proportion once the estimated level is past the slowdown threshold.

One Redis round trip per request: giving a lease back (with the answer's bucket reading) is not a
call of its own. It waits in this process and rides along with the next acquire for the same
e-shop; what is still waiting after RELEASE_DELAY is sent by a background thread in one pipeline.
A returned lease is therefore counted a few milliseconds too long, never too short: the limit holds.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import itertools
import logging
import math
import os
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
# How long a returned lease may wait for the next acquire to carry it before it is sent alone.
RELEASE_DELAY = 0.005

# Lua shared by both scripts. KEYS[1] leases, KEYS[2] bucket. give_back(i) removes the leases in
# ARGV[i+3..] and stores the reading ARGV[i] level, ARGV[i+1] max, ARGV[i+2] age in seconds ('' = no
# reading; kept 2 minutes, by when the bucket has drained anyway). "Now" is Redis's clock, and a
# reading's time is that minus its age: no host's wall clock is trusted (a host whose clock runs
# ahead must not evict other hosts' live leases).
_GIVE_BACK_FUNCTION = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function give_back(i)
  for j = i + 3, #ARGV do redis.call('ZREM', KEYS[1], ARGV[j]) end
  if ARGV[i] ~= '' then
    redis.call('HSET', KEYS[2], 'level', ARGV[i], 'max', ARGV[i + 1], 'at', now - tonumber(ARGV[i + 2]))
    redis.call('PEXPIRE', KEYS[2], 120000)
  end
end
"""

_GIVE_BACK = _GIVE_BACK_FUNCTION + "give_back(1)\n"

# ARGV: limit, lease id, lease seconds, then what to give back (as above, from ARGV[4]).
# Returns {acquired (0/1), bucket level, bucket max, reading age in seconds} as strings.
# The set's lifetime only grows (a short lease must not expire a set holding a long one).
_ACQUIRE = (
    _GIVE_BACK_FUNCTION
    + """
give_back(4)
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
local age = ''
if bucket[3] then age = tostring(now - tonumber(bucket[3])) end
return {acquired, bucket[1] or '', bucket[2] or '', age}
"""
)

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


@dataclasses.dataclass
class _Returned:
    """One e-shop's leases given back in this process but not yet in Redis, and its latest reading."""

    leases: list[str] = dataclasses.field(default_factory=list)
    reading: tuple[float, float] | None = None
    read_at: float = 0.0  # time.monotonic() of the reading

    def args(self) -> list[str | float]:
        """The give_back arguments (see _GIVE_BACK_FUNCTION)."""
        if self.reading is None:
            head: list[str | float] = ["", "", ""]
        else:
            age = max(0.0, time.monotonic() - self.read_at)
            head = [self.reading[0], self.reading[1], age]
        return [*head, *self.leases]


class _Returns:
    """Leases given back in this process, waiting to ride along with the next acquire (see the
    module docstring); a daemon thread sends what is still waiting after RELEASE_DELAY."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[int, _Returned] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def give_back(
        self, eshop_id: int, lease: str, reading: tuple[float, float] | None
    ) -> None:
        with self._lock:
            returned = self._waiting.setdefault(eshop_id, _Returned())
            returned.leases.append(lease)
            if reading is not None:
                returned.reading, returned.read_at = reading, time.monotonic()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="shoptet-lease-returns", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def take(self, eshop_id: int) -> _Returned | None:
        with self._lock:
            return self._waiting.pop(eshop_id, None)

    def put_back(self, eshop_id: int, returned: _Returned) -> None:
        """Keep what a failed call could not deliver (a lost reading only costs pacing accuracy)."""
        with self._lock:
            waiting = self._waiting.setdefault(eshop_id, _Returned())
            waiting.leases[:0] = returned.leases
            if waiting.reading is None:
                waiting.reading, waiting.read_at = returned.reading, returned.read_at

    def flush(self) -> None:
        """Send every waiting return now, in one pipeline. Redis errors are logged and dropped:
        the leases then expire on their own, as a crashed process's do."""
        with self._lock:
            waiting, self._waiting = self._waiting, {}
        if not waiting:
            return
        try:
            r = get_redis()
            script = lua(_GIVE_BACK)
            pipe = r.pipeline(transaction=False)
            for eshop_id, returned in waiting.items():
                script(
                    keys=[leases_key(eshop_id), bucket_key(eshop_id)],
                    args=returned.args(),
                    client=pipe,
                )
            pipe.execute()
        except redis.RedisError as exc:
            logger.warning(
                "in-flight leases of %s e-shop(s) not returned (%s); they expire on their own",
                len(waiting),
                type(exc).__name__,
            )

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            # Give the next acquire the chance to carry them; send what it did not.
            time.sleep(RELEASE_DELAY)
            self.flush()

    def reset_after_fork(self) -> None:
        # A forked child has copies of the parent's waiting leases and lock but not its thread;
        # the parent returns its own leases.
        self._lock = threading.Lock()
        self._waiting = {}
        self._wake = threading.Event()
        self._thread = None


_returns = _Returns()
atexit.register(_returns.flush)

# Lease ids: unique per process (a random tag) and per lease (a counter); cheaper than uuid4,
# which reads the OS's randomness on every call.
_lease_tag = uuid.uuid4().hex[:12]
_lease_numbers = itertools.count()


def _new_lease_id() -> str:
    return f"{_lease_tag}-{next(_lease_numbers)}"


def _after_fork_in_child() -> None:
    global _lease_tag
    _lease_tag = uuid.uuid4().hex[:12]
    _returns.reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def flush_returned_leases() -> None:
    """Send the leases this process has given back to Redis now (tests, shutdown)."""
    _returns.flush()


@contextlib.contextmanager
def request_slot(
    eshop_id: int, *, deadline: float, lease_seconds: float
) -> Iterator[Slot]:
    """Hold one of the e-shop's in-flight slots (and respect bucket pacing) around one request.

    One Redis round trip: the acquire script also gives back this process's returned leases of the
    e-shop and reads the bucket; this lease's return waits for the next acquire (module docstring).
    """
    slot = Slot()
    try:
        r = get_redis()
        lease = _new_lease_id()
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
        _returns.give_back(eshop_id, lease, parse_bucket_filling(slot.bucket_filling))


def _acquire(
    r: redis.Redis, eshop_id: int, lease: str, *, deadline: float, lease_seconds: float
) -> float:
    limit = settings.SHOPTET_MAX_IN_FLIGHT
    delay = 0.01
    waited_since: float | None = None
    while True:
        returned = _returns.take(eshop_id)
        try:
            acquired, level, maximum, age = lua(_ACQUIRE)(
                keys=[leases_key(eshop_id), bucket_key(eshop_id)],
                # The lease also covers a bucket pause taken while holding it.
                args=[
                    limit,
                    lease,
                    lease_seconds + MAX_BUCKET_PAUSE,
                    *(returned.args() if returned else ["", "", ""]),
                ],
                client=r,
            )
        except redis.RedisError:
            if returned is not None:
                _returns.put_back(eshop_id, returned)
            raise
        if int(acquired):
            if waited_since is not None:
                metrics.observe_slot_wait("acquired", time.monotonic() - waited_since)
            if level and maximum and age:
                return bucket_pause(float(level), float(maximum), -float(age), 0.0)
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
