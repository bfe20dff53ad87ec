"""Token health for operators: renewal failures in a row, the last error, tokens against the cap."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import redis

from addon_project.redis_client import get_redis
from addon_project.redis_keys import health_key, issued_key, token_key
from shoptet_api.tokens.store import token_cap


def note_failure(r: redis.Redis, eshop_id: int, exc: BaseException) -> None:
    """Count a failed renewal and keep its error (for operators; never raises)."""
    with contextlib.suppress(redis.RedisError):
        pipe = r.pipeline(transaction=False)
        pipe.hincrby(health_key(eshop_id), "failures", 1)
        # The exception's str() never holds a token (errors.py); keep it short anyway.
        pipe.hset(
            health_key(eshop_id),
            mapping={
                "last_error": f"{type(exc).__name__}: {exc}"[:300],
                "last_error_at": time.time(),
            },
        )
        pipe.execute()


def token_health(eshop_id: int) -> dict[str, Any]:
    """What operators see: seconds until the shared token expires, valid tokens counted against
    the cap, the last renewal and consecutive renewal failures. Values are None when unknown."""
    r = get_redis()
    now = time.time()
    pipe = r.pipeline(transaction=False)
    pipe.hget(token_key(eshop_id), "exp")
    pipe.zcount(issued_key(eshop_id), now, "+inf")
    pipe.hgetall(health_key(eshop_id))
    exp, valid, health = pipe.execute()
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
        "renewed_at": float(fields["renewed_at"]) if fields.get("renewed_at") else None,
        "failures": int(fields.get("failures") or 0),
        "last_error": fields.get("last_error") or None,
        "last_error_at": float(fields["last_error_at"])
        if fields.get("last_error_at")
        else None,
    }


def renewal_failures(eshop_ids: list[int], *, batch: int = 500) -> dict[int, int]:
    """Consecutive renewal failures of the given e-shops, only those with at least one."""
    r = get_redis()
    failing: dict[int, int] = {}
    for start in range(0, len(eshop_ids), batch):
        chunk = eshop_ids[start : start + batch]
        pipe = r.pipeline(transaction=False)
        for eshop_id in chunk:
            pipe.hget(health_key(eshop_id), "failures")
        for eshop_id, failures in zip(chunk, pipe.execute(), strict=True):
            if failures and int(failures) > 0:
                failing[eshop_id] = int(failures)
    return failing


def consecutive_failures(eshop_id: int) -> int:
    """Renewal failures in a row (0 when unknown or Redis is unreachable)."""
    with contextlib.suppress(redis.RedisError):
        return int(get_redis().hget(health_key(eshop_id), "failures") or 0)
    return 0
