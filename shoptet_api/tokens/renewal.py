"""Renewal: the read path (memory, Redis, renew), single-flight renewal within the cap, and the
process-local fallback while Redis is unreachable.

- Only one process per e-shop renews at a time (`SET NX PX` lock); the others wait briefly and
  re-read, they never mint.
- A Lua script reserves a cap slot before each `getAccessToken` call and refuses once
  `SHOPTET_TOKEN_CAP` tokens are valid, even if a lock expired under a slow holder.
- Redis down: each process falls back to a token of its own, minted under a process lock and
  reused until near expiry, so one process never holds more than one token at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import math
import random
import threading
import time
import uuid
from typing import TYPE_CHECKING

import redis
from django.conf import settings
from django.views.decorators.debug import sensitive_variables

from addon_project import metrics
from addon_project.encryption import Secret
from addon_project.redis_client import RELEASE_LOCK, get_redis, lua
from addon_project.redis_keys import issued_key, renew_lock_key
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
from shoptet_api.retry import sleep
from shoptet_api.tokens import health, store
from shoptet_api.types import ApiAccessToken

if TYPE_CHECKING:
    from eshops.models import Eshop

logger = logging.getLogger(__name__)

# getAccessToken 401s in a row before a tenant is suspended (see mint).
OAUTH_REJECTIONS_BEFORE_SUSPEND = 3
# Per-process, per-e-shop locks used only while Redis is unreachable.
_fallback_locks: dict[int, threading.Lock] = {}
_fallback_locks_lock = threading.Lock()


def get_api_access_token(eshop: Eshop) -> Secret:
    """A valid API access token for `eshop`, renewing it (single-flight, within the cap) if needed."""
    now = time.time()
    cached = store.remembered(eshop.eshop_id)
    if cached and cached.usable(now):
        store.note_activity(eshop.eshop_id, now)
        return cached.token
    try:
        r = get_redis()
        stored = store.read_stored(r, eshop.eshop_id)
        if store.has_unrecorded():
            store.record_unrecorded(r, eshop.eshop_id)
        store.note_activity(eshop.eshop_id, now)
        if stored and stored.usable(now):
            store.remember(eshop.eshop_id, stored)
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
    """Renew the shared token if it would be inside its renewal margin `within` seconds from now
    (proactive renewal, or an operator's "renew now" with a huge `within`). True if a token minted
    after this call began is now stored; concurrent calls still mint only one.

    The lock is tried first, reading the token in the same round trip: callers ask when a renewal
    is due, so a separate read before it would only cost a round trip and a decryption.
    """
    started = time.time()
    renewed = _renew_shared(get_redis(), eshop, need=Need(ahead=within, since=started))
    return renewed.expires_at - renewed.lifetime >= started


@dataclasses.dataclass(frozen=True)
class Need:
    """What a renewal must deliver: a token still usable `ahead` seconds from now (0: the request
    path), or one minted after `since` (another process renewed it meanwhile, which satisfies a
    proactive or forced renewal just as well)."""

    ahead: float = 0.0
    since: float = math.inf

    @property
    def proactive(self) -> bool:
        return self.since < math.inf

    def met_by(self, stored: store.CachedToken, now: float) -> bool:
        return self.met(stored.expires_at, stored.lifetime, now=now)

    def met(self, expires_at: float, lifetime: float, *, now: float) -> bool:
        """Whether a token expiring at `expires_at` after `lifetime` seconds meets the need."""
        return (
            store.outside_margin(expires_at, lifetime, now=now + self.ahead)
            or expires_at - lifetime >= self.since
        )


def _renew_shared(
    r: redis.Redis, eshop: Eshop, *, need: Need = Need()
) -> store.CachedToken:
    """Single-flight renewal through Redis. Exactly one process per e-shop calls Shoptet."""
    eshop_id = eshop.eshop_id
    owner = uuid.uuid4().hex
    lock_ttl_ms = int(settings.SHOPTET_TOKEN_LOCK_TTL * 1000)
    deadline = time.monotonic() + settings.SHOPTET_TOKEN_WAIT_TIMEOUT
    delay = 0.01
    waited = False
    while True:
        acquired, stored = store.lock_and_read(
            r, eshop_id, owner=owner, ttl_ms=lock_ttl_ms
        )
        if acquired:
            lock = _HeldLock(eshop_id, owner)
            try:
                return _renew_holding_lock(r, eshop, stored, lock=lock, need=need)
            finally:
                if not lock.released:
                    _release_renew_lock(r, eshop_id, owner)
        # Another process is minting: use what it stored, or wait and re-read; never mint alongside it.
        now = time.time()
        if stored is not None and need.met_by(stored, now):
            if waited:
                metrics.observe_token_wait("renewed")
            store.remember(eshop_id, stored)
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
        sleep(delay + random.uniform(0, delay))  # noqa: S311 (jitter, not security)
        delay = min(delay * 1.5, 0.1)
        waited = True


@dataclasses.dataclass
class _HeldLock:
    """Our renewal lock; `released` once the store script has released it with the token."""

    eshop_id: int
    owner: str
    released: bool = False


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
def _renew_holding_lock(
    r: redis.Redis,
    eshop: Eshop,
    stored: store.CachedToken | None,
    *,
    lock: _HeldLock,
    need: Need,
) -> store.CachedToken:
    """Mint under our lock, unless `stored` (read after the lock was taken) already meets `need`."""
    eshop_id = eshop.eshop_id
    # Someone may have renewed between our read and our lock (the "already renewed" double-check).
    now = time.time()
    if stored is not None and need.met_by(stored, now):
        store.remember(eshop_id, stored)
        return stored

    # Reserve a cap slot before asking Shoptet. Until we know the real lifetime, the reservation
    # lasts as long as the last token did: a crash mid-mint must not free a slot that Shoptet counts.
    last_lifetime = (
        stored.lifetime if stored else float(settings.SHOPTET_TOKEN_DEFAULT_LIFETIME)
    )
    oauth_fp = store.oauth_fingerprint(eshop.oauth_access_token)
    pending = pending_member(oauth_fp)
    slot, next_slot_in = lua(store.RESERVE_SLOT)(
        keys=[issued_key(eshop_id)],
        args=[store.token_cap(), pending, reservation_lifetime(last_lifetime)],
        client=r,
    )
    if int(slot) < 0:
        return _at_cap(eshop_id, stored, now, retry_in=float(next_slot_in))

    started = time.time()
    try:
        minted = mint(eshop)
    except BaseException as exc:
        metrics.observe_token_failure(exc)
        health.note_failure(r, eshop_id, exc)
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
                store.remember(eshop_id, stored)
                return stored
        raise
    metrics.observe_token_mint("ahead" if need.proactive else "request")
    cached = store.minted_token(minted, started=started, oauth_fp=oauth_fp)
    # If Redis fails now, the token is used from memory rather than letting the caller's Redis
    # fallback mint another one.
    lock.released = store.store_minted(
        r, eshop_id, cached, pending=pending, lock_owner=lock.owner
    )
    logger.info(
        "eshop_id=%s: new API token fp=%s expires_in=%ss",
        eshop_id,
        store.fingerprint_of(cached.token)[:8],
        minted.expires_in,
    )
    return cached


def _at_cap(
    eshop_id: int, stored: store.CachedToken | None, now: float, *, retry_in: float
) -> store.CachedToken:
    if stored and stored.valid(now):
        # At the cap: keep using the current token until its very end rather than mint a sixth.
        metrics.observe_token_cap("kept_current")
        store.remember(eshop_id, stored)
        return stored
    raise cap_refusal(eshop_id, retry_in=retry_in)


def cap_refusal(eshop_id: int, *, retry_in: float) -> ShoptetMaxTokensReached:
    """The error for a renewal that the cap refused while no valid token is stored (logged, counted)."""
    metrics.observe_token_cap("refused")
    logger.error(
        "eshop_id=%s: token cap %s reached and no valid token stored; next slot in %.0f s",
        eshop_id,
        store.token_cap(),
        retry_in,
    )
    return ShoptetMaxTokensReached(
        f"{store.token_cap()} API tokens are valid already; next slot in {retry_in:.0f} s",
        error_code="maximum_tokens_reached",
        endpoint="GET oauth/getAccessToken",
        retry_after=dt.datetime.now(tz=dt.UTC) + dt.timedelta(seconds=retry_in),
    )


# Clocks of our hosts, Redis and Shoptet may disagree by this much (see reservation_lifetime).
CLOCK_SLACK = 5.0


def reservation_lifetime(last_lifetime: float) -> float:
    """How long a cap slot reserved for a getAccessToken call lasts: a token whose answer was lost
    lives `expires_in` from when Shoptet minted it, which may be as late as the call's connect and
    read timeouts after the reservation (plus clock slack)."""
    timeouts = float(
        settings.SHOPTET_CONNECT_TIMEOUT + settings.SHOPTET_TOKEN_READ_TIMEOUT
    )
    return last_lifetime + timeouts + CLOCK_SLACK


def pending_member(oauth_fp: str) -> str:
    """An issued-set member reserving a cap slot for a getAccessToken call about to be made."""
    return f"{oauth_fp}:pending:{uuid.uuid4().hex}"


def _renew_local(eshop: Eshop) -> store.CachedToken:
    """Redis is down: one token per e-shop per process, minted under a process lock."""
    with _fallback_locks_lock:
        lock = _fallback_locks.setdefault(eshop.eshop_id, threading.Lock())
    with lock:
        cached = store.remembered(eshop.eshop_id)
        if cached and cached.usable(time.time()):
            return cached
        started = time.time()
        try:
            minted = mint(eshop)
        except BaseException as exc:
            metrics.observe_token_failure(exc)
            raise
        metrics.observe_token_mint("local")
        cached = store.minted_token(
            minted,
            started=started,
            oauth_fp=store.oauth_fingerprint(eshop.oauth_access_token),
        )
        store.remember(eshop.eshop_id, cached)
        store.note_unrecorded(
            eshop.eshop_id, store.issued_member(cached), cached.expires_at
        )
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


def mint(eshop: Eshop) -> ApiAccessToken:
    """Call getAccessToken; answers meaning "installation gone or paused" change the tenant's status.

    Callers hold the e-shop's renewal lock and a reserved cap slot (or Redis is unreachable)."""
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
            and health.consecutive_failures(eshop.eshop_id) + 1
            >= OAUTH_REJECTIONS_BEFORE_SUSPEND
        ):
            eshop.apply_verdict(
                eshop.Status.SUSPENDED,
                reason=f"getAccessToken: OAuth token rejected (401) {OAUTH_REJECTIONS_BEFORE_SUSPEND} times in a row",
            )
        raise
