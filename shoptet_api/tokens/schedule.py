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
from shoptet_api.tokens import store
from shoptet_api.tokens.renewal import renew_if_expiring

if TYPE_CHECKING:
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


def renew_ahead(eshop: Eshop) -> bool:
    """The proactive renewal of one e-shop: renew if its token is inside the margin plus jitter."""
    stored = store.read_stored(get_redis(), eshop.eshop_id)
    lifetime = (
        stored.lifetime if stored else float(settings.SHOPTET_TOKEN_DEFAULT_LIFETIME)
    )
    return renew_if_expiring(
        eshop,
        within=store.renew_margin(lifetime)
        + float(settings.SHOPTET_TOKEN_RENEW_JITTER)
        + 5,
    )
