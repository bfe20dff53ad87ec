"""The token store: the Redis hash of the current token, the issued set counting tokens against
Shoptet's cap, and this process's memory of both (including tokens minted while Redis was away).

All keys of one e-shop share the hash tag `{eshop:<id>}`, so each script touches one Redis Cluster slot.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import redis
from django.conf import settings

from addon_project.encryption import DecryptionError, Secret, decrypt, encrypt
from addon_project.redis_client import get_redis, lua
from addon_project.redis_keys import (
    health_key,
    issued_key,
    renew_lock_key,
    token_activity_key,
    token_key,
)

if TYPE_CHECKING:
    from eshops.models import Eshop
    from shoptet_api.types import ApiAccessToken

logger = logging.getLogger(__name__)

# Shoptet's own cap; SHOPTET_TOKEN_CAP may only be lower.
SHOPTET_MAX_VALID_TOKENS = 5


# --- Scripts ---------------------------------------------------------------------------------------

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
RESERVE_SLOT = (
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
RECORD_ISSUED = (
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


# KEYS[1] token hash, KEYS[2] issued set, KEYS[3] health hash, KEYS[4] renewal lock; ARGV: pending
# reservation, issued member, the encrypted token's two parts (see ciphertext_parts), fingerprint,
# expiry (the minting host's epoch, for readers), lifetime, OAuth fingerprint, lock owner. Replaces
# the reservation by the token, stores it and releases the lock if we still own it, atomically and
# in one round trip. A renewal ends a run of failures: the health hash (written only by failures)
# goes, so a healthy tenant holds no health key at all. The earlier releases' `ct` field (and the
# unreleased `ct2`) go too: see _decoded for why the split token lives in fields of new names.
STORE_TOKEN = (
    _REDIS_NOW
    + _EXTEND_TTL
    + """
local life = tonumber(ARGV[7])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[2], now + life, ARGV[2])
extend(KEYS[2], math.ceil(life * 1000) + 60000)
redis.call('HDEL', KEYS[1], 'ct', 'ct2')
redis.call('HSET', KEYS[1], 'c1', ARGV[3], 'c2', ARGV[4], 'fp', ARGV[5], 'exp', ARGV[6], 'life', ARGV[7], 'ofp', ARGV[8])
redis.call('PEXPIRE', KEYS[1], math.max(1, math.ceil(life * 1000)))
redis.call('DEL', KEYS[3])
if redis.call('GET', KEYS[4]) == ARGV[9] then redis.call('DEL', KEYS[4]) end
return 1
"""
)


# KEYS[1] token hash, KEYS[2] issued set; ARGV[1] fingerprint of the token that failed. The issued
# member is `<oauth fp>:<token fp>`; whichever install minted it, it is no longer valid.
INVALIDATE = """
for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  if string.sub(member, -string.len(ARGV[1])) == ARGV[1] then redis.call('ZREM', KEYS[2], member) end
end
if redis.call('HGET', KEYS[1], 'fp') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1] token hash, KEYS[2] issued set, KEYS[3] health hash; ARGV[1] the OAuth fingerprint to
# keep ('' = keep nothing). Forgets what earlier installations minted, never the current one's.
FORGET = """
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


def outside_margin(expires_at: float, lifetime: float, *, now: float) -> bool:
    """Whether a token expiring at `expires_at` is still outside its renewal margin at `now`."""
    return expires_at - now > renew_margin(lifetime)


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
        return outside_margin(self.expires_at, self.lifetime, now=now)

    def valid(self, now: float) -> bool:
        """Still accepted by Shoptet (with a second of slack for the request in flight)."""
        return self.expires_at - now > 1.0


def minted_token(
    minted: ApiAccessToken, *, started: float, oauth_fp: str
) -> CachedToken:
    """The token getAccessToken answered, timed from `started` (when the call began)."""
    return CachedToken(
        token=minted.access_token,
        expires_at=started + minted.expires_in,
        lifetime=float(minted.expires_in),
        oauth_fp=oauth_fp,
    )


def issued_member(cached: CachedToken) -> str:
    """The token's member in the issued set: `<oauth fp>:<token fp>`."""
    return f"{cached.oauth_fp}:{fingerprint_of(cached.token)}"


