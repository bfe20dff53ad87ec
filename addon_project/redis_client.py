"""One redis-py client per process for the token store, locks and health checks."""

from __future__ import annotations

import functools

import redis
from django.conf import settings
from redis.commands.core import Script


@functools.cache
def get_redis() -> redis.Redis:
    """Return the process-wide Redis client (a connection pool; safe across threads)."""
    # Short timeouts: a dead Redis must make callers fall back quickly, not hang a request.
    return redis.Redis.from_url(
        settings.REDIS_URL,
        socket_connect_timeout=1.0,
        socket_timeout=2.0,
        health_check_interval=30,
    )


@functools.cache
def lua(source: str) -> Script:
    """A Lua script sent by hash (EVALSHA) after its first use; pass `client=` when calling it."""
    return get_redis().register_script(source)


# KEYS[1] a lock; ARGV[1] its owner token. Deletes the lock only if we still own it.
RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
