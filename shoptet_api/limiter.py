"""The rate governor shared by every process: in-flight leases per e-shop and leaky-bucket pacing.

Shoptet allows 3 concurrent connections per token and drains a 200-drop bucket at 10 drops/s per
installation; both overflow as 429. Every request takes a lease from a per-e-shop sorted set (one
Lua call: drop stale leases, add ours if fewer than the limit) and gives it back afterwards; a
crashed process's leases expire on their own. Each answer's `X-RateLimit-Bucket-Filling` is stored,
and the next caller pauses in proportion once the estimated level is past the slowdown threshold.

At most one Redis round trip per request, usually none. A lease given back stays in this process
for RELEASE_DELAY: the next request of the same e-shop in this process takes it over without asking
Redis (it was granted REUSE_WINDOW longer than one request needs, for this), pacing itself by the
bucket reading its own last answer carried. What is still idle after RELEASE_DELAY goes back to
Redis from a background thread, in one pipeline with the readings; leases that a request's acquire
finds idle ride along with its script. A lease is therefore counted a few milliseconds too long,
never too short: the limit holds.
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
# How long a lease given back stays idle in this process, for its next request to take over.
RELEASE_DELAY = 0.005
# How much longer than one request needs a lease is granted, so that requests following each other
# can take it over. A crashed process's leases block the e-shop's slots this much longer.
REUSE_WINDOW = 10.0
# Seconds of a grant this process does not count on (Redis's clock against our monotonic one).
LEASE_CLOCK_SLACK = 2.0

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
class _Lease:
    id: str
    covers_until: float  # time.monotonic() until which Redis surely keeps it


@dataclasses.dataclass
class _Idle:
    """One e-shop's leases this process holds without using them, and its latest bucket reading."""

    leases: list[_Lease] = dataclasses.field(default_factory=list)
    reading: tuple[float, float] | None = None
    read_at: float = 0.0  # time.monotonic() of the reading
    reading_sent: bool = True

    def give_back_args(self) -> list[str | float]:
        """The give_back arguments (see _GIVE_BACK_FUNCTION): the unsent reading, every lease."""
        if self.reading is None or self.reading_sent:
            head: list[str | float] = ["", "", ""]
        else:
            head = [*self.reading, self.age()]
        return [*head, *(lease.id for lease in self.leases)]

    def age(self) -> float:
        return max(0.0, time.monotonic() - self.read_at)


class _IdleLeases:
    """The leases this process holds between requests (see the module docstring); a daemon thread
    gives back what is still idle after RELEASE_DELAY."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[int, _Idle] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def take_over(
        self, eshop_id: int, lease_seconds: float
    ) -> tuple[_Lease, float] | None:
        """An idle lease that covers a request of `lease_seconds`, and the pause its e-shop's last
        reading asks for; None when there is none."""
        now = time.monotonic()
        need = now + lease_seconds + MAX_BUCKET_PAUSE
        with self._lock:
            idle = self._idle.get(eshop_id)
            if idle is None:
                return None
            for index, lease in enumerate(idle.leases):
                if lease.covers_until >= need:
                    del idle.leases[index]
                    break
            else:
                return None
            reading, age = idle.reading, idle.age()
        pause = bucket_pause(reading[0], reading[1], -age, 0.0) if reading else 0.0
        return lease, pause

    def give_back(
        self, eshop_id: int, lease: _Lease, reading: tuple[float, float] | None
    ) -> None:
        with self._lock:
            idle = self._idle.setdefault(eshop_id, _Idle())
            idle.leases.append(lease)
            if reading is not None:
                idle.reading, idle.read_at = reading, time.monotonic()
                idle.reading_sent = False
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="shoptet-idle-leases", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def take(self, eshop_id: int) -> _Idle | None:
        """Everything idle of the e-shop, for an acquire script to give back."""
        with self._lock:
            return self._idle.pop(eshop_id, None)

    def put_back(self, eshop_id: int, idle: _Idle) -> None:
        """Keep what a failed call could not deliver."""
        with self._lock:
            waiting = self._idle.setdefault(eshop_id, _Idle())
            waiting.leases[:0] = idle.leases
            if waiting.reading is None:
                waiting.reading, waiting.read_at = idle.reading, idle.read_at
                waiting.reading_sent = idle.reading_sent

    def flush(self) -> None:
        """Give every idle lease back now, with the unsent readings, in one pipeline. Redis errors
        are logged and dropped: the leases then expire on their own, as a crashed process's do."""
        with self._lock:
            idle, self._idle = self._idle, {}
        if not idle:
            return
        try:
            r = get_redis()
            script = lua(_GIVE_BACK)
            pipe = r.pipeline(transaction=False)
            for eshop_id, held in idle.items():
                script(
                    keys=[leases_key(eshop_id), bucket_key(eshop_id)],
                    args=held.give_back_args(),
                    client=pipe,
                )
            pipe.execute()
        except redis.RedisError as exc:
            logger.warning(
                "in-flight leases of %s e-shop(s) not returned (%s); they expire on their own",
                len(idle),
                type(exc).__name__,
            )

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            # Give the next request the chance to take them over; give back what it did not.
            time.sleep(RELEASE_DELAY)
            try:
                self.flush()
            except Exception:  # the leases expire on their own; the thread must live on
                logger.exception("giving idle in-flight leases back failed")

    def reset_after_fork(self) -> None:
        # A forked child has copies of the parent's idle leases and lock but not its thread; the
        # leases are the parent's to use and give back.
        self._lock = threading.Lock()
        self._idle = {}
        self._wake = threading.Event()
        self._thread = None


