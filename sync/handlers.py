"""Webhooks that feed the sync: `job:finished` wakes a waiting snapshot, `order:*` refresh one order.

Registered in the shared registry of shoptet_api/webhooks.py (sync depends on shoptet_api, never
the other way round). Handlers run inside the inbox row's transaction: work that calls Shoptet is
queued on commit, not done here.
"""

from __future__ import annotations

import logging
from functools import partial

from django.db import transaction

from addon_project.background import in_background
from shoptet_api.models import WebhookEvent
from shoptet_api.webhooks import webhook_handler
from sync.engine import mark_job_finished
from sync.models import Order, SyncState

logger = logging.getLogger(__name__)


@webhook_handler("job:finished")
def job_finished(event: WebhookEvent) -> str:
    """A snapshot job ended (maybe failed): let the waiting sync read its detail now."""
    from sync import tasks

    eshop_id = event.eshop.eshop_id
    mark_job_finished(eshop_id, event.event_instance)
    for state in SyncState.objects.filter(
        eshop=event.eshop,
        phase__in=[SyncState.Phase.SNAPSHOT, SyncState.Phase.CHANGES],
    ):
        # A full copy's job, or an incremental walk's filtered one (checkpoint["fetch"]).
        fetch = state.checkpoint.get("fetch") or {}
        if event.event_instance in (
            state.checkpoint.get("job_id"),
            fetch.get("job_id"),
        ):
            transaction.on_commit(
                partial(in_background, tasks.run_slice.delay, eshop_id, state.resource),
                robust=True,
            )
            return f"sync of {state.resource} resumed"
    return "no sync waits for this job"


def _order_changed(event: WebhookEvent) -> str:
    from sync import tasks

    if not SyncState.objects.filter(eshop=event.eshop, resource="orders").exists():
        return "orders are not mirrored for this e-shop"
    transaction.on_commit(
        partial(
            in_background,
            tasks.refresh_order.delay,
            event.eshop.eshop_id,
            event.event_instance,
        ),
        robust=True,
    )
    return f"order {event.event_instance[:40]} queued for refresh"


@webhook_handler("order:delete")
def order_deleted(event: WebhookEvent) -> str:
    """Remove the order from the mirror (no API call needed)."""
    gone, _ = Order.objects.filter(
        eshop=event.eshop, code=event.event_instance
    ).delete()
    return f"order {event.event_instance[:40]} removed ({gone})"


webhook_handler("order:create")(_order_changed)
webhook_handler("order:update")(_order_changed)
