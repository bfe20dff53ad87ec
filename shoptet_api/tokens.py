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
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import logging
import random
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import redis
from django.conf import settings
from django.views.decorators.debug import sensitive_variables

from addon_project import metrics
from addon_project.encryption import DecryptionError, Secret, decrypt, encrypt
from addon_project.redis_client import RELEASE_LOCK, get_redis, lua
from shoptet_api import verdicts
from shoptet_api.errors import (
    AddonNotInstalled,
    AddonSuspended,
    ShoptetAPIError,
    ShoptetConnectionError,
    ShoptetMaxTokensReached,
    ShoptetOAuthError,
    ShoptetTimeoutError,
)
from shoptet_api.oauth import fetch_api_access_token
from shoptet_api.types import ApiAccessToken

if TYPE_CHECKING:
    from eshops.models import Eshop

logger = logging.getLogger(__name__)

# getAccessToken 401s in a row before a tenant is suspended (see _mint).
OAUTH_REJECTIONS_BEFORE_SUSPEND = 3
# Shoptet's own cap; SHOPTET_TOKEN_CAP may only be lower.
SHOPTET_MAX_VALID_TOKENS = 5


# --- Redis keys: one function per key family -----------------------------------------------------


def _prefix() -> str:
    return str(settings.SHOPTET_REDIS_PREFIX)


def token_key(eshop_id: int) -> str:
    """Hash: the current token (`ct` encrypted, `fp` fingerprint, `exp` epoch seconds)."""
    return f"{_prefix()}:{{eshop:{eshop_id}}}:token"


def issued_key(eshop_id: int) -> str:
    """Sorted set of minted tokens (fingerprints or pending reservations) scored by expiry."""
    return f"{_prefix()}:{{eshop:{eshop_id}}}:issued"


def renew_lock_key(eshop_id: int) -> str:
    return f"{_prefix()}:{{eshop:{eshop_id}}}:renew-lock"


def health_key(eshop_id: int) -> str:
    """Hash: last renewal time and consecutive renewal failures (operators' token health)."""
    return f"{_prefix()}:{{eshop:{eshop_id}}}:health"


def activity_key() -> str:
    """Sorted set of e-shop ids scored by their last API use: proactive renewal covers only these."""
    return f"{_prefix()}:token-activity"


# --- Scripts -------------------------------------------------------------------------------------

# Every script takes "now" from Redis (TIME), never from the caller: a host whose clock runs ahead
# must not expire other hosts' live entries. Scores are Redis-time expiries. Key lifetimes only grow:
# a short-lived entry never shortens the life of a set that still holds a long-lived one.
_REDIS_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""
_EXTEND_TTL = """
local function extend(key, ms)
  local ttl = redis.call('PTTL', key)
  if ttl == -1 or (ttl >= 0 and ttl < ms) then redis.call('PEXPIRE', key, ms) end
end
"""

