"""Proactive renewal: which e-shops used the API lately, when each token is due, and the renewal
of one e-shop just before its token's margin (the `renew_expiring_tokens` sweep calls these).

Each API call notes its e-shop's activity (`store.note_activity`); only those shops are renewed
ahead, so an idle shop's token is left to expire.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from django.conf import settings

from addon_project.redis_client import get_redis
from addon_project.redis_keys import token_activity_key, token_key
from shoptet_api.tokens import chunk, store
from shoptet_api.tokens.renewal import renew_if_expiring

# Seconds a proactive renewal may run before its shop's own due moment and still renew it.
RENEW_AHEAD_SLACK = 5.0

if TYPE_CHECKING:
    from collections.abc import Sequence
    from concurrent.futures import Executor

    from eshops.models import Eshop


def recently_active_eshop_ids(*, since: float) -> list[int]:
    """E-shops that used the API after the epoch time `since` (proactive renewal covers only these)."""
    r = get_redis()
    r.zremrangebyscore(token_activity_key(), "-inf", since)
    return [
        int(str(member, "ascii") if isinstance(member, bytes) else str(member))
        for member in r.zrangebyscore(token_activity_key(), since, "+inf")
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
        renew_at = float(exp) - store.renew_margin(float(life or exp)) - spread
        if renew_at - now <= horizon:
            due.append((eshop_id, max(0.0, renew_at - now)))
    return due


def renewal_chunks(
    due: list[tuple[int, float]], *, size: int, window: float = RENEW_AHEAD_SLACK
) -> list[tuple[list[int], float]]:
    """Group `renewal_due`'s (e-shop id, seconds from now) into (ids, countdown) chunks.

    A chunk holds at most `size` shops whose due times lie within `window` seconds of its earliest
    one, and runs at that earliest time: no shop is renewed more than `window` seconds before its
    own (jittered) moment, so the spreading of `renewal_due` holds and `renew_ahead` still finds
    every shop of the chunk due.
    """
    chunks: list[tuple[list[int], float]] = []
    for eshop_id, due_in in sorted(due, key=lambda item: item[1]):
        if chunks:
            ids, countdown = chunks[-1]
            if len(ids) < size and due_in - countdown <= window:
                ids.append(eshop_id)
                continue
        chunks.append(([eshop_id], due_in))
    return chunks


def renew_ahead(eshop: Eshop) -> bool:
    """The proactive renewal of one e-shop: renew if its token is inside the margin plus jitter
    (and a few seconds of slack, see `renewal_chunks`)."""
    return renew_if_expiring(eshop, within=_renew_ahead_within())


def renew_chunk_ahead(
    eshops: Sequence[Eshop], *, pool: Executor
) -> dict[int, chunk.Result]:
    """`renew_ahead` for a chunk of e-shops in bulk steps (see `chunk`), calls on `pool`."""
    return chunk.renew_chunk(eshops, within=_renew_ahead_within(), pool=pool)


def _renew_ahead_within() -> float:
    return float(settings.SHOPTET_TOKEN_RENEW_JITTER) + RENEW_AHEAD_SLACK
