"""Install flow: Shoptet's install code → OAuth token → stored tenant."""

from __future__ import annotations

import logging
from functools import partial

import redis
from django.db import transaction
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from addon_project import metrics
from addon_project.background import in_background
from eshops.models import Eshop
from shoptet_api.oauth import exchange_code
from shoptet_api.tasks import post_install as post_install_task
from shoptet_api.tokens import forget_tokens, oauth_fingerprint

logger = logging.getLogger(__name__)


def _after_install(eshop_id: int, oauth_fp: str) -> None:
    # Neither step may delay the answer Shoptet waits for.
    in_background(_forget_tokens_then_set_up, eshop_id, oauth_fp)


def _forget_tokens_then_set_up(eshop_id: int, oauth_fp: str) -> None:
    # A new OAuth token starts a fresh count of valid API tokens at Shoptet: the previous
    # install's tokens are useless now. Tokens minted with the new OAuth token (`oauth_fp`, a
    # fingerprint, never the token) stay: a request may have minted one before this thread ran.
    # Then the post-install setup (signature key, webhooks, shop details);
    # complete_pending_installs runs it if this publish fails.
    try:
        forget_tokens(eshop_id, keep_oauth_fp=oauth_fp)
    except redis.RedisError as exc:
        logger.warning(
            "install: eshop_id=%s old API tokens not cleared (%s)",
            eshop_id,
            type(exc).__name__,
        )
    post_install_task.delay(eshop_id)


@sensitive_variables("code", "grant")
def install_addon(*, code: str) -> Eshop:
    """Exchange `code`, then create or reactivate the e-shop with its new OAuth token.

    The exchange runs before the transaction opens, so no database transaction waits on Shoptet.
    The upsert is keyed by `eshopId` under a row lock: concurrent callbacks for one shop end as
    one row, and a reinstall replaces the token and keeps everything else the tenant had.
    """
    grant = exchange_code(code=code)
    received_at = timezone.now()
    with transaction.atomic():
        eshop, created = Eshop.objects.select_for_update().get_or_create(
            eshop_id=grant.eshop_id,
            defaults={
                "url": grant.eshop_url,
                "contact_email": grant.contact_email,
                "trial": grant.trial,
                "oauth_access_token": grant.access_token,
                "oauth_token_received_at": received_at,
                "installed_at": received_at,
                "last_installed_at": received_at,
            },
        )
        if created:
            eshop.record_install(created=True, at=received_at)
        else:
            eshop.reinstall(
                oauth_access_token=grant.access_token,
                received_at=received_at,
                url=grant.eshop_url,
                contact_email=grant.contact_email,
                trial=grant.trial,
            )
        # After commit, and never failing the install: a broker outage is repaired by the
        # complete_pending_installs sweep.
        transaction.on_commit(
            partial(
                _after_install,
                eshop.eshop_id,
                oauth_fingerprint(eshop.oauth_access_token),
            ),
            robust=True,
        )
    metrics.observe_install(created=created)
    logger.info(
        "install: eshop_id=%s %s (install #%s)",
        eshop.eshop_id,
        "installed" if created else "reinstalled",
        eshop.install_count,
    )
    return eshop