# KEYS[1] issued set; ARGV: cap, member, lifetime (s). Drops expired entries, then adds `member`
# only while fewer than `cap` valid tokens exist. Returns {count before adding (negated - 1 on
# refusal), seconds until the earliest entry expires}.
_RESERVE_SLOT = (
    _REDIS_NOW
    + _EXTEND_TTL
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local count = redis.call('ZCARD', KEYS[1])
if count >= tonumber(ARGV[1]) then
  local earliest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  local wait = 0
  if earliest[2] then wait = math.max(0, tonumber(earliest[2]) - now) end
  return {-count - 1, tostring(wait)}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
extend(KEYS[1], math.ceil(tonumber(ARGV[3]) * 1000) + 60000)
return {count, '0'}
"""
)

# KEYS[1] issued set; ARGV: pairs of (member, seconds left). Records tokens minted elsewhere (a
# pending reservation replaced by its token, or tokens minted while Redis was unreachable).
_RECORD_ISSUED = (
    _REDIS_NOW
    + _EXTEND_TTL
    + """
local longest = 0
for i = 1, #ARGV, 2 do
  local left = tonumber(ARGV[i + 1])
  if left > 0 then
    redis.call('ZADD', KEYS[1], now + left, ARGV[i])
    longest = math.max(longest, left)
  end
end
if longest > 0 then extend(KEYS[1], math.ceil(longest * 1000) + 60000) end
return longest
"""
)


# KEYS[1] token hash, KEYS[2] issued set, KEYS[3] health hash; ARGV: pending reservation, issued
# member, encrypted token, fingerprint, expiry (the minting host's epoch, for readers), lifetime,
# OAuth fingerprint, renewal time. Replaces the reservation by the token and stores it, atomically.
_STORE_TOKEN = (
    _REDIS_NOW
    + _EXTEND_TTL
    + """
local life = tonumber(ARGV[6])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[2], now + life, ARGV[2])
extend(KEYS[2], math.ceil(life * 1000) + 60000)
redis.call('HSET', KEYS[1], 'ct', ARGV[3], 'fp', ARGV[4], 'exp', ARGV[5], 'life', ARGV[6], 'ofp', ARGV[7])
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil(life * 1000)))
redis.call('HSET', KEYS[3], 'renewed_at', ARGV[8], 'failures', 0)
return 1
"""
)


# KEYS[1] token hash, KEYS[2] issued set; ARGV[1] fingerprint of the token that failed. The issued
# member is `<oauth fp>:<token fp>`; whichever install minted it, it is no longer valid.
_INVALIDATE = """
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if string.sub(member, -string.len(ARGV[1])) == ARGV[1] then redis.call('ZREM', KEYS[2], member) end
end
if redis.call('HGET', KEYS[1], 'fp') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1] token hash, KEYS[2] issued set, KEYS[3] health hash; ARGV[1] the OAuth fingerprint to
# keep ('' = keep nothing). Forgets what earlier installations minted, never the current one's.
_FORGET = """
local keep = ARGV[1]
if keep == '' then return redis.call('DEL', KEYS[1], KEYS[2], KEYS[3]) end
local removed = 0
if redis.call('HGET', KEYS[1], 'ofp') ~= keep then
  removed = removed + redis.call('DEL', KEYS[1], KEYS[3])
end
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if string.sub(member, 1, string.len(keep) + 1) ~= keep .. ':' then
    removed = removed + redis.call('ZREM', KEYS[2], member)
  end
end
return removed
"""


# --- Policy --------------------------------------------------------------------------------------


def renew_margin(expires_in: float) -> float:
    """Seconds before expiry at which a token counts as "near expiry".

    The smaller of the configured margin and a fraction of the lifetime: 30-minute tokens are
    renewed SHOPTET_TOKEN_RENEW_MARGIN early, an 8-second test token is still used for ~96 % of its life.
    """
    return min(
        float(settings.SHOPTET_TOKEN_RENEW_MARGIN),
        float(settings.SHOPTET_TOKEN_RENEW_MARGIN_FRACTION) * expires_in,
    )


def token_cap() -> int:
    return max(1, min(int(settings.SHOPTET_TOKEN_CAP), SHOPTET_MAX_VALID_TOKENS))


def fingerprint_of(token: str) -> str:
    """A short irreversible id for a token: safe in Redis, logs and comparisons."""
    return hashlib.sha256(token.encode()).hexdigest()[:20]


def oauth_fingerprint(oauth_token: str | None) -> str:
    """Which installation minted a token: a short fingerprint of the OAuth token it was minted with."""
    return fingerprint_of(oauth_token)[:12] if oauth_token else "none"


@dataclasses.dataclass(frozen=True)
class CachedToken:
    token: Secret = dataclasses.field(repr=False)
    expires_at: float
    lifetime: float
    # oauth_fingerprint() of the installation that minted it.
    oauth_fp: str = ""

    def usable(self, now: float) -> bool:
        """Valid and not yet near expiry."""
        return self.expires_at - now > renew_margin(self.lifetime)

    def valid(self, now: float) -> bool:
        """Still accepted by Shoptet (with a second of slack for the request in flight)."""
        return self.expires_at - now > 1.0


