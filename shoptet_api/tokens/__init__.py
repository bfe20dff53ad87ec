"""API access tokens: a Redis-backed broker with single-flight renewal and Shoptet's 5-token cap.

Shoptet allows at most 5 valid API tokens per installation and each lives `expires_in` seconds
(1800 today). Every web and worker process shares one current token per e-shop through Redis:

- read path: process memory → Redis → renew. Only one process per e-shop renews at a time
  (`SET NX PX` lock); the others wait briefly and re-read, they never mint.
- cap: every minted token is recorded in a sorted set scored by its expiry; a Lua script reserves a
  slot before each `getAccessToken` call and refuses once `SHOPTET_TOKEN_CAP` tokens are valid,
  even if a lock expired under a slow holder.
- a 401 on a token invalidates it only if it is still the stored one (compare, then delete), so
  ten workers hitting the same 401 cause one renewal, not ten.
- Redis down: each process falls back to a token of its own, minted under a process lock and
  reused until near expiry, so one process never holds more than one token at a time.

All keys of one e-shop share the hash tag `{eshop:<id>}`, so each script touches one Redis Cluster slot.

The package: `store` (the Redis hash, the issued set, their scripts, this process's memory),
`renewal` (the read path, single-flight renewal within the cap, the Redis-down fallback),
`schedule` (proactive renewal of recently active e-shops), `chunk` (the proactive renewal of a
chunk of e-shops in bulk steps), `health` (what operators see).
Callers import from `shoptet_api.tokens`; tests patch a name in the module that uses it.
"""

from __future__ import annotations

from addon_project.redis_keys import (
    health_key,
    issued_key,
    renew_lock_key,
    token_activity_key,
    token_key,
)
from shoptet_api.tokens.health import renewal_failures, token_health
from shoptet_api.tokens.renewal import (
    OAUTH_REJECTIONS_BEFORE_SUSPEND,
    get_api_access_token,
    minted_nothing,
    renew_if_expiring,
)
from shoptet_api.tokens.schedule import (
    recently_active_eshop_ids,
    renew_ahead,
    renew_chunk_ahead,
    renewal_chunks,
    renewal_due,
)
from shoptet_api.tokens.store import (
    SHOPTET_MAX_VALID_TOKENS,
    CachedToken,
    clear_process_cache,
    fingerprint_of,
    forget_tokens,
    invalidate_api_token,
    oauth_fingerprint,
    renew_margin,
    token_cap,
)

__all__ = [
    "OAUTH_REJECTIONS_BEFORE_SUSPEND",
    "SHOPTET_MAX_VALID_TOKENS",
    "CachedToken",
    "clear_process_cache",
    "fingerprint_of",
    "forget_tokens",
    "get_api_access_token",
    "health_key",
    "invalidate_api_token",
    "issued_key",
    "minted_nothing",
    "oauth_fingerprint",
    "recently_active_eshop_ids",
    "renew_ahead",
    "renew_chunk_ahead",
    "renew_if_expiring",
    "renew_lock_key",
    "renew_margin",
    "renewal_chunks",
    "renewal_due",
    "renewal_failures",
    "token_activity_key",
    "token_cap",
    "token_health",
    "token_key",
]