_idle_leases = _IdleLeases()
atexit.register(_idle_leases.flush)

# Lease ids: unique per process (a random tag) and per lease (a counter); cheaper than uuid4,
# which reads the OS's randomness on every call.
_lease_tag = uuid.uuid4().hex[:12]
_lease_numbers = itertools.count()


def _new_lease_id() -> str:
    return f"{_lease_tag}-{next(_lease_numbers)}"


def _after_fork_in_child() -> None:
    global _lease_tag, _local_lock
    _lease_tag = uuid.uuid4().hex[:12]
    _idle_leases.reset_after_fork()
    # The Redis-down fallback's semaphores may have been held by a parent's thread mid-fork.
    _local_lock = threading.Lock()
    _local_semaphores.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def flush_returned_leases() -> None:
    """Give the leases this process holds idle back to Redis now (tests, shutdown)."""
    _idle_leases.flush()


@contextlib.contextmanager
def request_slot(
    eshop_id: int, *, deadline: float, lease_seconds: float
) -> Iterator[Slot]:
    """Hold one of the e-shop's in-flight slots (and respect bucket pacing) around one request.

    At most one Redis round trip (module docstring): an idle lease of this process is taken over,
    else the acquire script runs, giving back this process's idle leases of the e-shop as it goes.
    """
    slot = Slot()
    try:
        lease, pause = _idle_leases.take_over(eshop_id, lease_seconds) or _acquire(
            get_redis(), eshop_id, deadline=deadline, lease_seconds=lease_seconds
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
        _idle_leases.give_back(
            eshop_id, lease, parse_bucket_filling(slot.bucket_filling)
        )


def _acquire(
    r: redis.Redis, eshop_id: int, *, deadline: float, lease_seconds: float
) -> tuple[_Lease, float]:
    """A new lease from Redis (waiting for a free slot until `deadline`), and the pause the
    stored bucket reading asks for."""
    limit = settings.SHOPTET_MAX_IN_FLIGHT
    # The lease also covers a bucket pause taken while holding it, and requests taking it over.
    granted = lease_seconds + MAX_BUCKET_PAUSE + REUSE_WINDOW
    delay = 0.01
    waited_since: float | None = None
    while True:
        # Kept a little short of the grant: Redis's clock and ours may drift apart meanwhile.
        covers = granted - LEASE_CLOCK_SLACK
        lease = _Lease(_new_lease_id(), covers_until=time.monotonic() + covers)
        idle = _idle_leases.take(eshop_id)
        try:
            acquired, level, maximum, age = lua(_ACQUIRE)(
                keys=[leases_key(eshop_id), bucket_key(eshop_id)],
                args=[
                    limit,
                    lease.id,
                    granted,
                    *(idle.give_back_args() if idle else ["", "", ""]),
                ],
                client=r,
            )
        except redis.RedisError:
            if idle is not None:
                # The script may have run and only its answer been lost: the leases it carried
                # may be gone from Redis, so they are never used again (if not gone, they expire
                # on their own). Only the reading is kept for the next send.
                idle.leases = []
                _idle_leases.put_back(eshop_id, idle)
            raise
        if int(acquired):
            if waited_since is not None:
                metrics.observe_slot_wait("acquired", time.monotonic() - waited_since)
            if level and maximum and age:
                return lease, bucket_pause(
                    float(level), float(maximum), -float(age), 0.0
                )
            return lease, 0.0
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