# Process memory: e-shop id → its current token. Saves a Redis round trip per API call.
_memory: dict[int, CachedToken] = {}
_memory_lock = threading.Lock()
# When this process last recorded each e-shop's API activity (epoch seconds).
_activity_noted: dict[int, float] = {}
ACTIVITY_NOTE_INTERVAL = 10.0
# Per-process, per-e-shop locks used only while Redis is unreachable.
_fallback_locks: dict[int, threading.Lock] = {}
# Tokens this process minted that Redis does not know of (minted while it was unreachable, or the
# store failed): issued-set member → expiry. Recorded at the next contact with Redis, so that the
# shared cap counts them and other processes do not mint past Shoptet's limit.
_unrecorded: dict[int, dict[str, float]] = {}


def _remember(eshop_id: int, cached: CachedToken) -> None:
    with _memory_lock:
        _memory[eshop_id] = cached


def _forget(eshop_id: int) -> None:
    with _memory_lock:
        _memory.pop(eshop_id, None)


def clear_process_cache() -> None:
    """Forget every token this process holds in memory (tests, and after a reinstall)."""
    with _memory_lock:
        _memory.clear()
        _activity_noted.clear()
        _unrecorded.clear()


def _note_unrecorded(eshop_id: int, member: str, expires_at: float) -> None:
    with _memory_lock:
        _unrecorded.setdefault(eshop_id, {})[member] = expires_at


def _record_unrecorded(r: redis.Redis, eshop_id: int) -> None:
    """Add the tokens this process minted without Redis to the shared issued set (see _unrecorded)."""
    with _memory_lock:
        waiting = _unrecorded.pop(eshop_id, None)
    if not waiting:
        return
    now = time.time()
    args: list[str | float] = []
    for member, expires_at in waiting.items():
        args += [member, expires_at - now]
    try:
        lua(_RECORD_ISSUED)(keys=[issued_key(eshop_id)], args=args, client=r)
    except redis.RedisError:
        with _memory_lock:
            _unrecorded.setdefault(eshop_id, {}).update(waiting)
        return
    logger.info(
        "eshop_id=%s: %s token(s) minted while Redis was unreachable now count against the cap",
        eshop_id,
        len(waiting),
    )


def _read_stored(r: redis.Redis, eshop_id: int) -> CachedToken | None:
    fields = r.hmget(token_key(eshop_id), ["ct", "exp", "life", "ofp"])
    if not fields[0] or not fields[1]:
        return None
    try:
        token = decrypt(
            fields[0].decode() if isinstance(fields[0], bytes) else str(fields[0])
        )
    except DecryptionError:
        # Encrypted under a key that has since left FIELD_ENCRYPTION_KEYS (rotation): a 30-minute
        # token is not worth keeping; treat it as missing and renew.
        logger.warning(
            "eshop_id=%s: stored API token not decryptable with current keys; renewing",
            eshop_id,
        )
        r.delete(token_key(eshop_id))
        return None
    return CachedToken(
        token=token,
        expires_at=float(fields[1]),
        lifetime=float(fields[2] or fields[1]),
        oauth_fp=fields[3].decode() if isinstance(fields[3], bytes) else "",
    )


# --- Public API ----------------------------------------------------------------------------------


def get_api_access_token(eshop: Eshop) -> Secret:
    """A valid API access token for `eshop`, renewing it (single-flight, within the cap) if needed."""
    now = time.time()
    with _memory_lock:
        cached = _memory.get(eshop.eshop_id)
    if cached and cached.usable(now):
        _note_activity(eshop.eshop_id, now)
        return cached.token
    try:
        r = get_redis()
        stored = _read_stored(r, eshop.eshop_id)
        if _unrecorded:
            _record_unrecorded(r, eshop.eshop_id)
        _note_activity(eshop.eshop_id, now)
        if stored and stored.usable(now):
            _remember(eshop.eshop_id, stored)
            return stored.token
        return _renew_shared(r, eshop).token
    except redis.RedisError as exc:
        logger.warning(
            "token store unavailable (%s); eshop_id=%s uses a process-local token",
            type(exc).__name__,
            eshop.eshop_id,
        )
        return _renew_local(eshop).token