def store_token(
    client: redis.Redis,
    eshop_id: int,
    cached: CachedToken,
    *,
    pending: str,
    lock_owner: str,
) -> None:
    """Queue or run STORE_TOKEN (`client` may be a pipeline): `cached` replaces the reservation
    `pending` in the issued set, becomes the e-shop's stored token (encrypted), ends a run of
    failures, and the renewal lock is released if `lock_owner` still holds it."""
    fp = fingerprint_of(cached.token)
    first, rest = ciphertext_parts(encrypt(cached.token))
    lua(STORE_TOKEN)(
        keys=[
            token_key(eshop_id),
            issued_key(eshop_id),
            health_key(eshop_id),
            renew_lock_key(eshop_id),
        ],
        args=[
            pending,
            issued_member(cached),
            first,
            rest,
            fp,
            cached.expires_at,
            cached.lifetime,
            cached.oauth_fp,
            lock_owner,
        ],
        client=client,
    )


def store_minted(
    r: redis.Redis,
    eshop_id: int,
    cached: CachedToken,
    *,
    pending: str,
    lock_owner: str,
) -> bool:
    """Store a token Shoptet just minted (`store_token`) and remember it in this process. True
    when stored (the lock is then released). If Redis fails, the token is kept in memory and
    counted against the cap once Redis is back, rather than letting anyone mint around it."""
    try:
        store_token(r, eshop_id, cached, pending=pending, lock_owner=lock_owner)
    except redis.RedisError as exc:
        logger.warning(
            "eshop_id=%s: new API token not stored (%s); kept in memory",
            eshop_id,
            type(exc).__name__,
        )
        note_unrecorded(eshop_id, issued_member(cached), cached.expires_at)
        return False
    finally:
        remember(eshop_id, cached)
    return True


# Process memory: e-shop id → its current token. Saves a Redis round trip per API call.
_memory: dict[int, CachedToken] = {}
_memory_lock = threading.Lock()
# When this process last recorded each e-shop's API activity (epoch seconds).
_activity_noted: dict[int, float] = {}
ACTIVITY_NOTE_INTERVAL = 10.0
# Tokens this process minted that Redis does not know of (minted while it was unreachable, or the
# store failed): issued-set member → expiry. Recorded at the next contact with Redis, so that the
# shared cap counts them and other processes do not mint past Shoptet's limit.
_unrecorded: dict[int, dict[str, float]] = {}


def remembered(eshop_id: int) -> CachedToken | None:
    """This process's copy of the e-shop's token, if any."""
    with _memory_lock:
        return _memory.get(eshop_id)


def remember(eshop_id: int, cached: CachedToken) -> None:
    with _memory_lock:
        _memory[eshop_id] = cached


def clear_process_cache() -> None:
    """Forget every token this process holds in memory (tests, and after a reinstall)."""
    with _memory_lock:
        _memory.clear()
        _activity_noted.clear()
        _unrecorded.clear()


def has_unrecorded() -> bool:
    """Whether this process holds tokens that the shared issued set does not count yet."""
    return bool(_unrecorded)


def note_unrecorded(eshop_id: int, member: str, expires_at: float) -> None:
    with _memory_lock:
        _unrecorded.setdefault(eshop_id, {})[member] = expires_at


def record_unrecorded(r: redis.Redis, eshop_id: int) -> None:
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
        lua(RECORD_ISSUED)(keys=[issued_key(eshop_id)], args=args, client=r)
    except redis.RedisError:
        with _memory_lock:
            _unrecorded.setdefault(eshop_id, {}).update(waiting)
        return
    logger.info(
        "eshop_id=%s: %s token(s) minted while Redis was unreachable now count against the cap",
        eshop_id,
        len(waiting),
    )


# Redis keeps a small hash compact (a listpack, half the memory of a hash table) only while every
# value is at most hash-max-listpack-value bytes (64 by default). The Fernet token of a 38-60
# character API token is 121 bytes raw (164 in base64), so it is stored raw, in two fields.
_LISTPACK_VALUE_MAX = 64


