"""Token health for operators: renewal failures in a row, the last error, tokens against the cap.

Only failures write the health hash (with a TTL): a renewal deletes it (STORE_TOKEN), so a
healthy tenant holds no health key at all. The last renewal's time is its token's expiry minus
its lifetime (when the getAccessToken call began).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from addon_project.redis_client import get_redis
from addon_project.redis_keys import (
    health_key,
    issued_key,
    token_failing_key,
    token_key,
)
from shoptet_api.tokens.store import token_cap

# A failure record outlives the token by this much, then costs nothing (an idle tenant's too).
FAILURE_TTL_SECONDS = 7 * 86_400


def note_failure(r: redis.Redis, eshop_id: int, exc: BaseException) -> None:
    """Count a failed renewal and keep its error (for operators; never raises).

    The tenant also enters the failing set (scored by failures in a row), so the dashboard
    finds failing tenants without reading every tenant's health."""
    with contextlib.suppress(redis.RedisError):
        pipe = r.pipeline(transaction=False)
        queue_failure(pipe, eshop_id, exc)
        failures = pipe.execute()[0]
        mark_failing(r, {eshop_id: failures})


def queue_failure(
    pipe: redis.client.Pipeline, eshop_id: int, exc: BaseException
) -> None:
    """Queue the health-hash writes of `note_failure` on `pipe`; the first answer is the count
    of failures in a row, for `mark_failing`."""
    pipe.hincrby(health_key(eshop_id), "failures", 1)
    # The exception's str() never holds a token (errors.py); keep it short anyway.
    pipe.hset(
        health_key(eshop_id),
        mapping={
            "last_error": f"{type(exc).__name__}: {exc}"[:300],
            "last_error_at": time.time(),
        },
    )
    pipe.expire(health_key(eshop_id), FAILURE_TTL_SECONDS)


# The commands queue_failure queues per e-shop.
QUEUED_PER_FAILURE = 3


def mark_failing(r: redis.Redis, failures: dict[int, int]) -> None:
    """Put e-shops in the failing set, scored by their failures in a row (one round trip)."""
    pipe = r.pipeline(transaction=False)
    pipe.zadd(
        token_failing_key(), {str(eshop_id): n for eshop_id, n in failures.items()}
    )
    # Refreshed by every failure: once nothing fails for a week the set is gone.
    pipe.expire(token_failing_key(), FAILURE_TTL_SECONDS)
    pipe.execute()


def token_health(eshop_id: int) -> dict[str, Any]:
    """What operators see: seconds until the shared token expires, valid tokens counted against
    the cap, the last renewal and consecutive renewal failures. Values are None when unknown."""
    return token_health_many([eshop_id])[eshop_id]


def token_health_many(eshop_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """`token_health` of several e-shops (a page of the tenant list) in one Redis round trip."""
    now = time.time()
    pipe = get_redis().pipeline(transaction=False)
    for eshop_id in eshop_ids:
        pipe.hmget(token_key(eshop_id), ("exp", "life"))
        pipe.zcount(issued_key(eshop_id), now, "+inf")
        pipe.hgetall(health_key(eshop_id))
    answers = pipe.execute() if eshop_ids else []
    return {
        eshop_id: _health(now, *answers[3 * i : 3 * i + 3])
        for i, eshop_id in enumerate(eshop_ids)
    }


def _health(
    now: float, token: list[Any], valid: Any, health: dict[Any, Any]
) -> dict[str, Any]:
    exp, life = token
    fields = {
        (k.decode() if isinstance(k, bytes) else k): (
            v.decode() if isinstance(v, bytes) else v
        )
        for k, v in health.items()
    }
    return {
        "expires_in": round(float(exp) - now) if exp else None,
        "valid_tokens": int(valid),
        "cap": token_cap(),
        # Known while the token lasts (a tenant idle for longer has none).
        "renewed_at": float(exp) - float(life) if exp and life else None,
        "failures": int(fields.get("failures") or 0),
        "last_error": fields.get("last_error") or None,
        "last_error_at": float(fields["last_error_at"])
        if fields.get("last_error_at")
        else None,
    }


@dataclass(frozen=True)
class RenewalFailure:
    eshop_id: int
    failures: int
    last_error: str
    last_error_at: float | None


def renewal_failures(*, limit: int) -> list[RenewalFailure]:
    """Up to `limit` tenants whose latest renewals failed, most failures in a row first.

    Reads the failing set's top entries and their health in two round trips, whatever the
    number of tenants. An entry whose tenant has recovered (a renewal reset its failures) or was
    forgotten (uninstalled) is removed here, so the set holds only tenants failing now.
    """
    r = get_redis()
    candidates = [
        int(str(member, "ascii") if isinstance(member, bytes) else str(member))
        for member in r.zrevrange(token_failing_key(), 0, 2 * limit - 1)
    ]
    if not candidates:
        return []
    pipe = r.pipeline(transaction=False)
    for eshop_id in candidates:
        pipe.hmget(health_key(eshop_id), ["failures", "last_error", "last_error_at"])
    failing: list[RenewalFailure] = []
    recovered: list[int] = []
    for eshop_id, (failures, error, error_at) in zip(
        candidates, pipe.execute(), strict=True
    ):
        if not failures or int(failures) <= 0:
            recovered.append(eshop_id)
            continue
        failing.append(
            RenewalFailure(
                eshop_id=eshop_id,
                failures=int(failures),
                last_error=error.decode() if error else "",
                last_error_at=float(error_at) if error_at else None,
            )
        )
    if recovered:
        r.zrem(token_failing_key(), *map(str, recovered))
    failing.sort(key=lambda item: (-item.failures, item.eshop_id))
    return failing[:limit]


def consecutive_failures(eshop_id: int) -> int:
    """Renewal failures in a row (0 when unknown or Redis is unreachable)."""
    with contextlib.suppress(redis.RedisError):
        return int(get_redis().hget(health_key(eshop_id), "failures") or 0)
    return 0