def renew_if_expiring(eshop: Eshop, *, within: float) -> bool:
    """Renew the shared token if it expires within `within` seconds (proactive renewal, or an
    operator's "renew now" with a huge `within`). True if a token minted after this call began is
    now stored; concurrent calls still mint only one."""
    r = get_redis()
    started = time.time()
    stored = _read_stored(r, eshop.eshop_id)
    if stored and stored.expires_at - started > within:
        return False
    renewed = _renew_shared(r, eshop, need=Need(left=within, since=started))
    return renewed.expires_at - renewed.lifetime >= started


def invalidate_api_token(eshop: Eshop, token: str) -> None:
    """Drop `token` after Shoptet rejected it, unless another process already replaced it."""
    fp = fingerprint_of(token)
    with _memory_lock:
        cached = _memory.get(eshop.eshop_id)
        if cached and fingerprint_of(cached.token) == fp:
            del _memory[eshop.eshop_id]
    try:
        r = get_redis()
        lua(_INVALIDATE)(
            keys=[token_key(eshop.eshop_id), issued_key(eshop.eshop_id)],
            args=[fp],
            client=r,
        )
    except redis.RedisError as exc:
        logger.warning(
            "could not invalidate token in Redis (%s) for eshop_id=%s",
            type(exc).__name__,
            eshop.eshop_id,
        )


def forget_tokens(eshop_id: int, *, keep_oauth_fp: str | None = None) -> None:
    """Remove the stored tokens of an e-shop: all of them (uninstall), or after a reinstall those
    minted under an earlier OAuth token, so the new installation starts a fresh cap count.

    `keep_oauth_fp` is `oauth_fingerprint()` of the installation's current OAuth token: tokens
    minted with it stay, even when this runs after a request of the new install has minted one.
    """
    keep = keep_oauth_fp or ""
    with _memory_lock:
        cached = _memory.get(eshop_id)
        if cached and (not keep or cached.oauth_fp != keep):
            del _memory[eshop_id]
    lua(_FORGET)(
        keys=[token_key(eshop_id), issued_key(eshop_id), health_key(eshop_id)],
        args=[keep],
        client=get_redis(),
    )


def recently_active_eshop_ids(*, since: float) -> list[int]:
    """E-shops that used the API after the epoch time `since` (proactive renewal covers only these)."""
    r = get_redis()
    r.zremrangebyscore(activity_key(), "-inf", since)
    return [
        int(str(member, "ascii") if isinstance(member, bytes) else str(member))
        for member in r.zrangebyscore(activity_key(), since, "+inf")
    ]


def renewal_due(
    eshop_ids: list[int], *, now: float, horizon: float
) -> list[tuple[int, float]]:
    """(e-shop id, seconds from now) for each token to renew ahead within `horizon` seconds.

    The moment is just before the token's margin, moved earlier by a random jitter of up to
    SHOPTET_TOKEN_RENEW_JITTER seconds; an e-shop without a stored token is due at once.
    """
    if not eshop_ids:
        return []
    pipe = get_redis().pipeline(transaction=False)
    for eshop_id in eshop_ids:
        pipe.hmget(token_key(eshop_id), ["exp", "life"])
    jitter = float(settings.SHOPTET_TOKEN_RENEW_JITTER)
    due = []
    for eshop_id, (exp, life) in zip(eshop_ids, pipe.execute(), strict=True):
        spread = random.uniform(0, jitter)  # noqa: S311 (jitter, not security)
        if not exp:
            due.append((eshop_id, min(spread, horizon)))
            continue
        renew_at = float(exp) - renew_margin(float(life or exp)) - spread
        if renew_at - now <= horizon:
            due.append((eshop_id, max(0.0, renew_at - now)))
    return due