def ciphertext_parts(ciphertext: str) -> tuple[bytes, bytes]:
    """A Fernet token (base64 text) as two raw parts to store in the `c1` and `c2` fields."""
    raw = base64.urlsafe_b64decode(ciphertext)
    return raw[:_LISTPACK_VALUE_MAX], raw[_LISTPACK_VALUE_MAX:]


# `ct`: the Fernet token as base64 text, as earlier releases write and read it. `c1` + `c2`: the
# same token raw in two parts, as this release writes it (see ciphertext_parts).
_STORED_FIELDS = ("ct", "c1", "c2", "exp", "life", "ofp")


def read_stored(r: redis.Redis, eshop_id: int) -> CachedToken | None:
    """The e-shop's current token from Redis (decrypted), or None."""
    return _decoded(r, eshop_id, r.hmget(token_key(eshop_id), _STORED_FIELDS))


def lock_and_read(
    r: redis.Redis, eshop_id: int, *, owner: str, ttl_ms: int
) -> tuple[bool, CachedToken | None]:
    """Try the renewal lock (`SET NX PX`) and read the current token, in one round trip.

    Redis runs the read after the lock attempt: a holder sees any renewal that finished before
    it got the lock (the "already renewed" double-check); a loser sees what it may use meanwhile.
    """
    pipe = r.pipeline(transaction=False)
    pipe.set(renew_lock_key(eshop_id), owner, nx=True, px=ttl_ms)
    pipe.hmget(token_key(eshop_id), _STORED_FIELDS)
    acquired, fields = pipe.execute()
    return bool(acquired), _decoded(r, eshop_id, fields)


def _decoded(r: redis.Redis, eshop_id: int, fields: list[Any]) -> CachedToken | None:
    ct, c1, c2, exp, life, ofp = fields
    # Rolling deploys: processes of the earlier release still run beside this one and share the
    # hash. They read `ct` as text, so raw bytes there would break their API calls; this release
    # writes `c1` + `c2` and deletes `ct`. An earlier process then sees no token and renews it
    # under the lock (a few extra tokens during a deploy, within the cap). A `ct` present was
    # written by an earlier process after our last store (the store deletes it): it is the newer.
    if not (ct or c1) or not exp:
        return None
    try:
        text = ct or base64.urlsafe_b64encode(c1 + (c2 or b""))
        token = decrypt(text.decode())
    except (DecryptionError, ValueError):
        # Encrypted under a key that has since left FIELD_ENCRYPTION_KEYS (rotation), or mangled:
        # a 30-minute token is not worth keeping; treat it as missing and renew.
        logger.warning(
            "eshop_id=%s: stored API token not decryptable with current keys; renewing",
            eshop_id,
        )
        r.delete(token_key(eshop_id))
        return None
    return CachedToken(
        token=token,
        expires_at=float(exp),
        lifetime=float(life or exp),
        oauth_fp=ofp.decode() if isinstance(ofp, bytes) else "",
    )


def note_activity(eshop_id: int, now: float) -> None:
    """Record that the e-shop used the API (proactive renewal covers only recently active shops).

    Minute resolution is plenty, so each process writes it at most every ACTIVITY_NOTE_INTERVAL
    seconds per e-shop, and it never fails a request.
    """
    if now - _activity_noted.get(eshop_id, 0.0) < ACTIVITY_NOTE_INTERVAL:
        return
    _activity_noted[eshop_id] = now
    with contextlib.suppress(redis.RedisError):
        get_redis().zadd(token_activity_key(), {str(eshop_id): now})
        if _unrecorded:
            record_unrecorded(get_redis(), eshop_id)


def invalidate_api_token(eshop: Eshop, token: str) -> None:
    """Drop `token` after Shoptet rejected it, unless another process already replaced it."""
    fp = fingerprint_of(token)
    with _memory_lock:
        cached = _memory.get(eshop.eshop_id)
        if cached and fingerprint_of(cached.token) == fp:
            del _memory[eshop.eshop_id]
    try:
        r = get_redis()
        lua(INVALIDATE)(
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
    lua(FORGET)(
        keys=[token_key(eshop_id), issued_key(eshop_id), health_key(eshop_id)],
        args=[keep],
        client=get_redis(),
    )
