"""Proactive renewal of a chunk of e-shops in bulk steps (the `renew_token_chunk` task).

The per-shop path (`renewal.renew_if_expiring`) costs three Redis round trips per shop and
decrypts the stored token. A chunk takes the same steps for all of its shops at once, with the
same rules (single flight per e-shop, a reserved cap slot before every getAccessToken call):

1. one pipeline tries every shop's renewal lock and reads when its token expires (no
   decryption: only the expiry decides whether a shop is due);
2. one pipeline reserves a cap slot for each due shop and releases the other locks;
3. getAccessToken for the due shops, concurrently on the caller's thread pool; each new token
   is stored (releasing its lock) by its pool thread as soon as its call returns, one round
   trip per shop: a token held back for the slowest call could outlive its lock;
4. one pipeline frees the slots of calls that certainly minted nothing, releases the
   remaining locks and notes the failures for operators.

A shop whose lock another process holds (a request path renewing it), or whose call could no
longer start well inside our lock's lifetime, is then renewed by the per-shop path.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, TypeVar

import redis
from django import db
from django.conf import settings

from addon_project import logging_context, metrics
from addon_project.redis_client import RELEASE_LOCK, get_redis, lua
from addon_project.redis_keys import issued_key, renew_lock_key, token_key
from shoptet_api.errors import ShoptetMaxTokensReached
from shoptet_api.tokens import health, store
from shoptet_api.tokens.renewal import (
    Need,
    cap_refusal,
    mint,
    minted_nothing,
    pending_member,
    renew_if_expiring,
    reservation_lifetime,
)

if TYPE_CHECKING:
    from eshops.models import Eshop

logger = logging.getLogger(__name__)

T = TypeVar("T")
# A call's token must be stored this long before its lock can lapse (one Redis round trip).
STORE_MARGIN = 1.0
# Per e-shop: True (a new token is stored), False (the stored one is fine, or kept at the cap),
# or the exception that stopped its renewal.
Result = bool | Exception


@dataclasses.dataclass
class _Shop:
    """One e-shop's way through the chunk."""

    eshop: Eshop
    expires_at: float | None = None
    lifetime: float = 0.0
    # We hold its renewal lock.
    locked: bool = False
    # Our reservation in the issued set ("" when none is held).
    pending: str = ""
    minted: store.CachedToken | None = None
    # The call could not start in time: the per-shop path renews this shop afterwards.
    late: bool = False
    result: Result | None = None

    @property
    def eshop_id(self) -> int:
        return self.eshop.eshop_id

    def holds_valid_token(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at - now > 1.0


def renew_chunk(
    eshops: Sequence[Eshop], *, within: float, pool: Executor
) -> dict[int, Result]:
    """Renew every e-shop of `eshops` whose token would be inside its margin `within` seconds
    from now; getAccessToken calls run on `pool`. Returns each e-shop's result (see `Result`).

    Raises `redis.RedisError` only if the first step cannot reach Redis (nothing was minted).
    """
    need = Need(ahead=within, since=time.time())
    r = get_redis()
    owner = uuid.uuid4().hex
    lock_ttl = float(settings.SHOPTET_TOKEN_LOCK_TTL)
    shops = [_Shop(eshop) for eshop in eshops]

    # A call must end, and its token be stored, before our lock can expire under it (see
    # fetch_api_access_token's timeout). The lock's lifetime counts from before step 1 is sent.
    start_calls_by = (
        time.monotonic()
        + lock_ttl
        - settings.SHOPTET_CONNECT_TIMEOUT
        - settings.SHOPTET_TOKEN_READ_TIMEOUT
        - STORE_MARGIN
    )
    # 1. Locks and expiries. Redis runs each read after its lock attempt (see store.lock_and_read).
    pipe = r.pipeline(transaction=False)
    for shop in shops:
        pipe.set(renew_lock_key(shop.eshop_id), owner, nx=True, px=int(lock_ttl * 1000))
        pipe.hmget(token_key(shop.eshop_id), ("exp", "life"))
    answers = pipe.execute()
    now = time.time()
    for shop, acquired, (exp, life) in zip(
        shops, answers[0::2], answers[1::2], strict=True
    ):
        shop.locked = bool(acquired)
        shop.lifetime = float(settings.SHOPTET_TOKEN_DEFAULT_LIFETIME)
        if exp:
            shop.expires_at, shop.lifetime = float(exp), float(life or exp)
        if (
            shop.locked
            and shop.expires_at
            and need.met(shop.expires_at, shop.lifetime, now=now)
        ):
            shop.result = False
    held = [shop for shop in shops if shop.locked]
    contended = [shop for shop in shops if not shop.locked]

    try:
        _reserve_slots(r, held, owner=owner, now=now)
    except redis.RedisError as exc:
        # Our locks expire on their own; a reservation that was made lasts one lifetime.
        for shop in held:
            if shop.result is None:
                shop.result = exc
    else:
        due = [shop for shop in held if shop.pending]
        _run_for_each(
            pool, due, lambda shop: _call(r, shop, start_by=start_calls_by, owner=owner)
        )
        _finish(r, held, owner=owner)

    again = contended + [shop for shop in held if shop.late]
    results = _run_for_each(
        pool, again, lambda shop: _renew_alone(shop.eshop, within=within)
    )
    for shop, result in zip(again, results, strict=True):
        shop.result = result
    return {shop.eshop_id: _final(shop) for shop in shops}


def _final(shop: _Shop) -> Result:
    if shop.result is None:
        raise AssertionError(f"eshop_id={shop.eshop_id}: no result")
    return shop.result


def _reserve_slots(
    r: redis.Redis, held: list[_Shop], *, owner: str, now: float
) -> None:
    """Step 2: a cap slot for each held shop that is due; the others' locks are released."""
    if not held:
        return
    reserve, release = lua(store.RESERVE_SLOT), lua(RELEASE_LOCK)
    pipe = r.pipeline(transaction=False)
    for shop in held:
        if shop.result is False:
            release(keys=[renew_lock_key(shop.eshop_id)], args=[owner], client=pipe)
            shop.locked = False
            continue
        # Until the real lifetime is known, the reservation lasts as long as the last token did:
        # a crash mid-call must not free a slot that Shoptet counts.
        shop.pending = pending_member(
            store.oauth_fingerprint(shop.eshop.oauth_access_token)
        )
        reserve(
            keys=[issued_key(shop.eshop_id)],
            args=[store.token_cap(), shop.pending, reservation_lifetime(shop.lifetime)],
            client=pipe,
        )
    for shop, answer in zip(held, pipe.execute(), strict=True):
        if not shop.pending or int(answer[0]) >= 0:
            continue
        shop.pending = ""
        if shop.holds_valid_token(now):
            # At the cap: the current token serves until its very end rather than mint a sixth.
            metrics.observe_token_cap("kept_current")
            shop.result = False
        else:
            shop.result = cap_refusal(shop.eshop_id, retry_in=float(answer[1]))


def _call(r: redis.Redis, shop: _Shop, *, start_by: float, owner: str) -> None:
    """Step 3, in a pool thread: getAccessToken for one shop and store its token; never raises."""
    if time.monotonic() > start_by:
        shop.late = True
        return
    started = time.time()
    try:
        minted = mint(shop.eshop)
    except Exception as exc:
        shop.result = exc
        return
    metrics.observe_token_mint("ahead")
    cached = store.minted_token(
        minted,
        started=started,
        oauth_fp=store.oauth_fingerprint(shop.eshop.oauth_access_token),
    )
    shop.minted, shop.result = cached, True
    if store.store_minted(
        r, shop.eshop_id, cached, pending=shop.pending, lock_owner=owner
    ):
        shop.locked = False


def _finish(r: redis.Redis, held: list[_Shop], *, owner: str) -> None:
    """Step 4: free the slots of calls that minted nothing, release the remaining locks and
    note the failures (after the tokens: a failure never delays a token's store)."""
    now = time.time()
    release = lua(RELEASE_LOCK)
    pipe = r.pipeline(transaction=False)
    failed: list[tuple[_Shop, int]] = []
    for shop in held:
        if shop.minted is None and shop.pending and isinstance(shop.result, Exception):
            failure = shop.result
            _note_failure(shop, failure, now=now)
            failed.append((shop, len(pipe)))
            health.queue_failure(pipe, shop.eshop_id, failure)
            # A definite answer or a connection never made minted nothing: free the slot. A
            # lost answer keeps it (Shoptet may have minted a token we never received).
            if minted_nothing(failure):
                pipe.zrem(issued_key(shop.eshop_id), shop.pending)
        elif shop.late:
            pipe.zrem(issued_key(shop.eshop_id), shop.pending)
        if shop.locked:
            release(keys=[renew_lock_key(shop.eshop_id)], args=[owner], client=pipe)
    if not len(pipe):
        return
    try:
        answers = pipe.execute()
        if failed:
            health.mark_failing(
                r, {shop.eshop_id: int(answers[at]) for shop, at in failed}
            )
    except redis.RedisError as exc:
        # The locks expire on their own; the failures go unrecorded for operators.
        logger.warning(
            "token chunk: last step failed (%s); its locks expire on their own",
            type(exc).__name__,
        )


def _note_failure(shop: _Shop, exc: Exception, *, now: float) -> None:
    metrics.observe_token_failure(exc)
    if isinstance(exc, ShoptetMaxTokensReached) and shop.holds_valid_token(now):
        # Shoptet counts tokens we do not know of (a flushed Redis, another deployment).
        logger.warning(
            "eshop_id=%s: Shoptet answered maximum_tokens_reached; keeping the current token",
            shop.eshop_id,
        )
        shop.result = False


def _renew_alone(eshop: Eshop, *, within: float) -> Result:
    """The per-shop path (it waits for another process's renewal, or takes the lock afresh)."""
    try:
        return renew_if_expiring(eshop, within=within)
    except Exception as exc:
        return exc


def _run_for_each(
    pool: Executor, shops: list[_Shop], work: Callable[[_Shop], T]
) -> list[T]:
    """`work(shop)` for every shop on `pool`, each in a copy of the caller's log context with
    the shop's eshop_id; waits for all. `work` must not raise."""
    futures = [
        pool.submit(contextvars.copy_context().run, _in_pool_thread, work, shop)
        for shop in shops
    ]
    return [future.result() for future in futures]


def _in_pool_thread(work: Callable[[_Shop], T], shop: _Shop) -> T:
    logging_context.bind(eshop_id=shop.eshop_id)
    try:
        return work(shop)
    finally:
        # A verdict writes the tenant row from this pool thread: close that connection now, or
        # it outlives the task in a thread Django never cleans up after.
        db.connection.close()