def renew_ahead(eshop: Eshop) -> bool:
    """The proactive renewal of one e-shop: renew if its token is inside the margin plus jitter."""
    stored = _read_stored(get_redis(), eshop.eshop_id)
    lifetime = (
        stored.lifetime if stored else float(settings.SHOPTET_TOKEN_DEFAULT_LIFETIME)
    )
    return renew_if_expiring(
        eshop,
        within=renew_margin(lifetime) + float(settings.SHOPTET_TOKEN_RENEW_JITTER) + 5,
    )


# --- Renewal -------------------------------------------------------------------------------------


def _note_activity(eshop_id: int, now: float) -> None:
    # Activity only steers proactive renewal (minute resolution is plenty), so each process
    # writes it at most every ACTIVITY_NOTE_INTERVAL seconds per e-shop, and never fails a request.
    if now - _activity_noted.get(eshop_id, 0.0) < ACTIVITY_NOTE_INTERVAL:
        return
    _activity_noted[eshop_id] = now
    with contextlib.suppress(redis.RedisError):
        get_redis().zadd(activity_key(), {str(eshop_id): now})
        if _unrecorded:
            _record_unrecorded(get_redis(), eshop_id)


@dataclasses.dataclass(frozen=True)
class Need:
    """What a renewal must deliver. Default: a usable token (the request path). With `left`: a
    token with more than `left` seconds to live, or one minted after `since` (another process
    renewed it meanwhile, which satisfies a proactive or forced renewal just as well)."""

    left: float | None = None
    since: float = 0.0

    def met_by(self, stored: CachedToken, now: float) -> bool:
        if self.left is None:
            return stored.usable(now)
        return (
            stored.expires_at - now > self.left
            or stored.expires_at - stored.lifetime >= self.since
        )


def _renew_shared(r: redis.Redis, eshop: Eshop, *, need: Need = Need()) -> CachedToken:
    """Single-flight renewal through Redis. Exactly one process per e-shop calls Shoptet."""
    eshop_id = eshop.eshop_id
    owner = uuid.uuid4().hex
    lock_ttl_ms = int(settings.SHOPTET_TOKEN_LOCK_TTL * 1000)
    deadline = time.monotonic() + settings.SHOPTET_TOKEN_WAIT_TIMEOUT
    delay = 0.01
    while True:
        if r.set(renew_lock_key(eshop_id), owner, nx=True, px=lock_ttl_ms):
            try:
                return _renew_holding_lock(r, eshop, need=need)
            finally:
                _release_renew_lock(r, eshop_id, owner)
        # Another process is minting: wait and re-read, never mint alongside it.
        time.sleep(delay + random.uniform(0, delay))  # noqa: S311 (jitter, not security)
        delay = min(delay * 1.5, 0.1)
        stored = _read_stored(r, eshop_id)
        now = time.time()
        if stored is not None and need.met_by(stored, now):
            metrics.observe_token_wait("renewed")
            _remember(eshop_id, stored)
            return stored
        if time.monotonic() > deadline:
            if stored and stored.valid(now):
                # The renewer is slow; an almost-expired token is better than no answer.
                metrics.observe_token_wait("stale")
                return stored
            metrics.observe_token_wait("timeout")
            raise ShoptetTimeoutError(
                f"waited {settings.SHOPTET_TOKEN_WAIT_TIMEOUT:g} s for another process to renew the API token",
                endpoint="GET oauth/getAccessToken",
            )


def _release_renew_lock(r: redis.Redis, eshop_id: int, owner: str) -> None:
    """Release our renewal lock. A Redis error here is logged, never raised: it must not replace
    the outcome of the renewal (say a cap refusal) and send the caller to the process fallback.
    An unreleased lock expires after SHOPTET_TOKEN_LOCK_TTL."""
    try:
        lua(RELEASE_LOCK)(keys=[renew_lock_key(eshop_id)], args=[owner], client=r)
    except redis.RedisError as exc:
        logger.warning(
            "eshop_id=%s: renewal lock not released (%s); it expires on its own",
            eshop_id,
            type(exc).__name__,
        )


