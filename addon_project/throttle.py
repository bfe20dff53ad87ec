"""Fixed-window request throttles shared by every process through Redis.

Used where an unauthenticated request makes us call a Shoptet OAuth server with our client
credentials (the install callback, the settings-page login): without a limit, anyone could make us
send those calls as fast as they send requests. The check runs before any outbound call.

If Redis is unreachable the request is allowed (an install Shoptet sends must still work) and a
warning says so: an outage of the limiter must not become an outage of installs.
"""

from __future__ import annotations

import ipaddress
import logging

import redis

from addon_project.redis_client import get_redis, lua

logger = logging.getLogger(__name__)

# A limit: (at most this many requests, per window of this many seconds).
Rate = tuple[int, int]

# KEYS: one counter per limit; ARGV: count1, window_ms1, count2, window_ms2, ...
# Counts this request against every limit (a refused request counts too: a client that keeps
# hammering stays refused until the window ends). Returns the milliseconds until the latest
# refusing window ends, or 0 when every limit allows the request. The window starts with its
# first request and never grows (PEXPIRE only on a key without a TTL).
_HIT = """
local wait = 0
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i - 1])
  local window = tonumber(ARGV[2 * i])
  local count = redis.call('INCR', key)
  local ttl = redis.call('PTTL', key)
  if ttl < 0 then
    redis.call('PEXPIRE', key, window)
    ttl = window
  end
  if count > limit and ttl > wait then wait = ttl end
end
return wait
"""


def source_subject(address: str) -> str:
    """The throttled unit of a client address: the IPv4 address, or the IPv6 /64 (one host
    usually owns a whole /64, so per-address limits on IPv6 would not limit anything)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "unknown"
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def hit(limits: dict[str, Rate], *, what: str) -> int | None:
    """Count one request against each `{key: (count, seconds)}`; None when it may go on, else the
    seconds to wait (for Retry-After). `what` names the endpoint in log lines."""
    keys = list(limits)
    args: list[int] = []
    for count, seconds in limits.values():
        args += [count, seconds * 1000]
    try:
        wait_ms = int(lua(_HIT)(keys=keys, args=args, client=get_redis()))
    except redis.RedisError as exc:
        logger.warning(
            "%s: throttle unavailable (Redis %s); request allowed without a limit",
            what,
            type(exc).__name__,
        )
        return None
    if wait_ms <= 0:
        return None
    return max(1, -(-wait_ms // 1000))