@sensitive_variables("minted")
def _renew_holding_lock(r: redis.Redis, eshop: Eshop, *, need: Need) -> CachedToken:
    eshop_id = eshop.eshop_id
    # Someone may have renewed between our read and our lock (the "already renewed" double-check).
    stored = _read_stored(r, eshop_id)
    now = time.time()
    if stored is not None and need.met_by(stored, now):
        _remember(eshop_id, stored)
        return stored

    # Reserve a cap slot before asking Shoptet. Until we know the real lifetime, the reservation
    # lasts as long as the last token did: a crash mid-mint must not free a slot that Shoptet counts.
    last_lifetime = (
        stored.lifetime if stored else float(settings.SHOPTET_TOKEN_DEFAULT_LIFETIME)
    )
    oauth_fp = oauth_fingerprint(eshop.oauth_access_token)
    pending = f"{oauth_fp}:pending:{uuid.uuid4().hex}"
    slot, next_slot_in = lua(_RESERVE_SLOT)(
        keys=[issued_key(eshop_id)],
        args=[token_cap(), pending, last_lifetime],
        client=r,
    )
    if int(slot) < 0:
        return _at_cap(eshop_id, stored, now, retry_in=float(next_slot_in))

    started = time.time()
    try:
        minted = _mint(eshop)
    except BaseException as exc:
        metrics.observe_token_failure(exc)
        _note_failure(r, eshop_id, exc)
        if not minted_nothing(exc):
            # A lost answer (timeout or dropped connection after the request went out), a time
            # limit mid-read: Shoptet may have minted a token we never received. Keep the
            # reservation; it expires with the lifetime.
            raise
        # A definite answer (any HTTP status: a refusal, a 503) or a connection never made
        # minted nothing: free the slot, or a burst of 5xx would lock the shop out for 30 min.
        with contextlib.suppress(redis.RedisError):
            r.zrem(issued_key(eshop_id), pending)
        if isinstance(exc, ShoptetMaxTokensReached):
            # Shoptet counts tokens we do not know of (a flushed Redis, another deployment).
            logger.warning(
                "eshop_id=%s: Shoptet answered maximum_tokens_reached; reusing the current token",
                eshop_id,
            )
            if stored and stored.valid(time.time()):
                _remember(eshop_id, stored)
                return stored
        raise
    metrics.observe_token_mint("request" if need.left is None else "ahead")
    cached = CachedToken(
        token=minted.access_token,
        expires_at=started + minted.expires_in,
        lifetime=float(minted.expires_in),
        oauth_fp=oauth_fp,
    )
    fp = fingerprint_of(minted.access_token)
    try:
        lua(_STORE_TOKEN)(
            keys=[token_key(eshop_id), issued_key(eshop_id), health_key(eshop_id)],
            args=[
                pending,
                f"{oauth_fp}:{fp}",
                encrypt(minted.access_token),
                fp,
                cached.expires_at,
                minted.expires_in,
                oauth_fp,
                time.time(),
            ],
            client=r,
        )
    except redis.RedisError as exc:
        # Redis failed after Shoptet minted: use the token from memory rather than letting the
        # caller's Redis fallback mint another one, and count it against the cap once Redis is back.
        logger.warning(
            "eshop_id=%s: new API token not stored (%s); kept in memory",
            eshop_id,
            type(exc).__name__,
        )
        _note_unrecorded(eshop_id, f"{oauth_fp}:{fp}", cached.expires_at)
    _remember(eshop_id, cached)
    logger.info(
        "eshop_id=%s: new API token fp=%s expires_in=%ss",
        eshop_id,
        fp[:8],
        minted.expires_in,
    )
    return cached


def _note_failure(r: redis.Redis, eshop_id: int, exc: BaseException) -> None:
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


def _at_cap(
    eshop_id: int, stored: CachedToken | None, now: float, *, retry_in: float
) -> CachedToken:
    if stored and stored.valid(now):
        # At the cap: keep using the current token until its very end rather than mint a sixth.
        metrics.observe_token_cap("kept_current")
        _remember(eshop_id, stored)
        return stored
    metrics.observe_token_cap("refused")
    logger.error(
        "eshop_id=%s: token cap %s reached and no valid token stored; next slot in %.0f s",
        eshop_id,
        token_cap(),
        retry_in,
    )
    raise ShoptetMaxTokensReached(
        f"{token_cap()} API tokens are valid already; next slot in {retry_in:.0f} s",
        error_code="maximum_tokens_reached",
        endpoint="GET oauth/getAccessToken",
        retry_after=dt.datetime.now(tz=dt.UTC) + dt.timedelta(seconds=retry_in),
    )


def _renew_local(eshop: Eshop) -> CachedToken:
    """Redis is down: one token per e-shop per process, minted under a process lock."""
    with _memory_lock:
        lock = _fallback_locks.setdefault(eshop.eshop_id, threading.Lock())
    with lock:
        with _memory_lock:
            cached = _memory.get(eshop.eshop_id)
        if cached and cached.usable(time.time()):
            return cached
        started = time.time()
        try:
            minted = _mint(eshop)
        except BaseException as exc:
            metrics.observe_token_failure(exc)
            raise
        metrics.observe_token_mint("local")
        oauth_fp = oauth_fingerprint(eshop.oauth_access_token)
        cached = CachedToken(
            token=minted.access_token,
            expires_at=started + minted.expires_in,
            lifetime=float(minted.expires_in),
            oauth_fp=oauth_fp,
        )
        _remember(eshop.eshop_id, cached)
        member = f"{oauth_fp}:{fingerprint_of(minted.access_token)}"
        _note_unrecorded(eshop.eshop_id, member, cached.expires_at)
        return cached


def minted_nothing(exc: BaseException) -> bool:
    """Whether a failed getAccessToken certainly minted no token.

    Any HTTP answer (a refusal, a 429, a 503 with its body) is Shoptet's definite word; so is a
    connection that was never made. Only an answer that may have been lost after the request went
    out (a read timeout, a dropped connection, a time limit mid-read) may hide a minted token.
    """
    if isinstance(exc, ShoptetConnectionError):
        return not exc.request_sent
    return isinstance(exc, ShoptetAPIError) and exc.status_code is not None


def _mint(eshop: Eshop) -> ApiAccessToken:
    """Call getAccessToken; answers meaning "installation gone or paused" change the tenant's status."""
    if not eshop.oauth_access_token:
        raise AddonNotInstalled(
            f"e-shop {eshop.eshop_id} has no OAuth token (uninstalled)"
        )
    try:
        return fetch_api_access_token(oauth_token=eshop.oauth_access_token)
    except (AddonSuspended, AddonNotInstalled) as exc:
        verdicts.apply_verdict(eshop, exc)
        raise
    except ShoptetOAuthError as exc:
        # A 401 is ambiguous: a revoked installation, or our own misconfiguration (a wrong
        # SHOPTET_OAUTH_URL would refuse every shop at once). Nothing is wiped for it: after
        # OAUTH_REJECTIONS_BEFORE_SUSPEND refusals in a row the tenant is suspended (renewals
        # stop; reversible), and operators see the failures in the console meanwhile.
        if (
            exc.status_code == 401
            and _consecutive_failures(eshop.eshop_id) + 1
            >= OAUTH_REJECTIONS_BEFORE_SUSPEND
        ):
            eshop.apply_verdict(
                eshop.Status.SUSPENDED,
                reason=f"getAccessToken: OAuth token rejected (401) {OAUTH_REJECTIONS_BEFORE_SUSPEND} times in a row",
            )
        raise


def _consecutive_failures(eshop_id: int) -> int:
    with contextlib.suppress(redis.RedisError):
        return int(get_redis().hget(health_key(eshop_id), "failures") or 0)
    return 0
